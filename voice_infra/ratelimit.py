"""Rate limiting: policies, the interface every rate-limiter backend implements, and
the decision arithmetic that backends share.

A backend subclasses :class:`RateLimiter` and implements three coroutines:
``_check(key, cost)`` (decide and, when allowed, record), ``_peek(key)`` (the same
decision for cost 1 without recording) and ``_clear(key)``. Validation of keys,
costs and policies happens here once, for every backend.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from voice_infra.base import Backend
from voice_infra.errors import (
    ConfigError,
    InvalidCostError,
    InvalidRateLimitKeyError,
    RateLimiterUnavailableError,
    RateLimitExceededError,
)
from voice_infra.models import RateLimitInfo, trusted_rate_limit_info
from voice_infra.resilience import CircuitBreaker, ThrottledLogger
from voice_infra.text import refuse_unsafe_characters

__all__ = [
    "Algorithm",
    "FailMode",
    "FailModeGuard",
    "PolicyState",
    "RateLimitPolicy",
    "RateLimiter",
    "RateLimiterSettings",
    "ServerRateLimiterSettings",
    "decide",
    "degraded_decision",
    "parse_policies",
    "sliding_window_counter_state",
    "validate_rate_limit_key",
]

Algorithm = Literal["sliding_log", "sliding_window_counter"]

_UNITS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
}
_UNIT_ALIASES: dict[str, str] = {
    "s": "second", "sec": "second", "secs": "second", "second": "second", "seconds": "second",
    "m": "minute", "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "d": "day", "day": "day", "days": "day",
}  # fmt: skip
_POLICY_RE = re.compile(
    r"^\s*(?P<limit>[0-9]+)\s*(?:/|per)\s*(?P<multiple>[0-9]+)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE | re.ASCII,
)
_POLICY_HELP = (
    "write policies as '<limit>/<unit>' or '<limit> per <n> <unit>', for example "
    "'5/second', '100 per minute' or '10 per 30 seconds' (units: second, minute, hour, day)"
)
MAX_KEY_LENGTH = 512
# Bounds every backend can honour: limits fit a 32-bit signed integer (Lua, Redis, the
# limits library) and windows stay within a year, so window end times never overflow.
MAX_POLICY_LIMIT = 2**31 - 1
MAX_POLICY_WINDOW = 366 * 24 * 3600


class RateLimitPolicy(BaseModel):
    """``limit`` requests per ``window`` seconds, parsed from text like ``"20/minute"``."""

    model_config = ConfigDict(frozen=True)

    limit: int = Field(gt=0, le=MAX_POLICY_LIMIT)
    window: int = Field(gt=0, le=MAX_POLICY_WINDOW, description="Window length in seconds.")

    @classmethod
    def parse(cls, text: str) -> RateLimitPolicy:
        """Parse ``"5/second"``, ``"5 per second"``, ``"10 per 30 seconds"``."""
        match = _POLICY_RE.match(text) if isinstance(text, str) else None
        unit = _UNIT_ALIASES.get(match["unit"].lower()) if match else None
        if match is None or unit is None:
            raise ConfigError(f"invalid rate-limit policy {text!r}: {_POLICY_HELP}")
        if max(len(match["limit"]), len(match["multiple"] or "")) > 12:
            # Beyond every bound below; and int() refuses more than 4300 digits.
            raise _out_of_bounds(text)
        limit = int(match["limit"])
        multiple = int(match["multiple"] or 1)
        if limit <= 0 or multiple <= 0:
            raise ConfigError(
                f"invalid rate-limit policy {text!r}: limit and window must be positive"
            )
        window = multiple * _UNITS[unit]
        if limit > MAX_POLICY_LIMIT or window > MAX_POLICY_WINDOW:
            raise _out_of_bounds(text)
        return cls(limit=limit, window=window)

    @property
    def window_ms(self) -> int:
        """The window in milliseconds (what Redis scores and TTLs use)."""
        return self.window * 1000

    def __str__(self) -> str:
        return _policy_text(self.limit, self.window)


@lru_cache(maxsize=1024)  # every decision names its policy: format each one once
def _policy_text(limit: int, window: int) -> str:
    for unit, seconds in reversed(_UNITS.items()):
        if window % seconds == 0:
            count = window // seconds
            return f"{limit}/{unit}" if count == 1 else f"{limit}/{count} {unit}s"
    raise AssertionError("unreachable: 'second' divides every window")


def _out_of_bounds(text: str) -> ConfigError:
    shown = repr(text) if len(text) <= 60 else f"{text[:40]!r}..."
    return ConfigError(
        f"invalid rate-limit policy {shown}: the limit must be at most {MAX_POLICY_LIMIT} "
        "and the window at most 366 days"
    )


def parse_policies(value: Any) -> tuple[RateLimitPolicy, ...]:
    """Accept one policy string, several separated by ``;`` or ``,``, or a list of them."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)  # a JSON list, as environment variables carry them
        except json.JSONDecodeError:
            raise ConfigError(f"invalid rate-limit policy list {value!r}: {_POLICY_HELP}") from None
    if isinstance(value, str):
        value = [part for part in re.split(r"[;,]", value) if part.strip()]
    if isinstance(value, RateLimitPolicy | dict):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(f"at least one rate-limit policy is required: {_POLICY_HELP}")
    policies: list[RateLimitPolicy] = []
    for item in value:
        if isinstance(item, RateLimitPolicy):
            policies.append(item)
        elif isinstance(item, dict):
            try:
                policies.append(RateLimitPolicy.model_validate(item))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
                )
                raise ConfigError(f"invalid rate-limit policy {item!r}: {problems}") from exc
        else:
            policies.append(RateLimitPolicy.parse(item))
    # Two identical policies would only double the work: keep the first.
    return tuple(dict.fromkeys(policies))


def _policies_before_validator(value: Any) -> Any:
    try:
        return parse_policies(value)
    except ConfigError as exc:
        # Inside a pydantic model: a ValueError becomes a readable ValidationError line.
        raise ValueError(str(exc)) from None


Policies = Annotated[
    tuple[RateLimitPolicy, ...],
    BeforeValidator(_policies_before_validator),
    PlainSerializer(lambda policies: [str(p) for p in policies], when_used="json"),
]


class RateLimiterSettings(BaseModel):
    """Options every rate-limiter backend accepts; backends subclass it for their own."""

    # Errors keep pydantic's ValidationError as __cause__; its text must not echo secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    policies: Policies = Field(
        default=parse_policies(["10/second", "100/minute"]),
        description="Checked all-or-nothing: a request denied by one policy counts in none.",
    )


# Keys already found valid. Checking a key's characters cost as much as an in-memory
# decision; a service sees the same keys again and again. Only exact ``str`` keys are
# remembered (a subclass could redefine equality), and the set is emptied when full.
_VALID_KEYS: set[str] = set()
_VALID_KEYS_MAX = 4096


def validate_rate_limit_key(key: object) -> str:
    """Return ``key`` if it can identify a rate-limited subject, else raise
    :class:`InvalidRateLimitKeyError`."""
    if type(key) is str and key in _VALID_KEYS:
        return key
    checked = _check_rate_limit_key(key)
    if type(checked) is str:
        if len(_VALID_KEYS) >= _VALID_KEYS_MAX:
            _VALID_KEYS.clear()
        _VALID_KEYS.add(checked)
    return checked


def _check_rate_limit_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidRateLimitKeyError(f"rate-limit key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRateLimitKeyError(
            f"rate-limit key is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed"
        )
    refuse_unsafe_characters(key, "rate-limit key", InvalidRateLimitKeyError)
    return key


@dataclass(frozen=True, slots=True)
class PolicyState:
    """One policy's view of a key, as a backend computed it.

    ``used`` counts the requests in the window after the decision; ``retry_after`` is
    how long until a request of the checked cost fits (0 when it fits now); ``reset_at``
    is the epoch time at which the window is empty again.
    """

    policy: RateLimitPolicy
    used: int
    fits: bool
    retry_after: float
    reset_at: float


def decide(states: Sequence[PolicyState], *, now: float, degraded: bool = False) -> RateLimitInfo:
    """Fold per-policy states into one :class:`RateLimitInfo` (all-or-nothing)."""
    return decide_tuples(
        [(s.policy, s.used, s.fits, s.retry_after, s.reset_at) for s in states],
        now=now, degraded=degraded,
    )  # fmt: skip


#: A :class:`PolicyState` as a plain tuple ``(policy, used, fits, retry_after, reset_at)``:
#: what the in-memory limiter builds, ten times cheaper than the frozen dataclass.
StateTuple = tuple[RateLimitPolicy, int, bool, float, float]


def decide_tuples(
    states: Sequence[StateTuple], *, now: float, degraded: bool = False
) -> RateLimitInfo:
    """:func:`decide` for states given as :data:`StateTuple`\\ s (the one implementation)."""
    if len(states) == 1:
        deciding = states[0]
        allowed = bool(deciding[2])
    else:
        allowed = True
        for state in states:
            if not state[2]:
                allowed = False
                break
        if allowed:
            # The policy with the least room left is the one the caller should watch.
            deciding = min(states, key=lambda s: (s[0].limit - s[1], -s[0].window))
        else:
            # The longest wait decides. Ties are common (windows aligned to the epoch
            # share boundaries), so waits are compared to the microsecond and the longer
            # window wins a tie: every backend names the same policy whatever its float
            # rounding.
            deciding = max(
                (s for s in states if not s[2]), key=lambda s: (round(s[3], 6), s[0].window)
            )
    policy, used, _, retry_after, reset_at = deciding
    limit, window = policy.limit, policy.window
    # max() spelt out (same result, NaN included): a builtin call is dear here.
    remaining = limit - used
    remaining = remaining if remaining > 0 else 0
    retry = 0.0 if allowed else max(0.0, retry_after)
    when = datetime.fromtimestamp(now if now > reset_at else reset_at, UTC)
    name = _policy_text(limit, window)
    if type(remaining) is int and type(retry) is float and type(degraded) is bool:
        # Exactly the types and ranges validation checks: skip it (the hot path).
        return trusted_rate_limit_info(
            allowed, limit, window, remaining, when, retry, name, degraded
        )
    return RateLimitInfo(
        allowed=allowed, limit=limit, window=window, remaining=remaining,
        reset_at=when, retry_after=retry, policy=name, degraded=degraded,
    )  # fmt: skip


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
        error = RateLimiterUnavailableError(
            f"{self.server} could not {action}: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error


class RateLimiter(Backend, ABC):
    """Interface of every rate-limiter backend; use it as an async context manager.

    ``check_rate_limit`` decides and records; ``get_remaining_requests`` and
    ``get_reset_time`` only look. Keys identify the subject (``"user:42"``).
    """

    kind = "rate_limiter"

    def __init__(self, settings: RateLimiterSettings) -> None:
        super().__init__()
        self.settings = settings
        self.policies: tuple[RateLimitPolicy, ...] = settings.policies

    # -- public API ----------------------------------------------------------------

    async def check_rate_limit(self, key: str, cost: int = 1) -> RateLimitInfo:
        """Decide whether ``key`` may spend ``cost`` now, and record it when allowed."""
        if type(key) is not str or key not in _VALID_KEYS:  # validate_rate_limit_key, inlined
            validate_rate_limit_key(key)
        if type(cost) is not int or cost != 1:  # 1 fits every policy: the common case
            self._validate_cost(cost)
        if not self._opened:  # an awaited no-op costs as much as a quarter of a decision
            await self._ensure_open()
        return await self._check(key, cost)

    async def is_allowed(self, key: str, cost: int = 1) -> bool:
        """Like :meth:`check_rate_limit` but answer only allowed or not (it records too)."""
        return (await self.check_rate_limit(key, cost)).allowed

    async def enforce(self, key: str, cost: int = 1) -> RateLimitInfo:
        """Like :meth:`check_rate_limit` but raise :class:`RateLimitExceededError` on denial."""
        info = await self.check_rate_limit(key, cost)
        if not info.allowed:
            raise RateLimitExceededError(info)
        return info

    async def get_rate_limit_info(self, key: str) -> RateLimitInfo:
        """The decision a request of cost 1 would get now, without recording anything."""
        validate_rate_limit_key(key)
        await self._ensure_open()
        return await self._peek(key)

    async def get_remaining_requests(self, key: str) -> int:
        """Requests ``key`` may still make now under its most constrained policy."""
        states = await self.get_rate_limit_info(key)
        return states.remaining

    async def get_reset_time(self, key: str) -> datetime:
        """When the deciding policy's quota is fully available again (UTC)."""
        return (await self.get_rate_limit_info(key)).reset_at

    async def clear_user_limit(self, key: str) -> None:
        """Forget every recorded request of ``key`` under every policy."""
        validate_rate_limit_key(key)
        await self._ensure_open()
        await self._clear(key)

    def _validate_cost(self, cost: object) -> None:
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise InvalidCostError(f"cost must be a positive integer, got {cost!r}")
        smallest = min(self.policies, key=lambda p: p.limit)
        if cost > smallest.limit:
            raise InvalidCostError(
                f"cost {cost} can never be allowed: policy '{smallest}' allows at most "
                f"{smallest.limit} per window; lower the cost or raise the limit"
            )

    # -- what a backend implements ---------------------------------------------------

    @abstractmethod
    async def _check(self, key: str, cost: int) -> RateLimitInfo:
        """Decide for every policy at once; record ``cost`` only when all allow."""

    @abstractmethod
    async def _peek(self, key: str) -> RateLimitInfo:
        """Decide for cost 1 without recording."""

    @abstractmethod
    async def _clear(self, key: str) -> None:
        """Remove everything recorded for ``key``."""


def sliding_window_counter_state(
    policy: RateLimitPolicy, *, previous: int, current: int, now: float, cost: int, peek: bool
) -> tuple[bool, float, float, int]:
    """Sliding-window-counter arithmetic shared by every backend that offers it.

    Two fixed windows aligned on multiples of the window length; the previous one is
    weighted by the part of it still inside the sliding window. Returns ``(fits,
    retry_after, reset_at, used)``, ``used`` being the weighted count (rounded up) after
    recording ``cost`` when it fits (``peek``: a cost-1 request, nothing recorded).
    """
    window = policy.window
    start = math.floor(now / window) * window
    elapsed = (now - start) / window
    estimate = previous * (1 - elapsed) + current
    need = 1 if peek else cost
    fits = estimate + need <= policy.limit + 1e-9
    retry_after = 0.0
    if fits and not peek:
        current += cost
        estimate += cost
    elif not fits:
        retry_after = _counter_retry_after(policy, previous, current, elapsed, need)
    reset_at = start + (2 if current else 1 if previous else 0) * window
    return fits, retry_after, float(max(reset_at, now)), math.ceil(estimate - 1e-9)


def _counter_retry_after(
    policy: RateLimitPolicy, previous: int, current: int, elapsed: float, cost: int
) -> float:
    window, limit = policy.window, policy.limit
    # Later in this window the previous window's weight shrinks: find when it fits.
    room = limit - current - cost
    if room >= 0 and previous > 0:
        fraction = 1 - room / previous
        if fraction < 1:
            return max(0.0, (fraction - elapsed) * window)
    # In the next window, this window's count becomes the weighted one.
    room_next = limit - cost
    fraction = 1 - room_next / current if current else 0.0
    return (1 - elapsed) * window + max(0.0, fraction) * window
