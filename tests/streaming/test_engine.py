"""The engine with scripted change streams: normalize, hide, cache, publish, report."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streaming import ChangeEngine, Delivery, compile_filter
from tests.streaming.fakes import FakeCollection

pytestmark = pytest.mark.timeout(10)


def raw(n: int, op: str, doc: dict[str, Any], coll: str = "products") -> dict[str, Any]:
    return {"_id": {"_data": f"T{n:04d}"}, "operationType": op, "fullDocument": doc,
            "documentKey": {"_id": doc["_id"]}, "ns": {"db": "t", "coll": coll},
            "wallTime": None}


class FakeDatabase:
    def __init__(self, scripts: dict[str, list[Any]]) -> None:
        self.collections = {name: FakeCollection(name, [script]) for name, script in
                            scripts.items()}

    def __getitem__(self, name: str) -> FakeCollection:
        return self.collections[name]


async def changes_of(subscriber: Any, count: int) -> list[Delivery]:
    seen: list[Delivery] = []
    while len(seen) < count:
        seen.extend(d for d in await subscriber.get_batch() if d.event is not None)
    return seen


async def test_engine_diffs_hides_caches_and_publishes_in_seq_order() -> None:
    script = [raw(1, "insert", {"_id": "p1", "stock": 5, "holds": []}),
              raw(2, "update", {"_id": "p1", "stock": 4, "holds": ["o1"]}),
              raw(3, "update", {"_id": "p1", "stock": 4, "holds": []}),  # hidden field only
              raw(4, "delete", {"_id": "p1", "stock": 4})]
    engine = ChangeEngine(FakeDatabase({"products": script}), collections=("products",),
                          hidden={"products": ("holds",)})
    subscriber = engine.subscriber()
    subscriber.subscribe("s", "products")
    await engine.start()
    try:
        insert, update, delete = await asyncio.wait_for(changes_of(subscriber, 3), 5)
    finally:
        await engine.stop()
    assert [d.op for d in (insert, update, delete)] == ["insert", "update", "delete"]
    assert insert.to_message()["doc"] == {"_id": "p1", "stock": 5}
    assert update.to_message()["changes"] == {"set": {"stock": 4}, "unset": []}
    assert [d.event.seq for d in (insert, update, delete)] == \
        [insert.event.seq, insert.event.seq + 1, insert.event.seq + 2]  # type: ignore[union-attr]
    assert engine.peek("products", "p1") is None  # deleted, and known to be
    stats = engine.stats()
    assert stats.metrics.changes == {"products": 3}
    assert stats.metrics.empty_updates_skipped == 1
    assert stats.watchers["products"].last_change_at is not None
    assert engine.snapshot()["changes_total"] == 3


async def test_engine_hidden_fields_never_reach_the_cache_or_visible_documents() -> None:
    engine = ChangeEngine(FakeDatabase({"users": [raw(1, "insert", {
        "_id": "u1", "name": "Ada", "password_hash": "secret"}, "users")]}), collections=("users",),
        hidden={"users": ("password_hash",)})
    subscriber = engine.subscriber()
    subscriber.subscribe("s", "users")
    await engine.start()
    try:
        [insert] = await asyncio.wait_for(changes_of(subscriber, 1), 5)
    finally:
        await engine.stop()
    assert "password_hash" not in (insert.event.doc or {})  # type: ignore[union-attr]
    assert engine.peek("users", "u1") == {"_id": "u1", "name": "Ada"}
    assert engine.visible("users", {"_id": "u1", "password_hash": "x"}) == {"_id": "u1"}
    assert engine.hidden_projection("users") == {"password_hash": 0}


async def test_engine_admit_fails_fast_once_failures_open_the_breaker() -> None:
    engine = ChangeEngine(FakeDatabase({"orders": []}), collections=("orders",))
    for _ in range(3):
        engine.record_outcome(ok=False)
    from streaming import BreakerOpenError

    with pytest.raises(BreakerOpenError):
        engine.admit()
    assert engine.stats().breaker.state == "open"


def update(n: int, doc: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    return {**raw(n, "update", doc), "updateDescription": description}


async def test_engine_a_late_looked_up_document_does_not_leak_into_an_earlier_change() -> None:
    # updateLookup reads the document when the event is sent: two quick updates both
    # arrive carrying the second version. The server's updateDescription says what each
    # one changed, so the engine builds each version from the previous one.
    later = {"_id": "p1", "stock": 3, "tags": ["a"]}
    script = [raw(1, "insert", {"_id": "p1", "stock": 5, "tags": ["a", "b", "c"]}),
              update(2, later, {"updatedFields": {"stock": 4}, "removedFields": [],
                                "truncatedArrays": [{"field": "tags", "newSize": 1}]}),
              update(3, later, {"updatedFields": {"stock": 3}, "removedFields": []})]
    engine = ChangeEngine(FakeDatabase({"products": script}), collections=("products",))
    subscriber = engine.subscriber()
    subscriber.subscribe("s", "products")
    subscriber.subscribe("low", "products", where=compile_filter("stock <= 4"))
    await engine.start()
    try:
        seen = await asyncio.wait_for(changes_of(subscriber, 5), 5)
    finally:
        await engine.stop()
    plain = [d for d in seen if d.sub_id == "s"]
    assert [d.event.doc for d in plain] == [  # type: ignore[union-attr]
        {"_id": "p1", "stock": 5, "tags": ["a", "b", "c"]},
        {"_id": "p1", "stock": 4, "tags": ["a"]}, later]
    assert plain[1].to_message()["changes"] == {"set": {"stock": 4, "tags": ["a"]},
                                                "unset": []}
    assert plain[2].to_message()["changes"] == {"set": {"stock": 3}, "unset": []}
    # The filtered view entered at the right change (stock 4), not one early or late.
    assert [(d.op, d.event.seq - plain[0].event.seq) for d in seen  # type: ignore[union-attr]
            if d.sub_id == "low"] == [("enter", 1), ("update", 2)]
    assert engine.peek("products", "p1") == later


async def test_engine_asks_for_post_images_when_told_the_server_has_them() -> None:
    database = FakeDatabase({"orders": []})
    engine = ChangeEngine(database, collections=("orders",), full_document="whenAvailable")
    await engine.start()
    await engine.stop()
    assert database.collections["orders"].calls[0]["full_document"] == "whenAvailable"
