"""CircuitBreaker and ThrottledLogger, driven by a hand-set clock (no sleeping)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import ValidationError

import voice_infra as vi
from voice_infra.ratelimit import CallSlots, FailModeGuard, ServerRateLimiterSettings
from voice_infra.resilience import CircuitBreaker, ThrottledLogger


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_breaker_starts_closed_and_allows(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(100))


def test_breaker_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.trips == 1
    assert not breaker.allow()


def test_success_resets_the_failure_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_half_open_allows_exactly_one_probe_then_closes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(4.999)
    assert not breaker.allow()
    clock.advance(0.002)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for the probe's outcome
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(10))


def test_failed_probe_reopens_for_a_full_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.trips == 1  # still the same outage
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_lost_probe_is_replaced_after_a_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()  # this probe's task is cancelled: no outcome reported
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_breaker_validates_arguments() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, -1.0)


def test_breaker_reset_and_repr(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    assert "open" in repr(breaker)
    breaker.reset()
    assert breaker.state == "closed" and breaker.allow()


def test_throttled_logger_once_per_interval_per_key(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.resilience.throttled")
    throttled = ThrottledLogger(logger, interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert throttled.warning("down", "server down: %s", "refused")
        for _ in range(100):
            assert not throttled.warning("down", "server down: %s", "refused")
        assert throttled.warning("other", "another problem")
        clock.advance(59.9)
        assert not throttled.warning("down", "server down: %s", "refused")
        clock.advance(0.1)
        assert throttled.warning("down", "server down: %s", "timeout")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "server down: refused",
        "another problem",
        "server down: timeout (101 similar message(s) suppressed)",
    ]
    assert all(record.levelno == logging.WARNING for record in caplog.records)


def test_throttled_logger_reset(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.resilience.reset")
    throttled = ThrottledLogger(logger, interval=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        throttled.log(logging.INFO, "k", "one")
        throttled.reset("k")
        throttled.log(logging.INFO, "k", "two")
        throttled.reset()
        throttled.log(logging.INFO, "k", "three")
    assert [r.getMessage() for r in caplog.records] == ["one", "two", "three"]
    with pytest.raises(ValueError):
        ThrottledLogger(logger, interval=-1)


# -- FailModeGuard: the fail_mode of every rate limiter that asks a server -------------


def _guard(clock: FakeClock, **options: object) -> FailModeGuard:
    settings = ServerRateLimiterSettings.model_validate(
        {"policies": ["5/second", "100/minute"], "breaker_failure_threshold": 2,
         "breaker_cooldown": 10.0, "warning_interval": 30.0, **options}
    )  # fmt: skip
    return FailModeGuard(
        settings, settings.policies, server="test server at tcp://h:1",
        logger=logging.getLogger("voice_infra.test_guard"), clock=clock,
    )  # fmt: skip


@pytest.mark.parametrize(("mode", "allowed"), [("open", True), ("closed", False)])
def test_guard_answers_by_fail_mode(clock: FakeClock, mode: str, allowed: bool) -> None:
    guard = _guard(clock, fail_mode=mode)
    info = guard.failed(ConnectionRefusedError("refused"))
    assert info.degraded and info.allowed is allowed
    assert info.policy == "100/minute"  # the lowest rate speaks for the degraded answer
    assert info.retry_after == (0.0 if allowed else 60.0)


def test_guard_raise_mode_keeps_the_cause(clock: FakeClock) -> None:
    guard = _guard(clock, fail_mode="raise")
    cause = TimeoutError("no answer")
    with pytest.raises(vi.RateLimiterUnavailableError, match=r"test server .* unavailable") as ex:
        guard.failed(cause)
    assert ex.value.__cause__ is cause


def test_guard_breaker_opens_and_recovers(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    guard = _guard(clock)
    for _ in range(2):
        assert guard.allow()
        guard.failed(OSError("down"))
    assert not guard.allow() and guard.breaker.state == "open"
    assert guard.unavailable(None).degraded  # what a backend answers without any I/O
    with pytest.raises(vi.RateLimiterUnavailableError, match="circuit breaker open"):
        guard.require("clear 'user:1'")
    clock.advance(10.0)
    assert guard.allow()  # one probe after the cool-down
    with caplog.at_level(logging.INFO, logger="voice_infra.test_guard"):
        guard.succeeded()
    assert guard.breaker.state == "closed"
    assert "answers again" in caplog.text


def test_guard_warns_once_per_interval(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    guard = _guard(clock, breaker_failure_threshold=1000)
    with caplog.at_level(logging.WARNING, logger="voice_infra.test_guard"):
        for _ in range(50):
            guard.failed(OSError("down"))
        clock.advance(31.0)
        guard.failed(OSError("down"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "failing open" in messages[0]


@pytest.mark.parametrize(("report", "failures"), [("action_failed", 1), ("not_done", 0)])
def test_guard_errors_of_a_clear(clock: FakeClock, report: str, failures: int) -> None:
    """A clear the server failed counts toward the breaker; one that local overload
    stopped (``not_done``) is not the server's failure."""
    guard = _guard(clock)
    cause = OSError("reset")
    error = getattr(guard, report)(cause, "clear 'k'")
    assert isinstance(error, vi.RateLimiterUnavailableError) and error.__cause__ is cause
    assert "test server at tcp://h:1 could not clear 'k': OSError: reset" in str(error)
    assert guard.breaker.consecutive_failures == failures


# -- CallSlots: at most pool_size server calls in flight, the rest wait their turn ---------


@pytest.mark.asyncio
async def test_call_slots_make_calls_wait_their_turn_and_say_when_none_came_free() -> None:
    slots = CallSlots(2)
    held = [slots.slot(), slots.slot()]
    assert all([await slot.acquire(0.01) for slot in held])
    late = slots.slot()
    assert not await late.acquire(0.01)  # both taken: no slot within 10 ms
    assert not late.acquired
    waiter = asyncio.ensure_future(late.acquire(5.0))
    await asyncio.sleep(0)
    held[0].release()
    held[0].release()  # a second release gives nothing back twice
    assert await waiter and late.acquired
    assert not await slots.slot().acquire(0.01)  # still two in flight, not three
    late.release()
    held[1].release()
    assert all([await slots.slot().acquire(0.01) for _ in range(2)])


@pytest.mark.asyncio
async def test_call_slot_tells_a_wait_for_the_slot_from_a_slow_call() -> None:
    """Inside the caller's own deadline: ``acquired`` says whether the timeout struck in
    the queue (local overload) or during the call (the server's fault)."""
    slots = CallSlots(1)
    holder = slots.slot()
    await holder.acquire()
    queued = slots.slot()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01), queued:
            raise AssertionError("unreachable: the only slot is held")
    assert not queued.acquired
    holder.release()
    slow = slots.slot()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01), slow:
            await asyncio.sleep(1)
    assert slow.acquired  # it got the slot: the call was slow
    assert await slots.slot().acquire(0.01)  # and gave it back on the way out


@pytest.mark.asyncio
async def test_call_slots_without_a_pool_never_wait() -> None:
    slots = CallSlots(None)
    taken = [slots.slot() for _ in range(1000)]
    assert all([await slot.acquire(0.0) for slot in taken]) and all(s.acquired for s in taken)


def test_call_slots_overload_message_names_the_options() -> None:
    cause = TimeoutError()
    error = CallSlots(4).overloaded("pool_timeout", 1.5, cause)
    assert str(error).startswith("no free connection slot within pool_timeout = 1.5 s")
    assert "pool_size = 4 checks were in flight (local overload" in str(error)
    assert "raise pool_size or pool_timeout" in str(error) and error.__cause__ is cause


def test_server_settings_validation() -> None:
    with pytest.raises(ValidationError):
        ServerRateLimiterSettings.model_validate({"fail_mode": "sometimes"})
    with pytest.raises(ValidationError):
        ServerRateLimiterSettings.model_validate({"breaker_failure_threshold": 0})
