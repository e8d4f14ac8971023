"""What a rate limiter that asks a server does when the server cannot answer:
``fail_mode`` (open, closed, raise), a circuit breaker and a throttled warning, in one
implementation (:class:`FailModeGuard`) for every such backend; and how it keeps its
calls within its connection pool (:class:`CallSlots`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal

from pydantic import Field

from voice_infra.errors import RateLimiterUnavailableError
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit.base import RateLimiterSettings
from voice_infra.ratelimit.policies import RateLimitPolicy
from voice_infra.resilience import CircuitBreaker, ThrottledLogger

__all__ = [
    "CallSlot",
    "CallSlots",
    "FailMode",
    "FailModeGuard",
    "ServerRateLimiterSettings",
    "degraded_decision",
]


def degraded_decision(
    policies: Sequence[RateLimitPolicy], *, allowed: bool, now: float
) -> RateLimitInfo:
    """The answer given without the backend: fail-open allows, fail-closed denies."""
    policy = min(policies, key=lambda p: p.limit / p.window)
    return RateLimitInfo(
        allowed=allowed,
        limit=policy.limit,
        window=policy.window,
        remaining=policy.limit if allowed else 0,
        reset_at=datetime.fromtimestamp(now + (0 if allowed else policy.window), UTC),
        retry_after=0.0 if allowed else float(policy.window),
        policy=str(policy),
        degraded=True,
    )


FailMode = Literal["open", "closed", "raise"]


class ServerRateLimiterSettings(RateLimiterSettings):
    """Options of every rate limiter that asks a server (Redis, the ``limits`` storages):
    what a decision is when the server cannot answer in time."""

    fail_mode: FailMode = Field(
        default="open",
        description="When the server cannot answer: 'open' allows, 'closed' denies (both "
        "marked degraded), 'raise' raises RateLimiterUnavailableError.",
    )
    breaker_failure_threshold: int = Field(
        default=5, ge=1, le=1_000_000,
        description="Consecutive server failures that open the circuit breaker.",
    )  # fmt: skip
    breaker_cooldown: float = Field(
        default=5.0, ge=0, le=3600,
        description="Seconds the open breaker answers without the server before one probe.",
    )  # fmt: skip
    warning_interval: float = Field(
        default=60.0, ge=0, le=86_400,
        description="At most one 'server unavailable' warning per this many seconds.",
    )  # fmt: skip


class FailModeGuard:
    """``fail_mode``, a circuit breaker and a throttled warning around the server calls of
    a rate limiter; one implementation for every backend that has a server.

    In a backend's ``_check``::

        if not guard.allow():
            return guard.unavailable(None)      # breaker open: microseconds, no I/O
        try:
            reply = await ask_the_server()
        except SERVER_DOWN_ERRORS as exc:
            return guard.failed(exc)            # fail-mode answer, or raises in 'raise'
        guard.succeeded()

    ``server`` names the server in messages; it must not hold a password (use
    :func:`voice_infra.mask_url`).
    """

    def __init__(
        self,
        settings: ServerRateLimiterSettings,
        policies: Sequence[RateLimitPolicy],
        *,
        server: str,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode: FailMode = settings.fail_mode
        self.policies = tuple(policies)
        self.server = server
        self.logger = logger
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold, settings.breaker_cooldown, clock=clock
        )
        self.warnings = ThrottledLogger(logger, settings.warning_interval, clock=clock)

    def allow(self) -> bool:
        """Whether to call the server now (False while the breaker is open)."""
        return self.breaker.allow()

    def succeeded(self) -> None:
        """Report a call that the server answered."""
        if self.breaker.consecutive_failures:
            self.logger.info("%s answers again", self.server)
        self.breaker.record_success()

    def failed(self, exc: BaseException) -> RateLimitInfo:
        """Report a call the server could not answer; return the fail-mode decision."""
        self.breaker.record_failure()
        return self.unavailable(exc)

    def unavailable(self, exc: BaseException | None) -> RateLimitInfo:
        """The fail-mode decision when the server could not be asked (``exc``) or the
        breaker is open (``exc`` is None); raises in ``raise`` mode."""
        reason = (
            "circuit breaker open after repeated failures"
            if exc is None
            else f"{type(exc).__name__}: {exc}"
        )
        if self.mode == "raise":
            raise RateLimiterUnavailableError(f"{self.server} unavailable ({reason})") from exc
        self.warnings.warning(
            "unavailable",
            "%s unavailable (%s); failing %s: decisions are marked degraded (breaker %s)",
            self.server, reason, self.mode, self.breaker.state,
        )  # fmt: skip
        return degraded_decision(self.policies, allowed=self.mode == "open", now=time.time())

    def require(self, action: str) -> None:
        """Before a call that has no fail-mode answer (``clear_user_limit``): raise
        :class:`RateLimiterUnavailableError` while the breaker is open."""
        if not self.breaker.allow():
            raise RateLimiterUnavailableError(
                f"{self.server} unavailable (circuit breaker open); {action} was not done"
            )

    def action_failed(self, exc: BaseException, action: str) -> RateLimiterUnavailableError:
        """Report a failed call of :meth:`require`'s kind; return the error to raise."""
        self.breaker.record_failure()
        return self.not_done(exc, action)

    def not_done(self, cause: BaseException, action: str) -> RateLimiterUnavailableError:
        """The error of a :meth:`require` call that local overload stopped (no free slot,
        the client's own pool limit): the server is not to blame, so the breaker is not
        told."""
        error = RateLimiterUnavailableError(
            f"{self.server} could not {action}: {type(cause).__name__}: {cause}"
        )
        error.__cause__ = cause
        return error


class CallSlots:
    """At most ``size`` calls of one rate limiter to its server in flight; more calls
    wait their turn, first come first served.

    Drivers' connection pools (redis-py's) raise instead of waiting when every connection
    is busy, which would turn a burst of checks on a healthy server into fail-mode
    answers. With as many slots as connections the pool is never asked for more than it
    has. A call that gets no slot in time is local overload, not a server failure: it
    gets the fail-mode answer (:meth:`FailModeGuard.unavailable`, or
    :meth:`FailModeGuard.not_done` for a clear) and the breaker is not told.

    ``size=None``: no pool to protect (one multiplexed connection, an in-process
    store); every slot is free at once.
    """

    def __init__(self, size: int | None) -> None:
        self.size = size
        self._semaphore = None if size is None else asyncio.Semaphore(size)

    def slot(self) -> CallSlot:
        """A slot for one call (taken with :meth:`CallSlot.acquire` or ``async with``)."""
        return CallSlot(self._semaphore)

    def overloaded(
        self, setting: str, seconds: float, cause: BaseException | None = None
    ) -> TimeoutError:
        """Why a call that got no slot within ``seconds`` (the option ``setting``) got
        the fail-mode answer."""
        error = TimeoutError(
            f"no free connection slot within {setting} = {seconds} s: pool_size = "
            f"{self.size} checks were in flight (local overload, not counted as a server "
            f"failure; raise pool_size or {setting}, or add processes)"
        )
        error.__cause__ = cause
        return error


class CallSlot:
    """One slot of :class:`CallSlots` for one call (without a pool to protect,
    ``acquire`` and ``release`` do nothing).

    Either ``await slot.acquire(max_wait)`` (False: none came free in time) and
    ``slot.release()`` in a ``finally``, or ``async with slot:`` inside the caller's own
    deadline, after which :attr:`acquired` tells whether a timeout struck while waiting
    for the slot (False: local overload, the server was never asked) or during the call.
    """

    __slots__ = ("_held", "_semaphore", "acquired")

    def __init__(self, semaphore: asyncio.Semaphore | None) -> None:
        self._semaphore = semaphore
        self._held = False
        #: Whether the slot was obtained (it stays True after :meth:`release`).
        self.acquired = semaphore is None

    async def acquire(self, max_wait: float | None = None) -> bool:
        """Take the slot, waiting at most ``max_wait`` seconds (None: as long as the
        caller's own deadline allows); False when none came free in time."""
        semaphore = self._semaphore
        if semaphore is None or self._held:
            return True
        if max_wait is None or not semaphore.locked():
            await semaphore.acquire()  # a free slot: returns without suspending
        else:
            try:
                async with asyncio.timeout(max_wait):
                    await semaphore.acquire()
            except TimeoutError:
                return False
        self._held = self.acquired = True
        return True

    def release(self) -> None:
        """Give the slot back (nothing when it is not held)."""
        if self._held:
            self._held = False
            assert self._semaphore is not None  # held implies a semaphore
            self._semaphore.release()

    async def __aenter__(self) -> CallSlot:
        await self.acquire()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
