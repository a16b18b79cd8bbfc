"""A remote live view over ``/ws`` that behaves like a browser tab: snapshot from the REST list
(with its ``X-Stream-Seq``), subscribe with ``resume_from``, apply changes, reload on
``resync``, and reconnect with the last ``seq`` it applied whenever the socket drops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.support.views import apply_changes


class RemoteView:
    def __init__(self, base: str, collection: str, cookie: str, *, name: str = "v") -> None:
        self.base = base
        self.collection = collection
        self.cookie = cookie
        self.name = name
        self.docs: dict[str, dict[str, Any]] = {}
        self.seq: int | None = None
        self.loaded = False
        self.resyncs = 0
        self.reconnects = 0
        self.changes = 0
        self.duplicates = 0
        self.latencies_ms: list[float] = []
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _snapshot(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=10,
                                     headers={"Cookie": self.cookie}) as http:
            response = await http.get(f"/api/{self.collection}", params={"limit": 500})
            response.raise_for_status()
            body = response.json()
            if body["next_cursor"] is not None:
                raise AssertionError(f"{self.collection} has more than 500 documents")
        self.docs = {d["_id"]: d for d in body["items"]}
        self.seq = body["seq"]
        self.loaded = True

    async def _run(self) -> None:
        url = self.base.replace("http://", "ws://") + "/ws"
        while not self._stop.is_set():
            try:
                if not self.loaded:
                    await self._snapshot()
                async with connect(url, origin=self.base,  # type: ignore[arg-type]
                                   additional_headers={"Cookie": self.cookie},
                                   max_queue=None) as ws:
                    await self._subscribe(ws)
                    self.connected.set()
                    async for raw in ws:
                        if await self._handle(ws, json.loads(raw)):
                            await self._subscribe(ws)
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidStatus,
                    httpx.HTTPError, TimeoutError):
                pass
            self.connected.clear()
            if self._stop.is_set():
                return
            self.reconnects += 1
            await asyncio.sleep(random.uniform(0.05, 0.25))

    async def _subscribe(self, ws: Any) -> None:
        self._sub += 1
        await ws.send(json.dumps({"op": "subscribe", "id": f"{self.name}{self._sub}",
                                  "collection": self.collection, "resume_from": self.seq}))

    async def _handle(self, ws: Any, msg: dict[str, Any]) -> bool:
        """Apply one message; True when the view reloaded and must subscribe again."""
        kind = msg.get("type")
        if kind == "resync":
            self.resyncs += 1
            await self._snapshot()
            return True
        if kind != "change":
            return False
        if self.seq is not None and msg["seq"] <= self.seq:
            self.duplicates += 1
            return False
        self.seq = msg["seq"]
        self.changes += 1
        key, op = msg["key"], msg["op"]
        if op in ("insert", "replace", "enter"):
            self.docs[key] = msg["doc"]
        elif op == "update":
            if key in self.docs:
                apply_changes(self.docs[key], msg["changes"])
        elif op in ("delete", "leave"):
            self.docs.pop(key, None)
        return False


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
