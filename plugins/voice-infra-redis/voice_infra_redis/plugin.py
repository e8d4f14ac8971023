"""Declares the ``redis`` rate-limiter and cache backends; imports neither ``redis`` nor
the backends."""

from __future__ import annotations

from collections.abc import Callable

from voice_infra.hookspecs import hookimpl
from voice_infra.plugins import BackendSpec

__all__ = ["register_cache_backends", "register_rate_limiter_backends"]


@hookimpl
def register_rate_limiter_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare the ``redis`` backend by import strings, so discovery stays cheap."""
    register(
        BackendSpec(
            name="redis",
            factory="voice_infra_redis.backend:RedisRateLimiter",
            settings_model="voice_infra_redis.settings:RedisRateLimiterSettings",
            capabilities={"exact", "distributed", "persistent"},
            description=(
                "Redis (or Redis Cluster, or Sentinel): exact sliding log or sliding-window "
                "counter, one Lua call per decision."
            ),
            install_hint="pip install voice-infra-redis",
        )
    )


@hookimpl
def register_cache_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare the ``redis`` cache by import strings, so discovery stays cheap."""
    register(
        BackendSpec(
            name="redis",
            factory="voice_infra_redis.cache:RedisCache",
            settings_model="voice_infra_redis.settings:RedisCacheSettings",
            capabilities={"distributed", "persistent"},
            description=(
                "Redis (or Redis Cluster, or Sentinel): GET / SET PX / DEL, one round trip "
                "each, shared by every process."
            ),
            install_hint="pip install voice-infra-redis",
        )
    )
