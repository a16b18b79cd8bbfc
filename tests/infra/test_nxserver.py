"""The embedded server's storage applies an update at most once, whatever its fast path
reports (``backend.infra.nxserver._apply_updates_once``); run in this process, on a
NeoSQLite database of its own, with the fast path made to fail before or after its
UPDATE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from neosqlite import Connection  # type: ignore[import-untyped]
from neosqlite.collection.query_helper._sql_updates import (  # type: ignore[import-untyped]
    SqlUpdatesMixin,
)

from backend.infra import nxserver

TAKE = {"$inc": {"stock": -2}, "$push": {"holds": "ORD-1"}}


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Any]:
    original = SqlUpdatesMixin._perform_enhanced_sql_update
    connection = Connection(str(tmp_path / "db.sqlite"))
    try:
        yield connection
    finally:
        SqlUpdatesMixin._perform_enhanced_sql_update = original
        connection.close()


def failing(when: str) -> Any:
    """A fast path that raises before running its UPDATE, or after it (as when its check
    of the UPDATE goes wrong)."""
    fast = SqlUpdatesMixin._perform_enhanced_sql_update

    def fast_path(self: Any, doc_id: Any, spec: Any, original_doc: Any = None) -> Any:
        if when == "after":
            fast(self, doc_id, spec, original_doc)
        raise RuntimeError(f"No rows updated for doc_id {doc_id}")

    return fast_path


@pytest.mark.parametrize("when", ["before", "after"])
def test_neosqlite_alone_applies_a_take_twice_when_its_fast_path_fails_after_the_update(
    storage: Any, when: str
) -> None:
    # The storage as shipped: its fallback applies $inc again and $push not at all. This
    # is what the patch is for; should NeoSQLite ever stop doing it, this test says so.
    SqlUpdatesMixin._perform_enhanced_sql_update = failing(when)
    products = storage["products"]
    products.insert_one({"_id": "P", "stock": 10, "holds": []})
    products.update_one({"_id": "P"}, TAKE)
    doc = products.find_one({"_id": "P"})
    assert (doc["stock"], doc["holds"]) == ((6, ["ORD-1"]) if when == "after" else (8, []))


@pytest.mark.parametrize("when", ["before", "after"])
def test_with_the_patch_a_take_is_applied_once_whichever_way_the_fast_path_fails(
    storage: Any, when: str
) -> None:
    SqlUpdatesMixin._perform_enhanced_sql_update = failing(when)
    nxserver._apply_updates_once()
    products = storage["products"]
    products.insert_one({"_id": "P", "stock": 10, "holds": ["ORD-0"]})
    products.update_one({"_id": "P"}, TAKE)
    doc = products.find_one({"_id": "P"})
    assert (doc["stock"], doc["holds"]) == (8, ["ORD-0", "ORD-1"])
    # An update that matches nothing is still nothing.
    products.update_one({"_id": "P", "stock": {"$lt": 0}}, TAKE)
    assert products.find_one({"_id": "P"})["stock"] == 8


def test_with_the_patch_updates_that_do_not_fail_are_as_before(storage: Any) -> None:
    nxserver._apply_updates_once()
    products = storage["products"]
    products.insert_one({"_id": "P", "stock": 10, "holds": []})
    for n in range(3):
        products.update_one({"_id": "P", "$nor": [{"holds": f"ORD-{n}"}]},
                            {**TAKE, "$push": {"holds": f"ORD-{n}"}})
    products.update_one({"_id": "P"}, {"$pull": {"holds": "ORD-1"}, "$set": {"name": "p"}})
    doc = products.find_one({"_id": "P"})
    assert (doc["stock"], doc["holds"], doc["name"]) == (4, ["ORD-0", "ORD-2"], "p")


def test_a_closing_connections_streams_are_closed_under_their_databases_lock() -> None:
    import threading

    from nx_27017.handler import NeoSQLiteHandler  # type: ignore[import-untyped]

    original = NeoSQLiteHandler.close_streams_for_connection
    held: list[bool] = []

    class Stream:
        def __init__(self, db_name: str, owner: int) -> None:
            self.db_name, self._owner = db_name, owner

    class Manager:
        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._streams = {1: Stream("shop", 7), 2: Stream("other", 8)}

    class Handler:
        def __init__(self) -> None:
            self._change_stream_manager = Manager()
            self.locks = {"shop": threading.RLock(), "other": threading.RLock()}

        def _lock_for(self, name: str) -> threading.RLock:
            return self.locks[name]

        def close_streams_for_connection(self, conn_id: int) -> None:  # NX-27017's own
            held.append(self.locks["shop"]._is_owned())  # type: ignore[attr-defined]
            held.append(self.locks["other"]._is_owned())  # type: ignore[attr-defined]

    try:
        NeoSQLiteHandler.close_streams_for_connection = Handler.close_streams_for_connection
        nxserver._close_streams_under_lock()
        NeoSQLiteHandler.close_streams_for_connection(Handler(), 7)
    finally:
        NeoSQLiteHandler.close_streams_for_connection = original
    assert held == [True, False]  # its stream's database only


def test_change_tables_are_pruned_at_most_every_interval_and_keep_their_newest_rows(
    storage: Any,
) -> None:
    from nx_27017.changestream import ChangeStreamManager  # type: ignore[import-untyped]

    original = ChangeStreamManager._prune
    now = [100.0]
    try:
        nxserver._prune_at_most_every(0.5, clock=lambda: now[0])
        manager = ChangeStreamManager()
        orders = storage["orders"]
        assert manager.ensure_tracked("shop", "orders", lambda: orders) is not None
        stream = manager.create_stream("orders", [], db_name="shop")

        def rows() -> int:
            return int(storage.db.execute(
                "SELECT COUNT(*) FROM _neosqlite_changestream").fetchone()[0])

        def read_all() -> list[int]:
            seen: list[int] = []
            while batch := manager.pull_stream(stream, 5000)[0]:
                seen += [doc["fullDocument"]["n"] for doc in batch]
            return seen

        orders.insert_many([{"n": n} for n in range(1500)])
        assert read_all() == list(range(1500))
        assert rows() == 1000  # the first prune at once, to the newest 1,000 rows
        orders.insert_many([{"n": n} for n in range(1500, 2000)])
        assert read_all() == list(range(1500, 2000))
        assert rows() == 1500  # within the interval: deferred, nothing lost
        now[0] += 0.5
        assert read_all() == []
        assert rows() == 1000  # the interval is over: pruned as NX-27017 would have
        # A stream resumed from the oldest row kept replays the newest 1,000 in order.
        oldest = storage.db.execute(
            "SELECT MIN(id) FROM _neosqlite_changestream").fetchone()[0]
        stream = manager.create_stream("orders", [], db_name="shop",
                                       resume_after={"_data": f"nx:{oldest - 1}"})
        assert read_all() == list(range(1000, 2000))
    finally:
        ChangeStreamManager._prune = original
