"""What the adapter guarantees beyond the contract, and the limits it documents, measured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from voice_infra_limits.backend import LimitsRateLimiter
from voice_infra_redis.testing import RedisServer

STRATEGIES = ["moving-window", "fixed-window", "sliding-window-counter"]
Open = Callable[..., Coroutine[Any, Any, LimitsRateLimiter]]


@pytest.fixture(params=["memory", "redis"])
def storage_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


async def _remaining(limiter: LimitsRateLimiter, index: int, key: str) -> int:
    """One policy's remaining count, as limits itself reports it."""
    stats = await limiter.strategy.get_window_stats(limiter.items[index], key)
    return stats.remaining


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.asyncio
async def test_denied_requests_consume_nothing_in_sequence(
    open_limits_limiter: Open, storage_uri: str, strategy: str, key_prefix: str
) -> None:
    # The contract's version of this test needs "exact" (it is skipped here): this one
    # checks the part the adapter guarantees, one decision at a time.
    limiter = await open_limits_limiter(
        storage_uri=storage_uri, strategy=strategy, key_prefix=key_prefix,
        policies=["2/second", "5/hour"],
    )  # fmt: skip
    decisions = [await limiter.check_rate_limit("user:1") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert decisions[-1].policy == "2/second"
    assert await _remaining(limiter, 1, "user:1") == 3  # the hour saw the 2 allowed only
    assert await _remaining(limiter, 0, "user:1") == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.asyncio
async def test_concurrent_multi_policy_checks_never_over_admit(
    open_limits_limiter: Open, storage_uri: str, strategy: str, key_prefix: str
) -> None:
    limiter = await open_limits_limiter(
        storage_uri=storage_uri, strategy=strategy, key_prefix=key_prefix,
        policies=["10/minute", "20/hour"],
    )  # fmt: skip
    results = await asyncio.gather(*(limiter.check_rate_limit("user:2") for _ in range(50)))
    assert sum(r.allowed for r in results) == 10
    denied = [r for r in results if not r.allowed]
    # On Redis every check reads before any hits: the 40 denials lost the race at the hit.
    assert all(r.policy == "10/minute" and r.remaining == 0 for r in denied)
    assert all(0 < r.retry_after <= 60 * 2 for r in denied)
    # The tightest policy is hit first, so the 40 requests that lost the race for it spent
    # nothing in the hour policy.
    assert await _remaining(limiter, 1, "user:2") == 10


@pytest.mark.asyncio
async def test_moving_window_retry_after_for_a_cost_is_a_lower_bound(
    open_limits_limiter: Open, storage_uri: str, key_prefix: str
) -> None:
    # limits reports when the oldest hit leaves the window, not when `cost` hits have:
    # documented in docs/limits.md ("retry_after precision").
    limiter = await open_limits_limiter(
        storage_uri=storage_uri, strategy="moving-window", key_prefix=key_prefix,
        policies=["3/second"],
    )  # fmt: skip
    first = time.monotonic()
    await limiter.check_rate_limit("user:3")
    await asyncio.sleep(0.3)
    assert (await limiter.check_rate_limit("user:3", cost=2)).allowed
    denied = await limiter.check_rate_limit("user:3", cost=2)
    assert not denied.allowed
    oldest_leaves = first + 1.0 - time.monotonic()
    assert abs(denied.retry_after - oldest_leaves) < 0.05  # when ONE slot returns
    await asyncio.sleep(denied.retry_after + 0.05)
    assert not (await limiter.check_rate_limit("user:3", cost=2)).allowed  # still too early
    assert (await limiter.check_rate_limit("user:3", cost=1)).allowed


@pytest.mark.asyncio
async def test_fixed_window_on_redis_retry_after_is_whole_second_precise(
    open_limits_limiter: Open, redis_server: RedisServer, key_prefix: str
) -> None:
    # limits reads the counter's end with Redis TTL (seconds, rounded): up to 0.5 s off.
    limiter = await open_limits_limiter(
        storage_uri=redis_server.url, strategy="fixed-window", key_prefix=key_prefix,
        policies=["1/second"],
    )  # fmt: skip
    errors = []
    for attempt in range(3):
        key = f"user:4:{attempt}"
        started = time.monotonic()
        assert (await limiter.check_rate_limit(key)).allowed
        await asyncio.sleep(0.2 + 0.2 * attempt)
        denied = await limiter.check_rate_limit(key)
        assert not denied.allowed
        true_wait = started + 1.0 - time.monotonic()
        errors.append(abs(denied.retry_after - true_wait))
    assert max(errors) <= 0.55
    assert max(errors) > 0.05  # coarser than the memory storage's (which is exact)


@pytest.mark.asyncio
async def test_memory_fixed_window_retry_after_is_exact(
    open_limits_limiter: Open, key_prefix: str
) -> None:
    limiter = await open_limits_limiter(
        storage_uri="memory://", strategy="fixed-window", key_prefix=key_prefix,
        policies=["1/second"],
    )  # fmt: skip
    started = time.monotonic()
    assert (await limiter.check_rate_limit("user:5")).allowed
    await asyncio.sleep(0.3)
    denied = await limiter.check_rate_limit("user:5")
    assert abs(denied.retry_after - (started + 1.0 - time.monotonic())) < 0.02


@pytest.mark.asyncio
async def test_fixed_window_admits_a_burst_across_a_boundary(
    open_limits_limiter: Open, key_prefix: str
) -> None:
    # What a fixed window is: up to twice the limit within one window length, at a
    # boundary (the sliding strategies would refuse the second burst).
    limiter = await open_limits_limiter(
        storage_uri="memory://", strategy="fixed-window", key_prefix=key_prefix,
        policies=["3/second"],
    )  # fmt: skip
    assert (await limiter.check_rate_limit("user:6")).allowed
    await asyncio.sleep(0.8)
    assert all([(await limiter.check_rate_limit("user:6")).allowed for _ in range(2)])
    await asyncio.sleep(0.25)  # the window started by the first hit has ended
    second_burst = [(await limiter.check_rate_limit("user:6")).allowed for _ in range(3)]
    assert second_burst == [True, True, True]  # 5 allowed within ~0.25 s + 2 before


@pytest.mark.asyncio
async def test_clear_removes_every_strategys_keys(
    open_limits_limiter: Open, redis_server: RedisServer, key_prefix: str
) -> None:
    options = {"storage_uri": redis_server.url, "key_prefix": key_prefix, "policies": ["2/minute"]}
    limiters = [await open_limits_limiter(strategy=s, **options) for s in STRATEGIES]
    for limiter in limiters:  # a strategy switch on a shared store: no key clashes
        decision = await limiter.check_rate_limit("user:7")
        assert decision.allowed and not decision.degraded and decision.remaining == 1
    keys = redis_server.cli("--scan", "--pattern", f"*{key_prefix}*").split()
    assert {key.split("/")[0] for key in keys} == {
        f"LIMITS:{key_prefix}:mw", f"LIMITS:{key_prefix}:fw", f"LIMITS:{{{key_prefix}:swc",
    }  # fmt: skip
    await limiters[0].clear_user_limit("user:7")
    assert redis_server.cli("--scan", "--pattern", f"*{key_prefix}*") == ""
    for limiter in limiters:
        assert await limiter.get_remaining_requests("user:7") == 2


@pytest.mark.asyncio
async def test_keys_carry_the_prefix_and_identity(
    open_limits_limiter: Open, redis_server: RedisServer, key_prefix: str
) -> None:
    limiter = await open_limits_limiter(
        storage_uri=redis_server.url, key_prefix=key_prefix, policies=["5/10 seconds"]
    )
    await limiter.check_rate_limit("user:8")
    keys = redis_server.cli("--scan", "--pattern", f"*{key_prefix}*").split()
    assert keys == [f"LIMITS:{key_prefix}:mw/user:8/5/10/second"]
    ttl = int(redis_server.cli("TTL", keys[0]))
    assert 0 < ttl <= 10  # the policy's window: idle identities leave nothing
