"""Fixtures of the Redis plugin's tests: real redis-server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from voice_infra_redis.backend import RedisRateLimiter

# The fixtures shared with the limits plugin's tests, imported so that pytest finds them.
from voice_infra_redis.testing import (  # noqa: F401
    RedisCluster3,
    RedisSentinel1,
    key_prefix,
    own_redis_server,
    redis_server,
    require_redis_server,
)

from voice_infra.testing import rate_limiter_opener


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    """A three-master Redis Cluster shared by the tests that do not stop a node."""
    require_redis_server()
    started = RedisCluster3(tmp_path_factory.mktemp("redis-cluster")).start()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel1]:
    """A master and one sentinel watching it, shared by the tests that do not stop them."""
    require_redis_server()
    started = RedisSentinel1(tmp_path_factory.mktemp("redis-sentinel")).start()
    yield started
    started.stop()


open_redis_limiter = rate_limiter_opener("open_redis_limiter", "redis", RedisRateLimiter)
