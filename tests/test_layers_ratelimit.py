"""The rate limiters' layers, ``shadow`` and ``deny_cache``, against the plain limiter on
the same traces (memory limiter, a clock driven by hand)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.factory import create_backend
from voice_infra.layers import iter_layers, unwrap

POLICIES = ["3/second", "5 per 10 seconds"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def limiter(algorithm: str, clock: Clock, layers: list[Any] | None = None) -> Any:
    section: dict[str, Any] = {"backend": "memory", "policies": POLICIES, "algorithm": algorithm}
    if layers is not None:
        section["layers"] = layers
    built = create_backend("rate_limiter", vi.Settings.from_keywords(rate_limit=section))
    unwrap(built).clock = clock
    for layer in iter_layers(built):
        if hasattr(layer, "clock"):
            layer.clock = clock
    return built


KEYS = st.sampled_from(["a", "b", "c"])
STEP = st.one_of(
    st.tuples(st.just("check"), KEYS, st.sampled_from([1, 1, 1, 2, 3])),
    st.tuples(st.just("peek"), KEYS, st.just(1)),
    st.tuples(st.just("clear"), KEYS, st.just(1)),
    st.tuples(st.just("sleep"), st.just(""), st.sampled_from([0.01, 0.1, 0.37, 1.0, 2.5])),
)
TRACES = st.lists(STEP, min_size=1, max_size=80)


async def run(trace: list[tuple[str, str, Any]], built: Any, clock: Clock) -> list[Any]:
    answers: list[Any] = []
    async with built:
        for action, key, value in trace:
            if action == "sleep":
                clock.now += value
            elif action == "check":
                answers.append(await built.check_rate_limit(key, value))
            elif action == "peek":
                answers.append(await built.get_rate_limit_info(key))
            else:
                answers.append(await built.clear_user_limit(key))
    return answers


def same_decision(cached: Any, plain: Any) -> None:
    if plain is None:
        assert cached is None
        return
    assert cached.model_dump(exclude={"retry_after"}) == plain.model_dump(exclude={"retry_after"})
    assert cached.retry_after == pytest.approx(plain.retry_after, abs=1e-6)


@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=TRACES)
def test_deny_cache_gives_the_plain_limiters_decisions(algorithm: str, trace: Any) -> None:
    plain_clock, cached_clock = Clock(), Clock()
    plain = asyncio.run(run(trace, limiter(algorithm, plain_clock), plain_clock))
    cached_limiter = limiter(algorithm, cached_clock, ["deny_cache"])
    cached = asyncio.run(run(trace, cached_limiter, cached_clock))
    for mine, theirs in zip(cached, plain, strict=True):
        same_decision(mine, theirs)


@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=TRACES)
def test_shadow_flags_exactly_the_denials_of_the_enforcing_limiter(
    algorithm: str, trace: Any
) -> None:
    plain_clock, shadow_clock = Clock(), Clock()
    plain = asyncio.run(run(trace, limiter(algorithm, plain_clock), plain_clock))
    shadow = asyncio.run(run(trace, limiter(algorithm, shadow_clock, ["shadow"]), shadow_clock))
    for mine, theirs in zip(shadow, plain, strict=True):
        if theirs is None:
            continue
        assert mine.allowed
        assert mine.shadow_denied == (not theirs.allowed)
        assert (mine.policy, mine.limit, mine.remaining, mine.reset_at) == (
            theirs.policy, theirs.limit, theirs.remaining, theirs.reset_at,
        )  # fmt: skip
        assert mine.retry_after == (theirs.retry_after if theirs.allowed else 0.0)


@pytest.mark.asyncio
async def test_deny_cache_answers_locally_and_consumes_nothing() -> None:
    clock = Clock()
    built = limiter("sliding_log", clock, [{"name": "deny_cache", "max_keys": 2}])
    (layer,) = iter_layers(built)
    inner = unwrap(built)
    calls = 0
    original = inner._check

    async def counting(key: str, cost: int) -> Any:
        nonlocal calls
        calls += 1
        return await original(key, cost)

    inner._check = counting
    async with built:
        for _ in range(3):
            assert (await built.check_rate_limit("a")).allowed
        first = await built.check_rate_limit("a")
        assert not first.allowed and calls == 4
        clock.now += 0.25
        again = await built.check_rate_limit("a")
        assert calls == 4 and layer.hits == 1  # answered without the limiter
        assert again.retry_after == pytest.approx(first.retry_after - 0.25)
        with pytest.raises(vi.RateLimitExceededError):
            await built.enforce("a")
        assert calls == 4
        # Bounded: a third denied key evicts the oldest.
        for key in ("b", "c"):
            for _ in range(4):
                await built.check_rate_limit(key)
        assert len(layer) == 2
        await built.check_rate_limit("a")
        assert calls == 4 + 8 + 1
        # After retry_after the limiter is asked again, and the request is allowed.
        clock.now += 1.0
        assert (await built.check_rate_limit("b")).allowed
        await built.clear_user_limit("c")
        assert len(layer) == 1


def test_shadow_and_deny_cache_apply_to_rate_limiters_only() -> None:
    for name in ("shadow", "deny_cache"):
        with pytest.raises(vi.ConfigError, match=f"layer '{name}' does not apply to storage"):
            create_backend("storage", vi.Settings.from_keywords(
                storage={"backend": "memory", "layers": [name]}))  # fmt: skip
