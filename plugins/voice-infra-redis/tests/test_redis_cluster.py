"""Redis Cluster: three masters started by the fixture; identities spread, keys per slot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisCluster3, redis_server_available

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    if not redis_server_available():  # pragma: no cover - depends on the machine
        pytest.skip("redis-server/redis-cli are not installed")
    started = RedisCluster3(tmp_path_factory.mktemp("redis-cluster")).start()
    yield started
    started.stop()


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
