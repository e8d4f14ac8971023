"""Fixtures of the Redis plugin's tests: real redis-server processes on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisCluster3, RedisServer, redis_server_available

import voice_infra as vi


def _require_redis() -> None:
    if not redis_server_available():  # pragma: no cover - depends on the machine
        pytest.skip("redis-server/redis-cli are not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server shared by the tests that do not stop it (they use keys of their own)."""
    _require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"), unix_socket=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    """A three-master Redis Cluster shared by the tests that do not stop a node."""
    _require_redis()
    started = RedisCluster3(tmp_path_factory.mktemp("redis-cluster")).start()
    yield started
    started.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server for one test, which may kill, pause or restart it."""
    _require_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of the test's own, so tests can inspect exactly their keys."""
    return f"t{uuid.uuid4().hex[:12]}"


OpenLimiter = Callable[..., Awaitable[RedisRateLimiter]]


@pytest_asyncio.fixture
async def open_redis_limiter() -> AsyncIterator[OpenLimiter]:
    """``await open_redis_limiter(**rate_limit_options)``: a ``redis`` limiter built from
    ``[rate_limit]`` options through the public factory, opened; closed after the test."""
    opened: list[RedisRateLimiter] = []

    async def build(**options: Any) -> RedisRateLimiter:
        limiter = vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "redis", **options}))
        assert isinstance(limiter, RedisRateLimiter)
        await limiter.__aenter__()
        opened.append(limiter)
        return limiter

    yield build
    for limiter in opened:
        await limiter.aclose()
