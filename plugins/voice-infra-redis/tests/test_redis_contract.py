"""The shared RateLimiterContract, for both algorithms, over TCP and a unix socket."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from voice_infra_redis.testing import RedisServer

import voice_infra as vi
from voice_infra.testing import RateLimiterContract


def _factory(url: str, **options: object) -> Callable[[Sequence[str]], vi.RateLimiter]:
    def build(policies: Sequence[str]) -> vi.RateLimiter:
        return vi.create_rate_limiter(
            vi.Settings(
                rate_limit={"backend": "redis", "url": url, "policies": policies, **options}
            )
        )

    return build


class TestRedisSlidingLogContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(
        self, redis_server: RedisServer
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _factory(redis_server.url, algorithm="sliding_log")


class TestRedisWindowCounterContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(
        self, redis_server: RedisServer
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _factory(redis_server.url, algorithm="sliding_window_counter")


class TestRedisUnixSocketContract(RateLimiterContract):
    """The same suite through unix:// (only the plumbing differs)."""

    @pytest.fixture
    def rate_limiter_factory(
        self, redis_server: RedisServer
    ) -> Callable[[Sequence[str]], vi.RateLimiter]:
        return _factory(f"unix://{redis_server.unix_socket}?db=1")


def test_capabilities_follow_the_algorithm(redis_server: RedisServer) -> None:
    exact = _factory(redis_server.url)(["5/second"])
    counter = _factory(redis_server.url, algorithm="sliding_window_counter")(["5/second"])
    assert exact.capabilities == {"exact", "distributed", "persistent"}
    assert counter.capabilities == {"distributed", "persistent"}
    assert exact.backend_name == "redis"
