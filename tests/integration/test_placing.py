"""Orders placed at the same moment go to the database in one insert, each placement
answered as its own insert would have been (``place_order(writer=...)``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from backend.domain import orders
from backend.domain.batching import DocumentInserter
from streaming import ChangeEngine
from tests.integration.test_pipeline import setup
from tests.support.mode import watch_mode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Counted(DocumentInserter):
    """The app's writer, recording the ids each of its inserts carried."""

    batches: list[list[str]]

    async def send(self, docs: list[dict[str, Any]]) -> Any:
        self.batches.append([doc["_id"] for doc in docs])
        return await super().send(docs)


async def test_placements_at_one_moment_share_one_insert_and_each_gets_its_own_answer(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    await setup(db, {"A": 10, "B": 10})
    engine = ChangeEngine(db, mode=await watch_mode(db))
    await engine.start()
    try:
        writer = Counted(db.orders)
        writer.batches = []
        prices = orders.product_reader(db)  # one each per process, as the app has

        def place(user: str, key: str | None = None) -> Any:
            return orders.place_order(db, engine, user_id=user, items=[("A", 1), ("B", 2)],
                                      correlation="k", actor="customer",
                                      idempotency_key=key, products=prices,
                                      writer=writer)

        # Three customers, and one of them sending the same request twice (a retry).
        placed = await asyncio.gather(place("c01"), place("c02"), place("c03", "retry-1"),
                                      place("c03", "retry-1"))
        assert len(writer.batches) == 1 and len(writer.batches[0]) == 4
        (first, new1), (second, new2), (third, new3), (again, new4) = placed
        assert (new1, new2, new3, new4) == (True, True, True, False)
        assert again["_id"] == third["_id"]  # the retry lands on the order it placed
        stored = {o["_id"]: o async for o in db.orders.find({})}
        assert sorted(stored) == sorted({first["_id"], second["_id"], third["_id"]})
        assert all(o["total_cents"] == 1_000 + 2 * 1_500 for o in stored.values())
        # A duplicate id is that one caller's error, as insert_one's would be.
        outcomes = await asyncio.gather(writer.insert({"_id": first["_id"]}),
                                        writer.insert({"_id": "fresh"}),
                                        return_exceptions=True)
        assert isinstance(outcomes[0], DuplicateKeyError) and outcomes[1] is None
        assert await db.orders.find_one({"_id": "fresh"}) == {"_id": "fresh"}
    finally:
        await engine.stop()
