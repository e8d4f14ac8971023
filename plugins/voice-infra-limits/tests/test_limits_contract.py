"""The shared RateLimiterContract for every strategy, on memory:// and on a real Redis."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from voice_infra_redis.testing import RedisServer

import voice_infra as vi
from voice_infra.testing import RateLimiterContract

Factory = Callable[[Sequence[str]], vi.RateLimiter]


def _factory(uri: str, strategy: str, **options: object) -> Factory:
    def build(policies: Sequence[str]) -> vi.RateLimiter:
        return vi.create_rate_limiter(
            vi.Settings(
                rate_limit={
                    "backend": "limits", "storage_uri": uri, "strategy": strategy,
                    "policies": policies, **options,
                }
            )
        )  # fmt: skip

    return build


class TestMemoryMovingWindowContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self) -> Factory:
        return _factory("memory://", "moving-window")


class TestMemoryFixedWindowContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self) -> Factory:
        return _factory("memory://", "fixed-window")


class TestMemoryWindowCounterContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self) -> Factory:
        return _factory("async+memory://", "sliding-window-counter")


class TestRedisMovingWindowContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self, redis_server: RedisServer) -> Factory:
        return _factory(redis_server.url, "moving-window")


class TestRedisWindowCounterContract(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self, redis_server: RedisServer) -> Factory:
        # The async+ form limits itself uses is accepted too.
        return _factory("async+" + redis_server.url, "sliding-window-counter")


class TestRedisFixedWindowContract(RateLimiterContract):
    """limits reads a fixed window's end on Redis with TTL, in whole seconds (rounded): its
    retry_after is off by up to 0.5 s (measured in test_limits_semantics.py), so this
    class uses the contract's documented timing slack for such backends."""

    timing_tolerance = 0.55

    @pytest.fixture
    def rate_limiter_factory(self, redis_server: RedisServer) -> Factory:
        return _factory(redis_server.url, "fixed-window")


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_capabilities_never_claim_exact(redis_server: RedisServer, strategy: str) -> None:
    in_memory = _factory("memory://", strategy)(["5/second"])
    on_redis = _factory(redis_server.url, strategy)(["5/second"])
    assert in_memory.backend_name == on_redis.backend_name == "limits"
    assert in_memory.capabilities == frozenset()  # one process, nothing survives it
    assert on_redis.capabilities == {"distributed", "persistent"}
