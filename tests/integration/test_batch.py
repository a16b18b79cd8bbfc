"""The pipeline's group commit against the embedded server: transitions of many orders in
one bulk write, each caller told whether its own conditional update was applied."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.domain.orders import apply_transition
from backend.pipeline.batch import UpdateBatcher
from tests.support.commands import Commands

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_transitions_sent_together_each_learn_whether_theirs_was_applied(
    nx_uri: str, db_name: str
) -> None:
    commands = Commands()
    client = AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True, event_listeners=[commands])
    db = client[db_name]
    try:
        orders = [{"_id": f"O{n}", "status": "pending", "claim": "me",
                   "history": [{"status": "pending", "at": "t0", "by": "customer"}]}
                  for n in range(4)]
        await db.orders.insert_many(orders)
        await db.orders.update_one({"_id": "O2"}, {"$set": {"claim": "other"}})  # lost claim
        batcher = UpdateBatcher(db.orders, proof_field="transition_id")
        commands.clear()
        # One goes out alone; the four that come while it is out go in one bulk write.
        first = asyncio.ensure_future(apply_transition(
            db, orders[0], "reserved", actor="pipeline", condition={"claim": "me"},
            send=batcher.update))
        while not commands.names:
            await asyncio.sleep(0)
        moved = await asyncio.gather(first, *(
            apply_transition(db, order, "reserved", actor="pipeline",
                             condition={"claim": "me"}, send=batcher.update)
            for order in (orders[1], orders[2], orders[3], orders[0])))  # O0 again: moved
        assert [m is not None for m in moved] == [True, True, False, True, False]
        assert moved[1] is not None and moved[1]["status"] == "reserved"
        assert [h["status"] for h in moved[1]["history"]] == ["pending", "reserved"]
        # Two bulk writes; the second matched 2 of 4, so one read said which were its own.
        assert commands.names == ["update", "update", "find"]
        stored = {o["_id"]: o for o in await db.orders.find().to_list()}
        assert {k: o["status"] for k, o in stored.items()} == {
            "O0": "reserved", "O1": "reserved", "O2": "pending", "O3": "reserved"}
        assert stored["O1"]["transition_id"] == moved[1]["transition_id"]
        assert [h["status"] for h in stored["O0"]["history"]] == ["pending", "reserved"]
    finally:
        await client.close()
