"""Layers: behaviour composed around any backend (timeout, retry, breaker, metrics...).

A section's ``layers`` list (outermost first) names layers and their options::

    [storage]
    backend = "s3"
    layers = ["metrics", { name = "retry", attempts = 3 }, "breaker",
              { name = "timeout", seconds = 10 }]

Each layer is declared by a plugin as a :class:`LayerSpec` (hook ``register_layers``; the
built-in ones through the core's own entry point) and built per backend as a
:class:`Layer`. A layered backend **is** a backend of its kind: each kind has one
delegating class (:attr:`voice_infra.kinds.KindSpec.layered`, for example
:class:`voice_infra.layers.storage.LayeredStorage`) that forwards every public method to
the backend it wraps through its layer's :meth:`Layer.call` (one awaited result) or
:meth:`Layer.stream` (async iterators, chunk by chunk). A layer overrides only those two
hooks, whatever the kind; the :class:`Operation` it gets says which method runs and
whether repeating it is safe.

This module imports no kind's interface: discovering plugins stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

from voice_infra.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from voice_infra.kinds import KindSpec

__all__ = [
    "Duration",
    "Layer",
    "LayerConfig",
    "LayerContext",
    "LayerSettings",
    "LayerSpec",
    "LayeredBackend",
    "Operation",
    "closing_stream",
    "is_transient",
    "iter_layers",
    "parse_duration",
    "parse_layer_list",
    "unwrap",
    "wrap",
]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text such as ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"a duration is seconds or a text such as '10s', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"invalid duration {value!r}: give seconds (10, 0.5) or a text such as "
            "'250ms', '10s', '5m', '1h'"
        )
    return float(match[1]) * _DURATION_UNITS[match[2]]


#: Seconds, written as a number or as ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"1d"``.
Duration = Annotated[float, BeforeValidator(parse_duration)]


class LayerSettings(BaseModel):
    """Options of a layer; each layer subclasses it (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class LayerSpec:
    """A layer declared by a plugin (hook ``register_layers``).

    ``factory`` is called with the validated settings model instance and returns a new
    :class:`Layer`; it and ``settings_model`` may be import strings so that discovery
    imports nothing heavy. ``kinds`` names the kinds (``"storage"``, ``"rate_limiter"``)
    the layer applies to; empty means every kind that takes layers.
    """

    name: str
    factory: str | Callable[[Any], Layer]
    settings_model: str | type[LayerSettings] = LayerSettings
    kinds: Iterable[str] = ()
    description: str = ""
    install_hint: str | None = None
    #: Filled in by discovery: who provides this layer.
    distribution: str = field(default="(registered directly)", compare=False)
    version: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"layer name {self.name!r} is invalid: use lower-case letters, digits, '_' "
                "and '-', starting with a letter"
            )

    def load_settings_model(self) -> type[LayerSettings]:
        """The settings model, imported if given as an import string."""
        from voice_infra.plugins import _import_object

        model = self.settings_model
        return _import_object(model, self) if isinstance(model, str) else model

    def load_factory(self) -> Callable[[Any], Layer]:
        """The factory, imported if given as an import string (a missing library it needs
        is a ``BackendDependencyError`` naming ``install_hint``)."""
        from voice_infra.plugins import _import_object

        factory = self.factory
        return _import_object(factory, self) if isinstance(factory, str) else factory

    def applies_to(self, kind: str) -> bool:
        """Whether the layer may wrap a backend of ``kind``."""
        return not self.kinds or kind in tuple(self.kinds)


class LayerConfig(BaseModel):
    """One entry of a section's ``layers`` list: the layer's ``name`` and its options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str

    def options(self) -> dict[str, Any]:
        """The options for the layer's settings model."""
        return dict(self.model_extra or {})

    def as_config(self) -> str | dict[str, Any]:
        """The entry as written in a configuration: the name alone when it has no options."""
        options = self.options()
        return {"name": self.name, **options} if options else self.name


def parse_layer_list(value: Any) -> tuple[LayerConfig, ...]:
    """A section's ``layers``: a list (or its JSON text, as environment variables carry
    it) of layer names and ``{name = ..., option = ...}`` tables."""
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.lstrip().startswith("[") else [value]
        except json.JSONDecodeError as exc:
            raise ValueError(
                f'layers must be a JSON list such as \'["metrics", {{"name": "retry", '
                f'"attempts": 3}}]\' ({exc.msg} at position {exc.pos})'
            ) from None
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | dict):
        items = list(value)
    else:
        raise ValueError(
            "layers must be a list of layer names or tables with a 'name', for example "
            '["metrics", { name = "retry", attempts = 3 }]'
        )
    entries: list[LayerConfig] = []
    for index, item in enumerate(items):
        if isinstance(item, LayerConfig):
            entries.append(item)
            continue
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(
                f"layers[{index}] must be a layer name or a table with a 'name' key, got {item!r}"
            )
        name = item["name"].strip().lower()
        if not _NAME_RE.match(name):
            raise ValueError(f"layers[{index}]: {item['name']!r} is not a layer name")
        entries.append(LayerConfig.model_validate({**item, "name": name}))
    return tuple(entries)


@dataclass(frozen=True, slots=True)
class LayerContext:
    """What a layer may use besides its own options, given to :meth:`Layer.configure` by
    ``create_backend``: the kind of the section it sits in, the whole ``Settings`` the
    backend is built from (other sections, such as ``[cache]``) and the plugin registry
    (to build a backend of another kind: ``create_backend("cache", context.settings,
    registry=context.registry)``)."""

    kind: str
    settings: Any
    registry: Any


@dataclass(frozen=True, slots=True)
class Operation:
    """The public method a layered backend is running, as a layer sees it.

    ``repeatable`` says whether running it again is safe (reads, info, deletes, presign,
    an upload whose source can be replayed); ``streaming`` whether it yields items (a
    layer's :meth:`Layer.stream` gets it). Its fields are safe as metric labels; the
    call's arguments (object keys, user keys) are passed apart and are never labels.
    """

    kind: str
    backend: str
    name: str
    repeatable: bool = False
    streaming: bool = False


class Layer:
    """Behaviour around every operation of one backend; subclass and override
    :meth:`call` and, for streaming operations, :meth:`stream`.

    A layer instance wraps one backend: the layered backend binds it (:meth:`bind`) and
    then sends every public method through it. ``self.inner`` is the wrapped backend
    (itself possibly layered), ``self.kind`` the kind's declaration.
    """

    #: The registered layer name (set when built from configuration).
    name: str = ""
    #: Kinds this layer class works with (checked when bound); empty: any kind.
    kinds: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`call` may raise the kind's unavailable error itself (a timeout, an
    #: open breaker), which a layered rate limiter turns into its fail-mode answer. A layer
    #: that never does (metrics) lets the decision skip that wrapper: one coroutine less
    #: per check.
    raises_unavailable: ClassVar[bool] = True

    def __init__(self, settings: LayerSettings | None = None) -> None:
        self.settings = settings if settings is not None else LayerSettings()
        self.wrapper: LayeredBackend | None = None
        self.inner: Any = None

    def bind(self, wrapper: LayeredBackend) -> None:
        """Attach to the layered backend that sends its operations through this layer."""
        if self.wrapper is not None:
            raise ValueError(f"layer {self.label} already wraps a backend; build one per backend")
        kind = getattr(wrapper, "kind", None)
        if self.kinds and kind not in self.kinds:
            raise ConfigError(
                f"layer {self.label} applies to {', '.join(self.kinds)} backends, not to "
                f"{kind} backends"
            )
        self.wrapper = wrapper
        self.inner = wrapper.inner

    @property
    def label(self) -> str:
        """The layer's name in messages."""
        return repr(self.name or type(self).__name__)

    def unavailable(self, op: Operation, reason: str) -> BackendUnavailableError:
        """The backend-unavailable error of the kind (storage: ``StorageUnavailableError``,
        rate limiter: ``RateLimiterUnavailableError``, whose layered backend then answers
        with its fail mode) for ``op``."""
        error_class = (
            self.wrapper.unavailable_error if self.wrapper is not None else BackendUnavailableError
        )
        kind = op.kind.replace("_", "-")
        return error_class(f"{kind} backend {op.backend!r}: {op.name}: {reason}")

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``call()`` (the wrapped backend's method ``op.name`` with ``args``);
        override to act before, after or instead. May call ``call`` again when
        ``op.repeatable``."""
        return await call()

    def stream(
        self, op: Operation, args: tuple[Any, ...], open_stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """The items of ``open_stream()`` (the wrapped backend's streaming method); override
        (as an async generator) to act per item. ``open_stream`` may be called again only
        before an item was yielded to the caller."""
        return open_stream()

    def configure(self, context: LayerContext) -> None:
        """Called by ``create_backend`` once the layer is built from its options, before the
        backend is built and before any I/O: a layer that needs more than its options (a
        backend of another kind, as the ``cache`` layer's cache) builds it here; raise
        :class:`~voice_infra.errors.ConfigError` for a configuration it cannot work with.
        Not called for layers passed to :func:`wrap` directly."""

    async def open(self) -> None:
        """Acquire what the layer holds (a connection of its own); called when the layered
        backend opens, after the wrapped backend opened."""

    async def aclose(self) -> None:
        """Release what :meth:`open` (or first use) acquired; called when the layered
        backend closes, after the wrapped backend closed. Must cope with nothing open."""

    def on_stack(self, stack: Sequence[Layer]) -> None:
        """Called once the whole stack (outermost first) is built: a layer that reports on
        others (metrics and the breakers' state) finds them here."""

    def state(self) -> str | None:
        """A line for ``voice-infra doctor`` (a breaker's state), or ``None``."""
        return None


class LayeredBackend:
    """What every kind's layered backend adds to its base class (mixed in first).

    Anything the wrapped backend has besides its kind's interface (``verify_presigned_url``
    of the signed-URL backends, a driver's handle) is reached through the layered one.
    """

    #: The error a layer raises when the backend is unavailable or too slow.
    unavailable_error: ClassVar[type[BackendUnavailableError]] = BackendUnavailableError
    inner: Any
    layer: Layer

    def _bind_layer(self, inner: Any, layer: Layer) -> None:
        self.inner = inner
        self.layer = layer
        layer.bind(self)

    # -- what passes through to the wrapped backend (the same for every kind) ----------

    @property
    def capabilities(self) -> frozenset[str]:
        """The wrapped backend's capabilities."""
        return frozenset(self.inner.capabilities)

    @capabilities.setter
    def capabilities(self, value: frozenset[str]) -> None:
        self.inner.capabilities = value

    @property
    def capabilities_declared(self) -> bool:
        """Whether the wrapped backend declared its capabilities."""
        return bool(self.inner.capabilities_declared)

    async def open(self) -> None:
        """Open the wrapped backend, then the layer (:meth:`Layer.open`)."""
        await self.inner._ensure_open()
        await self.layer.open()
        await super().open()  # type: ignore[misc]  # the kind's base class (mixed in after)

    async def aclose(self) -> None:
        """Close the wrapped backend, then the layer (:meth:`Layer.aclose`)."""
        try:
            await self.inner.aclose()
        finally:
            try:
                await self.layer.aclose()
            finally:
                await super().aclose()  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the layered class lacks.
        if name.startswith("__") or name in ("inner", "layer"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.layer.label} around {self.inner!r}>"

    def _operations(self, names: Iterable[tuple[str, bool, bool]]) -> dict[str, Operation]:
        kind = str(getattr(self, "kind", ""))
        backend = str(getattr(self.inner, "backend_name", "") or type(self.inner).__name__)
        return {
            name: Operation(kind, backend, name, repeatable, streaming)
            for name, repeatable, streaming in names
        }


def wrap(backend: Any, layers: Sequence[Layer]) -> Any:
    """``backend`` inside ``layers`` (outermost first): what ``create_backend`` returns for a
    section with a ``layers`` list. Each layer must be new (one per backend)."""
    if not layers:
        return backend
    from voice_infra.kinds import get_kind

    kind: KindSpec = get_kind(backend.kind)
    layered = kind.layered_class()
    if layered is None:
        raise ConfigError(f"[{kind.section}] takes no layers: the {kind.label} kind declares none")
    wrapped = backend
    for layer in reversed(layers):
        wrapped = layered(wrapped, layer)
    for layer in layers:
        layer.on_stack(layers)
    return wrapped


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself: a backend unavailable or too slow
    (:class:`~voice_infra.errors.BackendUnavailableError`, ``retryable``)."""
    return isinstance(exc, BackendUnavailableError) and getattr(exc, "retryable", True)


@asynccontextmanager
async def closing_stream(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close ``items`` (an async generator) on the way out, so that a consumer that stops
    early releases the backend's file or connection now."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def iter_layers(backend: Any) -> Iterator[Layer]:
    """The layers around ``backend``, outermost first."""
    while isinstance(backend, LayeredBackend):
        yield backend.layer
        backend = backend.inner


def unwrap(backend: Any) -> Any:
    """The backend inside every layer of ``backend`` (``backend`` itself if unlayered)."""
    while isinstance(backend, LayeredBackend):
        backend = backend.inner
    return backend
