"""What domain code raises; the HTTP edge (``backend.web.http.errors``) maps each to a status."""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A rule said no; ``message`` is for the user, ``code`` for programs."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(DomainError):
    """The request is well-formed but asks for something the rules do not allow."""

    code = "invalid"


class NotFound(DomainError):
    """No such thing (or not one the asker may know about)."""

    code = "not_found"


class Conflict(DomainError):
    """The current state does not allow it (an illegal transition, stock below 0)."""

    code = "conflict"


class StaleStock(Conflict):
    """The stock changed since the admin saw it: nothing was written."""

    code = "stock_changed"

    def __init__(self, message: str, *, current: int) -> None:
        super().__init__(message)
        self.current = current


class Unauthenticated(DomainError):
    """Nobody is signed in, or the credentials are wrong."""

    code = "unauthorized"


class Forbidden(DomainError):
    """Signed in, but this role may not do it."""

    code = "forbidden"


class Throttled(DomainError):
    """Too many attempts; try again after ``retry_after`` seconds."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
