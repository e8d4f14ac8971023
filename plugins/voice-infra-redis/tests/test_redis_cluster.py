"""Redis Cluster: three masters started by the fixture; identities spread, keys per slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisCluster3, redis_server_available

import voice_infra as vi

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    if not redis_server_available():  # pragma: no cover - depends on the machine
        pytest.skip("redis-server/redis-cli are not installed")
    started = RedisCluster3(tmp_path_factory.mktemp("redis-cluster")).start()
    yield started
    started.stop()


@pytest_asyncio.fixture
async def make(cluster: RedisCluster3, key_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    opened: list[vi.RateLimiter] = []

    async def build(*policies: str, **options: Any) -> RedisRateLimiter:
        limiter = vi.create_rate_limiter(
            vi.Settings(
                rate_limit={"backend": "redis", "url": cluster.url, "cluster": True,
                            "policies": list(policies), "key_prefix": key_prefix, **options}
            )
        )  # fmt: skip
        await limiter.__aenter__()
        opened.append(limiter)
        assert isinstance(limiter, RedisRateLimiter)
        return limiter

    yield build
    for limiter in opened:
        await limiter.aclose()


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
