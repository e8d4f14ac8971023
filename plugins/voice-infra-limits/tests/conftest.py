"""Fixtures of the limits plugin's tests: real redis-server processes on free loopback ports
(the Redis plugin's shared fixtures, not a copy of them)."""

from __future__ import annotations

from voice_infra_limits.backend import LimitsRateLimiter

# Imported so that pytest finds them.
from voice_infra_redis.testing import key_prefix, own_redis_server, redis_server  # noqa: F401

from voice_infra.testing import rate_limiter_opener

open_limits_limiter = rate_limiter_opener("open_limits_limiter", "limits", LimitsRateLimiter)
