"""A tiny MongoDB-wire server that answers like a standalone mongod (no replica set).

Used to check that ChangeCast refuses a standalone server over a real socket.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013

HELLO = {
    "ismaster": True, "isWritablePrimary": True, "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000, "minWireVersion": 0,
    "maxWireVersion": 21, "logicalSessionTimeoutMinutes": 30, "connectionId": 1, "ok": 1.0,
}


def _answer(command: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(command), "").lower()
    if name in {"hello", "ismaster"}:
        return HELLO
    if name == "buildinfo":
        return {"version": "8.0.0", "ok": 1.0}
    return {"ok": 1.0}


class FakeStandalone:
    """Serves on 127.0.0.1 in a background thread until ``close()``."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def close(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                header = _read(conn, 16)
                if header is None:
                    return
                length, request_id, _, opcode = struct.unpack("<iiii", header)
                body = _read(conn, length - 16)
                if body is None:
                    return
                conn.sendall(_reply(opcode, request_id, body))


def _read(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _reply(opcode: int, request_id: int, body: bytes) -> bytes:
    if opcode == OP_QUERY:
        # flags(4) cstring name, skip(4), return(4), document
        name_end = body.index(b"\x00", 4)
        start = name_end + 9
        size = struct.unpack("<i", body[start:start + 4])[0]
        command = bson.decode(body[start:start + size])
        doc = bson.encode(_answer(command))
        payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
        return struct.pack("<iiii", 16 + len(payload), 1, request_id, OP_REPLY) + payload
    # OP_MSG: flags(4), kind 0 section, document
    size = struct.unpack("<i", body[5:9])[0]
    command = bson.decode(body[5:5 + size])
    doc = bson.encode(_answer(command))
    payload = struct.pack("<i", 0) + b"\x00" + doc
    return struct.pack("<iiii", 16 + len(payload), 1, request_id, OP_MSG) + payload
