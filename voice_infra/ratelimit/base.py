"""The rate-limiter interface: :class:`RateLimiterSettings` and :class:`RateLimiter`.

A backend subclasses :class:`RateLimiter` and implements three coroutines:
``_check(key, cost)`` (decide and, when allowed, record), ``_peek(key)`` (the same
decision for cost 1 without recording) and ``_clear(key)``. Validation of keys,
costs and policies happens here once, for every backend.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from voice_infra.base import Backend, BackendSettings
from voice_infra.errors import (
    InvalidCostError,
    InvalidRateLimitKeyError,
    RateLimitExceededError,
)
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit.algorithms import Algorithm
from voice_infra.ratelimit.policies import Policies, RateLimitPolicy, parse_policies
from voice_infra.text import refuse_unsafe_characters

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_LOGGED_COST",
    "AlgorithmSettings",
    "KeyPrefix",
    "RateLimiter",
    "RateLimiterSettings",
    "validate_key_prefix",
    "validate_rate_limit_key",
]

MAX_KEY_LENGTH = 512
#: The largest cost of one check by an algorithm that logs every unit (the sliding log,
#: the ``limits`` moving window): Redis writes one entry per unit in one script, during
#: which it answers no other client (a cost of millions held it for seconds, and every
#: limiter on it failed open meanwhile).
MAX_LOGGED_COST = 10_000


class RateLimiterSettings(BackendSettings):
    """Options every rate-limiter backend accepts; backends subclass it for their own."""

    policies: Policies = Field(
        default=parse_policies(["10/second", "100/minute"]),
        description="Checked all-or-nothing: a request denied by one policy counts in none.",
    )

    def logs_every_unit(self) -> str | None:
        """The name of the configured algorithm when it keeps one log entry per unit of
        cost (a check then costs at most :data:`MAX_LOGGED_COST`), else None."""
        return None


class AlgorithmSettings(RateLimiterSettings):
    """Options of a backend that offers both of the core's algorithms (``memory``,
    ``redis``): the sliding log, exact, and the sliding-window counter, approximate."""

    algorithm: Algorithm = Field(
        default="sliding_log",
        description="'sliding_log' (exact) or 'sliding_window_counter' (O(1) memory per key).",
    )

    def capabilities_turned_off(self) -> frozenset[str]:
        # Only the sliding log is exact: the counter estimates the previous window.
        return frozenset() if self.algorithm == "sliding_log" else frozenset({"exact"})

    def logs_every_unit(self) -> str | None:
        # The memory log keeps (time, cost) pairs, the Redis one a member per unit: the
        # same ceiling for both, so that they accept the same checks.
        return "sliding_log" if self.algorithm == "sliding_log" else None


#: A key prefix of a rate limiter's server (1-64 characters among letters, digits,
#: ``_.:-``): no braces, which would break the Redis Cluster hash tag of a key, no spaces.
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def validate_key_prefix(value: str) -> str:
    """``value`` if it can start a rate limiter's server keys, else ``ValueError``."""
    if not _KEY_PREFIX.fullmatch(value):
        raise ValueError(
            "key_prefix must be 1-64 characters among letters, digits, '_', '.', ':' and "
            "'-' (no braces or spaces: they would break a Redis Cluster hash tag)"
        )
    return value


#: The type of a ``key_prefix`` option of a rate limiter that keeps counts on a server.
KeyPrefix = Annotated[str, AfterValidator(validate_key_prefix)]


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
            shown = repr(cost) if not isinstance(cost, int) or cost < 10**30 else "a huge number"
            raise InvalidCostError(f"cost must be a positive integer, got {shown}")
        shown = str(cost) if cost < 10**30 else "of more than 30 digits"
        smallest = min(self.policies, key=lambda p: p.limit)
        if cost > smallest.limit:
            raise InvalidCostError(
                f"cost {shown} can never be allowed: policy '{smallest}' allows at most "
                f"{smallest.limit} per window; lower the cost or raise the limit"
            )
        algorithm = self.settings.logs_every_unit()
        if algorithm is not None and cost > MAX_LOGGED_COST:
            raise InvalidCostError(
                f"cost {shown} is more than one check of algorithm {algorithm!r} may record "
                f"({MAX_LOGGED_COST}): it keeps an entry per unit; count in larger units, or "
                "use an algorithm that keeps counts (sliding_window_counter)"
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
