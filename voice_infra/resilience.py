"""Backend-agnostic resilience helpers: a circuit breaker and a throttled logger.

Both are meant for backends that talk to a server (Redis, S3...) and must stay cheap
when that server is down:

- :class:`CircuitBreaker` stops calling a failing server for a cool-down, then lets
  one probe through and closes again when it succeeds;
- :class:`ThrottledLogger` logs a warning at most once per interval per message key,
  so an outage does not write one line per request.

Only the standard library is imported. Both are designed for one asyncio event loop
(no threads, no locks): their methods never await, so each call is atomic within the
loop. The clock is injectable so tests can drive time by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["BreakerState", "CircuitBreaker", "ThrottledLogger"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after
    ``cooldown`` seconds (one probe call allowed) → closed when the probe succeeds, open
    again (for another cool-down) when it fails.

    Usage::

        if not breaker.allow():
            return fallback()          # costs microseconds while the server is down
        try:
            result = await call()
        except ServerDown:
            breaker.record_failure()
            return fallback()
        breaker.record_success()

    A caller that got ``allow() == True`` must report the outcome with
    :meth:`record_success` or :meth:`record_failure`; while a probe is outstanding every
    other caller is refused. If a probe's outcome is never reported (its task was
    cancelled), another probe is allowed after one more cool-down.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.clock = clock
        self._failures = 0
        self._opened_at: float | None = None  # set while open or half-open
        self._probe_started: float | None = None  # set while a half-open probe runs
        #: How many times the breaker went from closed to open (for metrics and tests).
        self.trips = 0

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` (refusing until the cool-down ends) or ``half_open``."""
        if self._opened_at is None:
            return "closed"
        if self._probe_started is not None:
            return "half_open"
        return "open" if self.clock() - self._opened_at < self.cooldown else "half_open"

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def allow(self) -> bool:
        """True when the caller may call the server now (closed, or the half-open probe)."""
        if self._opened_at is None:
            return True  # the hot path: one attribute test
        now = self.clock()
        if self._probe_started is not None:
            # A probe is in flight; a lost probe (cancelled task) is replaced after a
            # cool-down so the breaker cannot stay half-open forever.
            if now - self._probe_started < self.cooldown:
                return False
            self._probe_started = now
            return True
        if now - self._opened_at < self.cooldown:
            return False
        self._probe_started = now
        return True

    def record_success(self) -> None:
        """The call succeeded: reset the failure count and close the breaker."""
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def record_failure(self) -> None:
        """The call failed: count it; open the breaker at the threshold, or again when the
        half-open probe failed."""
        self._failures += 1
        now = self.clock()
        if self._opened_at is not None:
            # The probe (or a call started before the breaker opened) failed: another
            # full cool-down before the next probe.
            self._opened_at = now
            self._probe_started = None
        elif self._failures >= self.failure_threshold:
            self._opened_at = now
            self._probe_started = None
            self.trips += 1

    def reset(self) -> None:
        """Forget every failure (closed)."""
        self.record_success()

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failures={self._failures}, "
            f"threshold={self.failure_threshold}, cooldown={self.cooldown})"
        )


class ThrottledLogger:
    """Logs a message at most once per ``interval`` seconds per message key.

    Messages suppressed in between are counted, and the next emitted line says how many
    were suppressed, so nothing is silently lost::

        throttled = ThrottledLogger(logging.getLogger(__name__), interval=60)
        throttled.warning("redis-down", "Redis unreachable (%s); failing open", exc)
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval < 0:
            raise ValueError("interval must not be negative")
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than ``interval``
        seconds ago; return whether it was logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg = f"{msg} ({suppressed} similar message(s) suppressed)"
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: str, msg: str, *args: Any, **kwargs: Any) -> bool:
        """:meth:`log` at WARNING level."""
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def reset(self, key: str | None = None) -> None:
        """Forget when ``key`` (or every key) was last logged: the next message is logged."""
        if key is None:
            self._last.clear()
            self._suppressed.clear()
        else:
            self._last.pop(key, None)
            self._suppressed.pop(key, None)
