"""The Python client (``changecast_client``): how fast one client consumes changes with its
view kept current, and how soon its view is exact again after the server restarts.

1. **Consume.** A feed process (``--feed``: a bare WebSocket server that writes
   pre-encoded ChangeCast frames straight to its socket, so it is not the bottleneck;
   its CPU is reported) sends inserts of ``--keys`` documents and then ``--changes``
   updates. Measured: events/s the application takes from ``async for`` with the
   view applied, against, in the same run, a bare ``websockets`` loop that only
   ``json.loads`` each frame (the floor of any Python consumer).
2. **Restart.** A real ``changecast serve`` (NX-27017 beside it, so the database
   lives on) restarts ``--restarts`` times while a writer changes stock at
   ``--rate``/s through the database for the whole downtime and ``--after`` s
   after. Three clients watch products: ours (back-off 0.05 s growing to 2 s),
   ours with its back-off capped at 0.25 s, and a naive one (reconnect every
   0.25 s, refetch the list, subscribe without ``resume_from``). Measured: the
   time from the server answering again to each view equalling the database, and
   how many runs ended with a view that was still wrong once the writes stopped.

    PYTHONPATH=. .venv/bin/python -m bench.clients   # → bench/results/clients.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from backend.web.live.frames import text_frame
from bench.report import write
from bench.site import Site, cpu_seconds, free_port, site
from changecast_client import Change, Client, Subscription, connect

NAIVE_RETRY_S = 0.25


# ---- 1. consume ---------------------------------------------------------------------------


def feed_frames(sub_id: str, keys: int, changes: int) -> bytes:
    """Inserts of ``keys`` products, then ``changes`` stock updates, as the server frames them."""
    frames = []
    seq = 1
    for n in range(keys):
        doc = {"_id": f"SKU-{n:05d}", "name": f"Product {n}", "category": "Bench",
               "price_cents": 1000 + n, "stock": 100, "low_stock_threshold": 10,
               "updated_at": "2026-12-06T20:00:00.000Z"}
        frames.append({"type": "change", "id": sub_id, "seq": seq, "op": "insert",
                       "collection": "products", "key": doc["_id"], "doc": doc, "at": 0})
        seq += 1
    for n in range(changes):
        frames.append({"type": "change", "id": sub_id, "seq": seq, "op": "update",
                       "collection": "products", "key": f"SKU-{n % keys:05d}",
                       "changes": {"set": {"stock": n % 500,
                                           "updated_at": "2026-12-06T20:00:01.000Z"},
                                   "unset": []}, "at": 0})
        seq += 1
    return b"".join(text_frame(json.dumps(f, separators=(",", ":")).encode()) for f in frames)


async def feed(port: int, keys: int, changes: int) -> None:
    """The feed process: on each subscribe, ``subscribed`` and then every frame at once."""
    cache: dict[str, bytes] = {}

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("op") != "subscribe":
                    continue
                sub_id = msg["id"]
                await ws.send(json.dumps({"type": "subscribed", "id": sub_id, "seq": 0}))
                if sub_id not in cache:
                    cache[sub_id] = feed_frames(sub_id, keys, changes)
                ws.transport.write(cache[sub_id])

    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


async def consume_ours(base: str, total: int) -> float:
    client = await connect(base, heartbeat_s=60)
    try:
        sub = await client.subscribe("products", snapshot=False)
        started = time.perf_counter()
        seen = 0
        async for event in sub:
            if isinstance(event, Change):
                seen += 1
                if seen == total:
                    break
        elapsed = time.perf_counter() - started
        assert len(sub.view) > 0 and sub.changes == total
        return total / elapsed
    finally:
        await client.close()


async def consume_bare(base: str, total: int) -> float:
    async with ws_connect(base.replace("http", "ws") + "/ws", max_size=None, max_queue=None,
                          compression=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": "s1", "collection": "products"}))
        await ws.recv()
        started = time.perf_counter()
        seen = 0
        while seen < total:
            if json.loads(await ws.recv()).get("type") == "change":
                seen += 1
        return total / (time.perf_counter() - started)


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.clients", "--feed", str(port),
                             "--keys", str(args.keys), "--changes", str(args.changes)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": "."})
    assert proc.stdout is not None
    await asyncio.to_thread(proc.stdout.readline)
    base = f"http://127.0.0.1:{port}"
    total = args.keys + args.changes
    rows: dict[str, list[float]] = {"changecast_client": [], "bare websockets + json.loads": []}
    feed_cpu = []
    try:
        for _ in range(args.repeats):
            for way, run in (("changecast_client", consume_ours),
                             ("bare websockets + json.loads", consume_bare)):
                cpu = cpu_seconds([proc.pid])
                wall = time.perf_counter()
                rows[way].append(await run(base, total))
                feed_cpu.append((cpu_seconds([proc.pid]) - cpu) / (time.perf_counter() - wall))
    finally:
        proc.terminate()
        proc.wait()
    result = {way: {"events_per_s": round(statistics.median(v)), "runs": [round(x) for x in v]}
              for way, v in rows.items()}
    ours, bare = (float(str(result[w]["events_per_s"])) for w in rows)
    print(f"consume: changecast_client {ours:,.0f} events/s with the view kept current; bare "
          f"websockets + json.loads {bare:,.0f}/s (ratio {ours / bare:.2f}); feed CPU "
          f"{100 * max(feed_cpu):.0f} % of a core at most")
    return {"events": total, "keys": args.keys, "ways": result,
            "ratio_to_bare": round(ours / bare, 2),
            "feed_cpu_max_pct": round(100 * max(feed_cpu), 1)}


# ---- 2. restart ---------------------------------------------------------------------------


class Naive:
    """Reconnect-and-refetch, as a hand-written client would: on any loss, retry every
    0.25 s; load the list; subscribe from now (no ``resume_from``)."""

    def __init__(self, base: str, cookie: str) -> None:
        self.base, self.cookie = base, cookie
        self.view: dict[str, dict[str, Any]] = {}
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # whatever went wrong: start over
                async with httpx.AsyncClient(base_url=self.base, timeout=5,
                                             headers={"Cookie": self.cookie}) as http:
                    body = (await http.get("/api/products", params={"limit": 500})).json()
                self.view = {d["_id"]: d for d in body["items"]}
                async with ws_connect(self.base.replace("http", "ws") + "/ws", origin=self.base,  # type: ignore[arg-type]
                                      additional_headers={"Cookie": self.cookie}) as ws:
                    await ws.send(json.dumps({"op": "subscribe", "id": "n",
                                              "collection": "products"}))
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg.get("type") == "change" and msg["op"] == "update":
                            doc = self.view.get(msg["key"])
                            if doc is not None:
                                doc.update(msg["changes"]["set"])
                        elif msg.get("type") == "change" and msg.get("doc"):
                            self.view[msg["key"]] = msg["doc"]
            await asyncio.sleep(NAIVE_RETRY_S)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def stocks(view: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {key: doc.get("stock") for key, doc in view.items()}


async def truth(db: Any) -> dict[str, Any]:
    """Every product's stock in the database now."""
    return {d["_id"]: d.get("stock") for d in await db.products.find({}, {"stock": 1}).to_list()}


View = Callable[[], dict[str, dict[str, Any]]]
OURS = "changecast_client"
OURS_FAST = "changecast_client, back-off ≤ 0.25 s"
WAYS = (OURS, OURS_FAST, "naive")


async def restart_once(cc: Site, db: Any, views: dict[str, View],
                       args: argparse.Namespace) -> dict[str, Any]:
    products = [d["_id"] for d in await db.products.find({}, {"_id": 1}).to_list()]
    rng = random.Random(len(products))
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await db.products.update_one({"_id": rng.choice(products)},
                                         {"$set": {"stock": rng.randrange(1, 900)}})
            await asyncio.sleep(1 / args.rate)

    writing = asyncio.create_task(writer())
    await asyncio.sleep(0.5)
    back = await cc.restart()
    exact_at: dict[str, float | None] = dict.fromkeys(views)
    deadline = back + args.after
    while time.perf_counter() < deadline and None in exact_at.values():
        now_true = await truth(db)
        now = time.perf_counter()
        for way, view in views.items():
            if exact_at[way] is None and stocks(view()) == now_true:
                exact_at[way] = now - back
        await asyncio.sleep(0.005)
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    stop.set()
    await writing
    await asyncio.sleep(1.0)  # every change the writer made has had time to arrive
    final = await truth(db)
    return {way: {"exact_after_ms": None if at is None else round(at * 1000, 1),
                  "wrong_at_the_end": sum(stocks(views[way]()).get(k) != v
                                          for k, v in final.items())}
            for way, at in exact_at.items()}


async def restarts(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    async with site() as cc:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cc.nx_uri)
        db = mongo[cc.db_name]
        cookie = await cc.admin_cookie()
        clients: list[Client] = [await connect(cc.base, cookie, backoff_s=(0.05, cap))
                                 for cap in (2.0, NAIVE_RETRY_S)]
        subs: list[Subscription] = [await c.subscribe("products", events=False) for c in clients]
        naive = Naive(cc.base, cookie)
        views: dict[str, View] = {OURS: lambda: subs[0].view, OURS_FAST: lambda: subs[1].view,
                                  "naive": lambda: naive.view}
        try:
            await asyncio.sleep(1.0)
            for n in range(args.restarts):
                runs.append(await restart_once(cc, db, views, args))
                print(f"restart {n + 1}: {runs[-1]}")
        finally:
            await naive.close()
            for client in clients:
                await client.close()
            await mongo.close()
    result: dict[str, Any] = {}
    for way in WAYS:
        times = [r[way]["exact_after_ms"] for r in runs if r[way]["exact_after_ms"] is not None]
        result[way] = {"exact_after_ms_p50": round(statistics.median(times), 1) if times else None,
                       "exact_after_ms_runs": [r[way]["exact_after_ms"] for r in runs],
                       "runs_wrong_at_the_end": sum(r[way]["wrong_at_the_end"] > 0 for r in runs),
                       "documents_wrong_at_the_end": [r[way]["wrong_at_the_end"] for r in runs]}
    print("restart → exact view: " + "; ".join(
        f"{way} p50 {r['exact_after_ms_p50']} ms, {r['runs_wrong_at_the_end']}/{len(runs)} runs "
        "wrong at the end" for way, r in result.items()))
    return {"restarts": args.restarts, "write_rate": args.rate, "after_s": args.after,
            "naive_retry_s": NAIVE_RETRY_S, "ways": result}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return {"benchmark": "clients", "command": "python -m bench.clients",
            "consume": await consume(args), "restart": await restarts(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50, help="stock writes per second")
    parser.add_argument("--after", type=float, default=3.0,
                        help="seconds the writer goes on after the server is back")
    parser.add_argument("--out", type=Path, default=Path("bench/results/clients.json"))
    args = parser.parse_args()
    if args.feed:
        asyncio.run(feed(args.feed, args.keys, args.changes))
        return
    write(args.out, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
