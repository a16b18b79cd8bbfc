"""The HTTP edge's guards, as pure ASGI middleware: allowed hosts, a cap on connections per
client, security headers, cross-origin refusal, bounded request bodies, and one database
deadline per API request."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.infra.settings import Settings
from backend.web.http.deadline import database_deadline
from backend.web.http.errors import error_response, unavailable_response
from backend.web.state import STATE_KEY, AppState
from streaming import BreakerOpenError

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
GUARDED_PREFIXES = ("/api/", "/ui/")  # JSON API and the pages' htmx actions
# The pages too: with the database down they answer within a second (a styled 503).
GUARDED_PAGES = {"/", "/admin", "/dashboard", "/login", "/login/demo", "/logout"}
# A page is bigger than an API call and is loaded while a browser renders others: more
# time, while the database answers; none at all once it is known not to (a styled 503
# at once, see ``Reachability``).
PAGE_DEADLINE_S, PAGE_HARD_CAP_S = 2.0, 2.5
UNGUARDED = {"/api/health", "/api/metrics"}  # must answer while the database is down
MAX_BODY = 64 * 1024  # any request body, read before the app sees it
# Scripts, styles, images and sockets from this origin only: the front-end assets are
# vendored, and the pages use no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def same_origin(headers: Headers, scheme: str) -> bool:
    """False when Origin (or, lacking it, Referer) names another site than Host."""
    host = headers.get("host", "")
    source = headers.get("origin") or headers.get("referer")
    if not source:
        return True  # not a browser cross-site request: browsers always send Origin there
    if source == "null":
        return False
    parts = urlsplit(source)
    expected = {"http": "http", "ws": "http", "https": "https", "wss": "https"}.get(scheme, scheme)
    return parts.netloc.lower() == host.lower() and parts.scheme == expected


def host_name(header: str) -> str:
    """The name in a Host header, without the port (``[::1]:8000`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: tuple[str, ...]) -> bool:
    """Whether a Host header names this server: an exact name, ``*.domain`` or ``*``."""
    name = host_name(header)
    if not name:
        return False
    for pattern in allowed:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (and the unix-socket case, no address at all)."""
    if not address:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class GuardMiddleware:
    """Everything a request meets before the app: see the module docstring."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = settings.hosts
        self.extra_headers = [*HEADERS, *([HSTS] if settings.secure_cookies else [])]
        self.per_client = settings.max_connections_per_client
        self._open: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host", ""), self.hosts):
            await self._refuse(scope, receive, send, 400, "unknown_host",
                               "this server does not answer for that Host")
            return
        client = (scope.get("client") or ("", 0))[0]
        if self._open[client] >= self.per_client:
            await self._refuse(scope, receive, send, 429, "too_many_connections",
                               f"at most {self.per_client} connections per client")
            return
        self._open[client] += 1
        try:
            if scope["type"] == "websocket":
                if not same_origin(headers, scope.get("scheme", "ws")):
                    await send({"type": "websocket.close", "code": 1008,
                                "reason": "cross-origin WebSocket refused"})
                    return
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, self._with_headers(send), headers)
        finally:
            self._open[client] -= 1
            if not self._open[client]:
                del self._open[client]

    async def _http(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        if scope["method"] not in SAFE_METHODS:  # a state change: same origin, body read first
            if not same_origin(headers, scope.get("scheme", "http")):
                await error_response(403, "cross_origin", "cross-origin request refused",
                                     scope=scope)(scope, receive, send)
                return
            body = await self._read_body(scope, receive, send, headers)
            if body is None:
                return
            receive = _replay(body, receive)
        path = scope["path"]
        if path in GUARDED_PAGES:
            await self._guarded(scope, receive, send, page=True)
            return
        if path.startswith(GUARDED_PREFIXES) and path not in UNGUARDED:
            await self._guarded(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send,
                         headers: Headers) -> bytes | None:
        """The whole body, or None once a 413 or 408 has been sent: refused on its
        Content-Length before any of it is read, cut off at the limit when chunked, and
        bounded in time, so that a slow or huge upload costs neither memory nor the
        database deadline."""
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            await self._too_large(scope, receive, send)
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > MAX_BODY:
                        await self._too_large(scope, receive, send)
                        return None
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            await error_response(408, "timeout", "the request body did not arrive within "
                                 f"{self.settings.body_timeout_s:g} s",
                                 {"Connection": "close"})(scope, receive, send)
            return None
        return b"".join(chunks)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, *,
                       page: bool = False) -> None:
        """Fail fast while the circuit is open (and, for a page, while the database is known
        not to answer); one database deadline otherwise. Only the database's own errors
        move the breaker (see errors.database_error)."""
        state: AppState | None = scope.get("state", {}).get(STATE_KEY)
        engine = state.engine if state is not None else None
        if page and state is not None and not state.reachability.reachable:
            await unavailable_response(2.0, "the database does not answer right now",
                                       scope=scope)(scope, receive, send)
            return
        if engine is not None:
            try:
                engine.admit()
            except BreakerOpenError as exc:
                await unavailable_response(exc.retry_after, scope=scope)(scope, receive, send)
                return
        status = 0

        async def watch_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            deadline = database_deadline(deadline_s=PAGE_DEADLINE_S,
                                         hard_cap_s=PAGE_HARD_CAP_S) if page \
                else database_deadline()
            async with deadline:
                await self.app(scope, receive, watch_status)
        except TimeoutError:
            if status:  # the response had started; nothing more can be said
                return
            status = 503
            await unavailable_response(
                1.0, "the database did not answer in time; try again shortly", scope=scope)(
                scope, receive, send)
        if engine is not None and status != 503:
            engine.record_outcome(ok=True)

    def _with_headers(self, send: Send) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *self.extra_headers]}
            await send(message)

        return send_with_headers

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, "too_large", f"request bodies are limited to {MAX_BODY} bytes",
                             {"Connection": "close"})(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str,
                      message: str) -> None:
        if scope["type"] == "websocket":  # before accept: the client sees an HTTP 403
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await error_response(status, code, message, {"Connection": "close"}, scope=scope)(
            scope, receive, self._with_headers(send))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
