"""The engine against the real embedded NX-27017 server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from streaming import ChangeEngine, ChangeEvent, MongoCheckpoints
from tests.conftest import free_port, start_nx
from tests.support.views import Counter, LiveView

pytestmark = [
    pytest.mark.embedded_only(reason="NX-27017's quirks (restarts, rewinds, pruning)"),
    pytest.mark.integration,
]

COLLECTIONS = ("orders", "products", "users")
WRITERS = 20
OPS_PER_WRITER = 500  # 20 x 500 = 10,000 changes


async def writer(db: Any, engine: ChangeEngine, n: int, ops: int, rng: random.Random) -> None:
    keys: dict[str, list[str]] = {c: [] for c in COLLECTIONS}
    for i in range(ops):
        coll = COLLECTIONS[i % 3]
        mine = keys[coll]
        if not mine or rng.random() < 0.25:
            key = f"w{n:02d}-{coll[0]}{i:04d}"
            await db[coll].insert_one(
                {
                    "_id": key,
                    "user_id": f"u{n % 5}",
                    "v": 0,
                    "stock": rng.randint(0, 20),
                    "meta": {"tag": "a"},
                }
            )
            mine.append(key)
        else:
            key = rng.choice(mine)
            roll = rng.random()
            if roll < 0.6:
                update: dict[str, Any] = {"$inc": {"v": 1}, "$set": {"stock": rng.randint(0, 20)}}
            elif roll < 0.8:
                update = {"$inc": {"v": 1}, "$set": {"meta.tag": rng.choice("bcd")}}
            else:
                update = {"$inc": {"v": 1}, "$unset": {"meta": ""}}
            await db[coll].update_one({"_id": key}, update)
        engine.nudge(coll)


@pytest.mark.timeout(240)
async def test_engine_20_writers_10000_changes_every_view_exact(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    engine = ChangeEngine(db, collections=COLLECTIONS, mode="poll", queue_size=50_000, buffer_size=20_000)
    await engine.start()
    counter = Counter(WRITERS * OPS_PER_WRITER)
    engine.listen(counter)
    views = [
        LiveView(engine, db, "orders", "orders"),
        LiveView(engine, db, "mine", "orders", restriction={"user_id": "u3"}),
        LiveView(engine, db, "low", "products", where="stock < 5 AND user_id IN ('u1','u2')"),
        LiveView(engine, db, "users", "users", where="meta.tag = 'b' OR meta IS NULL"),
    ]
    for view in views:
        await view.start()

    applied: dict[Any, int] = {}
    engine.listen(lambda e: applied.__setitem__(e.key, e.doc["v"]) if e.doc else None)
    stale: list[str] = []

    async def reader() -> None:
        rng = random.Random(7)
        while not counter.done.is_set():
            if not applied:
                await asyncio.sleep(0.005)
                continue
            key = rng.choice(list(applied))
            floor = applied[key]
            doc = await engine.get("products" if "-p" in key else "orders" if "-o" in key else "users", key)
            if doc is not None and doc["v"] < floor:
                stale.append(f"{key}: v{doc['v']} after v{floor} was applied")
            await asyncio.sleep(0)  # a cache hit never yields; let the writers run

    read_task = asyncio.create_task(reader())
    await asyncio.gather(*(writer(db, engine, n, OPS_PER_WRITER, random.Random(n)) for n in range(WRITERS)))
    await asyncio.wait_for(counter.done.wait(), 60)
    await read_task
    # Every view has consumed everything the engine emitted once its queue is empty.
    for view in views:
        while len(view.subscriber):
            await asyncio.sleep(0.01)
    await engine.stop()

    snapshot = engine.snapshot()
    assert snapshot["changes_total"] == WRITERS * OPS_PER_WRITER
    assert snapshot["dropped"] == 0 and snapshot["resyncs"] == 0
    for view in views:
        await view.stop()
        assert view.anomalies == []
        assert len(view.seqs) == len(set(view.seqs)), f"{view.sub_id}: duplicate deliveries"
        assert view.seqs == sorted(view.seqs), f"{view.sub_id}: out of order"
        assert view.docs == await view.truth(), f"{view.sub_id} diverged from the database"
    orders_total = await db.orders.count_documents({})
    assert orders_total > 0 and len(views[0].seqs) >= orders_total
    assert stale == []
    for coll in COLLECTIONS:
        async for doc in db[coll].find({}):
            assert await engine.get(coll, doc["_id"]) == doc


@pytest.mark.timeout(240)
async def test_engine_survives_kill_9_of_the_embedded_server(tmp_path: Path) -> None:
    port = free_port()
    proc = start_nx(tmp_path / "nx", port)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", tz_aware=True, serverSelectionTimeoutMS=3000
    )
    db = client.chaos
    engine = ChangeEngine(
        db,
        collections=COLLECTIONS,
        mode="poll",
        backoff_max=0.5,
        checkpoints=MongoCheckpoints(db.stream_checkpoints, instance_id="i1"),
    )
    try:
        await engine.start()
        views = [
            LiveView(engine, db, "orders", "orders"),
            LiveView(engine, db, "mine", "orders", restriction={"user_id": "u1"}),
            LiveView(engine, db, "low", "products", where="stock < 10"),
        ]
        for view in views:
            await view.start()
        killed = asyncio.Event()

        async def resilient_writer(n: int) -> None:
            rng = random.Random(n)
            for i in range(100):
                coll = COLLECTIONS[i % 2]
                key = f"w{n}-{i // 4}"
                for _ in range(200):  # retry through the outage; every write is idempotent
                    try:
                        if i % 4 == 0:
                            with contextlib.suppress(DuplicateKeyError):
                                await db[coll].insert_one(
                                    {"_id": key, "user_id": f"u{n % 3}", "stock": 50, "v": 0}
                                )
                        else:
                            await db[coll].update_one(
                                {"_id": key}, {"$set": {"v": i, "stock": rng.randint(0, 20)}}
                            )
                        engine.nudge(coll)
                        break
                    except PyMongoError:
                        await asyncio.sleep(0.05)
                if n == 0 and i == 50:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed.set()

        writers = [asyncio.create_task(resilient_writer(n)) for n in range(10)]
        await killed.wait()
        restarted = start_nx(tmp_path / "nx", port)
        await asyncio.gather(*writers)
        # Converged: every view equals the database (through replay or resync).
        deadline = asyncio.get_running_loop().time() + 30
        for view in views:
            while view.docs != await view.truth():
                if asyncio.get_running_loop().time() > deadline:
                    truth = await view.truth()
                    diff = {
                        k: (view.docs.get(k), truth.get(k))
                        for k in set(view.docs) | set(truth)
                        if view.docs.get(k) != truth.get(k)
                    }
                    raise AssertionError(
                        f"{view.sub_id} did not converge: {diff} "
                        f"resyncs={view.resyncs} anomalies={view.anomalies} "
                        f"{engine.snapshot()}"
                    )
                engine.nudge()
                await asyncio.sleep(0.05)
            assert len(view.seqs) == len(set(view.seqs))
        # PyMongo resumes a stream once by itself; anything beyond is the watcher's loop.
        assert all(w["state"] == "watching" for w in engine.snapshot()["watchers"].values())
        for view in views:
            await view.stop()
    finally:
        await engine.stop()
        await client.close()
        for p in (proc, locals().get("restarted")):
            if p is not None:
                p.kill()
                p.wait()


async def test_hidden_fields_stay_in_the_database(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    await db.products.insert_one({"_id": "P", "stock": 5, "holds": []})
    engine = ChangeEngine(db, mode="poll", collections=("products",), hidden={"products": ("holds",)})
    await engine.start()
    events: list[ChangeEvent] = []
    engine.listen(events.append)
    try:
        assert await engine.prime("products") == 1
        assert await engine.get("products", "P") == {"_id": "P", "stock": 5}
        # A change to a hidden field alone emits nothing; one that also moves stock shows
        # only the stock.
        await db.products.update_one({"_id": "P"}, {"$push": {"holds": "ORD-1"}})
        await db.products.update_one({"_id": "P"}, {"$inc": {"stock": -2}, "$push": {"holds": "ORD-2"}})
        visible = {"_id": "P", "stock": 3}
        assert await engine.settle("products", "P", visible | {"holds": ["ORD-1", "ORD-2"]})
        await db.products.insert_one({"_id": "Q", "stock": 1, "holds": ["ORD-3"]})
        assert await engine.settle("products", "Q", {"_id": "Q", "stock": 1})
    finally:
        await engine.stop()
    assert [(e.op, e.key, e.doc, e.changes.set if e.changes else None) for e in events] == [
        ("update", "P", visible, {"stock": 3}),
        ("insert", "Q", {"_id": "Q", "stock": 1}, None),
    ]
    assert engine.cache.peek("products", "P") == visible
    assert engine.metrics.empty_updates == 1
    assert engine.visible("orders", {"holds": 1}) == {"holds": 1}  # other collections keep it
