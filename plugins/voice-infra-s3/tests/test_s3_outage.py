"""A server that hangs, dies and comes back: errors are retryable and bounded in time.

moto runs in a child process here (:class:`conftest.MotoProcess`, not the session's
thread) so that it can really be frozen (SIGSTOP: the kernel still accepts connections
and buffers data, nothing answers), killed (connections refused) and restarted on the
same port.

Why this test once hung: botocore sends PUT and UploadPart with ``Expect: 100-continue``
and aiohttp starts its read timeout only after the whole body is written, so an upload
to a frozen server waited forever for the ``100 Continue``. The backend now watches the
body's progress (``S3Storage._send_body``) and fails a stalled send after read_timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from botocore.exceptions import BotoCoreError
from conftest import BUCKET, MotoProcess, http, s3_storage_options

import voice_infra as vi
from voice_infra.errors import (
    BackendUnavailableError,
    StorageUnavailableError,
    VoiceServiceError,
)
from voice_infra.storage import StorageBackend

MIB = 1024 * 1024
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 1.0
MAX_ATTEMPTS = 2
SLACK = 1.0  # scheduling, process start-up noise on a loaded machine


def failure_bound(connect: float, read: float, attempts: int) -> float:
    """Longest time one operation may take to fail (docs/s3.md, "Outages"): each
    attempt waits at most connect_timeout to connect and read_timeout for a byte
    (of the response, or taken from the request body), and botocore's standard mode
    sleeps at most min(2**(i-1), 20) s before retry i (jitter x a scale <= 1)."""
    backoff = sum(min(2.0 ** (i - 1), 20.0) for i in range(1, attempts))
    return attempts * (connect + read) + backoff


BOUND = failure_bound(CONNECT_TIMEOUT, READ_TIMEOUT, MAX_ATTEMPTS)


def outage_storage(endpoint: str) -> StorageBackend:
    options = s3_storage_options(
        endpoint,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retry_mode="standard",
        max_attempts=MAX_ATTEMPTS,
        multipart_threshold="5MiB",
        multipart_part_size="5MiB",
        upload_concurrency=1,
    )
    return vi.create_storage(vi.Settings(storage=options))


async def failure_of(operation: Callable[[], Awaitable[Any]]) -> tuple[Exception, float]:
    """The exception ``operation`` raises and the seconds it took (fails if it succeeds)."""
    started = time.monotonic()
    try:
        await operation()
    except Exception as exc:
        return exc, time.monotonic() - started
    pytest.fail(f"succeeded during the outage after {time.monotonic() - started:.2f}s")


def assert_unavailable(error: Exception) -> None:
    """The core's retryable backend-unavailable error, the client library's as cause."""
    assert isinstance(error, StorageUnavailableError), repr(error)
    assert isinstance(error, BackendUnavailableError) and error.retryable
    cause = error.__cause__
    assert cause is not None, "the original error is not kept"
    assert not isinstance(cause, VoiceServiceError), repr(cause)
    assert isinstance(cause, BotoCoreError | aiohttp.ClientError | OSError), repr(cause)


def incomplete_uploads(endpoint: str) -> list[str]:
    """Keys of the multipart uploads the server still holds (ListMultipartUploads)."""
    status, body = http("GET", f"{endpoint}/{BUCKET}?uploads")
    assert status == 200, body
    root = ElementTree.fromstring(body)
    return [el.text or "" for el in root.iter() if el.tag.endswith("}Key") or el.tag == "Key"]


def operations(storage: StorageBackend) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "upload": lambda: storage.upload_file(b"during", object_key="b.wav"),
        "download": lambda: storage.download_file("a.wav"),
        "get_file_info": lambda: storage.get_file_info("a.wav"),
        "list_files": lambda: anext(aiter(storage.list_files())),
    }


@pytest.mark.asyncio
async def test_frozen_server_times_out_then_recovers(moto_process: MotoProcess) -> None:
    async with outage_storage(moto_process.endpoint) as storage:
        await storage.upload_file(b"before", object_key="a.wav")
        assert await storage.download_file("a.wav") == b"before"

        moto_process.freeze()
        for name, operation in operations(storage).items():
            error, elapsed = await failure_of(operation)
            assert_unavailable(error)
            # It waited for the timeout (the server really did not answer), no longer.
            assert READ_TIMEOUT * 0.9 <= elapsed < BOUND + SLACK, (name, elapsed, BOUND)

        moto_process.resume()
        # The same instance works again, on fresh connections.
        assert await storage.download_file("a.wav") == b"before"
        await storage.upload_file(b"after", object_key="c.wav")
        assert await storage.download_file("c.wav") == b"after"


@pytest.mark.asyncio
async def test_frozen_server_multipart_upload_fails_within_part_plus_one_abort(
    moto_process: MotoProcess,
) -> None:
    """The server freezes while a multipart upload runs: the part in flight stalls
    (read_timeout: a stall is not retried), then the abort gets no answer and is not
    repeated (docs/s3.md, "Outages": the bound of the part plus the bound of one abort)."""
    frozen_at: list[float] = []
    aborts: list[str] = []

    async def source() -> AsyncIterator[bytes]:
        yield b"1" * (5 * MIB)
        yield b"2" * (5 * MIB)
        moto_process.freeze()
        frozen_at.append(time.monotonic())
        yield b"3" * (5 * MIB)

    async with outage_storage(moto_process.endpoint) as storage:
        # Counts the calls the backend makes (botocore's own retries are one call).
        storage._client.meta.events.register(  # type: ignore[attr-defined]
            "before-call.s3.AbortMultipartUpload", lambda **_: aborts.append("abort")
        )
        error, _ = await failure_of(lambda: storage.upload_file(source(), object_key="big.wav"))
        assert_unavailable(error)
        assert frozen_at, "the source was not read to the freeze"
        elapsed = time.monotonic() - frozen_at[0]
        assert elapsed < READ_TIMEOUT + BOUND + SLACK, (elapsed, READ_TIMEOUT + BOUND)
        assert aborts == ["abort"], "an abort that got no answer was repeated"

        moto_process.resume()
        # No half-written object; the abort sent while frozen may or may not have been
        # served once the server resumed: the maintenance call removes what is left.
        assert not await storage.file_exists("big.wav")
        assert [info.object_key async for info in storage.list_files()] == []
        assert set(await storage.abort_incomplete_uploads(timedelta(0))) <= {"big.wav"}
        assert incomplete_uploads(moto_process.endpoint) == []
        await storage.upload_file(b"after", object_key="c.wav")
        assert await storage.download_file("c.wav") == b"after"


@pytest.mark.asyncio
async def test_killed_server_refuses_then_recovers_after_restart(
    moto_process: MotoProcess,
) -> None:
    async with outage_storage(moto_process.endpoint) as storage:
        await storage.upload_file(b"before", object_key="a.wav")
        assert await storage.download_file("a.wav") == b"before"

        moto_process.stop()
        for name, operation in operations(storage).items():
            error, elapsed = await failure_of(operation)
            assert_unavailable(error)
            # Refused connections fail at once: only the retry backoff is waited.
            backoff_only = failure_bound(0, 0, MAX_ATTEMPTS)
            assert elapsed < min(backoff_only, BOUND) + SLACK, (name, elapsed)

        # A multipart upload whose server dies after its first parts were sent.
        await asyncio.to_thread(moto_process.start)
        killed: list[bool] = []

        async def dying_source() -> AsyncIterator[bytes]:
            yield b"1" * (5 * MIB)
            yield b"2" * (5 * MIB)
            moto_process.stop()
            killed.append(True)
            yield b"3" * (5 * MIB)

        error, elapsed = await failure_of(
            lambda: storage.upload_file(dying_source(), object_key="big.wav")
        )
        assert_unavailable(error)
        assert killed, "the source was not read to the kill"
        assert elapsed < 2 * BOUND + SLACK, elapsed

        # Back on the same port (moto keeps nothing: the bucket is created again);
        # the same storage instance works without being reopened.
        await asyncio.to_thread(moto_process.start)
        await storage.upload_file(b"after", object_key="c.wav")
        assert await storage.download_file("c.wav") == b"after"
        assert [info.object_key async for info in storage.list_files()] == ["c.wav"]
        assert not await storage.file_exists("big.wav")
        assert incomplete_uploads(moto_process.endpoint) == []
