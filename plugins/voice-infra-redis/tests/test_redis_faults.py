"""Faults: a killed, hung or restarted Redis, an emptied script cache, and the warnings."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisServer, free_port, make_self_signed_certificate

import voice_infra as vi

pytestmark = pytest.mark.asyncio

TIMEOUT = 0.2  # socket_timeout and socket_connect_timeout of these tests
FAST = {
    "socket_timeout": TIMEOUT,
    "socket_connect_timeout": TIMEOUT,
    "breaker_failure_threshold": 3,
    "breaker_cooldown": 0.5,
}


OpenLimiter = Callable[..., Awaitable[RedisRateLimiter]]


@pytest.fixture
def make(open_redis_limiter: OpenLimiter) -> OpenLimiter:
    def build(url: str, *policies: str, **options: Any) -> Awaitable[RedisRateLimiter]:
        policies_ = list(policies) or ["5/minute"]
        return open_redis_limiter(url=url, policies=policies_, **{**FAST, **options})

    return build


async def _timed(limiter: vi.RateLimiter, key: str) -> tuple[vi.RateLimitInfo, float]:
    start = time.perf_counter()
    info = await limiter.check_rate_limit(key)
    return info, time.perf_counter() - start


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_killed_redis_fail_mode_breaker_and_recovery(
    own_redis_server: RedisServer, make: Callable[..., Any], fail_mode: str
) -> None:
    limiter = await make(own_redis_server.url, "5/minute", fail_mode=fail_mode)
    assert not (await limiter.check_rate_limit("k")).degraded

    own_redis_server.kill()
    for _ in range(3):  # each failure is bounded by the timeouts
        info, elapsed = await _timed(limiter, "k")
        assert info.degraded
        assert info.allowed is (fail_mode == "open")
        if fail_mode == "closed":
            assert info.retry_after > 0 and info.remaining == 0
        assert elapsed < 2 * TIMEOUT + 0.1
    assert limiter.breaker.state == "open"

    # While the breaker is open a check costs microseconds, not a connection attempt.
    start = time.perf_counter()
    infos = [await limiter.check_rate_limit("k") for _ in range(1000)]
    per_check = (time.perf_counter() - start) / 1000
    assert all(i.degraded for i in infos)
    assert per_check < 0.0005, f"{per_check * 1e6:.0f} us per check with the breaker open"

    # Same port, fresh (empty) server: after the cool-down a probe finds it again.
    restarted = RedisServer(own_redis_server.directory, own_redis_server.port).start()
    try:
        deadline = time.monotonic() + 5
        while (info := await limiter.check_rate_limit("k")).degraded:
            assert time.monotonic() < deadline, "never recovered"
            await asyncio.sleep(0.05)
        assert limiter.breaker.state == "closed"
        assert info.allowed and info.remaining == 4  # the new, empty server decided
    finally:
        restarted.stop()


async def test_hung_redis_answers_within_the_timeout(
    own_redis_server: RedisServer, make: Callable[..., Any]
) -> None:
    limiter = await make(own_redis_server.url, fail_mode="closed")
    assert (await limiter.check_rate_limit("h")).allowed
    own_redis_server.pause()  # accepts bytes, answers nothing
    try:
        info, elapsed = await _timed(limiter, "h")
        assert info.degraded and not info.allowed
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.15
        # Concurrent checks waiting on the hung connection all get the answer in time.
        start = time.perf_counter()
        infos = await asyncio.gather(*(limiter.check_rate_limit(f"h{i}") for i in range(20)))
        assert all(i.degraded for i in infos)
        assert time.perf_counter() - start < TIMEOUT + 0.15
    finally:
        own_redis_server.resume()
    limiter.breaker.reset()
    assert not (await limiter.check_rate_limit("h")).degraded


async def test_fail_mode_raise(make: Callable[..., Any]) -> None:
    limiter = await make(f"redis://127.0.0.1:{free_port()}/0", fail_mode="raise")
    with pytest.raises(vi.RateLimiterUnavailableError) as caught:
        await limiter.check_rate_limit("r")
    assert isinstance(caught.value.__cause__, RedisConnectionError)
    assert caught.value.retryable
    for _ in range(3):
        with pytest.raises(vi.RateLimiterUnavailableError):
            await limiter.get_rate_limit_info("r")
    assert limiter.breaker.state == "open"
    with pytest.raises(vi.RateLimiterUnavailableError, match="breaker"):
        await limiter.check_rate_limit("r")


async def test_clear_when_redis_is_down_raises(make: Callable[..., Any]) -> None:
    limiter = await make(f"redis://127.0.0.1:{free_port()}/0", fail_mode="open")
    assert (await limiter.get_rate_limit_info("c")).degraded  # peeks degrade too
    with pytest.raises(vi.RateLimiterUnavailableError) as caught:
        await limiter.clear_user_limit("c")
    assert caught.value.__cause__ is not None


async def test_script_flush_mid_run(
    own_redis_server: RedisServer, make: Callable[..., Any]
) -> None:
    for algorithm in ("sliding_log", "sliding_window_counter"):
        limiter = await make(own_redis_server.url, "5/minute", algorithm=algorithm)
        key = f"flush-{algorithm}"
        assert (await limiter.check_rate_limit(key)).remaining == 4
        own_redis_server.cli("SCRIPT", "FLUSH")
        infos = await asyncio.gather(*(limiter.check_rate_limit(key) for _ in range(3)))
        assert not any(i.degraded for i in infos)
        assert sorted(i.remaining for i in infos) == [1, 2, 3]
        assert limiter.breaker.consecutive_failures == 0


async def test_one_warning_per_interval_and_password_masked(
    make: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://app:hunter2@127.0.0.1:{free_port()}/0"
    limiter = await make(url, breaker_failure_threshold=1000, warning_interval=0.5)
    with caplog.at_level(logging.WARNING, logger="voice_infra_redis"):
        for _ in range(50):
            assert (await limiter.check_rate_limit("w")).degraded
        first = [r for r in caplog.records if r.name == "voice_infra_redis"]
        assert len(first) == 1, [r.getMessage() for r in first]
        await asyncio.sleep(0.55)
        await limiter.check_rate_limit("w")
        await limiter.check_rate_limit("w")
    records = [r for r in caplog.records if r.name == "voice_infra_redis"]
    assert len(records) == 2
    assert "50 similar message(s) suppressed" not in records[0].getMessage()
    assert "suppressed" in records[1].getMessage()
    text = "\n".join(r.getMessage() for r in records)
    assert "hunter2" not in text and "app:**********@127.0.0.1" in text
    assert "failing open" in text


async def test_password_auth(tmp_path: Path, make: Callable[..., Any]) -> None:
    server = RedisServer(tmp_path / "auth", extra_args=["--requirepass", "s3cr:t/pw"]).start()
    try:
        good = await make(f"redis://:s3cr%3At%2Fpw@127.0.0.1:{server.port}/2")
        assert not (await good.check_rate_limit("a")).degraded
        check = aioredis.Redis(port=server.port, password="s3cr:t/pw", db=2)
        assert await check.exists("vi:{a}:60s")  # database 2 selected
        await check.aclose()
        bad = await make(f"redis://:wrong@127.0.0.1:{server.port}/0", fail_mode="raise")
        with pytest.raises(vi.RateLimiterUnavailableError, match=r"WRONGPASS|invalid"):
            await bad.check_rate_limit("a")
    finally:
        server.stop()


async def test_tls(tmp_path: Path, make: Callable[..., Any]) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    server = RedisServer(tmp_path / "tls", tls=make_self_signed_certificate(tmp_path)).start()
    try:
        limiter = await make(server.url, "2/minute", fail_mode="raise")
        assert [await limiter.is_allowed("t") for _ in range(3)] == [True, True, False]
        untrusted = await make(server.url.split("?")[0], fail_mode="raise")
        with pytest.raises(vi.RateLimiterUnavailableError, match="certificate"):
            await untrusted.check_rate_limit("t")
    finally:
        server.stop()
