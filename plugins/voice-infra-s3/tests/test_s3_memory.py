"""Streaming keeps memory bounded: a 256 MiB upload and download through the plugin.

moto runs in a child process (``moto_child``): an in-process server would hold the
256 MiB object in this process' memory. The resident set size of this process is read
from ``/proc/self/statm`` by a background thread every 2 ms while each operation
runs (``ru_maxrss`` is a lifetime peak and cannot show the growth of one operation).
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from types import TracebackType

import pytest
from conftest import MotoProcess, reset_moto, s3_storage_options

import voice_infra as vi

MIB = 1024 * 1024
OBJECT_SIZE = 256 * MIB
SOURCE_CHUNK = MIB
RSS_GROWTH_LIMIT = 64 * MIB
_PAGE = os.sysconf("SC_PAGE_SIZE")

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)"
)


def current_rss() -> int:
    """This process' resident set size now, in bytes."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


class RssPeak:
    """Samples the RSS every ``interval`` seconds in a thread while the block runs;
    :attr:`growth` is the highest sample minus the RSS at entry."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPeak:
        gc.collect()
        self.baseline = self.peak = current_rss()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def generated_stream(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """``size`` bytes in 1 MiB chunks, each distinct (its index in front), hashed into
    ``digest`` as they are produced: the whole body never exists at once."""
    pattern = bytes(range(256)) * (SOURCE_CHUNK // 256)
    for index in range(size // SOURCE_CHUNK):
        chunk = index.to_bytes(8, "big") + pattern[8:]
        digest.update(chunk)
        yield chunk


@pytest.mark.asyncio
async def test_256_mib_stream_keeps_rss_growth_under_64_mib(moto_child: MotoProcess) -> None:
    reset_moto(moto_child.endpoint)
    # The plugin's defaults for multipart (8 MiB parts, 4 in flight), generous timeouts:
    # moto needs a moment to assemble 256 MiB.
    options = s3_storage_options(moto_child.endpoint, read_timeout=120)
    storage = vi.create_storage(vi.Settings(storage=options))
    sent = hashlib.sha256()
    received = hashlib.sha256()
    async with storage:
        started = time.monotonic()
        with RssPeak() as upload:
            info = await storage.upload_file(
                generated_stream(OBJECT_SIZE, sent), object_key="big/stream.bin"
            )
        upload_seconds = time.monotonic() - started

        started = time.monotonic()
        received_size = 0
        with RssPeak() as download:
            async for chunk in storage.stream_file("big/stream.bin"):
                received.update(chunk)
                received_size += len(chunk)
                del chunk
        download_seconds = time.monotonic() - started
        stored = await storage.get_file_info("big/stream.bin")

    print(
        f"upload {upload_seconds:.1f}s RSS +{upload.growth / MIB:.1f} MiB "
        f"({upload.samples} samples); download {download_seconds:.1f}s RSS "
        f"+{download.growth / MIB:.1f} MiB ({download.samples} samples)"
    )
    assert info.file_size == stored.file_size == received_size == OBJECT_SIZE
    assert info.checksum == sent.hexdigest() == received.hexdigest()
    assert upload.samples > 10 and download.samples > 10, "the sampler did not run"
    assert upload.growth < RSS_GROWTH_LIMIT, f"upload grew RSS by {upload.growth / MIB:.1f} MiB"
    assert download.growth < RSS_GROWTH_LIMIT, (
        f"download grew RSS by {download.growth / MIB:.1f} MiB"
    )
