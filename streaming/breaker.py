"""A circuit breaker around database calls: fail fast while the database is failing."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streaming.errors import BreakerOpenError
from streaming.types import Clock

T = TypeVar("T")


class BreakerState(enum.Enum):
    """CLOSED lets calls through, OPEN refuses them, HALF_OPEN lets one trial through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; tries again after ``reset_timeout``."""

    def __init__(self, *, failure_threshold: int = 5, reset_timeout: float = 5.0,
                 clock: Clock = time.monotonic,
                 is_failure: Callable[[BaseException], bool] = lambda exc: True) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if reset_timeout <= 0:
            raise ValueError(f"reset_timeout must be > 0, got {reset_timeout!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.is_failure = is_failure
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker past its timeout reads as HALF_OPEN)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._state = BreakerState.HALF_OPEN
            self._trial_running = False
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def before_call(self) -> None:
        """Raise BreakerOpenError unless a call may go through now."""
        state = self.state
        if state is BreakerState.OPEN:
            raise BreakerOpenError(self.retry_after())
        if state is BreakerState.HALF_OPEN:
            if self._trial_running:
                raise BreakerOpenError(self.reset_timeout)
            self._trial_running = True

    def record_success(self) -> None:
        """A call succeeded: close the breaker."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_running = False

    def record_failure(self) -> None:
        """A call failed: count it, and open the breaker at the threshold or after a failed trial."""
        self._trial_running = False
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state is not BreakerState.OPEN:
                self.opened_count += 1
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` through the breaker."""
        self.before_call()
        try:
            result = await fn()
        except BaseException as exc:
            if self.is_failure(exc):
                self.record_failure()
            else:
                self._trial_running = False
            raise
        self.record_success()
        return result
