"""What every backend shares, whatever its kind: name, capabilities and lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = ["Backend", "BackendSettings"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


class BackendSettings(BaseModel):
    """Base of :class:`~voice_infra.StorageSettings`,
    :class:`~voice_infra.RateLimiterSettings` and :class:`~voice_infra.CacheSettings`:
    frozen, unknown options refused."""

    # Errors keep pydantic's ValidationError as __cause__; its text must not echo secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def capabilities_turned_off(self) -> frozenset[str]:
        """The capability flags these settings turn off (none here): a backend built
        with them lacks those features even though its class or ``BackendSpec``
        declares them. Settings whose options disable a feature override this; the
        backend's :meth:`Backend.adjust_capabilities` applies it."""
        return frozenset()


class Backend:
    """Base of :class:`~voice_infra.StorageBackend`, :class:`~voice_infra.RateLimiter` and
    :class:`~voice_infra.CacheBackend`.

    Lifecycle: ``async with`` opens the backend and closes it; the first call of an
    operation opens it too. ``open()`` runs once even when many tasks start at the same
    time (they wait for that one call). When ``open()`` raises, ``aclose()`` is called
    at once, so whatever it acquired before failing is released, and the error
    propagates; the next use tries again. ``aclose()`` releases everything; the backend
    may be opened again afterwards.

    Capabilities are declared on the class (``capabilities = frozenset({"presign"})``),
    on the registry's :class:`~voice_infra.BackendSpec`, or both: an instance has their
    union, less what its settings turn off
    (:meth:`BackendSettings.capabilities_turned_off`, applied by
    :meth:`adjust_capabilities`).
    """

    #: The registered name, set by the registry when it builds one.
    backend_name: str = ""
    #: The kind (:mod:`voice_infra.kinds`) whose base class this is; a subclass's declared
    #: capabilities are checked against that kind's vocabulary.
    kind: ClassVar[str | None] = None
    # A subclass's ``capabilities = ...`` class attribute, moved here by __init_subclass__.
    _declared_capabilities: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("capabilities")
        if declared is not None and not isinstance(declared, property):
            # ``capabilities = frozenset({...})`` on a subclass declares the flags; the
            # property below (which adds the registry's and applies adjust_capabilities)
            # stays the one way to read them.
            cls._declared_capabilities = frozenset(declared)
            delattr(cls, "capabilities")
            from voice_infra.kinds import check_capabilities, kind_declared

            # A kind's base class may come before the kind's declaration: the registry
            # checks again when it builds the backend.
            if cls.kind is not None and kind_declared(cls.kind):
                check_capabilities(cls.kind, cls._declared_capabilities, cls.__qualname__)

    def __init__(self) -> None:
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._registered_capabilities: frozenset[str] | None = None

    # -- capabilities ----------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """The optional features this instance has: the flags its class and its
        ``BackendSpec`` declare, less those its settings turn off."""
        declared = type(self)._declared_capabilities or frozenset()
        registered = self._registered_capabilities or frozenset()
        return registered | self.adjust_capabilities(declared)

    @capabilities.setter
    def capabilities(self, value: frozenset[str]) -> None:
        # The registry sets the spec's flags (already adjusted) after building a backend.
        self._registered_capabilities = frozenset(value)

    @property
    def capabilities_declared(self) -> bool:
        """True when the class or the registry declared capabilities (even none, as
        ``capabilities = frozenset()``); False for a class built directly that never
        said which optional features it has."""
        return (
            self._registered_capabilities is not None
            or type(self)._declared_capabilities is not None
        )

    def adjust_capabilities(self, declared: frozenset[str]) -> frozenset[str]:
        """The capabilities of this instance (called with the declared flags): those its
        settings do not turn off. A backend declares what its settings turn off on the
        settings model (:meth:`BackendSettings.capabilities_turned_off`); overriding
        this method remains possible for rules that are not the settings'."""
        settings = getattr(self, "settings", None)
        if isinstance(settings, BackendSettings):
            return declared - settings.capabilities_turned_off()
        return declared

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the backend; subclasses call ``super().open()`` once connected."""
        self._opened = True

    async def aclose(self) -> None:
        """Release connections (and what :meth:`enter_async_context` and
        :meth:`push_async_callback` hold); subclasses call ``super().aclose()``.

        Called after a failed :meth:`open` too, so it must cope with a half-opened
        backend, and with being called when nothing is open."""
        self._opened = False
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    async def enter_async_context(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter ``manager`` (a driver's connection or session) and keep it until
        :meth:`aclose`, which exits it (last entered, first exited). For ``open()``:
        ``self.db = await self.enter_async_context(driver.connect(...))``."""
        return await self._resources().enter_async_context(manager)

    def push_async_callback(
        self, callback: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
    ) -> None:
        """Await ``callback(*args, **kwargs)`` in :meth:`aclose` (in reverse order of
        registration, with the contexts of :meth:`enter_async_context`)."""
        self._resources().push_async_callback(callback, *args, **kwargs)

    def _resources(self) -> AsyncExitStack:
        if self._exit_stack is None:
            self._exit_stack = AsyncExitStack()
        return self._exit_stack

    async def _ensure_open(self) -> None:
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._open_or_release()

    async def _open_or_release(self) -> None:
        """``open()``; if it raises (or is cancelled), ``aclose()`` releases what it had
        acquired, and the original error propagates (an error of ``aclose`` is logged)."""
        try:
            await self.open()
        except BaseException as exc:
            try:
                await self.aclose()
            except Exception:
                logger.warning(
                    "%s: aclose() after a failed open() raised too; the open() error "
                    "(%s) is the one raised",
                    self.backend_name or type(self).__name__,
                    type(exc).__name__,
                    exc_info=True,
                )
            raise

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
