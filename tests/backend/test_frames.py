"""The push side of ``/ws``: a broadcast group's frames built once and written member by
member, a member whose socket is paused kept apart and cut off past its bound, and the
protocol's one-check write refusing whenever the connection is paused or closing."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from backend.web.live.frames import BasicWire, frame_payloads
from backend.web.live.json_socket import JsonOutlet
from backend.web.server import FrameProtocol
from streaming import Hub, Subscriber
from streaming.events import Changes


class Wire(BasicWire):
    """A socket that keeps every frame written to it, and can be paused like a full one."""

    def __init__(self) -> None:
        self.on_drain: Any = None
        self.writes: list[bytes] = []
        self.is_paused = False

    def frames_open(self) -> bool:
        return True

    def paused(self) -> bool:
        return self.is_paused

    def write_frames(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        raise AssertionError("not expected")

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for data in self.writes for p in frame_payloads(data)]

    def resume(self) -> None:
        self.is_paused = False
        if self.on_drain is not None:
            self.on_drain()


def member(hub: Hub, sub_id: str = "p", **outlet: Any) -> tuple[Subscriber, Wire]:
    wire = Wire()
    json_outlet = JsonOutlet(wire, **outlet)
    subscriber = hub.subscriber(outlet=json_outlet)
    json_outlet.attach(subscriber)
    subscriber.subscribe(sub_id, "products")
    wire.writes.clear()  # the "subscribed" reply
    return subscriber, wire


def stock(hub: Hub, key: str, value: int) -> None:
    hub.publish(op="update", collection="products", key=key, doc={"_id": key, "stock": value},
                before={"_id": key, "stock": value + 1}, changes=Changes({"stock": value}, ()))


async def test_members_get_the_same_bytes_per_id_and_their_own_id() -> None:
    hub = Hub(collections=["products"], first_seq=0)
    tabs = [member(hub, "p") for _ in range(3)]
    other = member(hub, "grid")
    stock(hub, "p1", 5)
    stock(hub, "p2", 7)
    hub.flush()
    (first,), (second,), (third,) = (wire.writes for _, wire in tabs)
    assert first is second is third  # one bytes object, written three times
    for _, wire in (*tabs, other):
        assert len(wire.writes) == 1  # both changes in one write, one frame each
    assert [(m["id"], m["seq"], m["key"]) for m in other[1].messages()] == [
        ("grid", 1, "p1"), ("grid", 2, "p2")]
    assert [m["changes"]["set"] for m in tabs[0][1].messages()] == [{"stock": 5}, {"stock": 7}]


async def test_a_paused_member_waits_apart_in_order_and_is_cut_off_past_its_bound() -> None:
    hub = Hub(collections=["products"], first_seq=0)
    steady = [member(hub) for _ in range(4)]
    slow, slow_wire = member(hub, max_changes=3)
    slow_wire.is_paused = True
    stock(hub, "p1", 1)
    hub.flush()
    stock(hub, "p1", 2)
    hub.flush()
    assert slow_wire.writes == []  # paused: kept in its own backlog
    slow_wire.resume()
    assert [m["seq"] for m in slow_wire.messages()] == [1, 2]  # in order once it drains
    slow_wire.is_paused = True
    for value in range(3, 8):
        stock(hub, "p1", value)
        hub.flush()
    # Past 3 waiting changes its changes are dropped and it is told to resync; nothing
    # more is handed to it, and the others had every change at once.
    assert not slow.subscriptions and slow.cutoffs == 1
    slow_wire.resume()
    assert [m["type"] for m in slow_wire.messages()][2:] == ["resync"]
    for _, wire in steady:
        assert [m["seq"] for m in wire.messages()] == [1, 2, 3, 4, 5, 6, 7]


class Transport(asyncio.Transport):
    """What the protocol writes to, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


def client_close() -> bytes:
    """A masked close frame (code 1000), as a client sends it."""
    payload, mask = struct.pack("!H", 1000), b"\x01\x02\x03\x04"
    return bytes((0x88, 0x80 | len(payload))) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_protocol(app: Any) -> tuple[FrameProtocol, Transport]:
    config = uvicorn.Config(app, ws=FrameProtocol, log_config=None, lifespan="off")
    config.load()
    protocol = FrameProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    async with asyncio.timeout(5):
        while not protocol.frames_open():
            await asyncio.sleep(0)
    transport.data.clear()  # the 101 response
    return protocol, transport


async def accept_and_wait(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_the_protocol_writes_in_one_check_and_refuses_while_paused_or_closing() -> None:
    protocol, transport = await open_protocol(accept_and_wait)
    drained = []
    protocol.on_drain = lambda: drained.append(True)
    assert protocol.try_write(b"one") and transport.data == b"one"
    protocol.pause_writing()
    assert not protocol.try_write(b"two")
    protocol.resume_writing()
    assert drained == [True]
    assert protocol.try_write(b"three") and transport.data == b"onethree"
    transport.data.clear()
    protocol.data_received(client_close())  # the client says goodbye
    assert transport.data.startswith(b"\x88")  # the close reply
    reply = bytes(transport.data)
    assert not protocol.try_write(b"late") and transport.data == reply


async def test_the_protocol_refuses_once_it_sent_a_close_or_its_transport_closes() -> None:
    closing = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        await closing.wait()
        await send({"type": "websocket.close", "code": 1001})

    protocol, transport = await open_protocol(app)
    assert protocol.try_write(b"frame")
    closing.set()
    async with asyncio.timeout(5):
        while not protocol.close_sent:
            await asyncio.sleep(0)
    assert not protocol.try_write(b"after the close frame")
    assert not transport.data.endswith(b"after the close frame")

    other, other_transport = await open_protocol(accept_and_wait)
    assert other.try_write(b"x")
    other_transport.closing = True  # closed by uvicorn without any flag of its own
    assert not other.try_write(b"y") and other_transport.data == b"x"
    other.connection_lost(None)
