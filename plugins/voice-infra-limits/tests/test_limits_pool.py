"""Many concurrent checks in one process: the client's own connection pool is never an
outage. Checks beyond ``pool_size`` queue for a slot; they are decided by the store, not
by ``fail_mode``, and never counted toward the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from voice_infra_limits.backend import LimitsRateLimiter
from voice_infra_redis.testing import RedisServer

Open = Callable[..., Coroutine[Any, Any, LimitsRateLimiter]]
STRATEGIES = ["moving-window", "fixed-window", "sliding-window-counter"]


async def _burst(limiter: LimitsRateLimiter, key: str, n: int) -> list[Any]:
    return await asyncio.gather(*(limiter.check_rate_limit(key) for _ in range(n)))


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_thousand_concurrent_checks_allow_exactly_the_limit(
    open_limits_limiter: Open, redis_server: RedisServer, key_prefix: str, strategy: str
) -> None:
    # timeout 5 s: this test is about the pool, not about a CPU-starved event loop (1,000
    # checks take about 0.6 s here; see docs/limits.md for what saturation does).
    limiter = await open_limits_limiter(
        storage_uri=redis_server.url, strategy=strategy, policies=["100/minute"],
        key_prefix=key_prefix, timeout=5.0, breaker_failure_threshold=1,
    )  # fmt: skip
    infos = await _burst(limiter, "burst", 1000)
    assert sum(info.degraded for info in infos) == 0
    assert sum(info.allowed for info in infos) == 100
    assert limiter.breaker.trips == 0 and limiter.breaker.state == "closed"
    # The pool stayed bounded: at most pool_size (100) connections of ours on the server.
    clients = redis_server.cli("CLIENT", "LIST").splitlines()
    assert len(clients) <= 100 + 1  # + redis-cli's own


@pytest.mark.asyncio
async def test_a_pool_smaller_than_the_burst_never_opens_the_breaker(
    open_limits_limiter: Open, redis_server: RedisServer, key_prefix: str
) -> None:
    """storage_options' max_connections bounds the slots too: 300 checks share two
    connections, and a breaker that opens on the first failure stays closed."""
    limiter = await open_limits_limiter(
        storage_uri=redis_server.url, policies=["100/minute"], key_prefix=key_prefix,
        storage_options={"max_connections": 2}, timeout=5.0, breaker_failure_threshold=1,
    )  # fmt: skip
    infos = await _burst(limiter, "small-pool", 300)
    assert sum(info.degraded for info in infos) == 0
    assert sum(info.allowed for info in infos) == 100
    assert limiter.breaker.trips == 0
    await limiter.clear_user_limit("small-pool")
    assert await limiter.get_remaining_requests("small-pool") == 100


@pytest.mark.asyncio
async def test_checks_queued_behind_a_hung_store_are_not_store_failures(
    open_limits_limiter: Open, own_redis_server: RedisServer
) -> None:
    """One slot, a paused server, 40 concurrent checks: all get the fail-mode answer
    within the timeout, but only the checks that reached the store count toward the
    breaker (the rest timed out in the queue: local overload)."""
    limiter = await open_limits_limiter(
        storage_uri=own_redis_server.url, fail_mode="closed", timeout=0.5,
        storage_options={"socket_timeout": 30, "max_connections": 1},
        breaker_failure_threshold=20,
    )  # fmt: skip
    assert not (await limiter.check_rate_limit("hung")).degraded  # connection made
    own_redis_server.pause()
    try:
        started = time.monotonic()
        infos = await _burst(limiter, "hung", 40)
        elapsed = time.monotonic() - started
    finally:
        own_redis_server.resume()
    assert all(info.degraded and not info.allowed for info in infos)
    assert elapsed < 0.5 + 0.5
    # The slot holder failed; the queued checks did not count. (One that got the slot
    # just before its own deadline reached the hung store and counts: 1 or 2 measured
    # on a quiet machine; before the fix all 40 counted.)
    assert 1 <= limiter.breaker.consecutive_failures <= 10, limiter.breaker.consecutive_failures
    assert limiter.breaker.trips == 0
    assert not (await limiter.check_rate_limit("hung")).degraded  # back, no breaker in the way


def test_the_pool_limit_error_is_classified_as_local() -> None:
    """Should a driver's pool still refuse (a pool shared outside the limiter), its error
    is not a store failure; a refused connection is."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import MaxConnectionsError
    from voice_infra_limits.backend import _is_local

    assert _is_local(MaxConnectionsError("Too many connections"))
    assert not _is_local(RedisConnectionError("Connection refused"))
    assert not _is_local(TimeoutError())
