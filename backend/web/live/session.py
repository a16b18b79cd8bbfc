"""What both live sockets share: one hub subscriber per WebSocket client, a reader and a
sender task, cleanup when either side leaves, and the end of the socket when its user's
session ends (sign-out, a new role), on this instance or any other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.domain.users import User, session_valid
from backend.web.state import AppState, app_state
from streaming import ChangeEvent, Document, Subscriber

SESSION_ENDED = 1008  # policy violation: the page's extension does not reconnect on it
UNSUPPORTED = 1003


class Session:
    """A WebSocket client with one hub subscriber: the reader handles what the client sends
    while a sender task drains the subscriber's queue; when the client leaves, both end."""

    def __init__(self, websocket: WebSocket, subscriber: Subscriber, user: User | None) -> None:
        self.websocket = websocket
        self.subscriber = subscriber
        self.state = app_state(websocket)
        self.engine = self.state.engine
        self.user = user
        self._ending: asyncio.Task[None] | None = None

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._watch())]
        try:
            await self._read_loop()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.subscriber.close()

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:  # a binary frame: not this protocol
                await self.close(UNSUPPORTED, "binary frames are not supported; send JSON text")
                return
            await self._handle(text)

    async def _handle(self, raw: str) -> None:
        """One message from the client (each socket's own protocol)."""
        raise NotImplementedError

    async def _send_loop(self) -> None:
        """Drain the subscriber to the socket until it closes."""
        raise NotImplementedError

    async def _watch(self) -> None:
        """Anything a socket checks while it is open (nothing by default)."""

    def holds_session_of(self, user_id: str) -> bool:
        return self.user is not None and self.user.id == user_id

    def session_still_valid(self, doc: Document | None) -> bool:
        """Whether this socket's session still stands for the user ``doc``."""
        session = self.websocket.session if "session" in self.websocket.scope else {}
        return session_valid(session, doc)

    def end(self, reason: str) -> None:
        """Close the socket from outside its own tasks (once)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self.close(SESSION_ENDED, reason))

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason)


def end_revoked_sessions(state: AppState) -> Callable[[ChangeEvent], None]:
    """An engine listener: when a user changes (signed out everywhere, a new role, deleted),
    close their sockets whose session no longer stands. Users arrive on the change stream,
    so a sign-out on one instance closes the sockets on every instance."""

    def on_change(event: ChangeEvent) -> None:
        if event.collection != "users":
            return
        user_id = str(event.key)
        for connection in list(state.connections):
            if connection.holds_session_of(user_id) and \
                    not connection.session_still_valid(event.doc):
                connection.end("session ended")

    return on_change
