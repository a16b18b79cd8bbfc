"""The app server restarts while 50 clients watch: they reconnect, resync, and converge."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.support.instance import AppProcess, app_env
from tests.support.remote import RemoteView, converged

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def written(writes: dict[str, int], count: int, timeout: float = 30) -> None:
    """Wait until the writer has ``count`` acknowledged writes."""
    async with asyncio.timeout(timeout):
        while writes["ok"] < count:
            await asyncio.sleep(0.05)


async def test_app_restart_with_50_clients_connected_every_view_converges(
    nx_uri: str, db_name: str, tmp_path: Path
) -> None:
    env = app_env(MONGODB_URI=nx_uri, CHANGECAST_DB=db_name, CHANGECAST_PIPELINE="off")
    app = await asyncio.to_thread(AppProcess, env, tmp_path)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(nx_uri, tz_aware=True)
    db = mongo[db_name]
    views = [RemoteView(app.base, "products" if n % 2 else "orders", app.cookie, name=f"c{n}")
             for n in range(50)]
    writes = {"ok": 0, "failed": 0}
    stop = asyncio.Event()
    products = [p["_id"] for p in await db.products.find({}, {"_id": 1}).to_list()]

    async def writer() -> None:
        async with httpx.AsyncClient(base_url=app.base, timeout=5,
                                     headers={"Cookie": app.cookie}) as http:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = await http.put(f"/api/products/{products[n % len(products)]}/stock",
                                              json={"stock": n % 300})
                    writes["ok" if response.status_code == 200 else "failed"] += 1
                except httpx.HTTPError:
                    writes["failed"] += 1
                await asyncio.sleep(0.01)

    try:
        for view in views:
            view.start()
        async with asyncio.timeout(30):
            await asyncio.gather(*(view.connected.wait() for view in views))
        load = asyncio.create_task(writer())
        await written(writes, 10)  # the writer is going before the restart ...
        await asyncio.to_thread(app.stop, signal.SIGTERM)  # a deploy: graceful stop ...
        # ... and while nothing serves, the database still changes.
        await db.products.update_one({"_id": products[0]}, {"$set": {"stock": 4242}})
        await db.orders.update_one({}, {"$set": {"status": "cancelled"}})
        await asyncio.to_thread(app.start)
        async with asyncio.timeout(30):
            while sum(v.reconnects > 0 and v.connected.is_set() for v in views) < len(views):
                await asyncio.sleep(0.1)
        await written(writes, 20)  # ... and after it
        stop.set()
        await load
        result = await converged(views, db, timeout=20)
    finally:
        stop.set()
        for view in views:
            await view.stop()
        await asyncio.to_thread(app.stop)
        await mongo.close()
    assert result["differ"] == 0, result
    assert writes["ok"] >= 20, writes
    assert all(v.reconnects >= 1 for v in views)
    assert sum(v.resyncs for v in views) >= len(views)  # a new server cannot replay the old seq
    assert sum(v.duplicates for v in views) == 0
    stock = {v.docs[products[0]]["stock"] for v in views
             if v.collection == "products" and products[0] in v.docs}
    assert len(stock) == 1  # everybody agrees, whatever the writer did afterwards
