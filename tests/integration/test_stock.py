"""Stock moves stay exactly once when the process dies between two documents' updates.

Each test leaves the database the way a process killed at one precise point
would (the real functions, stopped half-way), then lets the pipeline's sweep,
the reconciler or a retry finish, and counts units.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.domain import stock
from backend.domain.clock import now_iso
from backend.domain.orders import apply_transition, transition
from backend.pipeline import PaymentGateway, Pipeline
from streaming import ChangeEngine
from tests.integration.test_pipeline import settled, setup
from tests.support.commands import Commands
from tests.support.ledger import shelf, sold
from tests.support.mode import watch_mode
from tests.support.orders import placed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Db = Any
LONG_AGO = "2020-01-01T00:00:00.000Z"


async def units(db: Db) -> dict[str, tuple[int, list[str]]]:
    return shelf(await db.products.find({}).to_list())


async def order_for(db: Db, engine: ChangeEngine, items: list[tuple[str, int]]) -> dict[str, Any]:
    return await placed(db, engine, user_id="c01", items=items, correlation="k",
                              actor="customer")


@contextlib.asynccontextmanager
async def shop(db: Db, products: dict[str, int]) -> AsyncIterator[ChangeEngine]:
    """The products and customers, and an engine that hides stock marks as the app's does."""
    await setup(db, products)
    engine = ChangeEngine(db, mode=await watch_mode(db), hidden=stock.HIDDEN)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def ab(mongo: AsyncMongoClient[dict[str, Any]],
             db_name: str) -> AsyncIterator[tuple[Db, ChangeEngine]]:
    """Products A and B with 10 units each."""
    db = mongo[db_name]
    async with shop(db, {"A": 10, "B": 10}) as engine:
        yield db, engine


async def test_a_reservation_that_died_half_way_is_re_driven_without_taking_twice(
    ab: tuple[Db, ChangeEngine]
) -> None:
    db, engine = ab
    order = await order_for(db, engine, [("A", 3), ("B", 2)])
    # A worker of a dead instance took A, then died: the order is pending, claimed, old.
    assert await stock.take(db, order["_id"], order["items"][0]) is None
    await db.orders.update_one({"_id": order["_id"]},
                               {"$set": {"claim": "dead", "claim_at": 0,
                                         "updated_at": LONG_AGO}})
    assert (await units(db))["A"] == (7, [order["_id"]])
    # Taking again for the same order is a no-op that still says "taken".
    assert await stock.take(db, order["_id"], order["items"][0]) is None
    assert (await units(db))["A"] == (7, [order["_id"]])
    pipeline = Pipeline(db, engine, reconcile_after_s=1,
                        gateway=PaymentGateway(success_rate=1.0, latency_ms=(1, 2)))
    await pipeline.start()  # picks up what was left over
    try:
        [done] = await settled(db, 1, timeout=20)
    finally:
        await pipeline.stop()
    assert done["status"] == "processing"
    # Sold once; the marks stay for the reconcile timeout after the reservation.
    assert await units(db) == {"A": (7, [order["_id"]]), "B": (8, [order["_id"]])}
    await stock.sweep(db, engine, stale_before=now_iso())
    assert await units(db) == {"A": (7, []), "B": (8, [])}


async def test_the_sweep_commits_takes_of_reserved_orders_and_gives_back_the_others(
    ab: tuple[Db, ChangeEngine]
) -> None:
    db, engine = ab
    kept = await order_for(db, engine, [("A", 1), ("B", 1)])
    dropped = await order_for(db, engine, [("A", 2), ("B", 5)])
    in_flight = await order_for(db, engine, [("B", 1)])
    for order in (kept, dropped, in_flight):
        for item in order["items"]:
            assert await stock.take(db, order["_id"], item) is None
    # Died right after each transition, before the markers were settled.
    await apply_transition(db, kept, "reserved", actor="pipeline")
    await apply_transition(db, dropped, "rejected", actor="pipeline")
    assert await units(db) == {"A": (7, [kept["_id"], dropped["_id"]]),
                               "B": (3, [kept["_id"], dropped["_id"], in_flight["_id"]])}
    first = await stock.sweep(db, engine, stale_before=LONG_AGO)
    assert first == {"committed": 0, "given_back": 2, "restocked": 0, "cleared": 0}
    # A fresh reservation keeps its marks (a stalled worker's late take stays a no-op).
    assert await units(db) == {"A": (9, [kept["_id"]]), "B": (8, [kept["_id"], in_flight["_id"]])}
    later = await stock.sweep(db, engine, stale_before=now_iso())
    again = await stock.sweep(db, engine, stale_before=now_iso())
    assert later == {"committed": 2, "given_back": 0, "restocked": 0, "cleared": 0}
    assert again == {"committed": 0, "given_back": 0, "restocked": 0, "cleared": 0}
    # kept: sold; dropped: back on the shelf; in_flight (still pending): left to its driver.
    assert await units(db) == {"A": (9, []), "B": (8, [in_flight["_id"]])}


async def test_a_worker_that_lost_its_claim_mid_reservation_cannot_take_twice(
    ab: tuple[Db, ChangeEngine]
) -> None:
    # Worker 1 took A and stalled past the reconcile timeout; worker 2 took the order over,
    # reserved it (A and B) and moved on; then worker 1 woke up and went on with B. Its take
    # must find the reservation's mark, or B would be sold twice.
    db, engine = ab
    order = await order_for(db, engine, [("A", 1), ("B", 4)])
    assert await stock.take(db, order["_id"], order["items"][0]) is None  # worker 1
    for item in order["items"]:  # worker 2, after the takeover
        assert await stock.take(db, order["_id"], item) is None
    reserved = await apply_transition(db, order, "reserved", actor="pipeline")
    assert await stock.settle_takes(db, order["_id"], order["items"], order=reserved) == "kept"
    assert await stock.take(db, order["_id"], order["items"][1]) is None  # worker 1, late
    assert await stock.settle_takes(db, order["_id"], order["items"]) == "kept"
    assert await units(db) == {"A": (9, [order["_id"]]), "B": (6, [order["_id"]])}


async def test_a_worker_that_stalled_after_a_failed_payment_does_not_restock_again(
    ab: tuple[Db, ChangeEngine]
) -> None:
    # Worker 1 moved the order to payment_failed (restock due) and stalled; the sweep did the
    # restock, and a later sweep dropped its marks; then worker 1 woke up with its old copy.
    db, engine = ab
    order = await order_for(db, engine, [("A", 2)])
    assert await stock.take(db, order["_id"], order["items"][0]) is None
    reserved = await apply_transition(db, order, "reserved", actor="pipeline")
    assert reserved is not None
    failed = await apply_transition(db, reserved, "payment_failed", actor="payment",
                                    extra={"restock": "due"})
    assert failed is not None
    assert await stock.restock(db, engine, failed) == 1  # the sweep's
    await stock.sweep(db, engine, stale_before=now_iso())  # marks gone
    assert await units(db) == {"A": (10, []), "B": (10, [])}
    assert await stock.restock(db, engine, failed) == 0  # worker 1, late
    assert await units(db) == {"A": (10, []), "B": (10, [])}


async def test_a_cancelled_order_gets_its_units_back_once_whatever_dies_when(
    ab: tuple[Db, ChangeEngine]
) -> None:
    db, engine = ab
    orders = []
    for _ in range(3):
        order = await order_for(db, engine, [("A", 2), ("B", 1)])
        for item in order["items"]:
            await stock.take(db, order["_id"], item)
        reserved = await apply_transition(db, order, "reserved", actor="pipeline")
        assert reserved is not None
        await stock.commit(db, order["_id"], order["items"])
        orders.append(reserved)
    assert await units(db) == {"A": (4, []), "B": (7, [])}
    # 1: died right after the cancel transition: nothing given back yet.
    await apply_transition(db, orders[0], "cancelled", actor="admin",
                           extra={"restock": "due"})
    # 2: died after A got its units back, before B and before the order said done.
    second = await apply_transition(db, orders[1], "cancelled", actor="admin",
                                    extra={"restock": "due"})
    assert second is not None
    await db.products.update_one({"_id": "A"}, {"$inc": {"stock": 2},
                                                "$push": {"holds": f"{second['_id']}:back"}})
    # 3: cancelled through the API, to the end.
    third = await transition(db, engine, orders[2]["_id"], "cancelled", actor="admin")
    assert third["restock"] == "due"  # as written; done right after
    swept = await stock.sweep(db, engine, stale_before=now_iso())
    await stock.sweep(db, engine, stale_before=now_iso())
    restocks = {o["_id"]: o.get("restock") for o in await db.orders.find({}).to_list()}
    assert swept["restocked"] == 2 + 1  # order 1: A and B; order 2: only B was left
    assert await units(db) == {"A": (10, []), "B": (10, [])}
    assert set(restocks.values()) == {"done"}


async def test_payment_failures_restock_once_and_reserved_stock_is_conserved(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    initial = {"A": 200, "B": 200, "C": 200}
    rng = random.Random(9)
    async with shop(db, initial) as engine:
        pipeline = Pipeline(db, engine, gateway=PaymentGateway(
            success_rate=0.5, latency_ms=(1, 5), rng=random.Random(4)))
        await pipeline.start()
        try:
            for n in range(60):
                items = [(p, rng.randint(1, 4)) for p in rng.sample(sorted(initial), 2)]
                await placed(db, engine, user_id=f"c{n % 20:02d}", items=items,
                                   correlation=f"k{n}", actor="customer")
            orders = await settled(db, 60)
            await stock.sweep(db, engine, stale_before=now_iso())
        finally:
            await pipeline.stop()
    assert {o["status"] for o in orders} == {"processing", "payment_failed"}
    assert all(o["restock"] == "done" for o in orders if o["status"] == "payment_failed")
    taken = sold(orders)
    assert await units(db) == {p: (initial[p] - taken[p], []) for p in initial}


async def test_a_restock_that_read_due_late_adds_nothing_after_another_finished(
    ab: tuple[Db, ChangeEngine]
) -> None:
    db, engine = ab
    order = await order_for(db, engine, [("A", 3)])
    await stock.take(db, order["_id"], order["items"][0])
    reserved = await apply_transition(db, order, "reserved", actor="pipeline")
    assert reserved is not None
    await stock.commit(db, order["_id"], order["items"])
    cancelled = await apply_transition(db, reserved, "cancelled", actor="admin",
                                       extra={"restock": "due"})
    assert cancelled is not None
    # Two instances read the order as due; one finishes first, the other arrives after.
    assert await stock.restock(db, engine, cancelled) == 1
    assert await stock.restock(db, engine, cancelled) == 0
    assert (await units(db))["A"] == (10, [f"{order['_id']}:back"])
    # The mark goes only once the restock is done and older than the reconcile timeout.
    assert (await stock.sweep(db, engine, stale_before=LONG_AGO))["cleared"] == 0
    assert (await stock.sweep(db, engine, stale_before=now_iso()))["cleared"] == 1
    assert (await units(db))["A"] == (10, [])


async def test_take_all_takes_every_item_once_and_says_which_is_short(
    ab: tuple[Db, ChangeEngine]
) -> None:
    db, engine = ab
    await db.products.update_one({"_id": "B"}, {"$unset": {stock.HOLDS: ""}})  # never sold
    order = await order_for(db, engine, [("A", 3), ("B", 2)])
    assert await stock.take_all(db, order["_id"], order["items"]) == (None, 2)
    assert await stock.take_all(db, order["_id"], order["items"]) == (None, 0)  # a re-drive
    assert (await units(db))["A"] == (7, [order["_id"]])
    assert (await units(db))["B"] == (8, [order["_id"]])
    short = await order_for(db, engine, [("A", 1), ("B", 9)])
    failure, _ = await stock.take_all(db, short["_id"], short["items"])
    assert failure is not None and failure["failure_code"] == "out_of_stock"
    assert failure["failure_product"] == "B"
    assert await stock.give_back(db, short["_id"], short["items"]) == 1  # A's unit goes back
    assert (await units(db))["A"] == (7, [order["_id"]])
    assert (await units(db))["B"] == (8, [order["_id"]])


async def test_takes_of_orders_reserved_together_go_in_one_command_each_told_its_own_outcome(
    ab: tuple[Db, ChangeEngine]
) -> None:
    db, engine = ab
    await db.products.update_one({"_id": "B"}, {"$unset": {stock.HOLDS: ""}})  # never sold
    first = await order_for(db, engine, [("A", 3), ("B", 2)])
    second = await order_for(db, engine, [("A", 4)])
    short = await order_for(db, engine, [("A", 1), ("B", 9)])  # B: 8 left after the first
    batches: list[list[str]] = []

    class Takes(stock.TakeBatcher):
        async def send(self, requests: Any) -> Any:
            batches.append([order_id for order_id, _ in requests])
            return await super().send(requests)

    takes = Takes(db)
    outcomes = await asyncio.gather(*(takes.take_all(o["_id"], o["items"])
                                      for o in (first, second, short)))
    # Asked at the same moment: one command for the three.
    assert batches == [[first["_id"], second["_id"], short["_id"]]]
    assert outcomes[:2] == [(None, True), (None, True)]
    failure, changed = outcomes[2]
    assert failure is not None and failure["failure_code"] == "out_of_stock"
    assert failure["failure_product"] == "B" and changed
    a_marks = [first["_id"], second["_id"], short["_id"]]
    assert (await units(db))["A"] == (2, a_marks)  # the short order's A stays marked
    assert (await units(db))["B"] == (8, [first["_id"]])
    # A re-drive of all three together takes nothing twice and says the same.
    again = await asyncio.gather(*(takes.take_all(o["_id"], o["items"])
                                   for o in (first, second, short)))
    assert [f for f, _ in again] == [None, None, failure]
    assert (await units(db))["A"] == (2, a_marks)
    assert (await units(db))["B"] == (8, [first["_id"]])


async def test_first_takes_of_never_sold_products_cost_the_batch_a_few_commands_in_asking_order(
    mongo: AsyncMongoClient[dict[str, Any]], nx_uri: str, db_name: str
) -> None:
    # Products as the seed writes them: no holds array, which the bulk take cannot match
    # (see stock._unmarked_update). Five units of C for ten orders that want one each.
    commands = Commands()
    client = AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True, event_listeners=[commands])
    try:
        async with shop(mongo[db_name], {"A": 100, "B": 100, "C": 5}) as engine:
            orders = [await order_for(mongo[db_name], engine,
                                      [("A", 1), ("B", 2)] + [("C", 1)] * (n < 10))
                      for n in range(20)]
            takes = stock.TakeBatcher(client[db_name])
            commands.clear()
            outcomes = await asyncio.gather(*(takes.take_all(o["_id"], o["items"])
                                              for o in orders))
            # The bulk of all 20, one read, the missing holds arrays, the retries in one
            # ordered bulk, one read: not several commands for each order.
            assert commands.sent == [("update", "products"), ("find", "products"),
                                     ("update", "products"), ("update", "products"),
                                     ("find", "products")]
            # The first five to ask got C, whatever the timing; the next five are told.
            assert [failure is None for failure, _ in outcomes] == \
                [True] * 5 + [False] * 5 + [True] * 10
            assert {(f["failure_code"], f["failure_product"])
                    for f, _ in outcomes if f is not None} == {("out_of_stock", "C")}
            ids = [o["_id"] for o in orders]
            assert await units(mongo[db_name]) == {
                "A": (80, ids), "B": (60, ids), "C": (0, ids[:5])}
            # Told again (a re-drive): nothing moves twice, and no retry is sent.
            commands.clear()
            again = await asyncio.gather(*(takes.take_all(o["_id"], o["items"])
                                           for o in orders))
            assert [f for f, _ in again] == [f for f, _ in outcomes]
            assert commands.names == ["update", "find"]
            assert (await units(mongo[db_name]))["C"] == (0, ids[:5])
    finally:
        await client.close()
