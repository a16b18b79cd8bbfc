"""The errors the engine raises; each message says what was expected and what was received."""

from __future__ import annotations


class StreamingError(Exception):
    """Base class of every error raised by ``streaming``."""


class BreakerOpenError(StreamingError):
    """The circuit breaker is open: the database is failing, calls fail fast."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"database circuit open; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class FilterError(StreamingError, ValueError):
    """A ``where`` expression could not be parsed or is out of limits."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.position = position


class SubscriptionError(StreamingError, ValueError):
    """A subscription request is invalid (unknown collection, duplicate id, ...)."""


class HistoryLost(StreamingError):
    """The stream cannot continue from where it was: subscribers must resync."""
