"""End-to-end pipeline throughput on the embedded database (not a test).

    python -m bench.pipeline [--orders 1500] [--repeats 3] [--out bench/results/pipeline.json]

Starts NX-27017 in a temporary directory, runs one ChangeEngine + Pipeline,
places orders from 20 customers as fast as the API layer would, and measures
orders per second from the first placement until every order has left the
automatic statuses (pending, reserved, paid). The baselines in the same run: the
bare insert rate of the same orders with no pipeline attached, and the database's
own pace (single-document inserts/s at the same concurrency), measured just before
each pipeline run. Every database write of a pipeline run is counted (a driver command
listener), so each run also has its writes per order and the ceiling the database
allowed then (its writes/s ÷ writes per order); the share of it is the median of the
runs' own shares. After each run it checks the outcome, not only the count: every order
settled once (no status twice in its history), every product's stock exactly its
start minus what the orders that kept their stock hold, and one audit entry per
stage of every order.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from backend.domain.clock import ms_between
from backend.domain.orders import HIDDEN_FIELDS, order_writer, place_order, product_reader
from backend.infra.database import WRITE_COMMANDS, WriteListener, make_client
from backend.infra.embedded import EmbeddedServer
from backend.pipeline import AUTOMATIC, PaymentGateway, Pipeline
from bench.report import chart_bars, percents, write
from streaming import ChangeEngine

STOCK = 1_000_000
# Where an order keeps the stock it took (the bench's orders stop at processing).
HOLDS_STOCK = frozenset({"reserved", "paid", "processing", "shipped", "delivered"})


class WriteCounter:
    """Counts, per collection, the write commands this client sends (``counting`` on) and
    the writes they carry (an ``insert`` of 30 documents is one command, 30 writes): the
    app's own ``WriteListener`` recognises them, and this looks at each one's statements."""

    def __init__(self) -> None:
        self.counting = False
        self.by_collection: dict[str, int] = {}  # writes (documents inserted, updates...)
        self.commands: dict[str, int] = {}
        counter = self

        class Listener(WriteListener):
            def started(self, event: Any) -> None:
                super().started(event)
                name = event.command_name
                if counter.counting and name in WRITE_COMMANDS:
                    collection = event.command.get(name)
                    if isinstance(collection, str):
                        counter.count(collection, event.command)

        self.listener = Listener()
        self.listener.on_write = lambda collection: None

    def count(self, collection: str, command: Any) -> None:
        statements = next((len(command[field]) for field in ("documents", "updates", "deletes")
                           if isinstance(command.get(field), list)), 1)
        self.by_collection[collection] = self.by_collection.get(collection, 0) + statements
        self.commands[collection] = self.commands.get(collection, 0) + 1


class _NoEngine:
    """Stands in for the engine when measuring bare inserts."""

    async def get(self, collection: str, key: Any) -> dict[str, Any]:
        return {"_id": key, "name": key, "price_cents": 1_000}

    async def settle(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def visible(self, collection: str, doc: Any) -> Any:
        return doc


async def _setup(db: Any) -> list[str]:
    products = [f"P{i:02d}" for i in range(20)]
    await db.products.insert_many([{"_id": p, "name": p, "category": "bench",
                                    "price_cents": 1_000 + 100 * i, "stock": STOCK,
                                    "low_stock_threshold": 10,
                                    "updated_at": "2026-01-01T00:00:00.000Z"}
                                   for i, p in enumerate(products)])
    await db.users.insert_one({"_id": "user-admin", "email": "a@e.com", "role": "admin"})
    return products


async def _place(db: Any, engine: Any, orders: int, products: list[str],
                 claim: Any = None) -> None:
    rng = random.Random(1)
    sem = asyncio.Semaphore(32)
    prices, writer = product_reader(db), order_writer(db)  # one per process, as the app has

    async def one(n: int) -> None:
        async with sem:
            items = [(p, rng.randint(1, 3)) for p in rng.sample(products, 2)]
            await place_order(db, engine, user_id=f"c{n % 20:02d}", items=items,
                               correlation=f"b{n}", actor="customer", claim=claim,
                               products=prices, writer=writer)

    await asyncio.gather(*(one(n) for n in range(orders)))


async def database_pace(client: Any, name: str, writes: int) -> float:
    """Single-document inserts/s at the placing concurrency: what the database allows."""
    db = client[name]
    sem = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        async with sem:
            await db.pace.insert_one({"_id": n, "at": time.time()})

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(writes)))
    return writes / (time.perf_counter() - started)


async def check(db: Any, products: list[str], timeout: float = 30.0) -> dict[str, Any]:
    """What a user would check once the orders are through: settled once, exact stock,
    a complete audit trail (its last entries may land just after the last transition)."""
    orders = [o async for o in db.orders.find({}, {"status": 1, "history": 1, "items": 1})]
    twice = sum(1 for o in orders
                if len(statuses := [h["status"] for h in o["history"]]) != len(set(statuses)))
    held = dict.fromkeys(products, 0)
    for order in orders:
        if order["status"] in HOLDS_STOCK:
            for item in order["items"]:
                held[item["product_id"]] += int(item["quantity"])
    stock = {p["_id"]: p["stock"] async for p in db.products.find({}, {"stock": 1})}
    wrong_stock = sorted(p for p in products if stock[p] != STOCK - held[p])
    # Stock is ample and payments either capture or fail: an order anywhere else (rejected,
    # say) means the pipeline got it wrong, however consistent the rest looks.
    elsewhere = sum(1 for o in orders if o["status"] not in ("processing", "payment_failed"))
    stages = sum(len(o["history"]) for o in orders)
    deadline = time.monotonic() + timeout
    while (audited := await db.audit.count_documents({})) < stages \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"orders": len(orders), "settled_twice": twice, "products_wrong_stock": wrong_stock,
            "not_processing_or_payment_failed": elsewhere,
            "audit_entries": audited, "stages": stages,
            "ok": not twice and not wrong_stock and not elsewhere and audited == stages}


async def run_once(client: Any, counter: WriteCounter, name: str, orders: int,
                   concurrency: int, pipeline_on: bool) -> tuple[float, dict[str, Any]]:
    db = client[name]
    products = await _setup(db)
    if not pipeline_on:
        started = time.perf_counter()
        await _place(db, _NoEngine(), orders, products)
        return orders / (time.perf_counter() - started), {}
    engine = ChangeEngine(db, mode="poll", hidden=HIDDEN_FIELDS)  # what the app hides
    await engine.start()
    await engine.prime("products")
    pipeline = Pipeline(db, engine, gateway=PaymentGateway(concurrency=concurrency))
    await pipeline.start()
    # The end of the run is heard on the change stream, as the app hears it: asking the
    # database every 50 ms how many orders are left cost it ~9 % of its time (a count of an
    # unindexed $in is a scan in Python on NX-27017), work no pipeline does.
    left_automatic: set[str] = set()
    everyone_out = asyncio.Event()

    def on_change(event: Any) -> None:
        if event.collection == "orders" and event.doc is not None \
                and event.doc.get("status") not in AUTOMATIC:
            left_automatic.add(str(event.key))
            if len(left_automatic) >= orders:
                everyone_out.set()

    unlisten = engine.listen(on_change)
    counter.by_collection, counter.commands = {}, {}
    counter.counting = True
    try:
        started = time.perf_counter()
        # As the app's API places them: claimed for this instance's pipeline as written.
        await _place(db, engine, orders, products, claim=pipeline.claim_placed)
        async with asyncio.timeout(600):
            await everyone_out.wait()
        elapsed = time.perf_counter() - started
        unlisten()
        # The database's own word, once: nothing is left in an automatic status.
        if left := await db.orders.count_documents({"status": {"$in": sorted(AUTOMATIC)}}):
            raise RuntimeError(f"the stream said every order was through; {left} are not")
        counter.counting = False
        stages = pipeline.stats().stages
        outcome = await check(db, products)
        outcome["steady_orders_per_s"] = await steady_rate(db)
    finally:
        counter.counting = False
        await pipeline.stop()
        await engine.stop()
    outcome["writes_per_order"] = round(sum(counter.by_collection.values()) / orders, 2)
    outcome["writes_per_order_by_collection"] = {
        k: round(v / orders, 2) for k, v in sorted(counter.by_collection.items())}
    outcome["write_commands_per_order"] = round(sum(counter.commands.values()) / orders, 2)
    outcome["write_commands_per_order_by_collection"] = {
        k: round(v / orders, 2) for k, v in sorted(counter.commands.items())}
    outcome["stages_ms"] = {name: {"count": st.count, "avg": st.avg_ms, "p95": st.p95_ms}
                            for name, st in sorted(stages.items())}
    return orders / elapsed, outcome


async def steady_rate(db: Any) -> float:
    """Orders/s between the 10th and the 90th percent of them settling (by the time of each
    order's last step): the pace once the run is going, without its start or the last
    orders' bank calls."""
    ends = sorted([o["history"][-1]["at"] async for o in db.orders.find({}, {"history": 1})])
    if len(ends) < 10:
        return 0.0
    low, high = ends[len(ends) // 10], ends[len(ends) * 9 // 10]
    span = ms_between(low, high) / 1000
    return round((len(ends) * 9 // 10 - len(ends) // 10) / span, 1) if span > 0 else 0.0


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(data_dir=Path(tmp)) as server:
            counter = WriteCounter()
            client = make_client(server.uri, writes=counter.listener)
            try:
                paces: list[float] = []
                scenarios = [("bare inserts (baseline)", 0, False),
                             ("pipeline, payment concurrency 64 (default)", 64, True),
                             ("pipeline, payment concurrency 256", 256, True)]
                for label, concurrency, on in scenarios:
                    rates, outcomes = [], []
                    for attempt in range(args.repeats):
                        name = f"bench{len(rows)}_{attempt}"
                        if on:
                            # The database's pace just before each run, so that the ceiling
                            # is of the same moment (this machine's speed drifts by a third
                            # within an hour).
                            pace = await database_pace(client, f"pace_{name}",
                                                       args.orders * 5)
                            paces.append(pace)
                        rate, outcome = await run_once(client, counter, name, args.orders,
                                                       concurrency, on)
                        if on:
                            outcome["database_writes_per_s"] = round(pace, 1)
                            outcome["ceiling_orders_per_s"] = round(
                                pace / outcome["writes_per_order"], 1)
                            outcome["share_of_ceiling"] = round(
                                rate / outcome["ceiling_orders_per_s"], 3)
                        rates.append(rate)
                        outcomes.append(outcome)
                    row: dict[str, Any] = {
                        "scenario": label, "payment_concurrency": concurrency or None,
                        "orders_per_s_median": round(statistics.median(rates), 1),
                        "orders_per_s_all": [round(r, 1) for r in rates]}
                    line = f"{label:<46} {statistics.median(rates):8.1f} orders/s"
                    if on:
                        per_order = statistics.median(o["writes_per_order"] for o in outcomes)
                        row.update({"writes_per_order": per_order,
                                    "write_commands_per_order": statistics.median(
                                        o["write_commands_per_order"] for o in outcomes),
                                    "steady_orders_per_s_median": statistics.median(
                                        o["steady_orders_per_s"] for o in outcomes),
                                    "ceiling_orders_per_s": statistics.median(
                                        o["ceiling_orders_per_s"] for o in outcomes),
                                    # The median of the runs' own shares.
                                    "share_of_ceiling": statistics.median(
                                        o["share_of_ceiling"] for o in outcomes),
                                    "share_of_ceiling_all": [o["share_of_ceiling"]
                                                             for o in outcomes],
                                    "outcomes": outcomes,
                                    "all_checks_ok": all(o["ok"] for o in outcomes)})
                        line += (f", {per_order} writes/order "
                                 f"({row['write_commands_per_order']} commands), ceiling "
                                 f"{row['ceiling_orders_per_s']:.1f}/s "
                                 f"({100 * row['share_of_ceiling']:.0f} % of it; runs "
                                 f"{percents(row['share_of_ceiling_all'])} %; "
                                 f"steady {row['steady_orders_per_s_median']:.1f}/s), "
                                 f"checks {'ok' if row['all_checks_ok'] else 'FAILED'}")
                    rows.append(row)
                    print(line, flush=True)
                pace = statistics.median(paces)
                print(f"{'database: single-document inserts (median)':<46} {pace:8.1f} "
                      "writes/s", flush=True)
            finally:
                await client.close()
    return {"benchmark": "pipeline", "command": "python -m bench.pipeline",
            "orders_per_run": args.orders,
            "database_writes_per_s_median": round(pace, 1),
            "database_writes_per_s_all": [round(p, 1) for p in paces],
            "payment": "90% success, 100-800 ms bank delay, +500-1500 ms fraud check over $1,000",
            "results": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end pipeline throughput")
    parser.add_argument("--orders", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    write(args.out, report)
    rows = report["results"]
    chart_bars(args.out.with_suffix(".png"), "Orders per second, end to end",
               [r["scenario"].replace(", ", "\n", 1) for r in rows],
               {"orders/s (median)": [r["orders_per_s_median"] for r in rows]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
