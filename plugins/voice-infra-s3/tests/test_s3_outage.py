"""A server that hangs, dies and comes back: errors are retryable and bounded in time.

moto runs in a child process here (not the session's thread) so that it can really be
frozen (SIGSTOP), killed, and restarted on the same port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import BUCKET, http, s3_storage_options

import voice_infra as vi
from voice_infra.errors import BackendUnavailableError, StorageUnavailableError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoProcess:
    """``python -m moto.server`` on a fixed loopback port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto server exited at start") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        status, body = http("PUT", f"{self.endpoint}/{BUCKET}")
        assert status == 200, body

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def moto_process() -> Iterator[MotoProcess]:
    server = MotoProcess(free_port())
    server.start()
    yield server
    with_stopped = server.process
    if with_stopped is not None and with_stopped.poll() is None:
        server.signal(signal.SIGCONT)
    server.kill()


async def timed(operation: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await operation()
    except BaseException as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.skip(reason="hangs in this environment (not yet diagnosed); see docs/s3.md")
@pytest.mark.asyncio
async def test_outage_fails_fast_and_recovers(moto_process: MotoProcess) -> None:
    options = s3_storage_options(moto_process.endpoint, connect_timeout=1, read_timeout=1)
    async with vi.create_storage(vi.Settings(storage=options)) as storage:
        await storage.upload_file(b"before", object_key="a.wav")
        assert await storage.download_file("a.wav") == b"before"

        # A frozen server accepts connections (the kernel does) but never answers:
        # every operation gives up after read_timeout.
        moto_process.signal(signal.SIGSTOP)
        operations = [
            lambda: storage.upload_file(b"during", object_key="b.wav"),
            lambda: storage.download_file("a.wav"),
            lambda: storage.get_file_info("a.wav"),
        ]
        for operation in operations:
            error, elapsed = await timed(operation)
            assert isinstance(error, StorageUnavailableError), repr(error)
            assert isinstance(error, BackendUnavailableError) and error.retryable
            assert error.__cause__ is not None
            assert 0.5 < elapsed < 3.0, elapsed

        # A dead server refuses connections: failure is immediate.
        moto_process.signal(signal.SIGCONT)
        moto_process.kill()
        for operation in operations:
            error, elapsed = await timed(operation)
            assert isinstance(error, StorageUnavailableError), repr(error)
            assert elapsed < 1.5, elapsed

        # Back on the same port (empty: moto keeps nothing): the same instance works.
        await asyncio.to_thread(moto_process.start)
        await storage.upload_file(b"after", object_key="c.wav")
        assert await storage.download_file("c.wav") == b"after"
        assert [i.object_key async for i in storage.list_files()] == ["c.wav"]
