"""CircuitBreaker and ThrottledLogger, driven by a hand-set clock (no sleeping)."""

from __future__ import annotations

import logging

import pytest

from voice_infra.resilience import CircuitBreaker, ThrottledLogger, log_throttled


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


def test_log_throttled_shares_state_per_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.resilience.function")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        results = [log_throttled(logger, "same", "once %d", 1, interval=3600.0) for _ in range(5)]
    assert results == [True, False, False, False, False]
    assert [r.getMessage() for r in caplog.records] == ["once 1"]
