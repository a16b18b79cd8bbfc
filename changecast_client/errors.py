"""What the client raises: one base class, one subclass per thing the caller can act on."""

from __future__ import annotations


class ChangeCastError(Exception):
    """Base of every error this client raises; ``code`` is the server's error code (or this
    client's, for what it found itself)."""

    code = "error"


class ConnectError(ChangeCastError):
    """The server could not be reached, or refused the connection (``status`` is the HTTP
    status of a refused handshake or request, when there was one)."""

    code = "connect"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ChangeCastError):
    """The server refused the credentials (a wrong email or password)."""

    code = "unauthorized"


class AccessDenied(ChangeCastError):
    """Signed in (or anonymous) but not allowed: ``code`` is ``unauthorized`` (sign in) or
    ``forbidden`` (this user may not)."""

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.code = code


class FilterError(ChangeCastError, ValueError):
    """The server could not parse the ``where`` expression; the message says where."""

    code = "bad_where"


class SessionClosed(ChangeCastError):
    """The session ended (sign-out anywhere, a new role or password): the server closed the
    socket with 1008 and the client does not reconnect. Sign in again."""

    code = "session_ended"


class ProtocolError(ChangeCastError):
    """The server answered something this client does not understand, or refused a request
    (``code`` is the server's error code)."""

    def __init__(self, message: str, code: str = "protocol") -> None:
        super().__init__(message)
        self.code = code
