"""Fixtures of the limits plugin's tests: real redis-server processes on free loopback ports
(the Redis plugin's shared fixtures, not a copy of them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio
from voice_infra_limits.backend import LimitsRateLimiter

# Imported so that pytest finds them.
from voice_infra_redis.testing import key_prefix, own_redis_server, redis_server  # noqa: F401

from voice_infra.testing import opened_rate_limiters

OpenLimiter = Callable[..., Awaitable[LimitsRateLimiter]]


@pytest_asyncio.fixture
async def open_limits_limiter() -> AsyncIterator[OpenLimiter]:
    """``await open_limits_limiter(**rate_limit_options)``: a ``limits`` limiter built from
    ``[rate_limit]`` options through the public factory, opened; closed after the test."""
    async with opened_rate_limiters("limits", LimitsRateLimiter) as open_limiter:
        yield open_limiter
