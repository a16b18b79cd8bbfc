"""JSON encoding for API responses and WebSocket frames (msgspec, with BSON types)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from bson import Binary, Decimal128, ObjectId
from starlette.responses import Response


def _encode_extra(value: Any) -> Any:
    if isinstance(value, int):  # bson.Int64 and other int subclasses
        return int(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, Binary):
        return value.hex()
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_extra)


def dumps(value: Any) -> bytes:
    """JSON bytes for ``value``."""
    return _ENCODER.encode(value)


class JSON(Response):
    """A JSON response that understands ObjectId and datetime."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
