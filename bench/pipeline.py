"""End-to-end pipeline throughput on the embedded database (not a test).

    python -m bench.pipeline [--orders 600] [--repeats 3] [--out bench/results/pipeline.json]

Starts NX-27017 in a temporary directory, runs one ChangeEngine + Pipeline,
places orders from 20 customers as fast as the API layer would, and measures
orders per second from the first placement until every order has left the
automatic statuses (pending, reserved, paid). The baseline in the same run is
the bare insert rate of the same orders with no pipeline attached.
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

from backend.domain.orders import place_order
from backend.infra.database import make_client
from backend.infra.embedded import EmbeddedServer
from backend.pipeline import AUTOMATIC, PaymentGateway, Pipeline
from bench.report import chart_bars, write
from streaming import ChangeEngine


class _NoEngine:
    """Stands in for the engine when measuring bare inserts."""

    async def get(self, collection: str, key: Any) -> dict[str, Any]:
        return {"_id": key, "name": key, "price_cents": 1_000}

    async def settle(self, *args: Any, **kwargs: Any) -> bool:
        return True


async def _setup(db: Any) -> list[str]:
    products = [f"P{i:02d}" for i in range(20)]
    await db.products.insert_many([{"_id": p, "name": p, "category": "bench",
                                    "price_cents": 1_000 + 100 * i, "stock": 1_000_000,
                                    "low_stock_threshold": 10,
                                    "updated_at": "2026-01-01T00:00:00.000Z"}
                                   for i, p in enumerate(products)])
    await db.users.insert_one({"_id": "user-admin", "email": "a@e.com", "role": "admin"})
    return products


async def _place(db: Any, engine: Any, orders: int, products: list[str]) -> None:
    rng = random.Random(1)
    sem = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        async with sem:
            items = [(p, rng.randint(1, 3)) for p in rng.sample(products, 2)]
            await place_order(db, engine, user_id=f"c{n % 20:02d}", items=items,
                               correlation=f"b{n}", actor="customer")

    await asyncio.gather(*(one(n) for n in range(orders)))


async def run_once(client: Any, name: str, orders: int, concurrency: int,
                   pipeline_on: bool) -> float:
    db = client[name]
    products = await _setup(db)
    if not pipeline_on:
        started = time.perf_counter()
        await _place(db, _NoEngine(), orders, products)
        return orders / (time.perf_counter() - started)
    engine = ChangeEngine(db, mode="poll")
    await engine.start()
    await engine.prime("products")
    pipeline = Pipeline(db, engine, gateway=PaymentGateway(concurrency=concurrency))
    await pipeline.start()
    try:
        started = time.perf_counter()
        await _place(db, engine, orders, products)
        while await db.orders.count_documents({"status": {"$in": sorted(AUTOMATIC)}}):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        await pipeline.stop()
        await engine.stop()
    return orders / elapsed


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(data_dir=Path(tmp)) as server:
            client = make_client(server.uri)
            try:
                scenarios = [("bare inserts (baseline)", 0, False),
                             ("pipeline, payment concurrency 64 (default)", 64, True),
                             ("pipeline, payment concurrency 256", 256, True)]
                for label, concurrency, on in scenarios:
                    rates = []
                    for attempt in range(args.repeats):
                        name = f"bench{len(rows)}_{attempt}"
                        rates.append(await run_once(client, name, args.orders, concurrency, on))
                    rows.append({"scenario": label, "payment_concurrency": concurrency or None,
                                 "orders_per_s_median": round(statistics.median(rates), 1),
                                 "orders_per_s_all": [round(r, 1) for r in rates]})
                    print(f"{label:<46} {statistics.median(rates):8.1f} orders/s")
            finally:
                await client.close()
    return {"benchmark": "pipeline", "command": "python -m bench.pipeline",
            "orders_per_run": args.orders,
            "payment": "90% success, 100-800 ms bank delay, +500-1500 ms fraud check over $1,000",
            "results": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end pipeline throughput")
    parser.add_argument("--orders", type=int, default=600)
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
