"""Frames built once, written to each socket: the push side of both live sockets.

The hub hands each member's outlet a batch shared by the member's whole group. What a
batch becomes on the wire (a JSON message per change, or one HTML frame of fragments) is
built once and kept in ``batch.encoded``; per member there remains a bytes join and one
write to the connection's transport. The write goes through a ``Wire``:

- ``FrameProtocol`` (``backend.web.server``) is uvicorn's sans-I/O WebSocket protocol
  offering itself in the ASGI scope: frames go straight to its transport, while it keeps
  doing the close handshake, ping/pong and flow control;
- ``AsgiWire`` is the fallback under any other ASGI server: the same frames, sent with
  ``websocket.send_text`` by one task.

A member whose transport is paused (its reader fell behind and the kernel's and the
transport's buffers are full) gets its frames in its own bounded backlog; past the bound
it is cut off: its subscriptions get ``resync`` and its backlog of changes is dropped,
so a slow reader never grows the server's memory nor delays its group.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from starlette.websockets import WebSocket

from streaming import Batch, Subscriber, Subscription

WIRE_EXTENSION = "changecast.frames"
BACKLOG_CHANGES = 1_000  # as the queue of a queued subscriber
BACKLOG_BYTES = 1 << 20
# Control frames (errors, pongs) a client can cause without reading: past this, it goes.
CONTROL_BYTES = 4 << 20


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (server to client, RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def frame_payloads(data: bytes) -> list[bytes]:
    """The payloads of the frames ``text_frame`` built, back (for ``AsgiWire``)."""
    payloads, at = [], 0
    while at < len(data):
        size = data[at + 1]
        at += 2
        if size == 126:
            (size,) = struct.unpack_from("!H", data, at)
            at += 2
        elif size == 127:
            (size,) = struct.unpack_from("!Q", data, at)
            at += 8
        payloads.append(data[at:at + size])
        at += size
    return payloads


class Wire(Protocol):
    """What an outlet writes frames to."""

    on_drain: Callable[[], None] | None

    def frames_open(self) -> bool:
        """True while frames may be written (handshake done, no close sent)."""

    def paused(self) -> bool:
        """True while the transport's buffer is above its high-water mark."""

    def write_frames(self, data: bytes) -> None:
        """Write complete frames."""

    def try_write(self, data: bytes) -> bool:
        """Write complete frames if the wire takes them now (open, not paused); False,
        writing nothing, if it does not."""

    def abort(self) -> None:
        """Drop the connection now."""


class BasicWire:
    """A ``Wire``'s ``try_write`` from its other methods (``FrameProtocol`` has a faster one)."""

    def frames_open(self) -> bool:
        raise NotImplementedError

    def paused(self) -> bool:
        raise NotImplementedError

    def write_frames(self, data: bytes) -> None:
        raise NotImplementedError

    def try_write(self, data: bytes) -> bool:
        if not self.frames_open() or self.paused():
            return False
        self.write_frames(data)
        return True


class AsgiWire(BasicWire):
    """Frames sent through the ASGI interface by one task (any ASGI server)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.on_drain: Callable[[], None] | None = None
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._open = True
        self._task = asyncio.ensure_future(self._send())

    def frames_open(self) -> bool:
        return self._open

    def paused(self) -> bool:
        return len(self._queue) >= BACKLOG_CHANGES

    def write_frames(self, data: bytes) -> None:
        self._queue.extend(frame_payloads(data))
        self._ready.set()

    def abort(self) -> None:
        self._open = False
        self._task.cancel()

    async def _send(self) -> None:
        try:
            while self._open:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    was_paused = self.paused()
                    await self.websocket.send_text(self._queue.popleft().decode())
                    if was_paused and not self.paused() and self.on_drain is not None:
                        self.on_drain()
        except Exception:  # the client left
            self._open = False


def wire_of(websocket: WebSocket) -> Wire:
    """The connection's frame writer: the protocol's own when uvicorn runs ChangeCast's."""
    wire = websocket.scope.get("extensions", {}).get(WIRE_EXTENSION, {}).get("wire")
    return wire if wire is not None else AsgiWire(websocket)


CHANGE, CONTROL, HOLD = 0, 1, 2


class SocketOutlet:
    """A push member's end: frames to its wire, or to its bounded backlog while the wire is
    paused or a ``hold`` is open (a page re-reading a collection: what arrives meanwhile
    must follow the fresh snapshot, not precede it)."""

    def __init__(self, wire: Wire, *, max_changes: int = BACKLOG_CHANGES,
                 max_bytes: int = BACKLOG_BYTES) -> None:
        self.wire = wire
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self.subscriber: Subscriber | None = None
        # (CHANGE | CONTROL | HOLD, frames, changes in them): changes may be dropped on a
        # cut-off, controls not; a HOLD is the place of a frame still being built.
        self._backlog: deque[tuple[int, bytes, int]] = deque()
        self._backlog_bytes = 0
        self._backlog_changes = 0
        wire.on_drain = self.drain
        self.try_write = wire.try_write

    def attach(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    def __len__(self) -> int:
        return self._backlog_changes

    @property
    def idle(self) -> bool:
        """Nothing waits for the wire."""
        return not self._backlog

    def deliver(self, items: list[tuple[Subscription, Batch]], seq: int) -> None:
        raise NotImplementedError

    def control(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def write(self, data: bytes, changes: int = 0) -> None:
        """Frames carrying ``changes`` changes (0: control frames, never dropped)."""
        if not data or (not self._backlog and self.try_write(data)):
            return
        if not self.wire.frames_open():
            return
        if changes and (self._backlog_changes + changes > self.max_changes
                        or self._backlog_bytes + len(data) > self.max_bytes):
            self._overflow(changes)  # these changes too: the bound holds
            return
        self._backlog.append((CHANGE if changes else CONTROL, data, changes))
        self._backlog_bytes += len(data)
        self._backlog_changes += changes
        if self.subscriber is not None:
            metrics = self.subscriber.hub.metrics
            metrics.queue_depth_max = max(metrics.queue_depth_max, self._backlog_changes)
        if self._backlog_bytes > CONTROL_BYTES:
            self.wire.abort()  # it sends and never reads: no more of our memory

    def hold(self) -> None:
        """Keep a place for a frame ``release`` will bring; later frames wait behind it."""
        self._backlog.append((HOLD, b"", 0))

    def release(self, data: bytes) -> None:
        """Put ``data`` in the first held place and write what can be written."""
        for n, (kind, _, _) in enumerate(self._backlog):
            if kind == HOLD:
                self._backlog[n] = (CONTROL, data, 0)
                self._backlog_bytes += len(data)
                break
        self.drain()

    def drain(self) -> None:
        """Write the backlog while the wire takes it (it resumed writing)."""
        backlog = self._backlog
        while backlog and backlog[0][0] != HOLD and self.wire.frames_open() \
                and not self.wire.paused():
            _, data, changes = backlog.popleft()
            self._backlog_bytes -= len(data)
            self._backlog_changes -= changes
            if data:
                self.wire.write_frames(data)

    def _overflow(self, dropped: int) -> None:
        dropped += self._backlog_changes
        kept = [entry for entry in self._backlog if entry[0] != CHANGE]
        self._backlog = deque(kept)
        self._backlog_bytes = sum(len(data) for _, data, _ in kept)
        self._backlog_changes = 0
        if self.subscriber is not None:
            self.subscriber.cut_off(
                f"slow consumer: more than {self.max_changes} changes or {self.max_bytes} "
                "bytes waiting", dropped=dropped)
