"""The ``retry`` layer: transient errors retried, on operations safe to repeat only.

Transient means a backend-unavailable error (``BackendUnavailableError``: a server
that did not answer, a ``timeout`` layer inside this one); a missing object or a bad key
is never retried. Safe to repeat means the :class:`~voice_infra.layers.Operation` says so:
reads, info, exists, listings, deletes, presigning, and uploads whose source can be
replayed (bytes, a path, a seekable file, rewound before each attempt); never a rate
limiter's check (it may have been counted) nor an upload from an async iterable or a
pipe (what the failed attempt consumed is gone). A stream is retried until its first
item reaches the caller, never after.

The loop is tenacity's (exponential backoff with full jitter, a cap on attempts and an
overall deadline). It is entered only after a first attempt failed: setting it up costs
about 30 µs, which a call that succeeds at once does not pay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from voice_infra.layers import (
    Duration,
    Layer,
    LayerSettings,
    Operation,
    closing_stream,
    is_transient,
)
from voice_infra.resilience import log_throttled

__all__ = ["RetryLayer", "RetrySettings"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


class RetrySettings(LayerSettings):
    """Options of the ``retry`` layer."""

    attempts: int = Field(
        default=3, ge=1, le=100, description="Attempts at most, the first included."
    )
    initial: Duration = Field(
        default=0.1, ge=0, le=3600,
        description="Backoff base: the wait before attempt n+1 is random in "
        "[0, min(max_wait, initial * 2**(n-1))] (full jitter).",
    )  # fmt: skip
    max_wait: Duration = Field(default=5.0, ge=0, le=3600, description="Longest single wait.")
    deadline: Duration = Field(
        default=30.0, gt=0, le=86_400,
        description="No attempt starts later than this after the first one started.",
    )  # fmt: skip


class _Deadline(stop_base):
    """Stop when the next attempt would start after ``deadline`` seconds from ``started``
    (tenacity's ``stop_before_delay`` counts from its own start, after our first try)."""

    def __init__(self, started: float, deadline: float) -> None:
        self.started, self.deadline = started, deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return time.monotonic() - self.started + upcoming >= self.deadline


_EMPTY: Any = object()


class RetryLayer(Layer):
    """Retries transient failures of repeatable operations (see the module doc)."""

    settings: RetrySettings

    def __init__(self, settings: RetrySettings | None = None) -> None:
        super().__init__(settings if settings is not None else RetrySettings())
        #: Attempts made after a failure, for tests and doctor.
        self.retries = 0

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        if not op.repeatable:
            return await call()
        return await self._retry(op, call)

    async def _retry(self, op: Operation, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            return await call()
        except BaseException as exc:
            if not is_transient(exc) or self.settings.attempts == 1:
                raise
            failed: BaseException | None = exc
        # The first attempt failed: tenacity runs the rest. Its first "attempt" replays
        # that failure (no call), so its backoff and stop see every attempt.
        settings = self.settings
        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.attempts) | _Deadline(started, settings.deadline),
            wait=wait_random_exponential(multiplier=settings.initial, max=settings.max_wait),
            retry=retry_if_exception(is_transient),
            before_sleep=lambda state: self._before_sleep(op, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if failed is not None:
                    error, failed = failed, None
                    raise error
                self.retries += 1
                return await call()
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    def _before_sleep(self, op: Operation, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log_throttled(
            logger, f"retry:{op.kind}:{op.backend}:{op.name}",
            "%s backend %r: %s failed (%s: %s); retrying in %.3f s (attempt %d of %d)",
            op.kind.replace("_", "-"), op.backend, op.name, type(error).__name__, error,
            state.upcoming_sleep, state.attempt_number + 1, self.settings.attempts,
        )  # fmt: skip

    async def stream(
        self, op: Operation, args: tuple[Any, ...], open_stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        if not op.repeatable:
            async with closing_stream(open_stream()) as items:
                async for item in items:
                    yield item
            return

        async def first_item() -> tuple[AsyncIterator[T], Any]:
            items = open_stream()
            try:
                return items, await anext(items)
            except StopAsyncIteration:
                first = _EMPTY
            except BaseException:
                await _aclose(items)
                raise
            await _aclose(items)
            return items, first

        items, first = await self._retry(op, first_item)
        if first is _EMPTY:
            return
        # From the first item on, the caller has data: a failure now is the caller's.
        async with closing_stream(items):
            yield first
            async for item in items:
                yield item


async def _aclose(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()
