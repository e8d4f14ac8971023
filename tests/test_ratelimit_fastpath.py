"""The in-memory limiter's fast path (issue 8, item 11) keeps the exact results: decisions
built without pydantic's validation equal validated ones, and the cache of valid keys
never lets an invalid key through. Speed itself is measured by
benchmarks/bench_memory_limiter.py, not here."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.backends.memory import MemoryRateLimiter, MemoryRateLimiterSettings
from voice_infra.models import trusted_rate_limit_info
from voice_infra.ratelimit import (
    MAX_POLICY_LIMIT,
    PolicyState,
    RateLimitPolicy,
    decide,
    validate_rate_limit_key,
)

# Small numbers often, so that policies tie and the tie-breaks are exercised.
_POLICIES = st.builds(
    RateLimitPolicy,
    limit=st.integers(1, 4) | st.integers(1, MAX_POLICY_LIMIT),
    window=st.sampled_from([1, 60]) | st.sampled_from([2, 30, 3600, 86400, 366 * 86400]),
)
_TIMES = st.floats(0, 4e9, allow_nan=False)


def _reference_decide(states: list[PolicyState], now: float, degraded: bool) -> vi.RateLimitInfo:
    """decide() as it was before the fast path (validated RateLimitInfo, builtins)."""
    allowed = all(state.fits for state in states)
    if allowed:
        deciding = min(states, key=lambda s: (s.policy.limit - s.used, -s.policy.window))
    else:
        deciding = max(
            (s for s in states if not s.fits),
            key=lambda s: (round(s.retry_after, 6), s.policy.window),
        )
    return vi.RateLimitInfo(
        allowed=allowed,
        limit=deciding.policy.limit,
        window=deciding.policy.window,
        remaining=max(0, deciding.policy.limit - deciding.used),
        reset_at=datetime.fromtimestamp(max(deciding.reset_at, now), UTC),
        retry_after=0.0 if allowed else max(0.0, deciding.retry_after),
        policy=str(deciding.policy),
        degraded=degraded,
    )


def _same(fast: vi.RateLimitInfo, slow: vi.RateLimitInfo) -> None:
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    assert {k: type(v) for k, v in vars(fast).items()} == {
        k: type(v) for k, v in vars(slow).items()
    }
    assert repr(fast) == repr(slow)
    assert hash(fast) == hash(slow)
    assert fast.model_copy(update={"remaining": 0}).remaining == 0


@settings(max_examples=400, deadline=None)
@given(
    states=st.lists(
        st.builds(
            PolicyState,
            policy=_POLICIES,
            used=st.integers(0, 5)
            | st.integers(0, MAX_POLICY_LIMIT + 5)
            | st.floats(0, 1e9, allow_nan=False),
            fits=st.booleans(),
            retry_after=st.sampled_from([0.5, 0.5000001])
            | st.sampled_from([0.5, 1.0])
            | st.floats(-1, 1e6, allow_nan=False)
            | st.integers(-1, 10**6),
            reset_at=_TIMES,
        ),
        min_size=1,
        max_size=3,
    ),
    now=_TIMES,
    degraded=st.booleans(),
)
def test_decide_equals_the_validated_reference(
    states: list[PolicyState], now: float, degraded: bool
) -> None:
    try:
        expected = _reference_decide(states, now, degraded)
    except Exception as exc:  # the reference refuses (a fractional 'used'): so must decide
        with pytest.raises(type(exc)):
            decide(states, now=now, degraded=degraded)
        return
    _same(decide(states, now=now, degraded=degraded), expected)


@given(
    allowed=st.booleans(),
    limit=st.integers(0, MAX_POLICY_LIMIT),
    window=st.integers(1, 366 * 86400),
    remaining=st.integers(0, MAX_POLICY_LIMIT),
    reset_at=_TIMES,
    retry_after=st.floats(0, 1e9, allow_nan=False),
    policy=st.text(),
    degraded=st.booleans(),
    shadow_denied=st.booleans(),
)
def test_trusted_info_is_the_validated_info(
    allowed: bool,
    limit: int,
    window: int,
    remaining: int,
    reset_at: float,
    retry_after: float,
    policy: str,
    degraded: bool,
    shadow_denied: bool,
) -> None:
    when = datetime.fromtimestamp(reset_at, UTC)
    values = (allowed, limit, window, remaining, when, retry_after, policy, degraded,
              shadow_denied)  # fmt: skip
    fast = trusted_rate_limit_info(*values)
    given = dict(zip(vi.RateLimitInfo.model_fields, values, strict=True))
    if not shadow_denied:  # as every decision but a shadow layer's is built
        del given["shadow_denied"]
    slow = vi.RateLimitInfo(**given)
    _same(fast, slow)
    assert fast.headers().keys() == slow.headers().keys()
    with pytest.raises(Exception, match="frozen"):
        fast.allowed = not allowed  # type: ignore[misc]


class _EqualsEverything(str):
    """A str that claims to equal any string and hashes like a valid key."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("user:1")


@pytest.mark.parametrize("bad", ["", "x" * 513, "a\nb", "a\u202eb"])
def test_the_cache_of_valid_keys_is_keyed_exactly(bad: str) -> None:
    assert validate_rate_limit_key("user:1") == "user:1"  # now cached
    with pytest.raises(vi.InvalidRateLimitKeyError):
        validate_rate_limit_key(_EqualsEverything(bad))


@given(key=st.text(max_size=600) | st.none() | st.integers() | st.binary())
def test_cached_validation_gives_the_same_answer_every_time(key: object) -> None:
    answers = []
    for _ in range(3):
        try:
            answers.append(validate_rate_limit_key(key))
        except vi.InvalidRateLimitKeyError as exc:
            answers.append(str(exc))
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.asyncio
async def test_bad_keys_and_costs_are_refused_after_good_ones() -> None:
    limiter = vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "memory"}))
    for _ in range(3):
        await limiter.check_rate_limit("user:1")
    for bad in ("", "a\nb", None, b"user:1"):
        with pytest.raises(vi.InvalidRateLimitKeyError):
            await limiter.check_rate_limit(bad)  # type: ignore[arg-type]
    for cost in (0, -1, True, 1.0, 11, math.inf):
        with pytest.raises(vi.InvalidCostError):
            await limiter.check_rate_limit("user:1", cost)  # type: ignore[arg-type]


class _ReferenceLog:
    """The sliding log as it was before the fast path (PolicyState, validated info)."""

    def __init__(self, policies: tuple[RateLimitPolicy, ...]) -> None:
        self.policies = policies
        self.logs: dict[str, list[tuple[list[tuple[float, int]], list[int]]]] = {}

    def decide(self, key: str, cost: int, now: float, peek: bool) -> vi.RateLimitInfo:
        logs = self.logs.get(key) or [([], [0]) for _ in self.policies]
        states = []
        for (entries, used), policy in zip(logs, self.policies, strict=True):
            while entries and entries[0][0] <= now - policy.window:
                used[0] -= entries.pop(0)[1]
            need = 1 if peek else cost
            fits = used[0] + need <= policy.limit
            retry_after = 0.0
            if not fits:
                to_free, freed = used[0] + need - policy.limit, 0
                for stamp, entry_cost in entries:
                    freed += entry_cost
                    if freed >= to_free:
                        retry_after = stamp + policy.window - now
                        break
            records = fits and not peek
            newest = now if records else (entries[-1][0] if entries else None)
            reset_at = now if newest is None else newest + policy.window
            states.append(
                PolicyState(policy, used[0] + (cost if records else 0), fits, retry_after, reset_at)
            )
        if not peek and all(s.fits for s in states):
            for entries, used in logs:
                entries.append((now, cost))
                used[0] += cost
            self.logs[key] = logs
        return _reference_decide(states, now, False)


@settings(max_examples=150, deadline=None)
@given(
    policies=st.lists(
        st.builds(RateLimitPolicy, limit=st.integers(1, 6), window=st.sampled_from([1, 2, 5, 60])),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(1, 3),
            st.sampled_from([0.0, 0.25, 1.0, 2.0, 5.0]),
            st.booleans(),
        ),
        max_size=40,
    ),
)
@pytest.mark.asyncio
async def test_memory_sliding_log_decides_as_before(
    policies: list[RateLimitPolicy], steps: list[tuple[str, int, float, bool]]
) -> None:
    clock = [1_000_000.0]
    limiter = MemoryRateLimiter(
        MemoryRateLimiterSettings(policies=policies), clock=lambda: clock[0]
    )
    reference = _ReferenceLog(limiter.policies)
    smallest = min(p.limit for p in policies)
    for key, cost, advance, peek in steps:
        clock[0] += advance
        if peek:
            got = await limiter.get_rate_limit_info(key)
        elif cost > smallest:
            continue  # refused before any decision (InvalidCostError)
        else:
            got = await limiter.check_rate_limit(key, cost)
        _same(got, reference.decide(key, cost, clock[0], peek))
