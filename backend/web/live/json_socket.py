"""``/ws``: live subscriptions over a WebSocket (the contract in ``docs/protocol.md``).

One task reads client messages, one sends from the connection's bounded
subscriber queue; the hub never waits for either. Authorization is decided
here, once per subscription: the restriction is part of the subscription, so
it costs no database read per change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.websockets import WebSocket

from backend.domain.access import subscription_rule
from backend.web.http.auth import current_user
from backend.web.jsonio import dumps
from backend.web.live.session import SESSION_ENDED, Session
from backend.web.state import app_state
from streaming import Delivery, FilterError, SubscriptionError, compile_filter

logger = logging.getLogger("changecast.ws")

MAX_MESSAGE = 64 * 1024
MAX_SUBSCRIPTIONS = 32
def _error(code: str, message: str, sub_id: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if sub_id is not None:
        body["id"] = sub_id
    return body


class Connection(Session):
    """One ``/ws`` client (the JSON contract)."""

    async def _handle(self, raw: str) -> None:
        if len(raw) > MAX_MESSAGE:
            self.subscriber.send_control(_error("too_large", f"messages are limited to {MAX_MESSAGE} bytes"))
            return
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            self.subscriber.send_control(_error("bad_json", "expected a JSON object"))
            return
        if not isinstance(msg, dict):
            self.subscriber.send_control(_error("bad_request", "expected a JSON object"))
            return
        op = msg.get("op")
        if op == "ping":
            self.subscriber.send_control({"type": "pong", "seq": self.engine.seq})
        elif op == "subscribe":
            await self._subscribe(msg)
        elif op == "unsubscribe":
            sub_id = msg.get("id")
            if not self.subscriber.unsubscribe(str(sub_id)):
                self.subscriber.send_control(_error("unknown_subscription",
                                                    f"no subscription {sub_id!r}", sub_id))
            else:
                self.subscriber.send_control({"type": "unsubscribed", "id": sub_id})
        else:
            self.subscriber.send_control(_error(
                "bad_request", f"unknown op {op!r}; expected subscribe, unsubscribe or ping"))

    async def _subscribe(self, msg: dict[str, Any]) -> None:
        sub_id, collection = msg.get("id"), msg.get("collection")
        where, resume_from = msg.get("where"), msg.get("resume_from")
        if not isinstance(sub_id, str) or not 1 <= len(sub_id) <= 64:
            self.subscriber.send_control(_error("bad_request", "id must be a string of 1..64 characters"))
            return
        if not isinstance(collection, str):
            self.subscriber.send_control(_error("bad_request", "collection must be a string", sub_id))
            return
        if resume_from is not None and (not isinstance(resume_from, int) or isinstance(resume_from, bool)):
            self.subscriber.send_control(_error("bad_request", "resume_from must be an integer", sub_id))
            return
        if len(self.subscriber.subscriptions) >= MAX_SUBSCRIPTIONS:
            self.subscriber.send_control(_error(
                "too_many", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection", sub_id))
            return
        if collection not in self.engine.collections:
            self.subscriber.send_control(_error(
                "unknown_collection", f"unknown collection {collection!r}; expected one of "
                f"{', '.join(self.engine.collections)}", sub_id))
            return
        # Rights as of now, not as of the handshake: a role may have changed since.
        user = await current_user(self.websocket)
        if self.user is not None and user is None:
            await self.close(SESSION_ENDED, "session ended")
            return
        self.user = user
        allowed, restriction = subscription_rule(self.user, collection)
        if not allowed:
            code = "unauthorized" if self.user is None else "forbidden"
            self.subscriber.send_control(_error(code, f"not allowed to subscribe to {collection}", sub_id))
            return
        try:
            compiled = compile_filter(where) if where is not None else None
            self.subscriber.subscribe(sub_id, collection, where=compiled,
                                      restriction=restriction, resume_from=resume_from)
        except (FilterError, SubscriptionError) as exc:
            code = "bad_where" if isinstance(exc, FilterError) else "bad_request"
            self.subscriber.send_control(_error(code, str(exc), sub_id))

    async def _send_loop(self) -> None:
        while True:
            batch = await self.subscriber.get_batch()
            if not batch:
                await self.websocket.close(code=1001, reason="server shutting down")
                return
            now = time.time() * 1000
            for delivery in batch:
                await self.websocket.send_text(self._encode(delivery))
                if delivery.event is not None:
                    self.engine.observe_delivery(delivery.event.at, now)

    async def _watch(self) -> None:
        """A socket that never subscribes is closed after ``idle_socket_s``."""
        await asyncio.sleep(self.state.settings.idle_socket_s)
        if not self.subscriber.subscriptions:
            await self.close(SESSION_ENDED, "no subscription; connect again when you need one")

    @staticmethod
    def _encode(delivery: Delivery) -> str:
        return dumps(delivery.to_message()).decode()


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Accept, serve subscriptions until the client leaves or the server stops."""
    user = await current_user(websocket)
    await websocket.accept()
    state = app_state(websocket)
    subscriber = state.engine.subscriber()
    connections = state.connections
    connection = Connection(websocket, subscriber, user)
    connections.add(connection)
    try:
        await connection.run()
    finally:
        connections.discard(connection)
