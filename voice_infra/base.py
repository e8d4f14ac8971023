"""What every backend shares, whatever its kind: name, capabilities and lifecycle."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

__all__ = ["Backend"]


class Backend:
    """Base of :class:`~voice_infra.StorageBackend` and :class:`~voice_infra.RateLimiter`.

    Backends are async context managers: ``async with`` opens the connection and closes
    it; the first call of an operation opens it too (once, even when many tasks start
    at the same time). ``aclose()`` releases it; the backend may be opened again.
    """

    #: The registered name and capability flags, set by the registry when it builds one.
    backend_name: str = ""
    capabilities: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._opened = False
        self._open_lock: asyncio.Lock | None = None

    def adjust_capabilities(self, declared: frozenset[str]) -> frozenset[str]:
        """The capabilities of this instance; a backend whose settings turn a feature off
        removes it here (the registry calls this with the declared flags)."""
        return declared

    async def open(self) -> None:
        """Connect to the backend; subclasses call ``super().open()`` once connected."""
        self._opened = True

    async def aclose(self) -> None:
        """Release connections; subclasses call ``super().aclose()``."""
        self._opened = False

    async def _ensure_open(self) -> None:
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self.open()

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
