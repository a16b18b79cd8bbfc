"""A remote live view over ``/ws`` that behaves like a browser tab, through the client library
(``changecast_client``): snapshot from the REST list, subscribe from its ``seq``, apply
changes, reload on ``resync``, and reconnect with the last ``seq`` it applied whenever the
socket drops."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from changecast_client import (
    Client,
    ConnectError,
    ProtocolError,
    Status,
    Subscription,
    connect,
)


class RemoteView:
    def __init__(self, base: str, collection: str, cookie: str, *, name: str = "v") -> None:
        self.base = base
        self.collection = collection
        self.cookie = cookie
        self.name = name
        self.connected = asyncio.Event()  # subscribed, and not reconnecting since
        self.client: Client | None = None
        self.sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def docs(self) -> dict[str, dict[str, Any]]:
        return self.sub.view if self.sub is not None else {}

    @property
    def resyncs(self) -> int:
        return self.sub.resyncs if self.sub is not None else 0

    @property
    def duplicates(self) -> int:
        """Changes the server sent again (at or below the ``seq`` already applied)."""
        return self.sub.duplicates if self.sub is not None else 0

    @property
    def reconnects(self) -> int:
        return self.client.reconnects if self.client is not None else 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Never raises: it runs in the tests' ``finally``, before the server is stopped (a
        view that failed shows in the test's own assertions)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.client is not None:
            await self.client.close()

    async def _run(self) -> None:
        # The first subscribe raises what the server said; a tab tries again after a 503
        # (fifty of them loading at once can find the database busy), as after a lost socket.
        while self.sub is None:
            try:
                self.client = self.client or await connect(self.base, self.cookie,
                                                           backoff_s=(0.05, 0.25))
                self.sub = await self.client.subscribe(self.collection)
            except (ConnectError, ProtocolError) as exc:
                if isinstance(exc, ProtocolError) and exc.code not in ("unavailable", "503"):
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.25))
        self.connected.set()
        async for event in self.sub:
            if isinstance(event, Status):
                if event.state == "live":
                    self.connected.set()
                else:
                    self.connected.clear()


def comparable(docs: dict[str, dict[str, Any]], fields: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    return {key: tuple(doc.get(f) for f in fields) for key, doc in docs.items()}


async def converged(views: list[RemoteView], db: Any, timeout: float) -> dict[str, int]:
    """Wait until every view equals the database; returns how many differ at the end."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        truth = {
            "products": comparable({d["_id"]: d for d in await db.products.find({}).to_list()},
                                   ("stock", "price_cents")),
            "orders": comparable({d["_id"]: d for d in await db.orders.find({}).to_list()},
                                 ("status", "total_cents")),
        }
        wrong = [v for v in views
                 if comparable(v.docs, ("stock", "price_cents") if v.collection == "products"
                               else ("status", "total_cents")) != truth[v.collection]]
        if not wrong or asyncio.get_running_loop().time() > deadline:
            detail = []
            for view in wrong[:4]:
                fields = ("stock", "price_cents") if view.collection == "products" \
                    else ("status", "total_cents")
                mine, theirs = comparable(view.docs, fields), truth[view.collection]
                keys = [k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)]
                detail.append((view.name, view.collection, len(keys),
                               [(k, mine.get(k), theirs.get(k)) for k in keys[:3]]))
            return {"differ": len(wrong), "detail": detail}
        await asyncio.sleep(0.2)
