"""The ``memory`` cache: a bounded LRU with a TTL per entry, in this process.

Every operation is O(1): one ``OrderedDict`` in least-recently-used order. An entry's
expiry is checked when it is read (an expired entry is dropped then); entries that are
never read again leave when they become the least recently used and room is needed.
Operations never await, so each is atomic within the event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from pydantic import ByteSize, Field, model_validator

from voice_infra.cache import CacheBackend, CacheSettings

__all__ = ["MemoryCache", "MemoryCacheSettings"]


class MemoryCacheSettings(CacheSettings):
    """Options of the ``memory`` cache: its two bounds."""

    max_entries: int = Field(
        default=10_000, ge=1, le=100_000_000,
        description="Most entries kept; setting one more evicts the least recently used.",
    )  # fmt: skip
    max_bytes: ByteSize = Field(
        default=ByteSize(64 * 1024 * 1024), ge=1,
        description="Most bytes of values kept ('64MiB', or bytes; keys are not counted); "
        "past it the least recently used entries are evicted.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check_bounds(self) -> MemoryCacheSettings:
        if self.max_value_size > self.max_bytes:
            raise ValueError(
                f"max_value_size ({self.max_value_size} bytes) is larger than max_bytes "
                f"({self.max_bytes} bytes): such a value could never stay; lower "
                "max_value_size or raise max_bytes"
            )
        return self


class MemoryCache(CacheBackend):
    """Least-recently-used entries of this process, bounded by ``max_entries`` and
    ``max_bytes``, each with its own TTL. ``clock`` (seconds, monotonic) is injectable
    for tests."""

    capabilities = frozenset[str]()

    settings: MemoryCacheSettings

    def __init__(
        self, settings: MemoryCacheSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(settings)
        self.clock = clock
        # key -> (value, expiry on ``clock``), least recently used first.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    @property
    def entries(self) -> int:
        """Entries held now (expired ones not yet dropped included)."""
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """Bytes of the values held now (what ``max_bytes`` bounds)."""
        return self._bytes

    async def _get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if self.clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def _set(self, key: str, value: bytes, ttl: float) -> None:
        entries = self._entries
        if key in entries:
            self._drop(key)
        entries[key] = (value, self.clock() + ttl)
        self._bytes += len(value)
        limit_entries, limit_bytes = self.settings.max_entries, self.settings.max_bytes
        while len(entries) > limit_entries or self._bytes > limit_bytes:
            # The new entry fits alone (max_value_size <= max_bytes): it is never evicted.
            _, (evicted, _) = entries.popitem(last=False)
            self._bytes -= len(evicted)

    async def _delete(self, key: str) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._drop(key)
        return self.clock() < entry[1]

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(value)
