"""The layers around the S3 backend against real faults of moto's server (a child
process: frozen with SIGSTOP, killed, started again on the same port mid-run)."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import MotoProcess, s3_storage_options

import voice_infra as vi
from voice_infra.errors import StorageUnavailableError
from voice_infra.layers import iter_layers

SLACK = 1.5  # process start-up and scheduling on a loaded machine


def layered_storage(endpoint: str, layers: list[object], **options: object) -> vi.StorageBackend:
    settings = s3_storage_options(endpoint, layers=layers, **options)
    return vi.create_storage(vi.Settings.from_keywords(storage=settings))


def breaker_state(storage: vi.StorageBackend) -> str:
    [breaker] = [layer for layer in iter_layers(storage) if type(layer).__name__ == "BreakerLayer"]
    return str(breaker.breaker.state)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_frozen_server_timeout_then_breaker_fails_fast_and_recovers(
    moto_process: MotoProcess,
) -> None:
    storage = layered_storage(
        moto_process.endpoint,
        [{"name": "breaker", "failure_threshold": 2, "cooldown": 1.0},
         {"name": "timeout", "seconds": 0.5}],
        read_timeout=10,  # the backend alone would wait 10 s: the timeout layer bounds it
    )  # fmt: skip
    async with storage:
        await storage.upload_file(b"RIFF-before", object_key="a.wav")
        moto_process.freeze()
        try:
            for _ in range(2):  # each bounded by the timeout layer, not the server
                started = time.monotonic()
                with pytest.raises(StorageUnavailableError):
                    await storage.get_file_info("a.wav")
                assert time.monotonic() - started < 0.5 + SLACK
            assert breaker_state(storage) == "open"
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError):  # open: no call to the server
                await storage.download_file("a.wav")
            assert time.monotonic() - started < 0.1
        finally:
            moto_process.resume()
        await asyncio.sleep(1.1)  # the cool-down: the next call is the half-open probe
        assert await storage.download_file("a.wav") == b"RIFF-before"
        assert breaker_state(storage) == "closed"


@pytest.mark.asyncio
async def test_retry_rides_out_a_restart_and_never_repeats_a_stream_upload(
    moto_process: MotoProcess,
) -> None:
    storage = layered_storage(
        moto_process.endpoint,
        [{"name": "retry", "attempts": 8, "initial": 0.2, "max_wait": 0.5, "deadline": 20}],
        connect_timeout=1, read_timeout=1,
    )  # fmt: skip
    async with storage:
        await storage.upload_file(b"RIFF-kept", object_key="k.wav")
        moto_process.stop()  # connections refused from here

        async def restart_soon() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(moto_process.start)  # a fresh server: bucket, no objects

        restart = asyncio.create_task(restart_soon())
        # A replayable upload (bytes) is tried again until the server is back.
        info = await storage.upload_file(b"RIFF-after-restart", object_key="r.wav")
        await restart
        assert await storage.download_file("r.wav") == b"RIFF-after-restart"
        assert info.checksum is not None

        moto_process.stop()
        sent: list[bytes] = []

        async def stream() -> object:
            for chunk in (b"RIFF", b"-stream"):
                sent.append(chunk)
                yield chunk

        # A stream cannot be replayed: one attempt, the error reaches the caller.
        with pytest.raises(StorageUnavailableError):
            await storage.upload_file(stream(), object_key="s.wav")  # type: ignore[arg-type]
        assert len(sent) <= 2  # the chunks were read once, never again
