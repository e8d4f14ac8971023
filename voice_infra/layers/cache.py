"""The ``cache`` layer (storage): object info, existence and presigned URLs kept in the
configured cache backend (the ``[cache]`` section), so repeated lookups skip the storage.

What is cached, per object key:

- ``get_file_info`` / ``file_exists``: one ``info`` entry holding the object's info (JSON),
  "exists" (from ``file_exists``, which gives no info) or "absent" (a missing object),
  for ``ttl`` seconds;
- ``generate_presigned_url``: one ``url`` entry holding the URLs signed for each
  (method, ``expires_in``), each served only while at least half of its lifetime remains,
  so repeated requests get the same URL (browsers cache the audio) and skip signing.

This process's uploads and deletes of a key invalidate both entries once they end
(successfully or not). A lookup that reads the storage while one of them runs, or whose
result is stored after one started, is not cached (or its entry is deleted again): this
process never serves from the cache what it deleted or replaced. A cache shared by several
processes (redis) gives no such promise across them: a write made outside the layer, or
another process storing an answer it read just before our write ended, is seen only when
the entry expires (``ttl``; see docs/layers.md).

A failing cache never fails a storage operation: a read that fails is a miss, a write
that fails is skipped (both logged, throttled). An invalidation that fails leaves the key
"dirty": this process bypasses the cache for it until an invalidation succeeds or ``ttl``
has passed.

Keys in the cache: ``storage:<namespace>:info:<sha256 of the object key>`` and
``storage:<namespace>:url:<sha256>``; the namespace is a digest of the backend's name,
bucket and settings (secrets included: a rotated signing key or another endpoint never
meets URLs signed for the old one), so stacks over different stores never share entries
and processes configured alike do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import Field, SecretBytes, SecretStr, ValidationError, model_validator

from voice_infra.errors import (
    BackendUnavailableError,
    CacheError,
    ConfigError,
    ObjectNotFoundError,
    VoiceServiceError,
)
from voice_infra.layers import (
    Duration,
    Layer,
    LayerContext,
    LayeredBackend,
    LayerSettings,
    Operation,
)
from voice_infra.models import VoiceFileInfo
from voice_infra.resilience import log_throttled
from voice_infra.storage.keys import validate_object_key

if TYPE_CHECKING:
    from voice_infra.cache import CacheBackend
    from voice_infra.storage import StorageBackend

__all__ = ["CacheLayer", "CacheLayerSettings"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Longest ``ttl`` of the layer: a day (another process's writes are seen after it).
MAX_LAYER_TTL = 86_400.0

_ABSENT = b"-"  # get_file_info raised ObjectNotFoundError / file_exists was False
_EXISTS = b"+"  # file_exists was True (no info to serve get_file_info)
_MAX_URL_VARIANTS = 8  # (method, expires_in) pairs kept per object
_MAX_RECENT_WRITES = 4096  # keys whose last write this process remembers exactly
_MAX_DIRTY = 10_000  # keys whose invalidation failed; past it the cache is bypassed
# What a failing cache raises: never a storage operation's failure.
_CACHE_FAILURES = (CacheError, BackendUnavailableError, OSError)


class CacheLayerSettings(LayerSettings):
    """Options of the ``cache`` layer (the cache backend itself is the ``[cache]``
    section's, with its own bounds: ``max_entries``/``max_bytes`` of ``memory``)."""

    ttl: Duration = Field(
        default=300.0, gt=0, le=MAX_LAYER_TTL,
        description="Seconds an info entry lives (and the longest a URL entry does); "
        "another process's writes are seen after at most this long.",
    )  # fmt: skip
    info: bool = Field(default=True, description="Cache get_file_info and file_exists.")
    presign: bool = Field(default=True, description="Cache presigned URLs.")

    @model_validator(mode="after")
    def _something_cached(self) -> CacheLayerSettings:
        if not (self.info or self.presign):
            raise ValueError(
                "info and presign are both false: the layer would cache nothing; turn one on "
                "or remove the layer"
            )
        return self


class CacheLayer(Layer):
    """Caches storage info, existence and presigned URLs (see the module doc).

    Built from configuration, the cache backend is the ``[cache]`` section's
    (:meth:`configure`), opened and closed with the layered storage. Built directly,
    ``cache=`` gives one (the caller closes it); without one, a default ``memory`` cache
    is used. ``clock`` (wall-clock seconds, the signers' clock) and ``monotonic`` are
    replaceable for tests.
    """

    kinds = ("storage",)
    settings: CacheLayerSettings

    def __init__(
        self, settings: CacheLayerSettings | None = None, *, cache: CacheBackend | None = None
    ) -> None:
        super().__init__(settings if settings is not None else CacheLayerSettings())
        self.cache: CacheBackend | None = cache
        self._owns_cache = False
        self.clock: Callable[[], float] = time.time
        self.monotonic: Callable[[], float] = time.monotonic
        #: Answers served from the cache, lookups that went to the storage, cache failures.
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._namespace = ""
        # The write guard: every write of a key bumps ``_epoch`` when it starts and when it
        # ends and records it in ``_recent`` (bounded; what is evicted raises
        # ``_evicted_epoch``); ``_writing`` counts writes in flight per key.
        self._epoch = 0
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._evicted_epoch = 0
        self._writing: Counter[str] = Counter()
        # key -> monotonic deadline: an invalidation failed; the cache is bypassed for it.
        self._dirty: dict[str, float] = {}
        self._bypass_until = 0.0

    # -- lifecycle -----------------------------------------------------------------

    def configure(self, context: LayerContext) -> None:
        """Build the cache backend from the ``[cache]`` section of the same settings."""
        if self.cache is None:
            from voice_infra.factory import create_backend

            self.cache = create_backend("cache", context.settings, registry=context.registry)
            self._owns_cache = True
        self._check_ttl()

    def bind(self, wrapper: LayeredBackend) -> None:
        """Attach to the layered storage; the cache namespace follows its backend."""
        super().bind(wrapper)
        if self.cache is None:
            from voice_infra.backends.memory_cache import MemoryCache, MemoryCacheSettings

            self.cache = MemoryCache(MemoryCacheSettings())
            self._owns_cache = True
        self._check_ttl()
        self._namespace = _namespace(wrapper)

    async def open(self) -> None:
        """Open the cache; a cache that cannot open now is tried again on first use."""
        try:
            await self._cache._ensure_open()
        except _CACHE_FAILURES as exc:
            self._failed("open", exc)

    async def aclose(self) -> None:
        """Close the cache this layer built (an error is logged, never raised)."""
        if self._owns_cache and self.cache is not None:
            try:
                await self.cache.aclose()
            except Exception:
                logger.warning("storage cache layer: closing the cache failed", exc_info=True)

    def state(self) -> str:
        """Hits, misses and cache failures, for ``voice-infra doctor``."""
        cache = self.cache.backend_name or type(self.cache).__name__ if self.cache else "-"
        return f"{self.hits} hits, {self.misses} misses, {self.errors} cache errors ({cache} cache)"

    @property
    def _cache(self) -> CacheBackend:
        if self.cache is None:
            raise AssertionError("the cache layer is used before it wraps a backend")
        return self.cache

    def _check_ttl(self) -> None:
        max_ttl = self._cache.settings.max_ttl
        if self.settings.ttl > max_ttl:
            raise ConfigError(
                f"[storage] layers (layer 'cache'): ttl of {self.settings.ttl:g} s is longer "
                f"than the [cache] section's max_ttl ({max_ttl:g} s); shorten ttl or raise "
                "max_ttl"
            )

    # -- operations ----------------------------------------------------------------

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        name = op.name
        if name in ("get_file_info", "file_exists"):
            if self.settings.info and _valid_key(args[0], writing=False):
                return cast(T, await self._info(name == "file_exists", args[0], call))
        elif name == "generate_presigned_url":
            key, expires_in, method = args
            if expires_in is None:
                expires_in = getattr(self.inner.settings, "presign_ttl", None)
            if (
                self.settings.presign
                and method in ("GET", "PUT")
                and type(expires_in) is int
                and _valid_key(key, writing=method == "PUT")
            ):
                return cast(T, await self._presign(key, expires_in, method, call))
        elif name in ("upload_file", "delete_file") and type(args[0]) is str:
            return await self._write(args[0], call)
        return await call()

    async def _info(
        self, exists: bool, key: str, call: Callable[[], Awaitable[Any]]
    ) -> VoiceFileInfo | bool:
        entry = self._entry("info", key)
        value = await self._read(key, entry)
        if value == _ABSENT:
            self.hits += 1
            if exists:
                return False
            raise cast("StorageBackend", self.wrapper)._not_found(key)
        if value == _EXISTS and exists:
            self.hits += 1
            return True
        if value is not None and value != _EXISTS:
            try:
                info = VoiceFileInfo.model_validate_json(value)
            except ValidationError:
                pass  # written by something else: a miss, replaced below
            else:
                self.hits += 1
                return True if exists else info
        self.misses += 1
        start = self._epoch
        try:
            result = await call()
        except ObjectNotFoundError:
            await self._store(key, entry, _ABSENT, self.settings.ttl, start)
            raise
        if exists:
            stored = _EXISTS if result else _ABSENT
        else:
            stored = cast(VoiceFileInfo, result).model_dump_json().encode()
        await self._store(key, entry, stored, self.settings.ttl, start)
        return cast("VoiceFileInfo | bool", result)

    async def _presign(
        self, key: str, expires_in: int, method: str, call: Callable[[], Awaitable[Any]]
    ) -> str:
        entry = self._entry("url", key)
        variant = f"{method}:{expires_in}"
        urls = _parse_urls(await self._read(key, entry))
        now = self.clock()
        cached = urls.get(variant)
        # Served only while at least half of the requested lifetime remains.
        if cached is not None and now <= cached[1]:
            self.hits += 1
            return cached[0]
        self.misses += 1
        start = self._epoch
        url = await call()
        # Signers count whole seconds from the signing time (after ``now``): the URL lives
        # at least until floor(now) + expires_in.
        usable_until = math.floor(now) + expires_in - expires_in / 2
        kept = {v: u for v, u in urls.items() if v != variant and u[1] > now}
        kept[variant] = (url, usable_until)
        kept = dict(list(kept.items())[-_MAX_URL_VARIANTS:])
        ttl = min(self.settings.ttl, max(u[1] for u in kept.values()) - now)
        if ttl > 0:
            value = json.dumps({v: list(u) for v, u in kept.items()}).encode()
            await self._store(key, entry, value, ttl, start)
        return cast(str, url)

    async def _write(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        self._writing[key] += 1
        self._mark(key)
        try:
            return await call()
        finally:
            # Whatever happened (an error may come after the object was written), the
            # entries of the key go.
            self._writing[key] -= 1
            if not self._writing[key]:
                del self._writing[key]
            self._mark(key)
            await self._invalidate(key)

    # -- the cache, failures tolerated ---------------------------------------------

    def _entry(self, what: str, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"storage:{self._namespace}:{what}:{digest}"

    async def _read(self, key: str, entry: str) -> bytes | None:
        """The entry's value; ``None`` on a miss, a failure, or a key the cache may hold
        stale (dirty)."""
        if not await self._usable(key):
            return None
        try:
            return await self._cache.get(entry)
        except _CACHE_FAILURES as exc:
            self._failed("read", exc)
            return None

    async def _store(self, key: str, entry: str, value: bytes, ttl: float, start: int) -> None:
        """Store what a lookup that started at ``start`` found, unless a write of the key
        began since; one that begins while the value is being stored deletes it again."""
        if not self._fresh(key, start) or not await self._usable(key):
            return
        try:
            await self._cache.set(entry, value, ttl)
        except _CACHE_FAILURES as exc:
            self._failed("write", exc)
            return
        if not self._fresh(key, start):
            await self._invalidate(key)

    async def _invalidate(self, key: str) -> bool:
        """Delete the key's entries; on failure, mark it dirty. True when they are gone."""
        try:
            if self.settings.info:
                await self._cache.delete(self._entry("info", key))
            if self.settings.presign:
                await self._cache.delete(self._entry("url", key))
        except _CACHE_FAILURES as exc:
            self._failed("invalidate", exc)
            if len(self._dirty) >= _MAX_DIRTY:
                # Too many to track: no entry is trusted until every one has expired.
                self._bypass_until = self.monotonic() + self.settings.ttl
                self._dirty.clear()
            else:
                self._dirty[key] = self.monotonic() + self.settings.ttl
            return False
        self._dirty.pop(key, None)
        return True

    async def _usable(self, key: str) -> bool:
        """Whether the cache may be used for ``key``: not after a failed invalidation,
        until one succeeds or the entries it left have expired."""
        now = self.monotonic()
        if now < self._bypass_until:
            return False
        deadline = self._dirty.get(key)
        if deadline is None:
            return True
        if now >= deadline:
            del self._dirty[key]
            return True
        return await self._invalidate(key)

    def _mark(self, key: str) -> None:
        self._epoch += 1
        recent = self._recent
        recent[key] = self._epoch
        recent.move_to_end(key)
        if len(recent) > _MAX_RECENT_WRITES:
            _, epoch = recent.popitem(last=False)
            self._evicted_epoch = max(self._evicted_epoch, epoch)

    def _fresh(self, key: str, start: int) -> bool:
        """No write of ``key`` in flight, and none started or ended since ``start``."""
        return (
            not self._writing.get(key)
            and self._recent.get(key, 0) <= start
            and self._evicted_epoch <= start
        )

    def _failed(self, action: str, exc: BaseException) -> None:
        self.errors += 1
        log_throttled(
            logger, f"cache-layer:{action}:{type(exc).__name__}",
            "storage cache layer: could not %s the cache (%s: %s); the storage answers "
            "instead", action, type(exc).__name__, exc,
        )  # fmt: skip


def _valid_key(key: object, *, writing: bool) -> bool:
    """Whether the storage accepts ``key``: only such keys are looked up, so an invalid
    one always reaches the backend, which raises its error."""
    try:
        validate_object_key(key, writing=writing)
    except VoiceServiceError:
        return False
    return True


def _parse_urls(value: bytes | None) -> dict[str, tuple[str, float]]:
    """The URL variants of an entry (anything unreadable: none)."""
    if value is None:
        return {}
    try:
        data = json.loads(value.decode("utf-8"))
        return {
            str(variant): (url, float(until))
            for variant, (url, until) in data.items()
            if isinstance(url, str)
        }
    except (ValueError, TypeError, AttributeError):
        return {}


def _namespace(storage: Any) -> str:
    """16 hex digits naming the store behind ``storage``: its backend, bucket and
    settings, secrets included (through the digest only)."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, SecretBytes):
            return value.get_secret_value().hex()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, set | frozenset):  # an order that does not vary by process
            return sorted((plain(v) for v in value), key=repr)
        return value

    settings = getattr(storage, "settings", None)
    dump = getattr(settings, "model_dump", None)
    described = plain(dump()) if callable(dump) else None
    text = json.dumps(
        [storage.backend_name, storage.bucket_name, described], sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
