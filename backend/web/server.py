"""How uvicorn serves the app: one configuration for ``changecast serve`` and the tests.

Beyond uvicorn's defaults: a deadline for a request's headers (uvicorn has none, so a
client sending one byte a minute held a connection for ever), a cap on connections, no
trust in ``X-Forwarded-*`` unless proxies are named, small WebSocket frames without
per-message deflate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from backend.infra.settings import Settings
from backend.web.live.frames import WIRE_EXTENSION

# The protocol's own frame limit, a backstop above the sockets' 64 KiB message limit, so
# that an oversized message gets an error frame and the connection stays.
WS_MAX_SIZE = 256 * 1024


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers do not
    arrive within ``header_timeout`` seconds (slowloris)."""

    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        self.transport.close()


def _clearing(name: str) -> Any:
    """A flag of uvicorn's protocol whose setting clears ``FrameProtocol._clear``."""
    attr = "_" + name

    def get(self: FrameProtocol) -> bool:
        return bool(getattr(self, attr, False))

    def set_(self: FrameProtocol, value: bool) -> None:
        setattr(self, attr, value)
        self._clear = False

    return property(get, set_)


class FrameProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, offering the app a ``Wire``: frames the app
    built once are written straight to this connection's transport (a per-client ASGI
    ``send`` costs more than everything else a broadcast does). The protocol keeps doing
    the rest: the handshake, ping/pong, the close handshake, and flow control, whose
    pause and resume it passes on (``paused``, ``on_drain``)."""

    on_drain: Callable[[], None] | None = None
    # ``frames_open() and not paused()`` as last found true, until something happens that
    # could change it: ``try_write`` is then one check and a write (it runs once per member per
    # fan-out pass). Whatever can close or pause the connection clears it: a close sent
    # (``close_sent``), a disconnection, a pause, any received data (a close frame), an
    # abort; a transport closed by uvicorn is seen by ``is_closing`` on every write.
    _clear = False
    close_sent = _clearing("close_sent")
    disconnected = _clearing("disconnected")

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][WIRE_EXTENSION] = {"wire": self}

    def frames_open(self) -> bool:
        return (self.handshake_complete and not self.close_sent and not self.disconnected
                and self.conn.state is State.OPEN and not self.transport.is_closing())

    def paused(self) -> bool:
        return not self.writable.is_set()

    def write_frames(self, data: bytes) -> None:
        self.transport.write(data)

    def try_write(self, data: bytes) -> bool:
        if not self._clear:
            if not self.frames_open() or self.paused():
                return False
            self._clear = True
        elif self.transport.is_closing():
            self._clear = False
            return False
        self.transport.write(data)
        return True

    def abort(self) -> None:
        self._clear = False
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._clear = False
        super().data_received(data)

    def pause_writing(self) -> None:
        self._clear = False
        super().pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_drain is not None:
            self.on_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear = False
        self.on_drain = None
        super().connection_lost(exc)


def server_config(app: ASGIApp, settings: Settings, *, host: str | None = None,
                  port: int | None = None, fd: int | None = None) -> uvicorn.Config:
    """The uvicorn configuration ChangeCast runs with (on the listening socket ``fd``, if
    given: a worker of ``changecast serve --workers N``)."""
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,),
                    {"header_timeout": settings.header_timeout_s})
    return uvicorn.Config(
        app, host=host or settings.host, port=port or settings.port, fd=fd, log_config=None,
        lifespan="on", http=protocol, ws=FrameProtocol, ws_max_size=WS_MAX_SIZE,
        # Frames are small JSON or HTML: per-message deflate would cost ~45 KiB of zlib
        # state per connection and CPU per frame for little gain.
        ws_per_message_deflate=False,
        # X-Forwarded-For only from the proxies named (uvicorn trusts loopback by default,
        # and anyone on this machine could then choose the client address the login
        # throttle sees).
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        limit_concurrency=settings.max_connections, timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
