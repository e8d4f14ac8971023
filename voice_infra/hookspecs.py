"""Hook specifications: the whole contract between voice-infra and its plugins.

A plugin is a module (or object) exposed through an entry point in the ``voice_infra``
group of its distribution's ``pyproject.toml``::

    [project.entry-points.voice_infra]
    mystore = "voice_infra_mystore.plugin"

and implements one or more of the hooks below with :data:`hookimpl`. Hooks only *declare*
backends: they run when plugins are discovered, so they must be fast and must not
import the backend's client library. The factory named in the :class:`BackendSpec`
is imported only when a configuration selects the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from voice_infra.layers import LayerSpec
    from voice_infra.plugins import BackendSpec

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "voice_infra"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorate your hook implementations with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_storage_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare storage backends by calling ``register(BackendSpec(...))`` once per backend.

    ``BackendSpec.factory`` is an import string (``"my_pkg.backend:MyStorage"``) or a
    callable; it is called with the validated settings model instance and returns a
    :class:`voice_infra.StorageBackend`. ``settings_model`` subclasses
    :class:`voice_infra.StorageSettings`; its fields are the keys users may write in the
    ``[storage]`` section. Capability flags say which optional features the backend
    has: ``presign`` (``generate_presigned_url``), ``multipart`` (large uploads in
    parts), ``range_read`` (partial reads), ``persistent`` (data survives the process),
    ``versioned_read`` (``stream_range(expected=...)`` reads info and bytes from one opening).

    Example::

        @hookimpl
        def register_storage_backends(register):
            register(BackendSpec(
                name="mystore",
                factory="voice_infra_mystore.backend:MyStorage",
                settings_model=MyStoreSettings,
                capabilities={"presign"},
                install_hint="pip install voice-infra-mystore",
            ))
    """


@hookspec
def register_rate_limiter_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare rate-limiter backends by calling ``register(BackendSpec(...))`` per backend.

    The factory is called with the validated settings model instance (a subclass of
    :class:`voice_infra.RateLimiterSettings`, whose ``policies`` field holds the parsed
    policies) and returns a :class:`voice_infra.RateLimiter`. Capability flags:
    ``exact`` (the ``sliding_log`` algorithm never over-admits), ``distributed``
    (several processes share the limits), ``persistent`` (counts survive the process).
    """


@hookspec
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    """Declare layers by calling ``register(LayerSpec(...))`` once per layer.

    A layer wraps a backend of any kind it applies to (``LayerSpec.kinds``; empty: every
    kind that takes layers) and is chosen per config section by its ``layers`` list.
    ``LayerSpec.factory`` (an import string or a callable) is called with the validated
    settings model instance (a subclass of :class:`voice_infra.layers.LayerSettings`,
    whose fields are the keys users may write in the layer's table) and returns a new
    :class:`voice_infra.layers.Layer`, which overrides ``call`` (and ``stream`` for
    streaming operations).

    Example::

        @hookimpl
        def register_layers(register):
            register(LayerSpec(
                name="audit",
                factory="voice_infra_audit.layer:AuditLayer",
                settings_model="voice_infra_audit.layer:AuditSettings",
                kinds=("storage",),
            ))
    """


@hookspec
def register_cache_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare cache backends by calling ``register(BackendSpec(...))`` once per backend.

    The factory is called with the validated settings model instance (a subclass of
    :class:`voice_infra.CacheSettings`, whose fields ``key_prefix``, ``default_ttl``,
    ``max_ttl`` and ``max_value_size`` every cache accepts; the rest of the ``[cache]``
    section is the backend's own) and returns a :class:`voice_infra.CacheBackend`.
    Capability flags: ``distributed`` (several processes share the entries),
    ``persistent`` (entries survive the process).
    """
