"""``/ws``: live subscriptions over a WebSocket (the contract in ``docs/protocol.md``).

One task reads client messages; changes are pushed by the hub's fan-out passes
through a ``JsonOutlet``: each change of a group is JSON-encoded once (without the
subscription id), and each member's frame is its own id spliced in front of those
shared bytes. Authorization is decided here, once per subscription: the restriction is
part of the subscription (and of its group), so it costs no database read per change.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from starlette.websockets import WebSocket

from backend.domain.access import subscription_rule
from backend.web.http.auth import current_user
from backend.web.jsonio import dumps
from backend.web.live.frames import SocketOutlet, text_frame, wire_of
from backend.web.live.session import SESSION_ENDED, Session
from backend.web.state import app_state
from streaming import Batch, FilterError, Subscription, SubscriptionError, compile_filter

logger = logging.getLogger("changecast.ws")

MAX_MESSAGE = 64 * 1024
MAX_SUBSCRIPTIONS = 32
JSON = "json"  # the key of a batch's shared encoding


def _error(code: str, message: str, sub_id: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if sub_id is not None:
        body["id"] = sub_id
    return body


def _shared_bodies(batch: Batch) -> list[tuple[int, bytes]]:
    """Per change of the batch: its seq and its message after the id, encoded once."""
    bodies: list[tuple[int, bytes]] | None = batch.encoded.get(JSON)
    if bodies is None:
        bodies = batch.encoded[JSON] = [
            (d.event.seq if d.event is not None else 0, dumps(d.body())[1:])
            for d in batch.deliveries]
    return bodies


@functools.lru_cache(maxsize=4096)
def _prefix_of(sub_id: str) -> bytes:
    # One bytes object per id (while cached): members with the same id are told apart
    # from the next one by identity in ``deliver_each``.
    return b'{"type":"change","id":' + dumps(sub_id) + b","


def _id_prefix(sub: Subscription) -> bytes:
    prefix: bytes | None = sub.context
    if prefix is None:
        prefix = sub.context = _prefix_of(sub.id)
    return prefix


def _frames(batch: Batch, prefix: bytes) -> bytes:
    """The batch's frames for subscriptions with this id prefix: members whose subscription
    has the same id (every tab of one page does) get the very same bytes."""
    frames: bytes | None = batch.encoded.get(prefix)
    if frames is None:
        frames = batch.encoded[prefix] = b"".join(
            [text_frame(prefix + body) for _, body in _shared_bodies(batch)])
    return frames


class JsonOutlet(SocketOutlet):
    """The ``/ws`` contract's frames: one JSON message per frame, every change in seq order
    (a pass's frames for one connection go out in one write)."""

    @staticmethod
    def deliver_each(subs: list[Subscription], batch: Batch, seq: int) -> int:
        """A group's whole batch to each of its ``/ws`` members (the broadcast case): the
        frames are looked up once per id, and a member whose wire takes them at once costs
        one write."""
        size = batch.size
        delivered = len(subs)
        prefix = frames = b""
        for sub in subs:
            if not sub.active:
                delivered -= 1
                continue
            if sub.context is not prefix:
                prefix = sub.context or _id_prefix(sub)
                frames = _frames(batch, prefix)
            outlet: JsonOutlet = sub.outlet  # type: ignore[assignment]
            if outlet._backlog or not outlet.try_write(frames):
                outlet.write(frames, size)
        return delivered

    def deliver(self, items: list[tuple[Subscription, Batch]], seq: int) -> None:
        if len(items) == 1:
            sub, batch = items[0]
            if sub.active:
                self.write(_frames(batch, sub.context or _id_prefix(sub)), batch.size)
            return
        ordered = sorted((at, text_frame(_id_prefix(sub) + body))
                         for sub, batch in items if sub.active
                         for at, body in _shared_bodies(batch))
        self.write(b"".join([frame for _, frame in ordered]), len(ordered))

    def control(self, message: dict[str, Any]) -> None:
        self.write(text_frame(dumps(message)))


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
            # Every change up to this seq has been handed to this socket.
            self.subscriber.send_control({"type": "pong", "seq": self.engine.settled_seq})
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
        # Changes and replies are pushed; this task only sees the engine stop.
        while await self.subscriber.get_batch():
            pass
        await self.websocket.close(code=1001, reason="server shutting down")

    async def _watch(self) -> None:
        """A socket that never subscribes is closed after ``idle_socket_s``."""
        await asyncio.sleep(self.state.settings.idle_socket_s)
        if not self.subscriber.subscriptions:
            await self.close(SESSION_ENDED, "no subscription; connect again when you need one")


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Accept, serve subscriptions until the client leaves or the server stops."""
    user = await current_user(websocket)
    await websocket.accept()
    state = app_state(websocket)
    outlet = JsonOutlet(wire_of(websocket))
    subscriber = state.engine.subscriber(outlet=outlet)
    outlet.attach(subscriber)
    connections = state.connections
    connection = Connection(websocket, subscriber, user)
    connections.add(connection)
    try:
        await connection.run()
    finally:
        connections.discard(connection)
