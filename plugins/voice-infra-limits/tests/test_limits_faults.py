"""A dead or hung store: fail_mode, bounded time, circuit breaker, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from voice_infra_limits.backend import LimitsRateLimiter
from voice_infra_redis.testing import RedisServer, free_port

import voice_infra as vi

Open = Callable[..., Coroutine[Any, Any, LimitsRateLimiter]]


async def _timed(limiter: LimitsRateLimiter, key: str) -> tuple[vi.RateLimitInfo, float]:
    started = time.monotonic()
    info = await limiter.check_rate_limit(key)
    return info, time.monotonic() - started


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
@pytest.mark.asyncio
async def test_killed_server_fail_closed_within_the_timeout(
    open_limits_limiter: Open, own_redis_server: RedisServer, strategy: str
) -> None:
    limiter = await open_limits_limiter(
        storage_uri=own_redis_server.url, strategy=strategy, fail_mode="closed",
        timeout=0.5, policies=["5/second", "100/minute"],
    )  # fmt: skip
    assert not (await limiter.check_rate_limit("user:1")).degraded
    own_redis_server.kill()
    info, elapsed = await _timed(limiter, "user:1")
    assert not info.allowed and info.degraded
    assert info.policy == "100/minute" and info.retry_after == 60.0  # the lowest rate
    assert elapsed < 0.5 + 0.2


@pytest.mark.asyncio
async def test_killed_server_fail_open(
    open_limits_limiter: Open, own_redis_server: RedisServer
) -> None:
    limiter = await open_limits_limiter(storage_uri=own_redis_server.url, fail_mode="open")
    own_redis_server.kill()
    info, elapsed = await _timed(limiter, "user:2")
    assert info.allowed and info.degraded
    assert elapsed < 1.0 + 0.2


@pytest.mark.asyncio
async def test_fail_mode_raise_wraps_the_driver_error(
    open_limits_limiter: Open, own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    password_uri = own_redis_server.url.replace("redis://", "redis://:hunter2@")
    limiter = await open_limits_limiter(storage_uri=password_uri, fail_mode="raise")
    own_redis_server.kill()
    with pytest.raises(vi.RateLimiterUnavailableError) as caught:
        await limiter.check_rate_limit("user:3")
    error = caught.value
    assert isinstance(error, vi.BackendUnavailableError) and error.retryable
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert isinstance(error.__cause__, RedisConnectionError | OSError)
    assert "limits storage at redis://:**********@127.0.0.1" in str(error)
    assert "hunter2" not in str(error) and "hunter2" not in caplog.text


@pytest.mark.asyncio
async def test_hung_server_is_bounded_by_the_timeout(
    open_limits_limiter: Open, own_redis_server: RedisServer
) -> None:
    limiter = await open_limits_limiter(
        storage_uri=own_redis_server.url, fail_mode="closed", timeout=0.3,
        storage_options={"socket_timeout": 30},  # the driver alone would wait 30 s
    )  # fmt: skip
    assert not (await limiter.check_rate_limit("user:4")).degraded
    own_redis_server.pause()
    try:
        info, elapsed = await _timed(limiter, "user:4")
    finally:
        own_redis_server.resume()
    assert info.degraded and not info.allowed
    assert 0.25 < elapsed < 0.3 + 0.2


@pytest.mark.asyncio
async def test_server_down_at_start_up(open_limits_limiter: Open) -> None:
    limiter = await open_limits_limiter(
        storage_uri=f"redis://127.0.0.1:{free_port()}/0", fail_mode="closed", timeout=0.5
    )
    info, elapsed = await _timed(limiter, "user:5")
    assert info.degraded and not info.allowed and elapsed < 0.7


@pytest.mark.asyncio
async def test_breaker_opens_then_recovers_after_restart(
    open_limits_limiter: Open, own_redis_server: RedisServer, tmp_path: Path
) -> None:
    limiter = await open_limits_limiter(
        storage_uri=own_redis_server.url, fail_mode="closed", timeout=0.5,
        breaker_failure_threshold=2, breaker_cooldown=0.3, policies=["3/minute"],
    )  # fmt: skip
    assert (await limiter.check_rate_limit("user:6")).allowed
    port = own_redis_server.port
    own_redis_server.kill()
    for _ in range(2):
        assert (await limiter.check_rate_limit("user:6")).degraded
    assert limiter.breaker.state == "open"
    info, elapsed = await _timed(limiter, "user:6")
    assert info.degraded and elapsed < 0.005  # answered without I/O
    restarted = RedisServer(tmp_path / "restarted", port=port).start()
    try:
        await asyncio.sleep(0.35)
        back = await limiter.check_rate_limit("user:6")
        assert not back.degraded and back.allowed
        assert back.remaining == 2  # a fresh server: the old counts died with the old one
        assert limiter.breaker.state == "closed"
    finally:
        restarted.stop()


@pytest.mark.asyncio
async def test_clear_while_down_raises(
    open_limits_limiter: Open, own_redis_server: RedisServer
) -> None:
    limiter = await open_limits_limiter(storage_uri=own_redis_server.url, timeout=0.5)
    own_redis_server.kill()
    started = time.monotonic()
    with pytest.raises(vi.RateLimiterUnavailableError, match="could not clear 'user:7'"):
        await limiter.clear_user_limit("user:7")
    assert time.monotonic() - started < 0.7
