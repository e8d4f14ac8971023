"""Fixtures of the limits plugin's tests: real redis-server processes on free loopback ports
(started by the Redis plugin's test helper, not a copy of it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from voice_infra_limits.backend import LimitsRateLimiter
from voice_infra_redis.testing import RedisServer, redis_server_available

import voice_infra as vi


def _require_redis() -> None:
    if not redis_server_available():  # pragma: no cover - depends on the machine
        pytest.skip("redis-server/redis-cli are not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server shared by the tests that do not stop it (they use keys of their own)."""
    _require_redis()
    server = RedisServer(tmp_path_factory.mktemp("limits-redis-shared")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server for one test, which may kill, pause or restart it."""
    _require_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of the test's own."""
    return f"t{uuid.uuid4().hex[:12]}"


OpenLimiter = Callable[..., Awaitable[LimitsRateLimiter]]


@pytest_asyncio.fixture
async def open_limits_limiter() -> AsyncIterator[OpenLimiter]:
    """``await open_limits_limiter(**rate_limit_options)``: a ``limits`` limiter built from
    ``[rate_limit]`` options through the public factory, opened; closed after the test."""
    opened: list[LimitsRateLimiter] = []

    async def build(**options: Any) -> LimitsRateLimiter:
        limiter = vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "limits", **options}))
        assert isinstance(limiter, LimitsRateLimiter)
        await limiter.__aenter__()
        opened.append(limiter)
        return limiter

    yield build
    for limiter in opened:
        await limiter.aclose()
