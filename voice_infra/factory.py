"""Build the configured backends: :func:`create_storage` and :func:`create_rate_limiter`."""

from __future__ import annotations

from typing import cast

from voice_infra.config import Settings
from voice_infra.plugins import PluginRegistry, get_registry
from voice_infra.ratelimit import RateLimiter
from voice_infra.storage import StorageBackend

__all__ = ["create_rate_limiter", "create_storage"]


def create_storage(
    settings: Settings | None = None, *, registry: PluginRegistry | None = None
) -> StorageBackend:
    """The storage backend selected by ``settings.storage`` (validated, not yet connected).

    Raises :class:`ConfigError` (or a :class:`PluginError`) before any I/O; the
    connection opens on ``async with`` or first use.
    """
    settings = settings if settings is not None else Settings()
    section = settings.storage
    backend = (registry or get_registry()).build("storage", section.backend, section.options())
    return cast(StorageBackend, backend)


def create_rate_limiter(
    settings: Settings | None = None, *, registry: PluginRegistry | None = None
) -> RateLimiter:
    """The rate limiter selected by ``settings.rate_limit`` (validated, not yet connected)."""
    settings = settings if settings is not None else Settings()
    section = settings.rate_limit
    limiter = (registry or get_registry()).build("rate_limiter", section.backend, section.options())
    return cast(RateLimiter, limiter)
