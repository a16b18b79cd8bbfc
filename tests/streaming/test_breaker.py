from __future__ import annotations

import pytest

from streaming.breaker import BreakerState, CircuitBreaker
from streaming.errors import BreakerOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def failing() -> None:
    raise ConnectionError("down")


async def working() -> str:
    return "ok"


async def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=5, clock=clock)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await breaker.call(failing)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BreakerOpenError) as info:
        await breaker.call(working)
    assert info.value.retry_after == pytest.approx(5)
    clock.now += 2
    assert breaker.retry_after() == pytest.approx(3)


async def test_breaker_half_open_trial_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(ConnectionError):
        await breaker.call(failing)
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert await breaker.call(working) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_breaker_half_open_allows_one_trial_and_reopens_on_failure() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(ConnectionError):
        await breaker.call(failing)
    clock.now += 5
    breaker.before_call()  # the trial is under way
    with pytest.raises(BreakerOpenError):
        breaker.before_call()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 2


async def test_breaker_ignores_errors_that_are_not_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=1, is_failure=lambda e: not isinstance(e, KeyError))

    async def bad_query() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await breaker.call(bad_query)
    assert breaker.state is BreakerState.CLOSED


def test_breaker_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker(reset_timeout=0)
