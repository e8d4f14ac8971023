"""Redis Cluster: three masters started by the fixture; identities spread, keys per slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisCluster3, RedisServer

pytestmark = pytest.mark.asyncio


OpenLimiter = Callable[..., Awaitable[RedisRateLimiter]]


@pytest.fixture
def make(open_redis_limiter: OpenLimiter, cluster: RedisCluster3, key_prefix: str) -> OpenLimiter:
    def build(*policies: str, **options: Any) -> Awaitable[RedisRateLimiter]:
        return open_redis_limiter(
            url=cluster.url, cluster=True, policies=list(policies), key_prefix=key_prefix,
            **options,
        )  # fmt: skip

    return build


@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
async def test_identities_spread_over_nodes(
    make: Callable[..., Any], cluster: RedisCluster3, key_prefix: str, algorithm: str
) -> None:
    limiter = await make("2/minute", "10/hour", algorithm=algorithm)
    identities = [f"user:{i}" for i in range(120)]
    for identity in identities:
        results = [await limiter.check_rate_limit(identity) for _ in range(3)]
        assert [r.allowed for r in results] == [True, True, False]
        assert not any(r.degraded for r in results)
    # Every node holds some identities, and one identity's keys share one slot.
    per_node = []
    for server in cluster.servers:
        keys = server.cli("--scan", "--pattern", f"{key_prefix}:*").split()
        per_node.append(len(keys))
    assert sum(per_node) == 2 * len(identities)
    assert all(count > 0 for count in per_node), per_node
    node = cluster.servers[0]
    for identity in identities[:10]:
        slots = {node.cli("CLUSTER", "KEYSLOT", key) for key in limiter.redis_keys(identity)}
        assert len(slots) == 1
    await limiter.clear_user_limit("user:7")
    assert await limiter.get_remaining_requests("user:7") == 2


async def test_script_cache_flushed_on_every_node(
    make: Callable[..., Any], cluster: RedisCluster3
) -> None:
    limiter = await make("5/minute")
    for i in range(30):
        await limiter.check_rate_limit(f"f{i}")
    for server in cluster.servers:
        server.cli("SCRIPT", "FLUSH")
    infos = [await limiter.check_rate_limit(f"f{i}") for i in range(30)]
    assert all(not i.degraded and i.remaining == 3 for i in infos)


async def test_a_killed_node_costs_bounded_time_and_the_cluster_recovers(
    open_redis_limiter: OpenLimiter, tmp_path: Path, key_prefix: str
) -> None:
    """One master of a (replica-less) cluster killed mid-run: checks of identities on it
    get the fail-mode answer within (retries + 1) x (connect + reply timeouts); once the
    node is back, decisions come from Redis again."""
    cluster = RedisCluster3(tmp_path / "cluster").start()
    try:
        limiter = await open_redis_limiter(
            url=cluster.url, cluster=True, policies=["5/minute"], key_prefix=key_prefix,
            fail_mode="closed", socket_timeout=0.2, socket_connect_timeout=0.2, retries=1,
            breaker_failure_threshold=100, breaker_cooldown=0.2,
        )  # fmt: skip
        identities = [f"user:{i}" for i in range(60)]
        for identity in identities:
            assert not (await limiter.check_rate_limit(identity)).degraded
        victim = cluster.servers[2]
        keys_on_victim = set(victim.cli("--scan", "--pattern", f"{key_prefix}:*").split())
        on_victim = [i for i in identities if limiter.redis_keys(i)[0] in keys_on_victim]
        assert on_victim, "no identity landed on the node to kill"

        victim.kill()
        bound = (1 + 1) * (0.2 + 0.2) + 0.3  # (retries + 1) x (connect + reply) + slack
        for identity in on_victim[:3]:
            started = time.perf_counter()
            info = await limiter.check_rate_limit(identity)
            elapsed = time.perf_counter() - started
            assert info.degraded and not info.allowed
            assert elapsed < bound, f"{elapsed:.2f} s for a check on the dead node"

        # Back on its port with its cluster config: the cluster heals by itself.
        revived = RedisServer(victim.directory, victim.port, extra_args=victim.extra_args)
        cluster.servers[2] = revived.start()
        deadline = time.monotonic() + 30
        while (info := await limiter.check_rate_limit(on_victim[0])).degraded:
            assert time.monotonic() < deadline, "decisions never came back from Redis"
            await asyncio.sleep(0.1)
        assert info.allowed  # the revived node lost its data (no persistence): a fresh count
        after = [await limiter.check_rate_limit(identity) for identity in identities]
        assert not any(info.degraded for info in after)
    finally:
        cluster.stop()


@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
async def test_a_burst_beyond_the_pool_is_decided_by_redis(
    make: Callable[..., Any], algorithm: str
) -> None:
    """redis-py's cluster pools raise MaxConnectionsError rather than wait: 1,000
    concurrent checks over 4 connections must queue, not fail open."""
    # Generous timeouts: the claim is about queueing, not latency on a loaded machine.
    limiter = await make(
        "100/minute", algorithm=algorithm, pool_size=4, breaker_failure_threshold=1,
        pool_timeout=10, socket_connect_timeout=5, socket_timeout=5,
    )  # fmt: skip
    assert not (await limiter.check_rate_limit("warm-up")).degraded  # topology loaded
    infos = await asyncio.gather(*(limiter.check_rate_limit("burst") for _ in range(1000)))
    assert sum(info.degraded for info in infos) == 0
    assert sum(info.allowed for info in infos) == 100
    assert limiter.breaker.trips == 0


async def test_a_queue_timeout_is_local_overload_not_a_redis_failure(
    make: Callable[..., Any],
) -> None:
    """With one connection and a 1 ms pool_timeout most of a burst cannot get a
    connection in time: those checks get the fail-mode answer, and the breaker (which
    would open on one failure) hears nothing of it; Redis answered every check it got."""
    limiter = await make(
        "100/minute", pool_size=1, pool_timeout=0.001, breaker_failure_threshold=1,
        fail_mode="closed",
    )  # fmt: skip
    assert not (await limiter.check_rate_limit("warm-up")).degraded
    infos = await asyncio.gather(*(limiter.check_rate_limit("queue") for _ in range(300)))
    overloaded = [info for info in infos if info.degraded]
    assert overloaded and all(not info.allowed for info in overloaded)
    decided = [info for info in infos if not info.degraded]
    assert decided and all(info.allowed for info in decided)  # fewer than the limit
    assert limiter.breaker.consecutive_failures == 0 and limiter.breaker.trips == 0
    assert await limiter.get_remaining_requests("queue") == 100 - len(decided)


async def test_a_burst_on_a_cold_client_is_decided_by_redis(
    open_redis_limiter: OpenLimiter, cluster: RedisCluster3, key_prefix: str
) -> None:
    """The first commands of a new cluster client, all at once: the topology is
    discovered once, and every check reaches Redis (redis-py 8.1 let concurrent discovery
    hand out connections being reset: AttributeError or 'Connection closed by server')."""
    for attempt in range(4):  # a race: several fresh clients
        limiter = await open_redis_limiter(
            url=cluster.url, cluster=True, policies=["1000/minute"], fail_mode="raise",
            key_prefix=f"{key_prefix}{attempt}", socket_timeout=5, socket_connect_timeout=5,
        )  # fmt: skip
        results = await asyncio.gather(
            *(limiter.check_rate_limit(f"cold{i}") for i in range(200)), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
