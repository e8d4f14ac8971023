"""Layers around a real redis-server: deny_cache against INFO commandstats, and the
timeout and breaker layers while the server is frozen (SIGSTOP), killed and restarted."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import voice_infra as vi
from voice_infra.layers import iter_layers

redis_testing = pytest.importorskip("voice_infra_redis.testing")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    if not redis_testing.redis_server_available():  # pragma: no cover - machine-dependent
        pytest.skip("redis-server is not installed")
    server = redis_testing.RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def redis_limiter(server: Any, layers: list[Any], **options: Any) -> Any:
    section = {"backend": "redis", "url": server.url, "policies": "3/minute",
               "socket_timeout": 5, **options, "layers": layers}  # fmt: skip
    return vi.create_rate_limiter(vi.Settings(rate_limit=section))


def script_calls(server: Any) -> int:
    """Scripts Redis ran (EVALSHA and EVAL), from INFO commandstats."""
    stats = server.cli("INFO", "commandstats")
    return sum(int(n) for n in re.findall(r"cmdstat_eval(?:sha)?(?:_ro)?:calls=(\d+)", stats))


@pytest.mark.asyncio
async def test_deny_cache_same_decisions_fewer_redis_commands(redis: Any) -> None:
    trace = ["a", "b", "a", "a", "c", "a", "b", "a", "b", "b", "a", "c", "a", "b", "a"] * 2
    results = {}
    for label, layers in (("plain", []), ("cached", ["deny_cache"])):
        before = script_calls(redis)
        async with redis_limiter(redis, layers, key_prefix=label) as limiter:
            results[label] = [await limiter.check_rate_limit(key) for key in trace]
        results[label + "_calls"] = script_calls(redis) - before
    for cached, plain in zip(results["cached"], results["plain"], strict=True):
        assert (cached.allowed, cached.policy, cached.remaining, cached.limit) == (
            plain.allowed, plain.policy, plain.remaining, plain.limit,
        )  # fmt: skip
        assert cached.retry_after == pytest.approx(plain.retry_after, abs=1.0)
    assert results["plain_calls"] >= len(trace)
    # Three keys: three allowed checks and one denial each reach Redis, nothing else.
    assert results["cached_calls"] == 3 * 4


@pytest.mark.asyncio
async def test_frozen_killed_and_restarted_server_through_breaker_and_timeout(
    redis: Any,
) -> None:
    layers = [{"name": "breaker", "failure_threshold": 2, "cooldown": 0.5},
              {"name": "timeout", "seconds": 0.2}]  # fmt: skip
    # The limiter's own breaker is kept out of the way (threshold high): the layer's acts.
    async with redis_limiter(redis, layers, fail_mode="open",
                             breaker_failure_threshold=1000) as limiter:  # fmt: skip
        breaker = next(iter_layers(limiter))
        assert not (await limiter.check_rate_limit("k")).degraded
        redis.pause()
        try:
            for _ in range(2):  # each one waits for the timeout, then fails open
                started = time.monotonic()
                info = await limiter.check_rate_limit("k")
                assert info.degraded and info.allowed
                assert time.monotonic() - started < 1.0
            assert breaker.breaker.state == "open"
            started = time.monotonic()
            assert (await limiter.check_rate_limit("k")).degraded  # open: no wait at all
            assert time.monotonic() - started < 0.05
        finally:
            redis.resume()
        await asyncio.sleep(0.6)  # the cool-down: the next call is the probe
        assert not (await limiter.check_rate_limit("k")).degraded
        assert breaker.breaker.state == "closed"

        redis.kill()
        for _ in range(3):
            assert (await limiter.check_rate_limit("k")).degraded
        redis.start()  # the same port
        await asyncio.sleep(0.6)
        deadline = time.monotonic() + 5
        while (await limiter.check_rate_limit("k2")).degraded:
            assert time.monotonic() < deadline, "no recovery after the restart"
            await asyncio.sleep(0.1)
