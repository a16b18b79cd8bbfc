"""One error shape for the API: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging

from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from backend.jsonio import JSON
from streaming import BreakerOpenError, FilterError

logger = logging.getLogger("changecast.errors")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media",
          422: "invalid", 429: "too_many_requests", 503: "unavailable"}


class ApiError(Exception):
    """An error the client caused or must wait out; rendered with its status."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    """The JSON error body with ``status``."""
    return JSON({"error": {"code": code, "message": message}}, status_code=status,
                headers=headers)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, _CODES.get(exc.status_code, "error"),
                          str(exc.detail), dict(exc.headers or {}))


async def filter_error(request: Request, exc: Exception) -> Response:
    return error_response(400, "bad_where", f"where: {exc}")


def is_unavailable(exc: BaseException) -> bool:
    """True when the database is down or too slow, rather than the request wrong."""
    return isinstance(exc, BreakerOpenError | ConnectionFailure | ExecutionTimeout
                      | WTimeoutError | TimeoutError)


async def database_error(request: Request, exc: Exception) -> Response:
    if is_unavailable(exc):
        retry = exc.retry_after if isinstance(exc, BreakerOpenError) else 1.0
        return error_response(503, "unavailable", "the database is unavailable; try again shortly",
                              {"Retry-After": str(max(1, round(retry)))})
    logger.error("database error: %s", exc)
    return error_response(500, "database_error", "the database rejected the operation")


HANDLERS = {ApiError: api_error, HTTPException: http_error, FilterError: filter_error,
            BreakerOpenError: database_error, PyMongoError: database_error,
            TimeoutError: database_error}
