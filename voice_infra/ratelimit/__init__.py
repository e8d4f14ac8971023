"""Rate limiting: policies, the interface every rate-limiter backend implements, and the
arithmetic and failure handling that backends share.

One module per concept; everything is importable from here, as before the split:

- :mod:`~voice_infra.ratelimit.policies`: :class:`RateLimitPolicy`, parsing
  (:func:`parse_policies`) and the bounds every backend honours;
- :mod:`~voice_infra.ratelimit.algorithms`: the sliding log and the sliding-window
  counter, and :func:`decide`, which folds per-policy states into one answer (the
  ``memory`` backend runs it; the ``redis`` plugin's Lua scripts port it);
- :mod:`~voice_infra.ratelimit.base`: :class:`RateLimiterSettings` and
  :class:`RateLimiter`, the interface (a backend implements ``_check``, ``_peek`` and
  ``_clear``), and rate-limit key validation;
- :mod:`~voice_infra.ratelimit.guard`: what a backend that asks a server does when the
  server cannot answer (:class:`ServerRateLimiterSettings`, :class:`FailModeGuard`).
"""

from __future__ import annotations

from voice_infra.ratelimit.algorithms import (
    Algorithm,
    PolicyState,
    SlidingLog,
    StateTuple,
    WindowCounter,
    decide,
    decide_tuples,
    sliding_window_counter_state,
)
from voice_infra.ratelimit.base import (
    MAX_KEY_LENGTH,
    MAX_LOGGED_COST,
    AlgorithmSettings,
    KeyPrefix,
    RateLimiter,
    RateLimiterSettings,
    validate_key_prefix,
    validate_rate_limit_key,
)
from voice_infra.ratelimit.guard import (
    CallSlot,
    CallSlots,
    FailMode,
    FailModeGuard,
    ServerRateLimiterSettings,
    degraded_decision,
)
from voice_infra.ratelimit.policies import (
    MAX_POLICY_LIMIT,
    MAX_POLICY_WINDOW,
    Policies,
    RateLimitPolicy,
    parse_policies,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_LOGGED_COST",
    "MAX_POLICY_LIMIT",
    "MAX_POLICY_WINDOW",
    "Algorithm",
    "AlgorithmSettings",
    "CallSlot",
    "CallSlots",
    "FailMode",
    "FailModeGuard",
    "KeyPrefix",
    "Policies",
    "PolicyState",
    "RateLimitPolicy",
    "RateLimiter",
    "RateLimiterSettings",
    "ServerRateLimiterSettings",
    "SlidingLog",
    "StateTuple",
    "WindowCounter",
    "decide",
    "decide_tuples",
    "degraded_decision",
    "parse_policies",
    "sliding_window_counter_state",
    "validate_key_prefix",
    "validate_rate_limit_key",
]
