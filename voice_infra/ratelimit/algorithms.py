"""The decision arithmetic of rate limiting, in one place for every backend.

- The exact **sliding log** (:class:`SlidingLog`): every recorded request with its time;
  a request fits when the costs inside the last ``window`` seconds leave room.
- The **sliding-window counter** (:func:`sliding_window_counter_state`,
  :class:`WindowCounter`): two fixed windows aligned on multiples of the window length,
  the previous one weighted by the part of it still inside the sliding window; O(1)
  memory per key, approximate.
- :func:`decide` / :func:`decide_tuples`: every policy's :class:`PolicyState` folded
  into one :class:`~voice_infra.RateLimitInfo`, all-or-nothing.

The ``memory`` backend runs this code as it is; the ``redis`` plugin's Lua scripts
(``sliding_log.lua``, ``sliding_window_counter.lua``) are ports of it, with Redis' clock
and microsecond integers, and cite this module as their reference. The in-memory path is
hot (see ``benchmarks/bench_memory_limiter.py``): plain tuples and loops on purpose.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from voice_infra.models import RateLimitInfo, trusted_rate_limit_info
from voice_infra.ratelimit.policies import RateLimitPolicy, policy_text

__all__ = [
    "Algorithm",
    "PolicyState",
    "SlidingLog",
    "StateTuple",
    "WindowCounter",
    "decide",
    "decide_tuples",
    "sliding_window_counter_state",
]

Algorithm = Literal["sliding_log", "sliding_window_counter"]


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
    name = policy_text(limit, window)
    if type(remaining) is int and type(retry) is float and type(degraded) is bool:
        # Exactly the types and ranges validation checks: skip it (the hot path).
        return trusted_rate_limit_info(
            allowed, limit, window, remaining, when, retry, name, degraded
        )
    return RateLimitInfo(
        allowed=allowed, limit=limit, window=window, remaining=remaining,
        reset_at=when, retry_after=retry, policy=name, degraded=degraded,
    )  # fmt: skip


class SlidingLog:
    """One policy's sliding log for one key: ``(time, cost)`` entries, oldest first,
    and their running total ``used``."""

    __slots__ = ("entries", "limit", "policy", "used", "window")

    def __init__(self, policy: RateLimitPolicy) -> None:
        self.policy = policy
        self.limit = policy.limit  # copied: read on every decision
        self.window = policy.window
        self.entries: deque[tuple[float, int]] = deque()
        self.used = 0

    def state(self, now: float, cost: int, peek: bool) -> StateTuple:
        """The policy's view at ``now`` of a request of ``cost`` (``peek``: cost 1,
        unrecorded). Entries at or before ``now - window`` leave the log first."""
        entries, window, limit, policy = self.entries, self.window, self.limit, self.policy
        cutoff = now - window
        while entries and entries[0][0] <= cutoff:
            self.used -= entries.popleft()[1]
        used = self.used
        need = 1 if peek else cost
        if used + need <= limit:
            if peek:
                return (policy, used, True, 0.0, entries[-1][0] + window if entries else now)
            return (policy, used + cost, True, 0.0, now + window)
        # Wait until enough of the oldest entries leave the window.
        retry_after = 0.0
        to_free, freed = used + need - limit, 0
        for stamp, entry_cost in entries:
            freed += entry_cost
            if freed >= to_free:
                retry_after = stamp + window - now
                break
        return (policy, used, False, retry_after, entries[-1][0] + window if entries else now)

    def record(self, now: float, cost: int) -> None:
        """Record a request of ``cost`` at ``now`` (after :meth:`state` said it fits)."""
        self.entries.append((now, cost))
        self.used += cost


@dataclass
class WindowCounter:
    """One policy's two fixed windows for one key, for the sliding-window counter."""

    window_start: float = -math.inf
    previous: int = 0
    current: int = 0

    def roll(self, policy: RateLimitPolicy, now: float) -> None:
        """Move to the window holding ``now``: the current count becomes the previous
        one when the windows are adjacent; both start again after a longer pause."""
        start = math.floor(now / policy.window) * policy.window
        if start != self.window_start:
            adjacent = start - self.window_start == policy.window
            self.previous = self.current if adjacent else 0
            self.current = 0
            self.window_start = start


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
