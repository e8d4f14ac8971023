"""The ``breaker`` layer on backends that fail on demand (tests/layer_fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from layer_fakes import build

from voice_infra.errors import (
    ObjectNotFoundError,
    RateLimiterUnavailableError,
    StorageUnavailableError,
)
from voice_infra.layers import iter_layers, unwrap
from voice_infra.plugins import PluginRegistry

DOWN = StorageUnavailableError("server down")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_clock(backend: object) -> Clock:
    clock = Clock()
    (layer,) = [layer for layer in iter_layers(backend) if layer.name == "breaker"]
    layer.breaker.clock = clock
    return clock


@pytest.mark.asyncio
async def test_breaker_opens_fails_fast_half_opens_and_closes(
    layer_registry: PluginRegistry,
) -> None:
    breaker = {"name": "breaker", "failure_threshold": 3, "cooldown": 10}
    storage = build(layer_registry, backend="flaky", layers=[breaker])
    clock = with_clock(storage)
    (layer,) = iter_layers(storage)
    async with storage:
        flaky = unwrap(storage)
        await storage.upload_file(b"abc", object_key="a")
        flaky.script("info", DOWN, DOWN, DOWN)
        for _ in range(3):
            with pytest.raises(StorageUnavailableError, match="server down"):
                await storage.get_file_info("a")
        assert layer.breaker.state == "open" and flaky.calls["info"] == 3
        # Open: every operation fails fast without reaching the backend.
        with pytest.raises(StorageUnavailableError, match="circuit breaker open after 3"):
            await storage.get_file_info("a")
        with pytest.raises(StorageUnavailableError, match="circuit breaker open"):
            await storage.download_file("a")
        with pytest.raises(StorageUnavailableError, match="circuit breaker open"):
            [i async for i in storage.list_files()]
        assert flaky.calls["info"] == 3 and flaky.calls["read"] == 0 and flaky.calls["list"] == 0
        assert layer.state() == "breaker open (3 consecutive failures), opened 1 time(s)"
        # Half-open after the cool-down: one probe; its failure opens it again.
        clock.now += 10
        assert layer.breaker.state == "half_open"
        flaky.script("info", DOWN)
        with pytest.raises(StorageUnavailableError, match="server down"):
            await storage.get_file_info("a")
        with pytest.raises(StorageUnavailableError, match="circuit breaker open"):
            await storage.get_file_info("a")
        assert flaky.calls["info"] == 4
        # The next probe succeeds: closed.
        clock.now += 10
        assert (await storage.get_file_info("a")).file_size == 3
        assert layer.breaker.state == "closed"
        assert await storage.download_file("a") == b"abc"


@pytest.mark.asyncio
async def test_answers_that_are_errors_do_not_open_it(layer_registry: PluginRegistry) -> None:
    storage = build(layer_registry, backend="flaky",
                    layers=[{"name": "breaker", "failure_threshold": 2}])  # fmt: skip
    (layer,) = iter_layers(storage)
    async with storage:
        for _ in range(5):
            with pytest.raises(ObjectNotFoundError):
                await storage.get_file_info("missing")
        assert layer.breaker.state == "closed"
        # A stream that fails once then an empty listing: failure count back to 0.
        unwrap(storage).script("list", DOWN)
        with pytest.raises(StorageUnavailableError):
            [i async for i in storage.list_files()]
        assert layer.breaker.consecutive_failures == 1
        assert [i async for i in storage.list_files()] == []
        assert layer.breaker.consecutive_failures == 0


@pytest.mark.asyncio
async def test_open_breaker_on_a_limiter_answers_with_its_fail_mode(
    layer_registry: PluginRegistry,
) -> None:
    down = RateLimiterUnavailableError("down")
    for mode in ("open", "closed", "raise"):
        limiter = build(layer_registry, "rate_limiter", backend="flaky", fail_mode=mode,
                        policies="5/minute",
                        layers=[{"name": "breaker", "failure_threshold": 1}])  # fmt: skip
        async with limiter:
            flaky = unwrap(limiter)
            flaky.script("peek", down)
            if mode == "raise":
                with pytest.raises(RateLimiterUnavailableError):  # the limiter's own error
                    await limiter.get_rate_limit_info("u")
            else:
                assert (await limiter.get_rate_limit_info("u")).degraded
            if mode == "raise":
                with pytest.raises(RateLimiterUnavailableError, match="circuit breaker open"):
                    await limiter.check_rate_limit("u")
            else:
                info = await limiter.check_rate_limit("u")
                assert info.degraded and info.allowed == (mode == "open")
            assert flaky.calls["check"] == 0
            with pytest.raises(RateLimiterUnavailableError, match="circuit breaker open"):
                await limiter.clear_user_limit("u")


def test_doctor_shows_the_breaker_state(tmp_path: Path) -> None:
    from test_cli import run

    (tmp_path / "voice_infra.toml").write_text(
        '[storage]\nbackend = "memory"\nlayers = ["breaker", "timeout"]\n'
    )
    result = run("doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "layer breaker: breaker closed, opened 0 time(s)" in result.stdout
