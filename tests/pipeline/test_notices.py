from __future__ import annotations

import asyncio
from typing import Any

from backend.pipeline.notices import stock_alert
from streaming import ChangeEvent


def product_change(old: int, new: int, threshold: int = 10) -> ChangeEvent:
    doc: dict[str, Any] = {"_id": "P1", "name": "Lamp", "stock": new,
                           "low_stock_threshold": threshold}
    return ChangeEvent(1, "update", "products", "P1", doc, {**doc, "stock": old}, None, 0)


def test_notices_alert_when_stock_crosses_below_the_threshold_once() -> None:
    assert stock_alert(product_change(12, 9)) == ("low_stock", "Lamp (P1) is low: 9 left.")
    assert stock_alert(product_change(9, 8)) is None  # already low: no second alert
    assert stock_alert(product_change(3, 0)) == ("sold_out", "Lamp (P1) is sold out.")
    assert stock_alert(product_change(5, 9)) is None  # a restock is not an alert


class FakeCollection:
    """Answers like a collection with a unique ``_id``; each call yields to the event loop
    first, as a round trip would."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs: dict[str, dict[str, Any]] = {}
        self.attempts: list[str] = []  # every id a command carried
        self.commands = 0
        self.fail_next = False

    async def insert_many(self, docs: list[dict[str, Any]], *, ordered: bool) -> None:
        from pymongo.errors import BulkWriteError

        assert not ordered
        await self._round_trip(docs)
        errors = []
        for index, doc in enumerate(docs):
            if doc["_id"] in self.docs:
                errors.append({"index": index, "code": 11000, "errmsg": "duplicate"})
            else:
                self.docs[doc["_id"]] = doc
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(docs) - len(errors)})

    async def _round_trip(self, docs: list[dict[str, Any]]) -> None:
        from pymongo.errors import AutoReconnect

        await asyncio.sleep(0)
        self.commands += 1
        self.attempts.extend(d["_id"] for d in docs)
        if self.fail_next:
            self.fail_next = False
            raise AutoReconnect("connection reset")


class FakeDb:
    def __init__(self) -> None:
        self.audit, self.notifications = FakeCollection("audit"), FakeCollection("notifications")

    def __getitem__(self, name: str) -> FakeCollection:
        return getattr(self, name)  # type: ignore[no-any-return]


class QuietEngine:
    def nudge(self, collection: str | None = None) -> None:
        pass


def order_with(*statuses: str) -> dict[str, Any]:
    return {"_id": "ORD-1", "user_id": "u1", "correlation_id": "c1",
            "history": [{"status": s, "at": f"2026-12-01T00:00:0{n}.000Z", "by": "pipeline"}
                        for n, s in enumerate(statuses)]}


async def test_notices_a_stage_whose_event_was_skipped_is_still_recorded_once() -> None:
    from backend.pipeline.context import Work
    from backend.pipeline.notices import Notices

    db = FakeDb()
    notices = Notices(Work(db, QuietEngine()))  # type: ignore[arg-type]
    await notices.record_transition(order_with("pending"))
    # The stream delivered "reserved" and "paid" as one change carrying the later version.
    await notices.record_transition(order_with("pending", "reserved", "paid"))
    await notices.record_transition(order_with("pending", "reserved", "paid"))  # a replay
    assert sorted(db.audit.docs) == ["ORD-1:1:pending", "ORD-1:2:reserved", "ORD-1:3:paid"]
    assert sorted(db.notifications.docs) == ["ORD-1:paid", "ORD-1:reserved"]


async def test_notices_a_failed_write_is_retried_on_the_next_event() -> None:
    from backend.pipeline.context import Work
    from backend.pipeline.notices import Notices

    db = FakeDb()
    notices = Notices(Work(db, QuietEngine()))  # type: ignore[arg-type]
    db.notifications.fail_next = True
    await notices.record_transition(order_with("pending", "reserved"))
    assert db.notifications.docs == {}
    await notices.record_transition(order_with("pending", "reserved", "paid"))
    assert sorted(db.notifications.docs) == ["ORD-1:paid", "ORD-1:reserved"]


async def test_notices_two_quick_events_of_one_order_write_each_stage_once() -> None:
    from backend.pipeline.context import Work
    from backend.pipeline.notices import Notices

    db = FakeDb()
    notices = Notices(Work(db, QuietEngine()))  # type: ignore[arg-type]
    # Both events arrive before the first one's writes are back (each gets its own task).
    await asyncio.gather(notices.record_transition(order_with("pending", "reserved")),
                         notices.record_transition(order_with("pending", "reserved", "paid")))
    assert sorted(db.audit.attempts) == ["ORD-1:1:pending", "ORD-1:2:reserved", "ORD-1:3:paid"]
    assert sorted(db.notifications.attempts) == ["ORD-1:paid", "ORD-1:reserved"]


async def test_batcher_sends_waiting_inserts_together_and_says_what_is_there() -> None:
    from backend.pipeline.batch import InsertBatcher

    collection = FakeCollection("audit")
    collection.docs["d3"] = {"_id": "d3"}  # written before (by another instance, say)
    batcher = InsertBatcher(collection, max_batch=4)  # type: ignore[arg-type]
    outcomes = await asyncio.gather(*(batcher.insert({"_id": f"d{n}"}) for n in range(9)))
    assert outcomes == [True] * 9
    assert sorted(collection.docs) == sorted(f"d{n}" for n in range(9))
    # All nine were waiting by the time the writer ran: at most four per command.
    assert collection.commands == 3
    collection.fail_next = True
    assert await asyncio.gather(batcher.insert({"_id": "x"}), batcher.insert({"_id": "y"})) \
        == [False, False]  # both went in one command, which failed
    assert await batcher.insert({"_id": "x"})  # written on the next try


async def test_batcher_counts_as_written_what_a_write_concern_error_came_with() -> None:
    from pymongo.errors import BulkWriteError

    from backend.pipeline.batch import InsertBatcher

    class Lagging(FakeCollection):
        """Writes all but a refused one, then says the write concern was not met."""

        async def insert_many(self, docs: list[dict[str, Any]], *, ordered: bool) -> None:
            self.docs.update({d["_id"]: d for d in docs if d["_id"] != "bad"})
            raise BulkWriteError({
                "writeErrors": [{"index": i, "code": 2, "errmsg": "refused"}
                                for i, d in enumerate(docs) if d["_id"] == "bad"],
                "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication"}]})

    collection = Lagging("audit")
    batcher = InsertBatcher(collection)  # type: ignore[arg-type]
    outcomes = await asyncio.gather(*(batcher.insert({"_id": key})
                                      for key in ("a", "bad", "b")))
    # On the primary, the two are there (a retry would be a duplicate); the refused one is not.
    assert outcomes == [True, False, True]
    assert sorted(collection.docs) == ["a", "b"]
