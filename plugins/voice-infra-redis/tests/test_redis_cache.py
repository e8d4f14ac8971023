"""The ``redis`` cache on real redis-server processes: the shared CacheContract over TCP,
a unix socket, Redis Cluster and Sentinel; the key layout and millisecond TTLs as Redis
stores them; a dead or hung Redis within the timeouts; bursts beyond the pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from voice_infra_redis.cache import RedisCache
from voice_infra_redis.testing import RedisCluster3, RedisSentinel1, RedisServer, free_port

import voice_infra as vi
from voice_infra.testing import CacheContract, opened_backends

TIMEOUT = 0.2  # socket_timeout and socket_connect_timeout of the fault tests
# The contract and the bursts are about behaviour on a healthy server, not latency: a
# loaded CI machine may take longer than the default timeouts to schedule hundreds of tasks.
GENEROUS = {"socket_timeout": 5, "socket_connect_timeout": 5, "pool_timeout": 10}


def _factory(url: str, **fixed: Any) -> Callable[..., vi.CacheBackend]:
    def build(**options: Any) -> vi.CacheBackend:
        return vi.create_cache(
            vi.Settings.from_keywords(cache={"backend": "redis", "url": url, **fixed, **options})
        )

    return build


class TestRedisCacheContract(CacheContract):
    @pytest.fixture
    def cache_factory(self, redis_server: RedisServer) -> Callable[..., vi.CacheBackend]:
        return _factory(redis_server.url, **GENEROUS)


class TestRedisCacheUnixSocketContract(CacheContract):
    @pytest.fixture
    def cache_factory(self, redis_server: RedisServer) -> Callable[..., vi.CacheBackend]:
        return _factory(f"unix://{redis_server.unix_socket}?db=2", **GENEROUS)


class TestRedisClusterCacheContract(CacheContract):
    @pytest.fixture
    def cache_factory(self, cluster: RedisCluster3) -> Callable[..., vi.CacheBackend]:
        return _factory(cluster.url, cluster=True, **GENEROUS)


class TestRedisSentinelCacheContract(CacheContract):
    @pytest.fixture
    def cache_factory(self, sentinel: RedisSentinel1) -> Callable[..., vi.CacheBackend]:
        return _factory(sentinel.url, **GENEROUS)


OpenCache = Callable[..., Awaitable[RedisCache]]


@pytest_asyncio.fixture
async def open_cache(key_prefix: str) -> AsyncIterator[OpenCache]:
    """``await open_cache(url, **cache_options)``: a ``redis`` cache with the test's own
    key prefix, opened; closed after the test."""

    def build(url: str, **options: Any) -> RedisCache:
        cache = _factory(url, key_prefix=key_prefix)(**options)
        assert isinstance(cache, RedisCache)
        return cache

    async with opened_backends(build) as open_backend:
        yield open_backend


def test_capabilities_and_registration(redis_server: RedisServer) -> None:
    cache = _factory(redis_server.url)()
    assert isinstance(cache, RedisCache) and cache.backend_name == "redis"
    assert cache.capabilities == {"distributed", "persistent"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://x"}, "unsupported Redis URL scheme"),
        ({"cluster": True, "url": "redis://127.0.0.1:6379/3"}, "only database 0"),
        ({"key_prefix": "a b"}, "key_prefix"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"algorithm": "sliding_log"}, "unknown key"),  # a rate-limiter option
    ],
)
def test_invalid_settings_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(vi.ConfigError, match=message):
        _factory("redis://127.0.0.1:6379/0")(**options)


def test_the_password_of_the_url_is_never_shown() -> None:
    cache = _factory("redis://user:s3cret@127.0.0.1:6379/0")()
    assert "s3cret" not in repr(cache.settings) and "s3cret" not in cache.server


@pytest.mark.asyncio
async def test_key_layout_and_millisecond_ttl_in_redis(
    open_cache: OpenCache, redis_server: RedisServer, key_prefix: str
) -> None:
    cache = await open_cache(redis_server.url)
    await cache.set("plain", b"1", 0.2)
    await cache.set("a}b", b"2", 60)
    await cache.set("#x", b"3", 3600)
    await cache.set("tiny", b"4", 0.0001)  # rounded up to 1 ms, never to 0 (no expiry)
    await asyncio.sleep(0.01)
    assert await cache.get("tiny") is None
    keys = sorted(redis_server.cli("--scan", "--pattern", f"{key_prefix}:*").split())
    assert keys == sorted(f"{key_prefix}:{{{tag}}}" for tag in ("plain", "#a%7Db", "##x"))
    assert 0 < int(redis_server.cli("PTTL", f"{key_prefix}:{{plain}}")) <= 200
    pttl = int(redis_server.cli("PTTL", f"{key_prefix}:{{##x}}"))
    assert 3_599_000 < pttl <= 3_600_000
    assert redis_server.cli("GET", f"{key_prefix}:{{##x}}") == "3"


@pytest.mark.asyncio
async def test_a_large_value_round_trips(open_cache: OpenCache, redis_server: RedisServer) -> None:
    cache = await open_cache(redis_server.url)
    value = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB, the default max_value_size
    await cache.set("large", value, 60)
    assert await cache.get("large") == value


@pytest.mark.asyncio
async def test_keys_with_braces_spread_over_the_cluster(
    open_cache: OpenCache, cluster: RedisCluster3, key_prefix: str
) -> None:
    """A cache key's own braces do not pick the slot (the whole key is the hash tag): keys
    that share '{voice}' still land on every master."""
    cache = await open_cache(cluster.url, cluster=True, **GENEROUS)
    names = [f"tts:{{voice}}:{i}" for i in range(60)]
    await asyncio.gather(*(cache.set(name, name.encode(), 60) for name in names))
    counts = [
        len(server.cli("--scan", "--pattern", f"{key_prefix}:*").split())
        for server in cluster.servers
    ]
    assert sum(counts) == 60 and all(count > 0 for count in counts), counts
    assert await asyncio.gather(*(cache.get(n) for n in names)) == [n.encode() for n in names]


@pytest.mark.asyncio
async def test_a_burst_beyond_the_pool_queues(
    open_cache: OpenCache, cluster: RedisCluster3
) -> None:
    """redis-py's cluster pools raise MaxConnectionsError rather than wait: 500 concurrent
    operations over 2 connections per node must queue, not fail."""
    cache = await open_cache(cluster.url, cluster=True, pool_size=2, **GENEROUS)
    await asyncio.gather(*(cache.set(f"b{i}", b"%d" % i, 60) for i in range(500)))
    got = await asyncio.gather(*(cache.get(f"b{i}") for i in range(500)))
    assert got == [b"%d" % i for i in range(500)]


@pytest.mark.asyncio
async def test_a_dead_redis_is_unavailable_within_the_timeout(open_cache: OpenCache) -> None:
    cache = await open_cache(
        f"redis://127.0.0.1:{free_port()}/0",
        socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
    )  # fmt: skip
    for operation in (cache.get("k"), cache.set("k", b"v"), cache.delete("k")):
        started = time.perf_counter()
        with pytest.raises(
            vi.CacheUnavailableError, match=r"could not (get|set|delete) 'k'"
        ) as caught:
            await operation
        assert time.perf_counter() - started < TIMEOUT + 0.15
        assert isinstance(caught.value.__cause__, RedisConnectionError)
        assert caught.value.retryable and isinstance(caught.value, vi.BackendUnavailableError)


@pytest.mark.asyncio
async def test_killed_and_restarted_redis(
    open_cache: OpenCache, own_redis_server: RedisServer
) -> None:
    cache = await open_cache(
        own_redis_server.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
    )
    await cache.set("k", b"v", 60)
    own_redis_server.kill()
    started = time.perf_counter()
    with pytest.raises(vi.CacheUnavailableError):
        await cache.get("k")
    assert time.perf_counter() - started < 2 * TIMEOUT + 0.15
    restarted = RedisServer(own_redis_server.directory, own_redis_server.port).start()
    try:
        assert await cache.get("k") is None  # a fresh, empty server: a miss, not an error
        await cache.set("k", b"again", 60)
        assert await cache.get("k") == b"again"
    finally:
        restarted.stop()


@pytest.mark.asyncio
async def test_a_hung_redis_is_unavailable_within_the_timeout(
    open_cache: OpenCache, own_redis_server: RedisServer
) -> None:
    cache = await open_cache(
        own_redis_server.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
    )
    await cache.set("h", b"v", 60)
    own_redis_server.pause()  # accepts bytes, answers nothing
    try:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(cache.get(f"h{i}") for i in range(20)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
        assert all(isinstance(result, vi.CacheUnavailableError) for result in results), results
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.15
    finally:
        own_redis_server.resume()
    assert await cache.get("h") == b"v"


@pytest.mark.asyncio
async def test_the_rate_limiter_and_the_cache_share_one_server(
    open_cache: OpenCache, redis_server: RedisServer, open_redis_limiter: Any
) -> None:
    """Same URL, default prefixes: neither sees the other's keys."""
    cache = await open_cache(redis_server.url)
    limiter = await open_redis_limiter(url=redis_server.url, policies=["1/minute"])
    await cache.set("user:1", b"cached", 60)
    assert (await limiter.check_rate_limit("user:1")).allowed
    assert not (await limiter.check_rate_limit("user:1")).allowed
    assert await cache.get("user:1") == b"cached"
