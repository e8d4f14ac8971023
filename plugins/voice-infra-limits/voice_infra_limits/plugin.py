"""Declares the ``limits`` rate-limiter backend; imports neither ``limits`` nor the backend."""

from __future__ import annotations

from collections.abc import Callable

from voice_infra.hookspecs import hookimpl
from voice_infra.plugins import BackendSpec

__all__ = ["register_rate_limiter_backends"]


@hookimpl
def register_rate_limiter_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare the ``limits`` backend by import strings, so discovery stays cheap."""
    register(
        BackendSpec(
            name="limits",
            factory="voice_infra_limits.backend:LimitsRateLimiter",
            settings_model="voice_infra_limits.settings:LimitsRateLimiterSettings",
            # No "exact": policies are tested then hit one by one, not atomically (see
            # docs/limits.md). The settings turn "distributed" and "persistent" off for
            # memory:// (LimitsRateLimiterSettings.capabilities_turned_off).
            capabilities={"distributed", "persistent"},
            description=(
                "Any storage of the 'limits' library (memory, Redis, Valkey, memcached, "
                "MongoDB) with its moving-window, fixed-window or sliding-window-counter "
                "strategy."
            ),
            install_hint="pip install voice-infra-limits",
        )
    )
