"""Build the configured backends: :func:`create_backend` for any kind, and the typed
:func:`create_storage`, :func:`create_rate_limiter` and :func:`create_cache`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from voice_infra.cache import CacheBackend
from voice_infra.config import Settings
from voice_infra.kinds import CACHE, RATE_LIMITER, STORAGE, KindSpec, get_kind
from voice_infra.layers import LayerContext, wrap
from voice_infra.plugins import PluginRegistry, get_registry
from voice_infra.ratelimit import RateLimiter
from voice_infra.storage import StorageBackend

__all__ = ["create_backend", "create_cache", "create_rate_limiter", "create_storage"]


def create_backend(
    kind: str | KindSpec,
    settings: Settings | None = None,
    *,
    registry: PluginRegistry | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The backend of ``kind`` (``"storage"``, ``"rate_limiter"``, or any declared kind)
    that ``settings`` selects in the kind's section, validated, not yet connected.

    With a ``layers`` list in the section, the backend comes inside those layers
    (outermost first; :mod:`voice_infra.layers`), and is still a backend of the kind.

    ``overrides`` replace options of the section (an application's own choices, such as
    the ``presign_base_url`` of the service that serves the URLs); layers still apply.

    Raises :class:`ConfigError` (or a :class:`PluginError`) before any I/O, for the
    backend's options and for the layers' (unknown name or option, a layer that does not
    apply to the kind); the connection opens on ``async with`` or first use.
    """
    spec = get_kind(kind)
    settings = settings if settings is not None else Settings()
    section = settings.section(spec)
    registry = registry or get_registry()
    # The layers first: a wrong layer name or option is reported before the backend is built.
    layers = registry.build_layers(spec.name, section.layers or ())
    context = LayerContext(kind=spec.name, settings=settings, registry=registry)
    for layer in layers:
        layer.configure(context)
    options = {**section.options(), **(overrides or {})}
    backend = registry.build(spec.name, section.backend, options)
    return wrap(backend, layers)


def create_storage(
    settings: Settings | None = None, *, registry: PluginRegistry | None = None
) -> StorageBackend:
    """The storage backend selected by ``settings.storage`` (validated, not yet connected).

    Raises :class:`ConfigError` (or a :class:`PluginError`) before any I/O; the
    connection opens on ``async with`` or first use.
    """
    return cast(StorageBackend, create_backend(STORAGE, settings, registry=registry))


def create_rate_limiter(
    settings: Settings | None = None, *, registry: PluginRegistry | None = None
) -> RateLimiter:
    """The rate limiter selected by ``settings.rate_limit`` (validated, not yet connected)."""
    return cast(RateLimiter, create_backend(RATE_LIMITER, settings, registry=registry))


def create_cache(
    settings: Settings | None = None, *, registry: PluginRegistry | None = None
) -> CacheBackend:
    """The cache selected by ``settings.cache`` (validated, not yet connected)."""
    return cast(CacheBackend, create_backend(CACHE, settings, registry=registry))
