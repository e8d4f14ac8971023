"""The ``limits`` rate limiter: voice-infra's interface on the storages and strategies of
the `limits <https://limits.readthedocs.io>`_ library.

A check reads every policy's window (one storage call per policy), decides with the
core's arithmetic (:func:`~voice_infra.ratelimit.decide`), and only when every policy
allows it records the hit, policy by policy, with ``limits``' own atomic ``hit``. The
read-then-hit sequence is not atomic across policies or processes: see ``docs/limits.md``
("What it cannot do") for what that means, and why this backend does not declare the
``exact`` capability.

Keys are ``limits``' own (its ``RateLimitItem.key_for``):
``<key_prefix>:<mw|fw|swc>/<identity>/<limit>/<window>/second``, the tag naming the strategy,
under whatever prefix the storage adds (``LIMITS:`` on Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar, cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import SlidingWindowCounterSupport, Storage
from limits.aio.strategies import STRATEGIES
from limits.aio.strategies import RateLimiter as LimitsStrategy
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

from voice_infra.errors import BackendDependencyError, ConfigError
from voice_infra.masking import mask_url, reveal_secrets
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit import (
    CallSlots,
    FailModeGuard,
    PolicyState,
    RateLimiter,
    RateLimitPolicy,
    decide,
)
from voice_infra.resilience import CircuitBreaker
from voice_infra_limits._limits_compat import async_storage_classes
from voice_infra_limits.settings import REDIS_FAMILY, LimitsRateLimiterSettings

__all__ = ["LimitsRateLimiter"]

logger = logging.getLogger("voice_infra_limits")

T = TypeVar("T")

#: The extra of this distribution that installs each storage family's driver.
_EXTRAS = {"redis": "redis", "valkey": "valkey", "memcached": "memcached", "mongodb": "mongodb"}
#: Which storage methods each strategy needs (limits raises NotImplementedError otherwise).
_NEEDS = {
    "moving-window": ("acquire_entry", "get_moving_window"),
    "fixed-window": ("incr", "get", "get_expiry"),
    "sliding-window-counter": ("acquire_sliding_window_entry", "get_sliding_window"),
}
#: Second part of the key namespace, per strategy.
_TAGS = {"moving-window": "mw", "fixed-window": "fw", "sliding-window-counter": "swc"}
#: A denial never says "retry now": storages with whole-second TTLs can round to zero.
_MIN_RETRY = 0.001


class _StoreFailure(Exception):
    """A call into ``limits`` or its driver raised; the original is ``__cause__``."""


class _Reading(NamedTuple):
    """What one storage call says about one policy, in ``limits``' terms."""

    remaining: int  # moving/fixed window: limit - count (count may exceed the limit)
    reset_time: float  # moving window: oldest hit + window; fixed window: counter expiry
    previous: int = 0  # sliding-window counter: the two windows' counts and TTLs
    previous_ttl: float = 0.0
    current: int = 0
    current_ttl: float = 0.0


def _is_local(exc: BaseException) -> bool:
    """Whether ``exc`` is the client's own pool limit, not the store's fault: redis-py's
    (and valkey-py's) ``MaxConnectionsError``, matched by name so that no driver needs to
    be importable."""
    return any(cls.__name__ == "MaxConnectionsError" for cls in type(exc).__mro__)


async def _call(awaitable: Awaitable[T]) -> T:
    # Everything awaited through here is limits or its driver: any exception means the
    # storage could not answer, and is turned into one marker the callers catch.
    try:
        return await awaitable
    except Exception as exc:
        raise _StoreFailure(f"{type(exc).__name__}: {exc}") from exc


class LimitsRateLimiter(RateLimiter):
    """Rate limiter on any async storage of ``limits``; see ``docs/limits.md``.

    When the storage cannot answer within ``timeout`` seconds (or raises), ``fail_mode``
    decides through the core :class:`~voice_infra.ratelimit.FailModeGuard`, circuit
    breaker and throttled warning included, exactly as for the ``redis`` backend.
    """

    settings: LimitsRateLimiterSettings

    def __init__(self, settings: LimitsRateLimiterSettings) -> None:
        super().__init__(settings)
        self.guard = FailModeGuard(
            settings, self.policies, server=f"limits storage at {mask_url(settings.storage_uri)}",
            logger=logger,
        )  # fmt: skip
        self._storage_class = async_storage_classes()[settings.scheme]
        missing = [m for m in _NEEDS[settings.strategy] if not hasattr(self._storage_class, m)]
        if missing:
            supported = [s for s, needs in _NEEDS.items() if all(
                hasattr(self._storage_class, m) for m in needs
            )]  # fmt: skip
            raise ConfigError(
                f"invalid configuration in [rate_limit] (backend 'limits'):\n  strategy: the "
                f"limits storage for {settings.scheme.removeprefix('async+')}:// does not "
                f"implement {settings.strategy!r}; use one of: {', '.join(supported)}"
            )
        #: Per strategy, one ``limits`` item per policy. The namespace names the strategy:
        #: the moving and fixed windows would otherwise share keys of different Redis
        #: types (a list, a counter), and a strategy switch would fail with WRONGTYPE.
        self._items_by_strategy: dict[str, tuple[RateLimitItem, ...]] = {
            strategy: tuple(
                RateLimitItemPerSecond(p.limit, p.window, namespace=f"{settings.key_prefix}:{tag}")
                for p in self.policies
            )
            for strategy, tag in _TAGS.items()
        }
        #: The configured strategy's items, in the order of ``policies``.
        self.items = self._items_by_strategy[settings.strategy]
        self._storage: Storage | None = None
        self._strategy: LimitsStrategy | None = None
        #: At most pool_size storage exchanges in flight (no limit for memory://, which
        #: has no connections); checks beyond it wait their turn within ``timeout``.
        self._slots = CallSlots(None)

    # -- lifecycle ---------------------------------------------------------------------

    def storage_options(self) -> dict[str, Any]:
        """The keyword arguments given to ``limits.storage.storage_from_string``: the
        user's ``storage_options`` plus bounded timeouts and redis-py for Redis URIs."""
        settings = self.settings
        options: dict[str, Any] = reveal_secrets(settings.storage_options)
        # The limits storages' own exception wrapping is off: every exception is wrapped
        # here, in the core error tree (RateLimiterUnavailableError or the fail mode).
        options.setdefault("wrap_exceptions", False)
        if settings.scheme in REDIS_FAMILY:
            # limits 5.x defaults to coredis, whose 6.x releases its storage cannot use;
            # redis-py's asyncio client works and is faster (see docs/limits.md).
            options.setdefault("implementation", "redispy")
            # The pool holds at least as many connections as checks may be in flight.
            options.setdefault("max_connections", settings.pool_size)
            options.setdefault("socket_timeout", settings.timeout / 2)
            options.setdefault("socket_connect_timeout", settings.timeout / 2)
            if options["implementation"] == "redispy" and "sentinel" not in settings.scheme:
                # redis-py's default retries 3 times with up to seconds of backoff; one
                # immediate retry covers a stale pooled connection after a restart.
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff

                options.setdefault("retry", Retry(NoBackoff(), 1))
        return options

    async def open(self) -> None:
        """Create the storage and strategy; no I/O (the store may be down at start-up:
        the first checks then get the fail-mode answer)."""
        settings = self.settings
        family = settings.scheme.removeprefix("async+").split("+")[0].rstrip("s")
        extra = _EXTRAS.get(family)
        hint = f"pip install 'voice-infra-limits[{extra}]'" if extra else "see docs/limits.md"
        options = self.storage_options()
        shown = mask_url(settings.storage_uri)  # for messages
        # Checked before limits builds the storage: a storage whose driver is missing is
        # left half-built, and MongoDBStorage.__del__ then raises AttributeError.
        missing = _missing_driver(self._storage_class, options.get("implementation"))
        if missing:
            raise BackendDependencyError(
                f"the limits storage for {shown} needs the Python package "
                f"{missing!r}, which is not installed; install it with: {hint}"
            )
        try:
            storage = storage_from_string(settings.async_uri, **options)
        except ConfigurationError as exc:
            raise BackendDependencyError(
                f"the limits storage for {shown} cannot be created: {exc}; "
                f"install its driver with: {hint}"
            ) from exc
        except ModuleNotFoundError as exc:  # the redis Retry import above
            raise BackendDependencyError(
                f"the limits storage for {shown} needs redis-py; install it "
                "with: pip install 'voice-infra-limits[redis]'"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"invalid configuration in [rate_limit] (backend 'limits'): the storage "
                f"for {shown} rejected storage_options: {type(exc).__name__}: {exc}"
            ) from exc
        self._storage = cast(Storage, storage)
        if settings.scheme != "async+memory":
            # A smaller pool set in storage_options bounds the slots too.
            cap = options.get("max_connections")
            size = settings.pool_size
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1:
                size = min(size, cap)
            self._slots = CallSlots(size)
        # STRATEGIES holds the three concrete strategies (typed as the abstract base).
        self._strategy = STRATEGIES[settings.strategy](storage)  # type: ignore[abstract]
        await super().open()

    async def aclose(self) -> None:
        storage, self._storage = self._storage, None
        self._strategy = None
        self._slots = CallSlots(None)
        if storage is not None:
            await _close_storage(storage)
        await super().aclose()

    @property
    def storage(self) -> Storage:
        """The ``limits`` async storage (open first)."""
        if self._storage is None:
            raise RuntimeError("the limits rate limiter is not open; use 'async with' first")
        return self._storage

    @property
    def strategy(self) -> LimitsStrategy:
        """The ``limits`` strategy object (open first)."""
        if self._strategy is None:
            raise RuntimeError("the limits rate limiter is not open; use 'async with' first")
        return self._strategy

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker in front of the storage."""
        return self.guard.breaker

    # -- decisions ---------------------------------------------------------------------

    async def _check(self, key: str, cost: int) -> RateLimitInfo:
        return await self._decide(key, cost, peek=False)

    async def _peek(self, key: str) -> RateLimitInfo:
        return await self._decide(key, 1, peek=True)

    async def _decide(self, key: str, cost: int, *, peek: bool) -> RateLimitInfo:
        guard = self.guard
        slot = self._slots.slot()
        try:
            # One deadline for the wait for a slot and the exchange with the store.
            async with asyncio.timeout(self.settings.timeout), slot:
                # After the slot: a check that queued while the breaker opened answers
                # without the store, and a half-open probe is spent only on a real call.
                if not guard.allow():
                    return guard.unavailable(None)
                info = await self._ask(key, cost, peek=peek)
        except _StoreFailure as failure:
            cause = failure.__cause__ or failure
            if _is_local(cause):  # the client's pool, not the store: not a breaker failure
                return guard.unavailable(cause)
            return guard.failed(cause)
        except TimeoutError as exc:  # asyncio.timeout's (the driver's are _StoreFailure)
            if not slot.acquired:  # local overload: the store was never asked
                return guard.unavailable(self._overloaded(exc))
            return guard.failed(self._timed_out(exc))
        guard.succeeded()
        return info

    def _timed_out(self, cause: BaseException) -> TimeoutError:
        timeout = TimeoutError(f"no answer within timeout = {self.settings.timeout} s")
        timeout.__cause__ = cause
        return timeout

    def _overloaded(self, cause: BaseException) -> TimeoutError:
        return self._slots.overloaded("timeout", self.settings.timeout, cause)

    async def _ask(self, key: str, cost: int, *, peek: bool) -> RateLimitInfo:
        readings = [await self._read(item, key) for item in self.items]
        now = time.time()
        states = [
            self._state(policy, reading, now=now, cost=cost, peek=peek)
            for policy, reading in zip(self.policies, readings, strict=True)
        ]
        if peek or not all(state.fits for state in states):
            return decide(states, now=now)
        # Record, tightest policy first: if another client wins a race for the last slot,
        # the request is refused before it spent anything in the roomier policies.
        strategy = self.strategy
        order = sorted(range(len(states)), key=lambda i: states[i].policy.limit - states[i].used)
        for index in order:
            if not await _call(strategy.hit(self.items[index], key, cost=cost)):
                # Lost a race since the read: deny, with that policy's fresh state for
                # this cost (nothing of it was recorded there).
                fresh = self._state(
                    self.policies[index], await self._read(self.items[index], key),
                    now=time.time(), cost=cost, peek=False,
                )  # fmt: skip
                states[index] = replace(
                    fresh, fits=False, used=fresh.used - (cost if fresh.fits else 0),
                    retry_after=max(fresh.retry_after, _MIN_RETRY),
                )  # fmt: skip
                return decide(states, now=time.time())
        return decide(states, now=now)

    async def _read(self, item: RateLimitItem, key: str) -> _Reading:
        if self.settings.strategy == "sliding-window-counter":
            storage = cast(SlidingWindowCounterSupport, self.storage)
            previous, previous_ttl, current, current_ttl = await _call(
                storage.get_sliding_window(item.key_for(key), item.get_expiry())
            )
            return _Reading(0, 0.0, previous, previous_ttl, current, current_ttl)
        reset_time, remaining = await _call(self.strategy.get_window_stats(item, key))
        return _Reading(remaining, reset_time)

    def _state(
        self, policy: RateLimitPolicy, reading: _Reading, *, now: float, cost: int, peek: bool
    ) -> PolicyState:
        """One policy's :class:`PolicyState` from a storage reading (pure arithmetic)."""
        need = 1 if peek else cost
        window = policy.window
        strategy = self.settings.strategy
        if strategy == "sliding-window-counter":
            return _counter_state(policy, reading, now=now, cost=cost, peek=peek)
        count = max(0, policy.limit - reading.remaining)
        fits = count + need <= policy.limit
        records = fits and not peek
        # Moving window: reset_time is when the oldest hit leaves the window, so the wait
        # is exact for a cost of 1 and a lower bound for more (limits does not say when
        # the n-th oldest leaves). Fixed window: when the counter expires, exact to the
        # storage's TTL resolution.
        retry_after = 0.0 if fits else max(reading.reset_time - now, _MIN_RETRY)
        if strategy == "moving-window":
            # limits does not report the newest hit: now + window is exact after a hit
            # and an upper bound otherwise.
            reset_at = now + window if (records or count) else now
        elif count:
            reset_at = max(reading.reset_time, now)
        else:
            reset_at = now + window if records else now
        return PolicyState(policy, count + (cost if records else 0), fits, retry_after, reset_at)

    # -- clearing ----------------------------------------------------------------------

    async def _clear(self, key: str) -> None:
        """Delete every key of ``key``: all configured policies, every strategy's keys
        (a limiter switched to another strategy leaves none of the old ones behind)."""
        action = f"clear {key!r}"
        self.guard.require(action)
        storage = self.storage
        slot = self._slots.slot()
        try:
            async with asyncio.timeout(self.settings.timeout), slot:
                for strategy, items in self._items_by_strategy.items():
                    for item in items:
                        if strategy != "sliding-window-counter":
                            await _call(storage.clear(item.key_for(key)))
                        elif isinstance(storage, SlidingWindowCounterSupport):
                            await _call(
                                storage.clear_sliding_window(item.key_for(key), item.get_expiry())
                            )
        except _StoreFailure as failure:
            cause = failure.__cause__ or failure
            if _is_local(cause):
                raise self.guard.not_done(cause, action) from cause
            raise self.guard.action_failed(cause, action) from cause
        except TimeoutError as exc:
            if not slot.acquired:
                raise self.guard.not_done(self._overloaded(exc), action) from exc
            raise self.guard.action_failed(self._timed_out(exc), action) from exc
        self.guard.succeeded()


def _counter_state(
    policy: RateLimitPolicy, reading: _Reading, *, now: float, cost: int, peek: bool
) -> PolicyState:
    """The sliding-window counter's state from ``limits``' two windows.

    ``limits`` weighs the previous window by its remaining TTL (``previous * ttl /
    window + current``, the core's formula) and allows while ``floor(weighted) + cost``
    fits, so it may admit one request the core's own counter would refuse. Its windows
    start at a key's first hit on Redis and at multiples of the window in memory; both
    are read from the TTLs.
    """
    window = policy.window
    need = 1 if peek else cost
    if reading.current_ttl > 0:
        elapsed = 2 - reading.current_ttl / window
    elif reading.previous_ttl > 0:
        elapsed = 1 - reading.previous_ttl / window
    else:
        elapsed = 0.0
    elapsed = min(max(elapsed, 0.0), 1.0 - 1e-9)
    previous = reading.previous if reading.previous_ttl > 0 else 0
    weighted = previous * (1 - elapsed) + reading.current
    counted = math.floor(weighted + 1e-9)
    fits = counted + need <= policy.limit
    records = fits and not peek
    retry_after = 0.0
    if not fits:
        retry_after = _counter_wait(policy, previous, reading.current, elapsed, need)
    current = reading.current + (cost if records else 0)
    windows_left = 2 if current else 1 if previous else 0
    reset_at = now + max(0.0, (windows_left - elapsed) * window) if windows_left else now
    return PolicyState(policy, counted + (cost if records else 0), fits, retry_after, reset_at)


def _missing_driver(storage_class: type, implementation: object) -> str | None:
    """The driver module a ``limits`` storage class needs and cannot import, if any."""
    dependencies = getattr(storage_class, "DEPENDENCIES", [])
    names = [str(name).split(".")[0] for name in dependencies]
    if isinstance(dependencies, dict):
        # Alternatives (redis/coredis/valkey, memcachio/emcache): the one chosen, or any.
        chosen = {"redispy": "redis", "coredis": "coredis", "valkey": "valkey"}.get(
            str(implementation)
        )
        names = [chosen] if chosen in names else names
        if any(importlib.util.find_spec(name) is not None for name in names):
            return None
        return names[0] if names else None
    return next((name for name in names if importlib.util.find_spec(name) is None), None)


def _counter_wait(
    policy: RateLimitPolicy, previous: int, current: int, elapsed: float, cost: int
) -> float:
    """Seconds until ``limits`` allows ``cost``: until ``weighted < limit - cost + 1``.

    The core's ``sliding_window_counter_state`` answers for its own rule (``weighted +
    cost <= limit``), which is one request stricter; this is the same reasoning for
    ``limits``' rule, with 1 ms added because the inequality is strict.
    """
    window, threshold = policy.window, policy.limit - cost + 1
    if current < threshold and previous > 0:
        # Later in this window the previous window's weight shrinks enough.
        fraction = 1 - (threshold - current) / previous
        return max(0.0, fraction - elapsed) * window + _MIN_RETRY
    # In the next window this window's count is the weighted one.
    fraction = max(0.0, 1 - threshold / current) if current else 0.0
    return (1 - elapsed) * window + fraction * window + _MIN_RETRY


async def _close_storage(storage: Storage) -> None:
    """Release what a ``limits`` storage holds; limits 5 has no close method of its own."""
    # The memory storage runs an expiry task on the event loop: stop it, or it outlives
    # the limiter ("Task was destroyed but it is pending").
    timer = getattr(storage, "timer", None)
    if isinstance(timer, asyncio.Task) and not timer.done():
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
    # Redis/Valkey storages keep their client(s) on a bridge (redis-py: aclose()).
    bridge = getattr(storage, "bridge", None)
    for name in ("storage", "storage_replica"):
        client = getattr(bridge, name, None)
        close = getattr(client, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):  # closing a dead connection may raise
                await close()
    sentinel = getattr(bridge, "sentinel", None)
    for client in getattr(sentinel, "sentinels", None) or ():
        close = getattr(client, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
