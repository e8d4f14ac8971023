"""The ``retry`` layer on backends that fail on demand (tests/layer_fakes.py)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from layer_fakes import build

from voice_infra.errors import (
    ObjectNotFoundError,
    RateLimiterUnavailableError,
    StorageUnavailableError,
)
from voice_infra.layers import iter_layers, unwrap
from voice_infra.plugins import PluginRegistry

FAST = {"name": "retry", "attempts": 3, "initial": 0.001, "max_wait": 0.002}
DOWN = StorageUnavailableError("server down")


def storage_with(registry: PluginRegistry, *layers: Any) -> Any:
    return build(registry, backend="flaky", layers=list(layers or [FAST]))


@pytest.mark.asyncio
async def test_transient_errors_are_retried_up_to_attempts(layer_registry: PluginRegistry) -> None:
    storage = storage_with(layer_registry)
    async with storage:
        flaky = unwrap(storage)
        await storage.upload_file(b"abc", object_key="a")
        flaky.script("info", DOWN, DOWN)
        assert (await storage.get_file_info("a")).file_size == 3
        assert flaky.calls["info"] == 3
        flaky.script("info", DOWN, DOWN, DOWN)
        with pytest.raises(StorageUnavailableError, match="server down"):
            await storage.get_file_info("a")
        assert flaky.calls["info"] == 6
        flaky.script("delete", DOWN)
        assert await storage.delete_file("a") is True
        assert flaky.calls["delete"] == 2


@pytest.mark.asyncio
async def test_other_errors_are_not_retried(layer_registry: PluginRegistry) -> None:
    storage = storage_with(layer_registry)
    async with storage:
        flaky = unwrap(storage)
        with pytest.raises(ObjectNotFoundError):
            await storage.get_file_info("missing")
        assert flaky.calls["info"] == 1
        flaky.script("info", RuntimeError("bug"))
        with pytest.raises(RuntimeError):
            await storage.get_file_info("missing")
        assert flaky.calls["info"] == 2


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 4):
        await asyncio.sleep(0)
        yield data[start : start + 4]


@pytest.mark.asyncio
async def test_retry_never_repeats_a_non_replayable_upload(layer_registry: PluginRegistry) -> None:
    storage = storage_with(layer_registry)
    async with storage:
        flaky = unwrap(storage)
        # The body was consumed, then the write failed: a second attempt would store the
        # empty rest of the stream.
        flaky.script("write_after_read", DOWN)
        with pytest.raises(StorageUnavailableError):
            await storage.upload_file(_stream(b"0123456789"), object_key="s/once")
        assert flaky.calls["write"] == 1
        assert not await storage.file_exists("s/once")

        class Pipe(io.RawIOBase):  # readable, not seekable: a pipe or a socket
            def __init__(self) -> None:
                self.data = io.BytesIO(b"pipe data")

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                chunk = self.data.read(len(buffer))
                buffer[: len(chunk)] = chunk
                return len(chunk)

        flaky.script("write_after_read", DOWN)
        with pytest.raises(StorageUnavailableError):
            await storage.upload_file(Pipe(), object_key="s/pipe")
        assert flaky.calls["write"] == 2


@pytest.mark.asyncio
async def test_replayable_uploads_are_retried_with_the_whole_source(
    layer_registry: PluginRegistry, tmp_path: Any
) -> None:
    storage = storage_with(layer_registry)
    path = tmp_path / "voice.wav"
    path.write_bytes(b"from a path")
    async with storage:
        flaky = unwrap(storage)
        for source, expected in (
            (b"some bytes", b"some bytes"),
            (str(path), b"from a path"),
            (io.BytesIO(b"seekable file"), b"seekable file"),
        ):
            flaky.script("write_after_read", DOWN)
            flaky.script("written", DOWN)  # the second attempt stored it, then failed
            info = await storage.upload_file(source, user_id="u")
            assert await storage.download_file(info.object_key) == expected
            assert info.file_size == len(expected)
        # One object per upload: the key was chosen once, before the first attempt.
        assert len([i async for i in storage.list_files("voice/u/")]) == 3
        assert flaky.calls["write"] == 9


@pytest.mark.asyncio
async def test_streams_are_retried_until_the_first_item_only(
    layer_registry: PluginRegistry,
) -> None:
    storage = storage_with(layer_registry)
    async with storage:
        flaky = unwrap(storage)
        await storage.upload_file(b"z" * 3000, object_key="big")
        flaky.script("read", DOWN, DOWN)
        chunks = [c async for c in storage.stream_file("big", chunk_size=1024)]
        assert b"".join(chunks) == b"z" * 3000 and flaky.calls["read"] == 3
        flaky.script("list", DOWN)
        assert [i.object_key async for i in storage.list_files()] == ["big"]
        # A failure after the caller got data is not hidden by a restart from the start.
        flaky.script("chunk", None, DOWN)
        received = []
        with pytest.raises(StorageUnavailableError):
            async for chunk in storage.stream_file("big", chunk_size=1024):
                received.append(chunk)
        assert len(received) == 1 and flaky.calls["read"] == 4


@pytest.mark.asyncio
async def test_the_deadline_bounds_all_attempts(layer_registry: PluginRegistry) -> None:
    retry = {"name": "retry", "attempts": 100, "initial": 0.001, "max_wait": 0.001,
             "deadline": 0.3}  # fmt: skip
    storage = storage_with(layer_registry, retry, {"name": "timeout", "seconds": 0.05})
    async with storage:
        flaky = unwrap(storage)
        flaky.script("info", *[5.0] * 100)  # every attempt hangs until the timeout
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="timeout layer"):
            await storage.get_file_info("a")
        assert time.monotonic() - started < 0.6
        assert 3 <= flaky.calls["info"] <= 8
        assert next(iter(iter_layers(storage))).retries == flaky.calls["info"] - 1


@pytest.mark.asyncio
async def test_limiter_checks_are_never_retried_lookups_are(
    layer_registry: PluginRegistry,
) -> None:
    limiter = build(layer_registry, "rate_limiter", backend="flaky", fail_mode="raise",
                    layers=[FAST])  # fmt: skip
    async with limiter:
        flaky = unwrap(limiter)
        flaky.script("check", RateLimiterUnavailableError("down"))
        with pytest.raises(RateLimiterUnavailableError):
            await limiter.check_rate_limit("u")
        assert flaky.calls["check"] == 1  # it may have been counted: not repeated
        flaky.script("peek", RateLimiterUnavailableError("down"))
        assert (await limiter.get_rate_limit_info("u")).allowed
        assert flaky.calls["peek"] == 2
        flaky.script("clear", RateLimiterUnavailableError("down"))
        await limiter.clear_user_limit("u")
        assert flaky.calls["clear"] == 2
