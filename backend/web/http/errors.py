"""One error shape for the API, ``{"error": {"code", "message"}}``, and one table that maps
domain errors to HTTP statuses."""

from __future__ import annotations

import logging
from typing import Any

from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from backend.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    StaleStock,
    Throttled,
    Unauthenticated,
)
from backend.web.jsonio import JSON
from backend.web.state import STATE_KEY, AppState, app_state
from streaming import BreakerOpenError, FilterError

logger = logging.getLogger("changecast.errors")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media",
          422: "invalid", 429: "too_many_requests", 503: "unavailable"}
# The one place a domain error becomes a status code.
STATUS: dict[type[DomainError], int] = {Invalid: 422, NotFound: 404, Conflict: 409,
                                        Unauthenticated: 401, Forbidden: 403, Throttled: 429}


class ApiError(Exception):
    """A transport-level problem the client caused (bad JSON, a body too large, bad paging)."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message


ClientError = ApiError | DomainError
CLIENT_ERRORS = (ApiError, DomainError)


def status_of(exc: ClientError) -> int:
    """The HTTP status of a client error."""
    if isinstance(exc, ApiError):
        return exc.status
    return next(status for kind, status in STATUS.items() if isinstance(exc, kind))


def headers_of(exc: ClientError) -> dict[str, str]:
    """Extra response headers a client error carries (``Retry-After`` when throttled)."""
    if isinstance(exc, Throttled):
        return {"Retry-After": str(max(1, round(exc.retry_after)))}
    return {}


# What a person reading an error page is told, per status (the JSON keeps code + message).
PAGE_TITLES = {400: "That request did not make sense", 401: "Please sign in",
               403: "You can't open this page", 404: "There is no such page",
               405: "That is not something this page does", 408: "That took too long",
               409: "Something changed meanwhile", 413: "That was too much at once",
               422: "That did not look right", 429: "Slow down a little",
               500: "Something went wrong on our side",
               503: "The shop's database is unreachable right now"}
PAGE_ADVICE = {404: "The address may be mistyped, or what it showed no longer exists.",
               500: "It has been logged. Trying again usually works.",
               503: "Nothing you did caused this. The page tries again on its own "
                    "every few seconds."}


def wants_html(scope: Scope) -> bool:
    """A browser navigating (``Accept: text/html``), not the API, a socket or htmx."""
    if scope.get("type") != "http" or scope.get("path", "").startswith("/api/"):
        return False
    headers = Headers(scope=scope)
    return "hx-request" not in headers and "text/html" in headers.get("accept", "")


def error_page(scope: Scope, status: int, message: str,
               headers: dict[str, str] | None = None) -> Response:
    """The styled HTML page of an error, for a browser."""
    state: AppState | None = scope.get("state", {}).get(STATE_KEY)
    retry = (headers or {}).get("Retry-After")
    context = {"status": status, "title": PAGE_TITLES.get(status, "Something went wrong"),
               "message": message[:1].upper() + message[1:],
               "advice": PAGE_ADVICE.get(status, ""),
               "retry_s": max(3, int(retry)) if retry and retry.isdigit() else None}
    if state is None:  # before start-up finished: no templates yet
        return HTMLResponse(f"<!doctype html><title>{status}</title><h1>{status}</h1>",
                            status_code=status, headers=headers)
    html = state.templates.get_template("error.html").render(context)
    return HTMLResponse(html, status_code=status,
                        headers={**(headers or {}), "Cache-Control": "no-store"})


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, *,
                   scope: Scope | None = None, extra: dict[str, Any] | None = None) -> Response:
    """The JSON error body with ``status`` (``extra`` fields beside code and message); a
    styled page when a browser navigates."""
    if scope is not None and wants_html(scope):
        return error_page(scope, status, message, headers)
    return JSON({"error": {"code": code, "message": message, **(extra or {})}},
                status_code=status, headers=headers)


def unavailable_response(retry_after: float = 1.0,
                         message: str = "the database is unavailable; try again shortly",
                         *, scope: Scope | None = None) -> Response:
    """503 with ``Retry-After``: the database is down or too slow, not the request wrong."""
    return error_response(503, "unavailable", message,
                          {"Retry-After": str(max(1, round(retry_after)))}, scope=scope)


async def client_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, CLIENT_ERRORS):
        raise TypeError(f"expected a client error, got {type(exc).__name__}")
    extra = {"current": exc.current} if isinstance(exc, StaleStock) else None
    return error_response(status_of(exc), exc.code, exc.message, headers_of(exc),
                          scope=request.scope, extra=extra)


async def http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        raise TypeError(f"expected HTTPException, got {type(exc).__name__}")
    return error_response(exc.status_code, _CODES.get(exc.status_code, "error"),
                          str(exc.detail), dict(exc.headers or {}), scope=request.scope)


async def filter_error(request: Request, exc: Exception) -> Response:
    return error_response(400, "bad_where", f"where: {exc}", scope=request.scope)


def is_unavailable(exc: BaseException) -> bool:
    """True when the database is down or too slow, rather than the request wrong."""
    return isinstance(exc, BreakerOpenError | ConnectionFailure | ExecutionTimeout
                      | WTimeoutError | TimeoutError)


async def database_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, PyMongoError) and is_unavailable(exc):
        # The database itself failed or timed out: that, and only that, moves the breaker.
        app_state(request).engine.record_outcome(ok=False)
    if is_unavailable(exc):
        return unavailable_response(exc.retry_after if isinstance(exc, BreakerOpenError)
                                    else 1.0, scope=request.scope)
    logger.error("database error: %s", exc)
    return error_response(500, "database_error", "the database rejected the operation",
                          scope=request.scope)


async def server_error(request: Request, exc: Exception) -> Response:
    """Anything unforeseen: the JSON error shape, never a traceback (it goes to the log)."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "the server failed on this request",
                          scope=request.scope)


HANDLERS = {ApiError: client_error, DomainError: client_error, HTTPException: http_error,
            FilterError: filter_error, BreakerOpenError: database_error,
            PyMongoError: database_error, TimeoutError: database_error,
            Exception: server_error}
