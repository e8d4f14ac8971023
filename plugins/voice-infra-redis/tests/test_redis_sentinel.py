"""Redis Sentinel: ``redis+sentinel://`` URLs, through redis-py's Sentinel-managed master.

A real master and a real sentinel (``redis-server --sentinel``) on free loopback ports;
the limiter finds the master by asking the sentinel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.settings import SentinelURL
from voice_infra_redis.testing import RedisSentinel1
from voice_infra_redis.transport import RedisPyTransport

import voice_infra as vi
from voice_infra.testing import RateLimiterContract

OpenLimiter = Callable[..., Awaitable[RedisRateLimiter]]


def _factory(url: str, **options: object) -> Callable[[Sequence[str]], vi.RateLimiter]:
    def build(policies: Sequence[str]) -> vi.RateLimiter:
        return vi.create_rate_limiter(
            vi.Settings(
                rate_limit={"backend": "redis", "url": url, "policies": policies, **options}
            )
        )

    return build


class TestRedisSentinelContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(
        self, sentinel: RedisSentinel1
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _factory(sentinel.url, algorithm="sliding_log")


class TestRedisSentinelWindowCounterContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(
        self, sentinel: RedisSentinel1
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _factory(sentinel.url, algorithm="sliding_window_counter")


@pytest.mark.asyncio
async def test_decisions_live_on_the_master_the_sentinel_names(
    open_redis_limiter: OpenLimiter, sentinel: RedisSentinel1, key_prefix: str
) -> None:
    limiter = await open_redis_limiter(
        url=sentinel.url, policies=["2/minute"], key_prefix=key_prefix
    )
    assert isinstance(limiter.transport, RedisPyTransport)
    assert [(await limiter.check_rate_limit("s")).allowed for _ in range(3)] == [
        True, True, False,
    ]  # fmt: skip
    keys = sentinel.master.cli("--scan", "--pattern", f"{key_prefix}:*").split()
    assert keys == limiter.redis_keys("s")
    sentinel.master.cli("SCRIPT", "FLUSH")  # NOSCRIPT: loaded again, transparently
    info = await limiter.check_rate_limit("t")
    assert info.allowed and not info.degraded
    await limiter.clear_user_limit("s")
    assert await limiter.get_remaining_requests("s") == 2
    assert sentinel.master.cli("--scan", "--pattern", f"{key_prefix}:{{s}}*") == ""


@pytest.mark.asyncio
async def test_a_burst_beyond_the_pool_queues(
    open_redis_limiter: OpenLimiter, sentinel: RedisSentinel1, key_prefix: str
) -> None:
    """pool_size bounds redis-py's pool in Sentinel mode as in cluster mode: a burst of
    1,000 checks over 4 connections is decided by Redis, none fails open."""
    limiter = await open_redis_limiter(
        url=sentinel.url, policies=["100/minute"], key_prefix=key_prefix, pool_size=4,
        breaker_failure_threshold=1, pool_timeout=10, socket_connect_timeout=5, socket_timeout=5,
    )  # fmt: skip
    infos = await asyncio.gather(*(limiter.check_rate_limit("burst") for _ in range(1000)))
    assert sum(info.degraded for info in infos) == 0
    assert sum(info.allowed for info in infos) == 100
    assert limiter.client.connection_pool.max_connections == 4


@pytest.mark.asyncio
async def test_an_unknown_service_name_gets_the_fail_mode_answer(
    open_redis_limiter: OpenLimiter, sentinel: RedisSentinel1, key_prefix: str
) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel.sentinel.port}/nosuchmaster"
    limiter = await open_redis_limiter(
        url=url, policies=["5/minute"], key_prefix=key_prefix, fail_mode="closed"
    )
    info = await limiter.check_rate_limit("x")
    assert info.degraded and not info.allowed
    raising = await open_redis_limiter(url=url, policies=["5/minute"], fail_mode="raise")
    with pytest.raises(vi.RateLimiterUnavailableError, match="nosuchmaster"):
        await raising.check_rate_limit("x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://127.0.0.1:26380/mymaster",
            ((("127.0.0.1", 26380),), "mymaster", 0, None, None, None, None),
        ),
        (
            "redis+sentinel://app:p%40ss@s1,s2:26400,[::1]:26401/mymaster/3",
            (
                (("s1", 26379), ("s2", 26400), ("::1", 26401)),
                "mymaster",
                3,
                "app",
                "p@ss",
                None,
                None,
            ),
        ),
        (
            "redis+sentinel://:pw@s1:1/m?db=2&sentinel_password=spw&sentinel_username=su",
            ((("s1", 1),), "m", 2, None, "pw", "su", "spw"),
        ),
    ],
)
def test_sentinel_url_forms(url: str, expected: tuple[Any, ...]) -> None:
    parsed = SentinelURL.parse(url)
    assert parsed is not None
    assert (
        parsed.sentinels, parsed.service_name, parsed.db, parsed.username, parsed.password,
        parsed.sentinel_username, parsed.sentinel_password,
    ) == expected  # fmt: skip
    assert SentinelURL.parse("redis://h:1/0") is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26379", "service name"),
        ("redis+sentinel://127.0.0.1:26379/", "service name"),
        ("redis+sentinel://127.0.0.1:26379/m/0/1", "service name"),
        ("redis+sentinel://127.0.0.1:26379/m/x", "database must be a number"),
        ("redis+sentinel://127.0.0.1:99999/m", "bad port"),
        ("redis+sentinel://h:1,:2/m", "no sentinel host"),
        ("redis+sentinel://h:0/m", "between 1 and 65535"),
        ("rediss+sentinel://h:1/m", "unsupported Redis URL scheme"),
    ],
)
def test_bad_sentinel_urls_are_config_errors(url: str, message: str) -> None:
    secret_url = url.replace("://", "://u:hunter2@", 1)
    with pytest.raises(vi.ConfigError, match="rate_limit") as caught:
        _factory(secret_url)(["5/minute"])
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_cluster_and_sentinel_exclude_each_other() -> None:
    with pytest.raises(vi.ConfigError, match="exclude each other"):
        _factory("redis+sentinel://h:1/m", cluster=True)(["5/minute"])
