"""What both live sockets share: one hub subscriber per WebSocket client, a reader and a
sender task, and cleanup when either side leaves."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.web.state import app_state
from streaming import Subscriber


class Session:
    """A WebSocket client with one hub subscriber: the reader handles what the client sends
    while a sender task drains the subscriber's queue; when the client leaves, both end."""

    def __init__(self, websocket: WebSocket, subscriber: Subscriber) -> None:
        self.websocket = websocket
        self.subscriber = subscriber
        self.state = app_state(websocket)
        self.engine = self.state.engine

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            await self._read_loop()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self.subscriber.close()

    async def _read_loop(self) -> None:
        while True:
            try:
                raw = await self.websocket.receive_text()
            except (WebSocketDisconnect, RuntimeError, KeyError):
                return
            self._handle(raw)

    def _handle(self, raw: str) -> None:
        """One message from the client (each socket's own protocol)."""
        raise NotImplementedError

    async def _send_loop(self) -> None:
        """Drain the subscriber to the socket until it closes."""
        raise NotImplementedError
