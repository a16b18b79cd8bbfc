"""A client-side live view: snapshot + subscribe + apply changes, resyncing when told to."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

from streaming import ChangeEngine, ChangeEvent, compile_filter, decode
from streaming.filters import values_equal


class Counter:
    """An engine listener that counts changes and says when ``target`` have come."""

    def __init__(self, target: int) -> None:
        self.count, self.target = 0, target
        self.done = asyncio.Event()

    def __call__(self, event: ChangeEvent) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


def apply_changes(doc: dict[str, Any], changes: dict[str, Any]) -> None:
    for path, value in changes["set"].items():
        *parents, leaf = path.split(".")
        target = doc
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = copy.deepcopy(value)
    for path in changes["unset"]:
        *parents, leaf = path.split(".")
        target = doc
        for part in parents:
            target = target.get(part, {})
        target.pop(leaf, None)


class LiveView:
    """What a browser tab would hold for one subscription."""

    def __init__(self, engine: ChangeEngine, db: Any, sub_id: str, collection: str, *,
                 where: str | None = None, restriction: dict[str, Any] | None = None) -> None:
        self.engine, self.db = engine, db
        self.sub_id, self.collection = sub_id, collection
        self.where = compile_filter(where) if where else None
        self.restriction = restriction or {}
        self.docs: dict[Any, dict[str, Any]] = {}
        self.seqs: list[int] = []
        self.resyncs = 0
        self.anomalies: list[str] = []
        self.subscriber = engine.subscriber(maxsize=100_000)
        self._task: asyncio.Task[None] | None = None

    def query(self) -> dict[str, Any]:
        parts = [self.where.mongo] if self.where else []
        parts.extend({k: v} for k, v in self.restriction.items())
        return {"$and": parts} if parts else {}

    async def load(self) -> None:
        seq = self.engine.seq  # read before the query: replay from here converges
        docs = await self.db[self.collection].find(self.query()).to_list()
        self.docs = {d["_id"]: decode(d) for d in docs}
        self.subscriber.subscribe(self.sub_id, self.collection, where=self.where,
                                  restriction=self.restriction or None, resume_from=seq)

    async def start(self) -> None:
        await self.load()
        self._task = asyncio.create_task(self._consume())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.subscriber.close()

    async def _consume(self) -> None:
        while True:
            batch = await self.subscriber.get_batch()
            if not batch:  # the engine closed the subscriber
                return
            for delivery in batch:
                msg = delivery.to_message()
                if msg["type"] == "resync":
                    self.resyncs += 1
                    await self.load()
                elif msg["type"] == "change":
                    self.apply(msg)

    def apply(self, msg: dict[str, Any]) -> None:
        self.seqs.append(msg["seq"])
        op, key = msg["op"], msg["key"]
        if op in ("insert", "replace", "enter"):
            self.docs[key] = copy.deepcopy(msg["doc"])
        elif op == "update":
            if key not in self.docs:
                self.anomalies.append(f"update for unknown {key}")
                return
            apply_changes(self.docs[key], msg["changes"])
        elif op in ("delete", "leave"):
            self.docs.pop(key, None)

    async def truth(self) -> dict[Any, dict[str, Any]]:
        return {d["_id"]: decode(d) for d in await self.db[self.collection].find(self.query()).to_list()}


class SourceView(LiveView):
    """A live view whose snapshot comes through the engine's source (any database): every
    row the source scans, kept when the filter and the restriction hold."""

    def __init__(self, engine: ChangeEngine, sub_id: str, collection: str, *,
                 where: str | None = None, restriction: dict[str, Any] | None = None) -> None:
        super().__init__(engine, None, sub_id, collection, where=where, restriction=restriction)

    def matches(self, doc: dict[str, Any]) -> bool:
        if self.where is not None and not self.where.matches(doc):
            return False
        return all(values_equal(doc.get(k), v) for k, v in self.restriction.items())

    async def rows(self) -> dict[Any, dict[str, Any]]:
        source = self.engine.source
        return {source.key_of(self.collection, d): d
                for d in await source.scan(self.collection) if self.matches(d)}

    async def load(self) -> None:
        seq = self.engine.seq  # read before the snapshot: replay from here converges
        self.docs = await self.rows()
        self.subscriber.subscribe(self.sub_id, self.collection, where=self.where,
                                  restriction=self.restriction or None, resume_from=seq)

    async def truth(self) -> dict[Any, dict[str, Any]]:
        return await self.rows()
