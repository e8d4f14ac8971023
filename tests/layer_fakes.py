"""Test plugins for the layers' tests: backends that fail on demand and a third-party
style layer, registered on the test kit's isolated registry (``voice_plugin_registry``).

``FlakyStorage`` / ``FlakyRateLimiter`` are the memory backends plus a script of faults
per operation: ``backend.script("info", StorageUnavailableError("down"), 0.5, None)``
makes the next three ``_info`` calls raise, sleep 0.5 s first, then run normally.
``ScriptedCache`` (cache backend ``scripted``) is the memory cache whose operations can
fail (``cache.failing = {"get", "set", "delete"}``) or be slow (``cache.set_delay``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from voice_infra.backends.memory import (
    MemoryRateLimiter,
    MemoryRateLimiterSettings,
    MemoryStorage,
    MemoryStorageSettings,
)
from voice_infra.backends.memory_cache import MemoryCache, MemoryCacheSettings
from voice_infra.errors import CacheUnavailableError
from voice_infra.hookspecs import hookimpl
from voice_infra.layers import Layer, LayerContext, LayerSettings, LayerSpec, Operation
from voice_infra.plugins import BackendSpec
from voice_infra.ratelimit import ServerRateLimiterSettings

T = TypeVar("T")
Fault = BaseException | float | None


class _Faults:
    def __init__(self) -> None:
        self.plan: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self.calls: Counter[str] = Counter()

    def script(self, operation: str, *faults: Fault) -> None:
        self.plan[operation].extend(faults)

    async def hit(self, operation: str) -> None:
        self.calls[operation] += 1
        plan = self.plan.get(operation)
        if not plan:
            return
        fault = plan.popleft()
        if isinstance(fault, BaseException):
            raise fault
        if isinstance(fault, int | float):
            await asyncio.sleep(fault)


class FlakyStorage(MemoryStorage):
    """``memory`` storage whose private operations follow a fault script."""

    def __init__(self, settings: MemoryStorageSettings) -> None:
        super().__init__(settings)
        self.faults = _Faults()
        self.script = self.faults.script
        self.calls = self.faults.calls

    async def _write(self, key: str, body: Any, **kwargs: Any) -> Any:
        await self.faults.hit("write")
        data = await body.read_all()  # consume the source before a late fault
        await self.faults.hit("write_after_read")
        from voice_infra.storage import UploadBody

        written = await super()._write(key, UploadBody(data, chunk_size=1024), **kwargs)
        await self.faults.hit("written")  # stored, but the answer is lost
        return written

    async def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        await self.faults.hit("read")
        async for chunk in super()._read(key, chunk_size):
            await self.faults.hit("chunk")
            yield chunk

    async def _info(self, key: str) -> Any:
        await self.faults.hit("info")
        info = await super()._info(key)
        await self.faults.hit("info_read")  # read, but not answered yet
        return info

    async def _presign(self, key: str, expires_in: int, method: Any) -> str:
        await self.faults.hit("presign")
        return await super()._presign(key, expires_in, method)

    async def _delete(self, key: str) -> bool:
        await self.faults.hit("delete")
        return await super()._delete(key)

    async def _list(self, prefix: str) -> AsyncIterator[Any]:
        await self.faults.hit("list")
        async for info in super()._list(prefix):
            yield info


class ScriptedCache(MemoryCache):
    """``memory`` cache whose operations named in ``failing`` raise
    ``CacheUnavailableError``, and whose ``set`` waits ``set_delay`` seconds before
    storing."""

    def __init__(self, settings: MemoryCacheSettings) -> None:
        super().__init__(settings)
        self.failing: set[str] = set()
        self.set_delay = 0.0
        self.calls: Counter[str] = Counter()

    def _fail(self, operation: str) -> None:
        self.calls[operation] += 1
        if operation in self.failing:
            raise CacheUnavailableError(f"scripted cache: {operation} fails")

    async def _get(self, key: str) -> bytes | None:
        self._fail("get")
        return await super()._get(key)

    async def _set(self, key: str, value: bytes, ttl: float) -> None:
        self._fail("set")
        if self.set_delay:
            await asyncio.sleep(self.set_delay)
        await super()._set(key, value, ttl)

    async def _delete(self, key: str) -> bool:
        self._fail("delete")
        return await super()._delete(key)


class FlakyLimiterSettings(MemoryRateLimiterSettings, ServerRateLimiterSettings):
    """``memory`` limiter options plus a server limiter's ``fail_mode``."""


class FlakyRateLimiter(MemoryRateLimiter):
    """``memory`` limiter whose checks follow a fault script."""

    def __init__(self, settings: FlakyLimiterSettings) -> None:
        super().__init__(settings)
        self.faults = _Faults()
        self.script = self.faults.script
        self.calls = self.faults.calls

    async def _check(self, key: str, cost: int) -> Any:
        await self.faults.hit("check")
        return await super()._check(key, cost)

    async def _peek(self, key: str) -> Any:
        await self.faults.hit("peek")
        return await super()._peek(key)

    async def _clear(self, key: str) -> None:
        await self.faults.hit("clear")
        await super()._clear(key)


class JournalSettings(LayerSettings):
    """Options of the test layer ``journal``."""

    tag: str = "j"


class JournalLayer(Layer):
    """A third-party style layer: writes ``(tag, operation, args)`` into ``JOURNAL``, and
    its lifecycle hooks ``(tag, "configure", kind, settings)``, ``(tag, "open")``,
    ``(tag, "aclose")`` into ``LIFECYCLE``."""

    settings: JournalSettings

    def configure(self, context: LayerContext) -> None:
        LIFECYCLE.append((self.settings.tag, "configure", context.kind, context.settings))

    async def open(self) -> None:
        LIFECYCLE.append((self.settings.tag, "open"))

    async def aclose(self) -> None:
        LIFECYCLE.append((self.settings.tag, "aclose"))

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        JOURNAL.append((self.settings.tag, op.name, args))
        return await call()


JOURNAL: list[tuple[str, str, tuple[Any, ...]]] = []
LIFECYCLE: list[tuple[Any, ...]] = []


def build(registry: Any, kind: str = "storage", **section: Any) -> Any:
    """The backend of ``kind`` that a section with ``section``'s keys selects, from
    ``registry`` (the ``layer_registry`` fixture)."""
    import voice_infra as vi
    from voice_infra.factory import create_backend
    from voice_infra.kinds import get_kind

    settings = vi.Settings.from_keywords(**{get_kind(kind).section: section})
    return create_backend(kind, settings, registry=registry)


class Plugin:
    """The test plugin: ``flaky`` backends of both kinds, the ``scripted`` cache and the
    ``journal`` layer."""

    @hookimpl
    def register_storage_backends(self, register: Callable[[BackendSpec], None]) -> None:
        register(
            BackendSpec(
                name="flaky", factory=FlakyStorage, settings_model=MemoryStorageSettings,
                capabilities={"presign"},
            )
        )  # fmt: skip

    @hookimpl
    def register_rate_limiter_backends(self, register: Callable[[BackendSpec], None]) -> None:
        register(
            BackendSpec(
                name="flaky", factory=FlakyRateLimiter, settings_model=FlakyLimiterSettings,
                capabilities={"exact"},
            )
        )  # fmt: skip

    @hookimpl
    def register_cache_backends(self, register: Callable[[BackendSpec], None]) -> None:
        register(
            BackendSpec(
                name="scripted", factory=ScriptedCache, settings_model=MemoryCacheSettings,
                capabilities=set(),
            )
        )  # fmt: skip

    @hookimpl
    def register_layers(self, register: Callable[[LayerSpec], None]) -> None:
        register(LayerSpec(name="journal", factory=JournalLayer, settings_model=JournalSettings,
                           kinds=("storage",), description="test journal"))  # fmt: skip
