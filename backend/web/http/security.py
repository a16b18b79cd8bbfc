"""Cross-origin refusal and per-request database deadlines (pure ASGI middleware)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pymongo
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.web.http.errors import error_response, unavailable_response
from backend.web.state import STATE_KEY, AppState
from streaming import BreakerOpenError

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
GUARDED_PREFIXES = ("/api/", "/ui/")  # JSON API and the pages' htmx actions
UNGUARDED = {"/api/health", "/api/metrics"}  # must answer while the database is down
# PyMongo's own deadline for an API request's database calls, and a hard cap on top:
# its server selection re-checks only every 0.5 s, so alone it can overrun to ~1 s.
API_DEADLINE_S = 0.5
API_HARD_CAP_S = 0.8


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


class GuardMiddleware:
    """Refuses cross-origin state changes and WebSocket handshakes; bounds API DB time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if not same_origin(Headers(scope=scope), scope.get("scheme", "ws")):
                await send({"type": "websocket.close", "code": 1008,
                            "reason": "cross-origin WebSocket refused"})
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS and not same_origin(
            Headers(scope=scope), scope.get("scheme", "http")
        ):
            response = error_response(403, "cross_origin", "cross-origin request refused")
            await response(scope, receive, send)
            return
        if scope["path"].startswith(GUARDED_PREFIXES) and scope["path"] not in UNGUARDED:
            await self._guarded(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Fail fast while the circuit is open; one shared database deadline otherwise."""
        state: AppState | None = scope.get("state", {}).get(STATE_KEY)
        engine = state.engine if state is not None else None
        if engine is not None:
            try:
                engine.admit()
            except BreakerOpenError as exc:
                await unavailable_response(exc.retry_after)(scope, receive, send)
                return
        status = 0

        async def watch_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            async with asyncio.timeout(API_HARD_CAP_S):
                with pymongo.timeout(API_DEADLINE_S):
                    await self.app(scope, receive, watch_status)
        except TimeoutError:
            if status:  # the response had started; nothing more can be said
                return
            status = 503
            response = unavailable_response(
                1.0, "the database did not answer in time; try again shortly")
            await response(scope, receive, send)
        if engine is not None:
            engine.record_outcome(ok=status != 503)
