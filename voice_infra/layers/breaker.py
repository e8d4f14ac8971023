"""The ``breaker`` layer: the core's :class:`~voice_infra.resilience.CircuitBreaker` around
any backend.

``failure_threshold`` consecutive transient failures (backend unavailable or too slow;
for a rate limiter also a degraded decision, the wrapped limiter's own fail mode) open
it: calls then fail fast, without reaching the backend, with the kind's
backend-unavailable error (a rate limiter's decision: its fail mode). After ``cooldown``
seconds one probe goes through (half-open); its success closes the breaker, its failure
opens it again. Other errors (a missing object, a bad key) show the backend answering
and count as successes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import Field

from voice_infra.layers import (
    Duration,
    Layer,
    LayerSettings,
    Operation,
    closing_stream,
    is_transient,
)
from voice_infra.resilience import CircuitBreaker

__all__ = ["BREAKER_STATE_VALUES", "BreakerLayer", "BreakerSettings"]

T = TypeVar("T")

#: The value of the ``voice_infra_breaker_state`` gauge per state.
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class BreakerSettings(LayerSettings):
    """Options of the ``breaker`` layer."""

    failure_threshold: int = Field(
        default=5, ge=1, le=1_000_000, description="Consecutive failures that open it."
    )
    cooldown: Duration = Field(
        default=5.0, ge=0, le=3600, description="Seconds open before one probe goes through."
    )


class BreakerLayer(Layer):
    """A circuit breaker in front of the wrapped backend; ``self.breaker`` is its state."""

    settings: BreakerSettings

    def __init__(self, settings: BreakerSettings | None = None) -> None:
        super().__init__(settings if settings is not None else BreakerSettings())
        self.breaker = CircuitBreaker(self.settings.failure_threshold, self.settings.cooldown)

    def _refuse(self, op: Operation) -> Exception:
        return self.unavailable(
            op, f"circuit breaker open after {self.breaker.consecutive_failures} consecutive "
            f"failures; the next probe goes through {self.settings.cooldown:g} s after the last",
        )  # fmt: skip

    def _record(self, exc: BaseException | None, result: Any = None) -> None:
        if exc is None:
            if getattr(result, "degraded", False) is True:
                self.breaker.record_failure()  # the wrapped limiter could not ask its server
            else:
                self.breaker.record_success()
        elif is_transient(exc):
            self.breaker.record_failure()
        elif isinstance(exc, Exception):
            self.breaker.record_success()  # the backend answered, with an error
        # Cancelled: the outcome is unknown; the breaker allows another probe later.

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        if not self.breaker.allow():
            raise self._refuse(op)
        try:
            result = await call()
        except BaseException as exc:
            self._record(exc)
            raise
        self._record(None, result)
        return result

    async def stream(
        self, op: Operation, args: tuple[Any, ...], open_stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        if not self.breaker.allow():
            raise self._refuse(op)
        reported = False
        try:
            async with closing_stream(open_stream()) as items:
                async for item in items:
                    if not reported:
                        reported = True
                        self._record(None)
                    yield item
        except BaseException as exc:
            if not reported or is_transient(exc):
                reported = True
                self._record(exc)
            raise
        if not reported:
            self._record(None)  # an empty stream: the backend answered

    def state(self) -> str:
        """``breaker closed``, ``breaker open (N consecutive failures)``..."""
        breaker = self.breaker
        failures = breaker.consecutive_failures
        detail = f" ({failures} consecutive failures)" if failures else ""
        return f"breaker {breaker.state.replace('_', '-')}{detail}, opened {breaker.trips} time(s)"
