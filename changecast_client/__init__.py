"""A Python client for ChangeCast's live protocol (``/ws``).

::

    async with await connect("http://127.0.0.1:8000", ("admin@example.com", "admin")) as cc:
        products = await cc.subscribe("products", where="stock < 10")
        async for event in products:
            print(event, len(products.view))

``subscribe`` loads a snapshot through the REST list (keyset paging), subscribes with
``resume_from`` set to its ``seq`` (no gap, no duplicate), keeps ``view`` current, and
survives reconnects: it resumes from the last ``seq`` applied, and reloads (``ResyncBegin``,
``Snapshot``, ``ResyncEnd``) when the server says the history is gone.
"""

from changecast_client.client import Client, connect
from changecast_client.errors import (
    AccessDenied,
    AuthError,
    ChangeCastError,
    ConnectError,
    FilterError,
    ProtocolError,
    SessionClosed,
)
from changecast_client.events import (
    Change,
    Diff,
    Document,
    Event,
    ResyncBegin,
    ResyncEnd,
    Snapshot,
    Status,
    apply,
    apply_diff,
)
from changecast_client.subscription import Subscription

__all__ = [
    "AccessDenied",
    "AuthError",
    "Change",
    "ChangeCastError",
    "Client",
    "ConnectError",
    "Diff",
    "Document",
    "Event",
    "FilterError",
    "ProtocolError",
    "ResyncBegin",
    "ResyncEnd",
    "SessionClosed",
    "Snapshot",
    "Status",
    "Subscription",
    "apply",
    "apply_diff",
    "connect",
]
