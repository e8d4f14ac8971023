"""Caching: the interface every cache backend implements, and its settings.

A cache maps string keys to byte values, each with a time to live. A backend subclasses
:class:`CacheBackend` and implements three coroutines: ``_get(key)``, ``_set(key, value,
ttl)`` and ``_delete(key)``. Keys, values and TTLs are validated here once, for every
backend, before any I/O; backends receive a valid ``str`` key, ``bytes`` and a TTL in
seconds (a ``float`` within ``max_ttl``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from datetime import timedelta

from pydantic import ByteSize, Field, field_validator, model_validator

from voice_infra.base import Backend, BackendSettings
from voice_infra.errors import (
    CacheValueTooLargeError,
    InvalidCacheKeyError,
    InvalidCacheTTLError,
    InvalidCacheValueError,
)
from voice_infra.ratelimit.base import KeyPrefix
from voice_infra.text import refuse_unsafe_characters

__all__ = [
    "MAX_CACHE_KEY_BYTES",
    "MAX_CACHE_TTL",
    "MAX_CACHE_VALUE_SIZE",
    "CacheBackend",
    "CacheSettings",
    "ttl_milliseconds",
    "validate_cache_key",
    "validate_cache_ttl",
    "validate_cache_value",
]

#: Longest key, in UTF-8 bytes (the storage keys' bound: every backend stores it).
MAX_CACHE_KEY_BYTES = 1024
#: Longest time to live any backend accepts: 366 days, the rate-limit windows' bound.
MAX_CACHE_TTL = 366 * 24 * 3600.0
#: Largest value any backend accepts: Redis' limit for one string.
MAX_CACHE_VALUE_SIZE = 512 * 1024 * 1024


class CacheSettings(BackendSettings):
    """Options every cache backend accepts; backends subclass it for their own."""

    # The server rate limiters' prefix rule: letters, digits and '_', '.', ':', '-'; no
    # braces (a Redis Cluster hash tag follows the prefix), no spaces.
    key_prefix: KeyPrefix = Field(
        default="vi-cache",
        description="Namespace of the entries: caches with different prefixes never see "
        "each other's entries on a shared server.",
    )
    default_ttl: float = Field(
        default=3600.0, gt=0, le=MAX_CACHE_TTL,
        description="Seconds an entry lives when set() is given no ttl.",
    )  # fmt: skip
    max_ttl: float = Field(
        default=30 * 24 * 3600.0, gt=0, le=MAX_CACHE_TTL,
        description="Longest ttl set() accepts (seconds); a longer one is an error.",
    )  # fmt: skip
    max_value_size: ByteSize = Field(
        default=ByteSize(4 * 1024 * 1024),
        description="Largest value set() accepts ('4MiB', or bytes; at most 512MiB).",
    )

    @field_validator("max_value_size")
    @classmethod
    def _check_value_size(cls, value: ByteSize) -> ByteSize:
        if not 1 <= value <= MAX_CACHE_VALUE_SIZE:
            raise ValueError("max_value_size must be between 1 byte and 512MiB")
        return value

    @model_validator(mode="after")
    def _check_ttls(self) -> CacheSettings:
        if self.default_ttl > self.max_ttl:
            raise ValueError(
                f"default_ttl ({self.default_ttl:g} s) is longer than max_ttl "
                f"({self.max_ttl:g} s); lower default_ttl or raise max_ttl"
            )
        return self


def validate_cache_key(key: object) -> str:
    """Return ``key`` if every cache backend can store it, else raise
    :class:`InvalidCacheKeyError`: a non-empty string of at most
    :data:`MAX_CACHE_KEY_BYTES` UTF-8 bytes without control or format characters."""
    if not isinstance(key, str) or not key:
        raise InvalidCacheKeyError(f"cache key must be a non-empty string, got {key!r}")
    # Characters first: a lone surrogate (refused there) cannot be encoded to count bytes.
    refuse_unsafe_characters(key, "cache key", InvalidCacheKeyError)
    size = len(key.encode("utf-8"))
    if size > MAX_CACHE_KEY_BYTES:
        raise InvalidCacheKeyError(
            f"cache key is {size} bytes long in UTF-8; at most {MAX_CACHE_KEY_BYTES} are "
            "allowed (hash long keys, for example with hashlib.sha256)"
        )
    return key


def validate_cache_value(value: object, max_size: int) -> bytes:
    """``value`` as ``bytes`` (a ``bytearray`` or ``memoryview`` is copied, so later
    changes to it do not reach the cache), else raise :class:`InvalidCacheValueError`;
    :class:`CacheValueTooLargeError` when it is longer than ``max_size`` bytes."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        raise InvalidCacheValueError(
            "cache values are bytes, got a str; encode it first (value.encode('utf-8'))"
        )
    else:
        raise InvalidCacheValueError(
            f"cache values are bytes, got {type(value).__name__}; serialise it first"
        )
    if len(data) > max_size:
        raise CacheValueTooLargeError(
            f"cache value is {len(data)} bytes; max_value_size allows at most {max_size}"
        )
    return data


def validate_cache_ttl(ttl: object, max_ttl: float) -> float:
    """``ttl`` (seconds as ``int``/``float``, or a ``timedelta``) in seconds, else raise
    :class:`InvalidCacheTTLError`: it must be finite, positive and at most ``max_ttl``."""
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise InvalidCacheTTLError(
            f"ttl must be seconds (int or float) or a timedelta, got {type(ttl).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidCacheTTLError(f"ttl must be a positive, finite duration, got {ttl!r}")
    if seconds > max_ttl:
        raise InvalidCacheTTLError(
            f"ttl of {seconds:g} s is longer than max_ttl ({max_ttl:g} s); shorten it or "
            "raise max_ttl in the [cache] section"
        )
    return seconds


def ttl_milliseconds(ttl: float) -> int:
    """``ttl`` seconds as whole milliseconds, rounded up (at least 1): what servers
    with millisecond expiry (Redis ``PX``) store. Never shorter than asked."""
    # round() first: 0.2 * 1000 is 200.00000000000003, which must stay 200.
    return max(1, math.ceil(round(ttl * 1000, 6)))


class CacheBackend(Backend, ABC):
    """Interface of every cache backend; use it as an async context manager.

    ``get`` returns the bytes stored under a key, or ``None`` when there is no live
    entry; ``set`` stores bytes for ``ttl`` seconds (``default_ttl`` when not given),
    replacing any previous entry and its TTL; ``delete`` removes an entry and says
    whether there was a live one. A cache may forget an entry before its TTL ends
    (eviction): callers must treat every ``get`` as possibly a miss.
    """

    kind = "cache"

    def __init__(self, settings: CacheSettings) -> None:
        super().__init__()
        self.settings = settings

    # -- public API ----------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or ``None`` (never set, expired, evicted or
        deleted)."""
        validate_cache_key(key)
        await self._ensure_open()
        return await self._get(key)

    async def set(self, key: str, value: bytes, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (or a ``timedelta``; the
        settings' ``default_ttl`` when ``None``), replacing any previous entry."""
        validate_cache_key(key)
        data = validate_cache_value(value, self.settings.max_value_size)
        seconds = (
            self.settings.default_ttl
            if ttl is None
            else validate_cache_ttl(ttl, self.settings.max_ttl)
        )
        await self._ensure_open()
        await self._set(key, data, seconds)

    async def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; True when there was a live one."""
        validate_cache_key(key)
        await self._ensure_open()
        return await self._delete(key)

    # -- what a backend implements ---------------------------------------------------

    @abstractmethod
    async def _get(self, key: str) -> bytes | None:
        """The live value of ``key``, or ``None``."""

    @abstractmethod
    async def _set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (positive, at most ``max_ttl``)."""

    @abstractmethod
    async def _delete(self, key: str) -> bool:
        """Remove ``key``; True when a live entry was removed."""
