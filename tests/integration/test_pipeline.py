"""The order pipeline end to end on the embedded database."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.domain import stock
from backend.domain.analytics import LiveAnalytics
from backend.domain.clock import now_iso
from backend.pipeline import AUTOMATIC, PaymentGateway, Pipeline
from streaming import ChangeEngine
from tests.support.ledger import shelf, sold
from tests.support.mode import watch_mode
from tests.support.orders import placed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Db = Any


async def setup(db: Db, products: dict[str, int]) -> None:
    await db.users.insert_many(
        [{"_id": "user-admin", "email": "admin@example.com", "name": "A", "role": "admin"}]
        + [{"_id": f"c{n:02d}", "email": f"c{n}@e.com", "name": f"C{n}", "role": "customer"}
           for n in range(20)])
    await db.products.insert_many([
        {"_id": pid, "name": pid, "category": "x", "price_cents": 1_000 + 500 * i,
         "stock": stock, "low_stock_threshold": 10, "updated_at": "2026-01-01T00:00:00.000Z"}
        for i, (pid, stock) in enumerate(products.items())])


async def start_instance(client: AsyncMongoClient[dict[str, Any]], name: str, *,
                         reconcile_after_s: float = 30.0,
                         latency: tuple[int, int] = (2, 15), success_rate: float = 0.9,
                         seed: int = 1,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                         ) -> tuple[ChangeEngine, Pipeline]:
    engine = ChangeEngine(client[name], mode=await watch_mode(client[name]))
    await engine.start()
    await engine.prime("products")
    pipeline = Pipeline(client[name], engine, reconcile_after_s=reconcile_after_s,
                        gateway=PaymentGateway(success_rate=success_rate, latency_ms=latency,
                                               rng=random.Random(seed), sleep=sleep))
    await pipeline.start()
    return engine, pipeline


async def settled(db: Db, expected: int, timeout: float = 90) -> list[dict[str, Any]]:
    """Wait until every order left the statuses the pipeline moves on by itself and has the
    units it gave up back on the shelf."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        orders = await db.orders.find({}).to_list()
        if len(orders) == expected and not any(o["status"] in AUTOMATIC
                                               or o.get("restock") == "due" for o in orders):
            return orders
        stuck = Counter(o["status"] + (" (restock due)" if o.get("restock") == "due" else "")
                        for o in orders)
        assert asyncio.get_running_loop().time() < deadline, f"orders stuck: {stuck}"
        await asyncio.sleep(0.1)


async def place(db: Db, engine: ChangeEngine, count: int, products: list[str],
                rng: random.Random, *, claim: Callable[[str], Any] | None = None) -> None:
    """``count`` orders in bursts of 50 at once; ``claim``: every other one is placed with
    it (``Pipeline.claim_placed``, as an instance's own API places orders), the rest go to
    whichever instance claims them first."""
    async def one(n: int) -> None:
        items = [(pid, rng.randint(1, 3)) for pid in rng.sample(products, rng.randint(1, 3))]
        await placed(db, engine, user_id=f"c{n % 20:02d}", items=items,
                     correlation=f"corr-{n}", actor="customer", claim=claim if n % 2 else None)

    for start in range(0, count, 50):  # bursts of 50 concurrent orders
        await asyncio.gather(*(one(n) for n in range(start, min(count, start + 50))))


async def trails(db: Db, orders: list[dict[str, Any]], timeout: float = 30
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit entries and notifications, once every order's are written: the pipeline
    writes them when it hears of the transition, a moment after the order settled, so
    stopping it at once would cut the last ones off."""
    wanted_audit = sum(len(o["history"]) for o in orders)
    wanted_notes = wanted_audit - len(orders)
    ids = [o["_id"] for o in orders]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        audit = await db.audit.find({"order_id": {"$in": ids}}).to_list()
        notes = await db.notifications.find({"order_id": {"$in": ids}}).to_list()
        if (len(audit), len(notes)) >= (wanted_audit, wanted_notes) or \
                asyncio.get_running_loop().time() > deadline:
            return audit, notes
        await asyncio.sleep(0.1)


async def progress(db: Db, pipelines: list[Pipeline]) -> str:
    """Where the orders are and what each instance has done: a failure's message."""
    names = {p.instance: f"instance {n}" for n, p in enumerate(pipelines, 1)}
    where = Counter((o["status"], names.get(o.get("claim"), o.get("claim")))
                    for o in await db.orders.find({}, {"status": 1, "claim": 1}).to_list())
    return (f"orders by (status, claim): {dict(sorted(where.items(), key=str))}; "
            f"pipelines: {[p.stats().as_dict() for p in pipelines]}")


def check_trails(orders: list[dict[str, Any]], audit: list[dict[str, Any]],
                 notes: list[dict[str, Any]]) -> None:
    by_order = Counter(a["order_id"] for a in audit)
    notes_by_order = Counter(n["order_id"] for n in notes if n.get("order_id"))
    for order in orders:
        statuses = [h["status"] for h in order["history"]]
        assert len(statuses) == len(set(statuses)), f"{order['_id']} repeated a transition"
        assert by_order[order["_id"]] == len(statuses), order["_id"]
        assert notes_by_order[order["_id"]] == len(statuses) - 1, order["_id"]
        trail = [a for a in audit if a["order_id"] == order["_id"]]
        assert {a["correlation_id"] for a in trail} == {order["correlation_id"]}
        assert sorted(a["stage"] for a in trail) == sorted(statuses)


async def test_pipeline_500_orders_20_customers_end_states_stock_and_trails(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    initial = {f"P{i:02d}": 120 for i in range(12)} | {"SCARCE": 5}
    await setup(db, initial)
    engine, pipeline = await start_instance(mongo, db_name)
    live = LiveAnalytics(engine, db)
    await live.start()
    try:
        await place(db, engine, 500, list(initial), random.Random(3))
        orders = await settled(db, 500)
        audit, notes = await trails(db, orders)
        # Restock marks stay for the reconcile timeout after they are done; end them now.
        await stock.sweep(db, engine, stale_before=now_iso())
        statuses = Counter(o["status"] for o in orders)
        # The figures follow the change stream: they reach the database's final state.
        async with asyncio.timeout(10):
            version = live.version
            while live.snapshot()["per_status"] != dict(sorted(statuses.items())):
                version = await live.changed(version)
    finally:
        live.stop()
        await pipeline.stop()
        await engine.stop()
    assert set(statuses) <= {"processing", "rejected", "payment_failed"}
    reserved = statuses["processing"] + statuses["payment_failed"]
    assert 0.8 <= statuses["processing"] / reserved <= 0.97, statuses
    assert statuses["rejected"] > 0  # SCARCE runs out
    assert all("out of stock" in o["failure_reason"] for o in orders if o["status"] == "rejected")
    taken = sold(orders)
    assert shelf(await db.products.find({}).to_list()) == {
        pid: (count - taken[pid], []) for pid, count in initial.items()}
    check_trails(orders, audit, notes)
    admin_notes = await db.notifications.find({"user_id": "user-admin"}).to_list()
    assert any(n["kind"] == "sold_out" for n in admin_notes)
    analytics = live.snapshot()
    assert analytics["orders"] == 500
    assert analytics["per_status"] == dict(sorted(statuses.items()))
    assert analytics["revenue_cents"] == sum(o["total_cents"] for o in orders
                                             if o["status"] == "processing")
    assert len(analytics["top_customers"]) == 5 and len(analytics["top_products"]) == 5


async def test_pipeline_64_concurrent_orders_for_the_last_10_units(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    await setup(db, {"LAST": 10})
    # Every payment succeeds here: a declined one would put its unit back on the shelf.
    engine, pipeline = await start_instance(mongo, db_name, success_rate=1.0)
    try:
        await asyncio.gather(*(placed(db, engine, user_id=f"c{n % 20:02d}",
                                            items=[("LAST", 1)], correlation=f"k{n}",
                                            actor="customer") for n in range(64)))
        orders = await settled(db, 64)
    finally:
        await pipeline.stop()
        await engine.stop()
    statuses = Counter(o["status"] for o in orders)
    assert statuses == {"processing": 10, "rejected": 54}
    rejected = [o for o in orders if o["status"] == "rejected"]
    name = (await db.products.find_one({"_id": "LAST"}))["name"]
    assert {(o["failure_code"], o["failure_product"], o["failure_reason"]) for o in rejected} \
        == {("out_of_stock", "LAST", f"{name} is out of stock")}
    product = await db.products.find_one({"_id": "LAST"})
    assert product is not None and product["stock"] == 0


async def test_pipeline_two_instances_exactly_once_and_survive_one_dying(
    nx_uri: str, db_name: str
) -> None:
    clients = [AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True) for _ in range(2)]
    db = clients[0][db_name]
    await setup(db, {f"P{i}": 1_000 for i in range(6)})
    # The first instance's bank never answers: whatever it takes to payment stays claimed
    # by it, which is the work a dying instance leaves behind.
    held = 0
    holding = asyncio.Event()
    never = asyncio.Event()

    async def bank_hangs(_delay: float) -> None:
        nonlocal held
        held += 1
        if held >= 5:
            holding.set()
        await never.wait()

    # Inside this deadline a hang fails at the await it is stuck on. (One was seen about once
    # in 60 runs, in first[0].stop(): asyncio.wait_for swallowed the watcher's cancel when a
    # nudge came at the same moment; see test_watcher's same-moment test.)
    async with asyncio.timeout(150):
        first = await start_instance(clients[0], db_name, reconcile_after_s=1.5,
                                     latency=(50, 150), seed=1, sleep=bank_hangs)
        second = await start_instance(clients[1], db_name, reconcile_after_s=1.5,
                                      latency=(50, 150), seed=2)
        try:
            # Orders no instance claimed go to whichever claims first, which is timing: the
            # first's share of 100 was 7 to 25 in three runs here, and one run in CI never
            # saw it reach its bank five times. Half are placed claimed by it, so that it
            # surely holds work when it dies; the rest are raced for.
            await place(db, first[0], 100, [f"P{i}" for i in range(6)], random.Random(5),
                        claim=first[1].claim_placed)
            try:
                async with asyncio.timeout(30):
                    await holding.wait()
            except TimeoutError:
                raise AssertionError(f"the first instance reached its bank {held} times in "
                                     f"30 s; {await progress(db, [first[1], second[1]])}"
                                     ) from None
            # One instance dies mid-run: its in-flight work stops where it is, claims and all.
            await first[1].stop()
            await first[0].stop()
            orphans = {o["_id"]: o["status"] for o in await db.orders.find(
                {"status": {"$in": sorted(AUTOMATIC)}, "claim": first[1].instance},
                {"status": 1}).to_list()}
            assert len(orphans) >= 5, "the dying instance should leave claimed work behind"
            await place(db, second[0], 100, [f"P{i}" for i in range(6)], random.Random(6))
            orders = await settled(db, 200, timeout=60)
            audit, notes = await trails(db, orders)
        finally:
            for engine, pipeline in (first, second):
                await pipeline.stop()
                await engine.stop()
            for client in clients:
                await client.close()
    assert {o["status"] for o in orders} <= {"processing", "rejected", "payment_failed"}
    # Every order the dead instance held went on, exactly once, under the survivor (the only
    # instance left): past the status it was stuck in, to a settled one, no step twice. (Who
    # picked it up, the survivor's reconciler or its event path once the claim was stale,
    # is timing; that it was picked up is the point.)
    by_id = {o["_id"]: o for o in orders}
    for order_id, stuck_in in orphans.items():
        steps = [h["status"] for h in by_id[order_id]["history"]]
        assert len(steps) == len(set(steps)), (order_id, steps)
        assert steps.index(stuck_in) < len(steps) - 1, (order_id, stuck_in, steps)
        assert by_id[order_id].get("claim") is None, by_id[order_id].get("claim")
    verify = AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True)
    try:
        vdb = verify[db_name]
        check_trails(orders, audit, notes)
        # Units: what was sold left the shelf, exactly once, whatever the dead instance
        # was doing when it stopped (its last sweep may still be due: run one).
        await stock.sweep(vdb, second[0], stale_before=now_iso())
        products = await vdb.products.find({}).to_list()
    finally:
        await verify.close()
    taken = sold(orders)
    assert shelf(products) == {f"P{i}": (1_000 - taken[f"P{i}"], []) for i in range(6)}


async def test_orders_claimed_as_placed_go_to_that_instance_and_to_another_once_it_dies(
    nx_uri: str, db_name: str
) -> None:
    client = AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True)
    db = client[db_name]
    await setup(db, {"P0": 1_000, "P1": 1_000})
    first = await start_instance(client, db_name, reconcile_after_s=1.5, success_rate=1.0)
    second = await start_instance(client, db_name, reconcile_after_s=1.5, success_rate=1.0)
    try:
        for n in range(20):
            await placed(db, first[0], user_id="c01", items=[("P0", 1), ("P1", 2)],
                         correlation=f"k{n}", actor="customer",
                         claim=first[1].claim_placed)
        orders = await settled(db, 20, timeout=30)
        assert {o["status"] for o in orders} == {"processing"}
        # The first drove every one of them; the second, hearing of them too, took none.
        assert first[1].counters.transitions == 60
        assert second[1].counters.transitions == 0
        assert all(o.get("claim") is None for o in orders)
        # Claimed by an instance that is gone: the other takes it once the claim is stale.
        await first[1].stop()
        await first[0].stop()
        await placed(db, second[0], user_id="c01", items=[("P0", 1)], correlation="late",
                     actor="customer", claim=first[1].claim_placed)
        orders = await settled(db, 21, timeout=30)
        assert {o["status"] for o in orders} == {"processing"}
        assert second[1].counters.transitions == 3
        stock_left = {p["_id"]: p["stock"] for p in await db.products.find().to_list()}
        assert stock_left == {"P0": 1_000 - 21, "P1": 1_000 - 40}
    finally:
        for engine, pipeline in (first, second):
            await pipeline.stop()
            await engine.stop()
        await client.close()


async def test_an_order_that_waited_for_a_payment_slot_past_its_claim_is_charged_once(
    nx_uri: str, db_name: str
) -> None:
    """The first instance's bank takes one call at a time, 0.4 s each, and its orders queue
    for it longer than the claim lasts (1.5 s): the second takes the waiting ones over.
    Each order must still reach a bank once, not once per instance."""
    client = AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True)
    db = client[db_name]
    await setup(db, {"P0": 1_000})
    bank_calls = Counter[str]()

    def counted(name: str) -> Callable[[float], Awaitable[None]]:
        async def sleep(delay: float) -> None:
            bank_calls[name] += 1
            await asyncio.sleep(delay)
        return sleep

    engine = ChangeEngine(db, mode=await watch_mode(db))
    await engine.start()
    first = Pipeline(db, engine, reconcile_after_s=1.5, gateway=PaymentGateway(
        success_rate=1.0, latency_ms=(400, 400), concurrency=1, sleep=counted("first")))
    second = Pipeline(db, engine, reconcile_after_s=1.5, gateway=PaymentGateway(
        success_rate=1.0, latency_ms=(20, 40), sleep=counted("second")))
    await first.start()
    await second.start()
    try:
        for n in range(8):
            await placed(db, engine, user_id="c01", items=[("P0", 1)], correlation=f"k{n}",
                         actor="customer", claim=first.claim_placed)
        orders = await settled(db, 8, timeout=30)
    finally:
        for pipeline in (first, second):
            await pipeline.stop()
        await engine.stop()
        await client.close()
    assert {o["status"] for o in orders} == {"processing"}
    assert all(len({h["status"] for h in o["history"]}) == len(o["history"]) for o in orders)
    # The second did take some over (else this test shows nothing), and the bank was asked
    # once per order in all.
    assert bank_calls["second"] > 0, bank_calls
    assert sum(bank_calls.values()) == 8, bank_calls
