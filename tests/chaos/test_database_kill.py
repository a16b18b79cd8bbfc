"""kill -9 of the embedded database in the middle of 5,000+ changes: the supervisor restarts
it; every watching client converges to the database; the pipeline finishes every order;
nothing is applied twice (no repeated transition, audit entry or stock movement)."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.support.instance import AppProcess, app_env
from tests.support.ledger import AUTOMATIC, UNFINISHED, sold
from tests.support.procs import children_of, kill_quietly
from tests.support.remote import RemoteView, converged

pytestmark = [
    pytest.mark.embedded_only(reason="it kills -9 the embedded server under load"),
    pytest.mark.integration,
    pytest.mark.timeout(240),
]

ORDERS = 150
STOCK_WRITES = 3_900


def nx_child(app: AppProcess) -> tuple[int, str]:
    """(pid, URI) of the app's embedded database process (it listens on a Unix socket)."""
    assert app.proc is not None
    for pid in children_of(app.proc.pid):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"backend.infra.nxserver" in args:
            path = args[args.index(b"--unix-socket") + 1].decode()
            return pid, f"mongodb://{quote(path, safe='')}/?directConnection=true"
    raise AssertionError("no embedded database process")


async def test_kill_9_of_the_database_under_load_loses_and_repeats_nothing(tmp_path: Path) -> None:
    env = app_env(CHANGECAST_RECONCILE_AFTER_S="3", CHANGECAST_PAYMENT_LATENCY_MS="20-80")
    app = await asyncio.to_thread(AppProcess, env, tmp_path)
    nx_pid, nx_uri = nx_child(app)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(nx_uri, tz_aware=True)
    db = mongo["changecast"]
    async with asyncio.timeout(30):  # seeded orders the pipeline picks up at start move stock
        while await db.orders.count_documents(UNFINISHED):
            await asyncio.sleep(0.2)
    products = await db.products.find({}).sort("_id", 1).to_list()
    ordered = [p["_id"] for p in products if p["stock"] >= 40][:12]  # orders draw on these
    others = [p["_id"] for p in products if p["_id"] not in ordered]  # stock writes go here
    seeded = {o["_id"] for o in await db.orders.find({}, {"_id": 1}).to_list()}
    initial = {p["_id"]: p["stock"] for p in products}
    views = [
        RemoteView(app.base, collection, app.cookie, name=f"{collection[0]}{n}")
        for n in range(4)
        for collection in ("orders", "products")
    ]
    outcome = Counter[str]()
    rng = random.Random(9)

    async def request(
        http: httpx.AsyncClient,
        method: str,
        path: str,
        body: Any,
        *,
        retry: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """One request; with ``retry``, again after a 503 or a network error (idempotent)."""
        while True:
            try:
                response = await http.request(method, path, json=body, headers=headers)
                outcome[str(response.status_code)] += 1
                if response.status_code != 503 or not retry:
                    return
            except httpx.HTTPError:
                outcome["error"] += 1
                if not retry:
                    return
            await asyncio.sleep(0.1)

    async def stock_writer(http: httpx.AsyncClient, share: range) -> None:
        for n in share:
            await request(
                http,
                "PUT",
                f"/api/products/{others[n % len(others)]}/stock",
                {"stock": rng.randrange(20, 400)},
                retry=True,
            )

    async def order_writer(http: httpx.AsyncClient) -> None:
        # Retried like the stock writes: the Idempotency-Key makes a retry of an order whose
        # reply was lost (a 503 at the cap, a dropped connection) land on the same order.
        for n in range(ORDERS):
            await request(
                http,
                "POST",
                "/api/orders",
                {
                    "user_id": f"user-customer{n % 25 + 1:02d}",
                    "items": [{"product_id": rng.choice(ordered), "quantity": rng.randint(1, 3)}],
                },
                retry=True,
                headers={"Idempotency-Key": f"chaos-{n}"},
            )

    try:
        for view in views:
            view.start()
        async with asyncio.timeout(30):
            await asyncio.gather(*(view.connected.wait() for view in views))
        async with httpx.AsyncClient(base_url=app.base, timeout=5, headers={"Cookie": app.cookie}) as http:
            before = (await http.get("/api/metrics")).json()["changes_total"]
            writers = [asyncio.create_task(stock_writer(http, range(k, STOCK_WRITES, 4))) for k in range(4)]
            writers.append(asyncio.create_task(order_writer(http)))
            while sum(outcome.values()) < (STOCK_WRITES + ORDERS) * 0.4:
                await asyncio.sleep(0.05)
            kill_quietly(nx_pid, signal.SIGKILL)  # mid-load
            await asyncio.gather(*writers)
            async with asyncio.timeout(60):
                while (await http.get("/api/health")).json()["database"]["embedded"]["restarts"] < 1:
                    await asyncio.sleep(0.2)
            async with asyncio.timeout(90):  # the reconciler finishes what the kill interrupted
                while await db.orders.count_documents(UNFINISHED):
                    await asyncio.sleep(0.3)
            metrics = (await http.get("/api/metrics")).json()
            changes = metrics["changes_total"] - before
        result = await converged(views, db, timeout=30)
        orders = [o for o in await db.orders.find({}).to_list() if o["_id"] not in seeded]
        audit = Counter(a["order_id"] for a in await db.audit.find({}).to_list())
        final = {p["_id"]: p["stock"] for p in await db.products.find({}).to_list()}
    finally:
        for view in views:
            await view.stop()
        await asyncio.to_thread(app.stop, signal.SIGTERM)
        await mongo.close()

    print(
        f"changes {changes}, outcomes {dict(outcome)}, orders {len(orders)}, "
        f"resyncs {sum(v.resyncs for v in views)}, reconnects {sum(v.reconnects for v in views)}, "
        "streams ended / foreign changes "
        f"{ {n: (w['cursor_ends'], w['foreign_changes']) for n, w in metrics['watchers'].items()} }"
    )
    assert changes >= 5_000
    if result["differ"]:
        print(
            "DETAIL",
            result["detail"],
            "\nWATCHERS",
            metrics["watchers"],
            "\nMETRICS",
            {k: metrics[k] for k in ("resyncs", "dropped", "cutoffs", "seq")},
        )
    assert result["differ"] == 0, (result, metrics["watchers"])
    assert sum(v.duplicates for v in views) == 0
    # Every order was placed exactly once, however many times it was retried.
    assert sorted(o["idempotency_key"] for o in orders) == sorted(f"chaos-{n}" for n in range(ORDERS))
    assert not [o["_id"] for o in orders if o["status"] in AUTOMATIC]
    for order in orders:
        statuses = [h["status"] for h in order["history"]]
        assert len(statuses) == len(set(statuses)), f"{order['_id']} repeated a transition"
        assert audit[order["_id"]] == len(statuses), f"{order['_id']} audit {audit[order['_id']]}"
    taken = sold(orders)
    for product in ordered:  # stock moved exactly once per reservation and release
        assert final[product] == initial[product] - taken[product], product
