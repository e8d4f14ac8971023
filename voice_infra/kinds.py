"""Backend kinds as data: one declaration per kind of backend.

A *kind* is a family of interchangeable backends (storage, rate limiter...). Everything
the core knows about a kind is its :class:`KindSpec`: the name code uses
(``create_backend("storage")``), the config section (``[storage]``), the hook plugins
implement to declare backends of the kind, the base classes a backend and its settings
model derive from, the default backend, and the vocabulary of capability flags. The
registry, the configuration, the factory, the CLI and the test kit iterate over the
declared kinds, so a new kind is its declaration, its base class, its contract suite and
its docs page (see docs/architecture.md).

Base classes are import strings, imported on first use: discovering plugins
(``voice-infra plugins``) imports no kind's interface module.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import cast

from voice_infra.errors import PluginError

__all__ = [
    "CACHE",
    "RATE_LIMITER",
    "STORAGE",
    "KindSpec",
    "check_capabilities",
    "declare_kind",
    "declared_kinds",
    "get_kind",
    "kind_declared",
    "kind_for_section",
    "public_name",
    "temporary_kind",
]


def public_name(reference: str) -> str:
    """``"voice_infra.storage:StorageSettings"`` as users import it:
    ``voice_infra.storage.StorageSettings``."""
    return reference.replace(":", ".")


def _import(reference: str) -> object:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class KindSpec:
    """The declaration of one backend kind."""

    #: What code calls the kind: ``create_backend(name)``, ``BackendSpec`` tables.
    name: str
    #: The config section (``[storage]``, ``VOICE_INFRA_STORAGE__...``).
    section: str
    #: The hook plugins implement to declare backends of the kind.
    hook: str
    #: Import strings (``"module:Name"``) of the base classes.
    base: str
    settings_base: str
    #: The backend a section without ``backend`` selects.
    default_backend: str
    #: Every capability flag a backend of the kind may declare, with its meaning.
    capabilities: Mapping[str, str] = field(default_factory=dict)
    #: First-party backends shipped as separate distributions (name -> distribution), so
    #: a configuration naming one that is not installed gets the pip command.
    known_distributions: Mapping[str, str] = field(default_factory=dict)
    #: Import string of the kind's layered backend: the base-class subclass that wraps a
    #: backend of the kind in one layer (see :mod:`voice_infra.layers`); ``None``: the
    #: kind takes no layers.
    layered: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "capabilities", MappingProxyType(dict(self.capabilities)))
        object.__setattr__(
            self, "known_distributions", MappingProxyType(dict(self.known_distributions))
        )

    @property
    def label(self) -> str:
        """The kind as written in messages: ``storage``, ``rate-limiter``."""
        return self.name.replace("_", "-")

    def base_class(self) -> type:
        """The class every backend of the kind derives from (imported on first use)."""
        return cast(type, _import(self.base))

    def settings_base_class(self) -> type:
        """The class every backend settings model of the kind derives from."""
        return cast(type, _import(self.settings_base))

    def layered_class(self) -> type | None:
        """The kind's layered backend class (imported on first use), if it takes layers."""
        return None if self.layered is None else cast(type, _import(self.layered))


STORAGE = KindSpec(
    name="storage",
    section="storage",
    hook="register_storage_backends",
    base="voice_infra.storage:StorageBackend",
    settings_base="voice_infra.storage:StorageSettings",
    default_backend="fs",
    capabilities={
        "presign": "generate_presigned_url gives URLs a client can use",
        "multipart": "large uploads go in parts (abort_incomplete_uploads cleans up)",
        "range_read": "stream_range reads part of an object without the rest",
        "versioned_read": "stream_range(expected=...) takes the info and the bytes from one "
        "opening: no writer can slip in between",
        "persistent": "objects survive the process",
    },
    known_distributions={"s3": "voice-infra-s3", "minio": "voice-infra-s3"},
    layered="voice_infra.layers.storage:LayeredStorage",
)

RATE_LIMITER = KindSpec(
    name="rate_limiter",
    section="rate_limit",
    hook="register_rate_limiter_backends",
    base="voice_infra.ratelimit:RateLimiter",
    settings_base="voice_infra.ratelimit:RateLimiterSettings",
    default_backend="memory",
    capabilities={
        "exact": "never admits more than a policy allows, at any moment",
        "distributed": "several processes share the counts",
        "persistent": "counts survive the process",
    },
    known_distributions={"redis": "voice-infra-redis", "limits": "voice-infra-limits"},
    layered="voice_infra.layers.ratelimit:LayeredRateLimiter",
)

CACHE = KindSpec(
    name="cache",
    section="cache",
    hook="register_cache_backends",
    base="voice_infra.cache:CacheBackend",
    settings_base="voice_infra.cache:CacheSettings",
    default_backend="memory",
    capabilities={
        "distributed": "several processes share the entries",
        "persistent": "entries survive the process",
    },
    known_distributions={"redis": "voice-infra-redis"},
)

_KINDS: dict[str, KindSpec] = {kind.name: kind for kind in (STORAGE, RATE_LIMITER, CACHE)}


def declared_kinds() -> tuple[KindSpec, ...]:
    """Every declared kind, in declaration order."""
    return tuple(_KINDS.values())


def get_kind(kind: str | KindSpec) -> KindSpec:
    """The declaration of ``kind`` (a name or a declaration); ``KeyError`` if unknown."""
    if isinstance(kind, KindSpec):
        return kind
    try:
        return _KINDS[kind]
    except KeyError:
        raise KeyError(
            f"unknown backend kind {kind!r}; declared kinds: {', '.join(_KINDS)}"
        ) from None


def kind_declared(name: str) -> bool:
    """Whether a kind of that name is declared."""
    return name in _KINDS


def kind_for_section(section: str) -> KindSpec | None:
    """The kind whose config section is ``section``, if any."""
    return next((kind for kind in _KINDS.values() if kind.section == section), None)


def declare_kind(kind: KindSpec) -> KindSpec:
    """Add a kind. Its name and section must be new (declaring the same spec twice is
    harmless). Registries created afterwards know it; its hook is added to them."""
    existing = _KINDS.get(kind.name)
    if existing == kind:
        return kind
    if existing is not None or kind_for_section(kind.section) is not None:
        raise ValueError(f"backend kind {kind.name!r} or section [{kind.section}] is taken")
    _KINDS[kind.name] = kind
    return kind


@contextmanager
def temporary_kind(kind: KindSpec) -> Iterator[KindSpec]:
    """Declare ``kind`` for the duration of a ``with`` block (for tests)."""
    declare_kind(kind)
    try:
        yield kind
    finally:
        _KINDS.pop(kind.name, None)


def check_capabilities(kind: str | KindSpec, capabilities: Iterable[str], who: str) -> None:
    """Raise :class:`PluginError` when ``capabilities`` holds a flag that ``kind`` does not
    declare: a typo such as ``presgin`` would otherwise make tests skip in silence."""
    spec = get_kind(kind)
    vocabulary = list(spec.capabilities)
    unknown = sorted(set(capabilities) - set(vocabulary))
    if not unknown:
        return
    hints = ""
    for flag in unknown:
        close = difflib.get_close_matches(flag, vocabulary, n=1)
        hints += f" (did you mean {close[0]!r} for {flag!r}?)" if close else ""
    raise PluginError(
        f"{who} declares unknown {spec.label} capabilities {unknown}{hints}; valid "
        f"{spec.label} capabilities: {', '.join(vocabulary)}"
    )
