"""Exactness, sliding, all-or-nothing and key layout, checked against Redis' own data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.crc import key_slot
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisServer

pytestmark = pytest.mark.asyncio

ALGORITHMS = ["sliding_log", "sliding_window_counter"]


@pytest_asyncio.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client, to look at what the limiter stored."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


OpenLimiter = Callable[..., Awaitable[RedisRateLimiter]]


@pytest.fixture
def make(
    open_redis_limiter: OpenLimiter, redis_server: RedisServer, key_prefix: str
) -> OpenLimiter:
    def build(*policies: str, **options: Any) -> Awaitable[RedisRateLimiter]:
        return open_redis_limiter(
            url=redis_server.url, policies=list(policies), key_prefix=key_prefix, **options
        )

    return build


async def test_same_instant_hits_all_count_and_cost_counts_n(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str
) -> None:
    limiter = await make("1000/minute")
    results = await asyncio.gather(*(limiter.check_rate_limit("burst") for _ in range(50)))
    assert all(r.allowed for r in results)
    assert sorted(r.remaining for r in results) == list(range(950, 1000))
    key = f"{key_prefix}:{{burst}}:60s"
    assert await raw.zcard(key) == 50  # unique members: no two hits merged
    info = await limiter.check_rate_limit("burst", cost=7)
    assert info.remaining == 1000 - 57
    assert await raw.zcard(key) == 57


async def test_the_largest_logged_cost_is_one_short_script(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str
) -> None:
    """The sliding log writes a member per unit: a check takes at most MAX_LOGGED_COST
    units (a cost of millions held Redis for seconds, and every limiter on it failed
    open meanwhile); the largest one stays a short script, answered within the
    limiter's socket timeout, not a fail-open answer."""
    from voice_infra import InvalidCostError
    from voice_infra.ratelimit import MAX_LOGGED_COST

    limiter = await make("2147483647/day", fail_mode="raise")
    info = await limiter.check_rate_limit("big", MAX_LOGGED_COST)
    assert info.allowed and not info.degraded
    assert await raw.zcard(f"{key_prefix}:{{big}}:86400s") == MAX_LOGGED_COST
    with pytest.raises(InvalidCostError, match="may record"):
        await limiter.check_rate_limit("big", 3_000_000)
    assert await raw.zcard(f"{key_prefix}:{{big}}:86400s") == MAX_LOGGED_COST


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_denied_request_changes_no_policy(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str, algorithm: str
) -> None:
    limiter = await make("2/second", "5/minute", algorithm=algorithm)
    assert [await limiter.is_allowed("u") for _ in range(2)] == [True, True]
    denied = await limiter.check_rate_limit("u")
    assert not denied.allowed and denied.policy == "2/second"
    # The minute policy, which allowed, recorded nothing of the denied request.
    if algorithm == "sliding_log":
        assert await raw.zcard(f"{key_prefix}:{{u}}:1s") == 2
        assert await raw.zcard(f"{key_prefix}:{{u}}:60s") == 2
    else:
        assert await raw.hget(f"{key_prefix}:{{u}}:1s:swc", "c") == b"2"
        minute = await raw.hgetall(f"{key_prefix}:{{u}}:60s:swc")
        assert int(minute[b"c"]) + int(minute[b"p"]) == 2

    # Denied by the second policy: the first one is untouched too.
    other = await make("5/second", "2/minute", algorithm=algorithm)
    assert [await other.is_allowed("v") for _ in range(3)] == [True, True, False]
    if algorithm == "sliding_log":
        assert await raw.zcard(f"{key_prefix}:{{v}}:1s") == 2
    else:
        assert await raw.hget(f"{key_prefix}:{{v}}:1s:swc", "c") in (b"2", None)


async def test_window_slides_with_exact_times(make: Callable[..., Any]) -> None:
    """Capacity returns hit by hit; reset_at and retry_after match the log to a few ms."""
    limiter = await make("3/second")
    hits = []
    for _ in range(3):
        info = await limiter.check_rate_limit("slide")
        assert info.allowed
        hits.append(info.reset_at.timestamp() - 1.0)  # Redis' time of this hit
        await asyncio.sleep(0.2)
    before = time.time()
    denied = await limiter.check_rate_limit("slide")
    after = time.time()
    assert not denied.allowed
    assert denied.reset_at.timestamp() == pytest.approx(hits[2] + 1.0, abs=1e-5)
    # retry_after = first hit + window - now (Redis' now, between before and after).
    assert hits[0] + 1.0 - after - 0.005 <= denied.retry_after <= hits[0] + 1.0 - before + 0.005
    # The first hit leaves: exactly one slot returns, then the next one 0.2 s later.
    await asyncio.sleep(max(0.0, hits[0] + 1.0 - time.time() + 0.01))
    assert (await limiter.check_rate_limit("slide")).allowed
    before = time.time()
    again = await limiter.check_rate_limit("slide")
    after = time.time()
    assert not again.allowed
    assert hits[1] + 1.0 - after - 0.005 <= again.retry_after <= hits[1] + 1.0 - before + 0.005
    await asyncio.sleep(max(0.0, hits[1] + 1.0 - time.time() + 0.01))
    assert (await limiter.check_rate_limit("slide")).allowed


async def test_counter_window_alignment(make: Callable[..., Any]) -> None:
    """Counter windows start on multiples of the window: reset_at is a whole second."""
    limiter = await make("2/second", algorithm="sliding_window_counter")
    info = await limiter.check_rate_limit("aligned")
    assert info.reset_at.timestamp() == pytest.approx(round(info.reset_at.timestamp()), abs=1e-6)
    assert 1.0 < (info.reset_at - datetime.now(UTC)).total_seconds() <= 2.0 + 0.05


async def test_keys_layout_and_expiry(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str
) -> None:
    log = await make("1/second", "10/minute")
    counter = await make("1/second", "10/minute", algorithm="sliding_window_counter")
    await log.check_rate_limit("user:42")
    await counter.check_rate_limit("user:42")
    keys = sorted([k.decode() async for k in raw.scan_iter(match=f"{key_prefix}:*")])
    assert keys == [
        f"{key_prefix}:{{user:42}}:1s",
        f"{key_prefix}:{{user:42}}:1s:swc",
        f"{key_prefix}:{{user:42}}:60s",
        f"{key_prefix}:{{user:42}}:60s:swc",
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one identity, one slot
    assert 0 < await raw.pttl(f"{key_prefix}:{{user:42}}:60s") <= 60_000
    assert 60_000 < await raw.pttl(f"{key_prefix}:{{user:42}}:60s:swc") <= 120_000
    assert 0 < await raw.pttl(f"{key_prefix}:{{user:42}}:1s") <= 1_000
    await asyncio.sleep(2.1)  # idle identities leave nothing behind
    assert not await raw.exists(f"{key_prefix}:{{user:42}}:1s", f"{key_prefix}:{{user:42}}:1s:swc")


async def test_clear_removes_every_key_of_the_identity(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str
) -> None:
    log = await make("5/minute", "50/hour")
    counter = await make("5/minute", "50/hour", algorithm="sliding_window_counter")
    for limiter in (log, counter):
        await limiter.check_rate_limit("gone")
        await limiter.check_rate_limit("stays")
    await log.clear_user_limit("gone")  # both algorithms' keys go
    left = sorted([k.decode() async for k in raw.scan_iter(match=f"{key_prefix}:*")])
    assert left and all("{stays}" in key for key in left)
    assert await counter.get_remaining_requests("gone") == 5


@pytest.mark.parametrize("identity", ["a}b", "}x", "{y}", "ü/ñ:1"])
async def test_awkward_identities_keep_one_slot(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str, identity: str
) -> None:
    limiter = await make("1/minute", "5/hour")
    assert await limiter.is_allowed(identity)
    assert not await limiter.is_allowed(identity)
    keys = limiter.redis_keys(identity)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert await raw.exists(*keys) == len(keys)
    await limiter.clear_user_limit(identity)
    assert not await raw.exists(*keys)
    assert await limiter.is_allowed(identity + "-other")


async def test_application_clock_skew_does_not_matter(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions use Redis' clock: a process whose clock is an hour off agrees."""
    limiter = await make("2/minute")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    info = await limiter.check_rate_limit("skewed")
    monkeypatch.setattr(time, "time", real)
    assert not info.degraded
    assert (info.reset_at - datetime.now(UTC)).total_seconds() == pytest.approx(60, abs=1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_large_costs(
    make: Callable[..., Any], raw: aioredis.Redis, key_prefix: str, algorithm: str
) -> None:
    """Costs above the script's ZADD chunk size (500) are recorded in full."""
    limiter = await make("3000/hour", algorithm=algorithm)  # no window edge in the test
    first = await limiter.check_rate_limit("big", cost=1234)
    assert first.allowed and first.remaining == 3000 - 1234
    assert not (await limiter.check_rate_limit("big", cost=1767)).allowed
    last = await limiter.check_rate_limit("big", cost=1766)
    assert last.allowed and last.remaining == 0
    if algorithm == "sliding_log":
        assert await raw.zcard(f"{key_prefix}:{{big}}:3600s") == 3000


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_thousand_concurrent_checks_allow_exactly_the_limit(
    make: Callable[..., Any], algorithm: str
) -> None:
    """Single-node mode pipelines every check on one connection: no pool to exhaust."""
    # Generous timeouts: the claim is about queueing on a healthy server, and a loaded CI
    # machine can take longer than the default 0.25 s to schedule 1,000 tasks (a timeout
    # there is the documented fail-open trade-off, not what this test is about).
    limiter = await make(
        "100/minute", algorithm=algorithm, breaker_failure_threshold=1,
        socket_connect_timeout=5, socket_timeout=5,
    )  # fmt: skip
    infos = await asyncio.gather(*(limiter.check_rate_limit("burst") for _ in range(1000)))
    assert sum(info.degraded for info in infos) == 0
    assert sum(info.allowed for info in infos) == 100
    assert limiter.breaker.trips == 0
