"""Cross-origin refusal and per-request database deadlines (pure ASGI middleware)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pymongo
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.errors import error_response

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
API_DEADLINE_S = 1.0


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
        if scope["path"].startswith("/api/") and scope["path"] != "/api/health":
            # Every database call of an API request shares one deadline: 503 within ~1 s.
            with pymongo.timeout(API_DEADLINE_S):
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)
