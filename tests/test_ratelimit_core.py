"""Rate-limit arithmetic of the memory backend, driven by a hand-set clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

import voice_infra as vi
from voice_infra.backends.memory import MemoryRateLimiter, MemoryRateLimiterSettings
from voice_infra.ratelimit import PolicyState, RateLimitPolicy, decide


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiter(*policies: str, algorithm: str = "sliding_log") -> tuple[MemoryRateLimiter, Clock]:
    clock = Clock()
    settings = MemoryRateLimiterSettings(policies=list(policies), algorithm=algorithm)
    return MemoryRateLimiter(settings, clock=clock), clock


@pytest.mark.asyncio
async def test_sliding_log_retry_after_and_reset_are_exact() -> None:
    limiter, clock = _limiter("3/10 seconds")
    start = clock.now
    for offset in (0.0, 2.0, 4.0):
        clock.now = start + offset
        assert (await limiter.check_rate_limit("k")).allowed
    clock.now = start + 5.0
    denied = await limiter.check_rate_limit("k")
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(5.0)  # first hit leaves at start + 10
    assert denied.reset_at == datetime.fromtimestamp(start + 14.0, UTC)  # newest + window
    clock.now = start + 9.999
    assert not (await limiter.check_rate_limit("k")).allowed
    clock.now = start + 10.0
    assert (await limiter.check_rate_limit("k")).allowed


@pytest.mark.asyncio
async def test_sliding_log_cost_retry_waits_for_enough_capacity() -> None:
    limiter, clock = _limiter("5/10 seconds")
    start = clock.now
    await limiter.check_rate_limit("k", cost=2)
    clock.now = start + 3
    await limiter.check_rate_limit("k", cost=3)
    clock.now = start + 4
    denied = await limiter.check_rate_limit("k", cost=4)
    # 4 units need both entries gone: the second leaves at start + 13.
    assert denied.retry_after == pytest.approx(9.0)


@pytest.mark.asyncio
async def test_peek_reports_without_recording() -> None:
    limiter, clock = _limiter("2/minute")
    assert await limiter.get_remaining_requests("k") == 2
    assert await limiter.get_reset_time("k") == datetime.fromtimestamp(clock.now, UTC)
    await limiter.check_rate_limit("k")
    info = await limiter.get_rate_limit_info("k")
    assert (info.allowed, info.remaining) == (True, 1)
    assert info.reset_at == datetime.fromtimestamp(clock.now + 60, UTC)


@pytest.mark.asyncio
async def test_window_counter_weights_the_previous_window() -> None:
    limiter, clock = _limiter("10/minute", algorithm="sliding_window_counter")
    clock.now = 60 * 1000 + 30  # middle of a window
    for _ in range(10):
        assert (await limiter.check_rate_limit("k")).allowed
    assert not (await limiter.check_rate_limit("k")).allowed
    clock.now = 60 * 1001 + 15  # a quarter into the next window: weight of previous 0.75
    info = await limiter.get_rate_limit_info("k")
    assert info.remaining == 2  # 10 - ceil(7.5)
    assert [(await limiter.check_rate_limit("k")).allowed for _ in range(3)] == [True, True, False]
    denied = await limiter.check_rate_limit("k")
    # 7.5 + 2 = 9.5 now; one more fits once 10*(1-f) + 2 + 1 <= 10, i.e. f = 0.3 -> 3 s later.
    assert denied.retry_after == pytest.approx(3.0)


@pytest.mark.asyncio
async def test_window_counter_forgets_after_two_windows() -> None:
    limiter, clock = _limiter("2/second", algorithm="sliding_window_counter")
    clock.now = 500.2
    await limiter.check_rate_limit("k", cost=2)
    clock.now = 502.2
    assert await limiter.get_remaining_requests("k") == 2


def test_capability_exact_only_for_the_sliding_log() -> None:
    exact = vi.create_rate_limiter(vi.Settings(rate_limit={"policies": "1/second"}))
    approx = vi.create_rate_limiter(
        vi.Settings(rate_limit={"policies": "1/second", "algorithm": "sliding_window_counter"})
    )
    assert "exact" in exact.capabilities
    assert "exact" not in approx.capabilities


@pytest.mark.asyncio
async def test_idle_keys_are_swept() -> None:
    limiter, clock = _limiter("1/second")
    await limiter.check_rate_limit("idle")
    clock.now += 5
    for i in range(10_000):
        await limiter.check_rate_limit(f"k{i % 10}")
    assert "idle" not in limiter._logs


@pytest.mark.asyncio
async def test_cost_larger_than_the_smallest_limit_is_refused() -> None:
    limiter, _ = _limiter("100/minute", "5/second")
    with pytest.raises(vi.InvalidCostError) as caught:
        await limiter.check_rate_limit("k", cost=6)
    assert "'5/second' allows at most 5" in str(caught.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("options", "logged"),
    [
        ({"backend": "memory"}, "sliding_log"),
        ({"backend": "memory", "algorithm": "sliding_window_counter"}, None),
        ({"backend": "limits"}, "moving-window"),
        ({"backend": "limits", "strategy": "fixed-window"}, None),
    ],
)
async def test_a_check_logs_at_most_max_logged_cost_units(
    options: dict[str, Any], logged: str | None
) -> None:
    """An algorithm that logs every unit (the sliding log, limits' moving window) takes
    at most MAX_LOGGED_COST units per check, on every backend alike (on Redis one check
    writes them all in one script, holding the server for every other client)."""
    from voice_infra.ratelimit import MAX_LOGGED_COST

    settings = vi.Settings.from_keywords(rate_limit={**options, "policies": ["2147483647/day"]})
    async with vi.create_rate_limiter(settings) as limiter:
        assert (await limiter.check_rate_limit("k", MAX_LOGGED_COST)).allowed
        if logged is None:
            assert (await limiter.check_rate_limit("k", MAX_LOGGED_COST + 1)).allowed
        else:
            with pytest.raises(vi.InvalidCostError, match=f"'{logged}' may record"):
                await limiter.check_rate_limit("k", MAX_LOGGED_COST + 1)
        with pytest.raises(vi.InvalidCostError, match="more than 30 digits"):
            await limiter.check_rate_limit("k", 10**5000)  # past int()'s digit limit


def test_rate_limit_info_headers_and_json() -> None:
    info = vi.RateLimitInfo(
        allowed=False, limit=5, window=1, remaining=0, reset_at=datetime(2030, 1, 1, tzinfo=UTC),
        retry_after=1.2, policy="5/second",
    )  # fmt: skip
    headers = info.headers()
    assert headers["Retry-After"] == "2"
    assert headers["RateLimit"].startswith('"5/second";r=0;t=')
    assert headers["RateLimit-Policy"] == '"5/second";q=5;w=1'
    data = json.loads(info.model_dump_json())
    assert data["reset_at"] == "2030-01-01T00:00:00Z"
    assert data["degraded"] is False


def test_models_normalise_to_utc() -> None:
    from datetime import timedelta, timezone

    local = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    info = vi.VoiceFileInfo(
        object_key="k", bucket_name="b", file_size=1, content_type="audio/wav", upload_time=local
    )
    assert info.upload_time.tzinfo == UTC and info.upload_time.hour == 10
    with pytest.raises(ValueError):
        vi.VoiceFileInfo(object_key="k", bucket_name="b", file_size=1, content_type="x",
                         upload_time=datetime(2030, 1, 1))  # fmt: skip


def test_error_tree() -> None:
    for error in (vi.ConfigError, vi.PluginError, vi.StorageError, vi.RateLimitError,
                  vi.BackendUnavailableError):  # fmt: skip
        assert issubclass(error, vi.VoiceServiceError)
    assert issubclass(vi.StorageUnavailableError, vi.BackendUnavailableError)
    assert issubclass(vi.RateLimiterUnavailableError, vi.BackendUnavailableError)
    assert issubclass(vi.BackendNotFoundError, vi.ConfigError)
    assert issubclass(vi.ObjectNotFoundError, vi.StorageError)
    assert vi.StorageUnavailableError.retryable


def test_a_tie_between_denying_policies_names_the_longer_window() -> None:
    second, two_seconds = RateLimitPolicy.parse("3/second"), RateLimitPolicy.parse("5/2 seconds")
    for noise in (0.0, 3e-10, -3e-10):  # float rounding of the same instant by two backends
        states = [
            PolicyState(second, 3, False, 0.5 + noise, 1000.5),
            PolicyState(two_seconds, 5, False, 0.5, 1001.5),
        ]
        for ordered in (states, states[::-1]):
            assert decide(ordered, now=1000.0).policy == "5/2 seconds"
    longer_wait = [PolicyState(second, 3, False, 0.7, 1000.7), *states[1:]]
    assert decide(longer_wait, now=1000.0).policy == "3/second"
