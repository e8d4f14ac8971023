"""The limiter and the cache on uvloop's event loop, which uvicorn picks by default where
uvloop is installed: the RESP client takes any transport that implements asyncio's
interface (uvloop's do not subclass ``asyncio.Transport``). The folder's conftest makes
pytest-asyncio run them on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
import uvloop
from voice_infra_redis.testing import RedisServer

import voice_infra as vi
from voice_infra.testing import CacheContract, RateLimiterContract


def _limiters(url: str) -> Callable[[Sequence[str]], vi.RateLimiter]:
    def build(policies: Sequence[str]) -> vi.RateLimiter:
        return vi.create_rate_limiter(
            vi.Settings(rate_limit={"backend": "redis", "url": url, "policies": policies})
        )

    return build


class TestRedisLimiterOnUvloop(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(
        self, redis_server: RedisServer
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _limiters(redis_server.url)


class TestRedisUnixSocketLimiterOnUvloop(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(
        self, redis_server: RedisServer
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _limiters(f"unix://{redis_server.unix_socket}?db=3")


class TestRedisCacheOnUvloop(CacheContract):
    @pytest.fixture
    def cache_factory(self, redis_server: RedisServer) -> Callable[..., vi.CacheBackend]:
        def build(**options: object) -> vi.CacheBackend:
            return vi.create_cache(vi.Settings.from_keywords(
                cache={"backend": "redis", "url": redis_server.url, **options}))  # fmt: skip

        return build


@pytest.mark.asyncio
async def test_these_tests_run_on_uvloop(redis_server: RedisServer) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    limiter = _limiters(redis_server.url)(["2/minute"])
    async with limiter:
        decisions = [await limiter.check_rate_limit("uvloop-user") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert not any(d.degraded for d in decisions)  # answered by Redis, not the fail mode
