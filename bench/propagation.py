"""Write → client propagation, against a real server process on the embedded database.

    python -m bench.propagation [--clients 100 1000] [--rate 100] [--duration 10]

For each client count: an admin writer changes stock at ``--rate`` changes/s
(open loop) while the clients watch, and we take, for every (write, client)
pair, the time from sending the write to the client first seeing its result.
Three ways to watch, measured in the same run:

- ChangeCast: one WebSocket per client, subscribed to ``products``, the clients and the
  writer being ``bench.fanout``'s lean load generator (Node and ``ws``; its CPU share is
  in the result), so that the figure is the server's;
- polling baselines: every client GETs ``/api/products`` every 1 s and every
  5 s (its staleness: how long until its view shows the write or a later one);
- the anti-pattern: one change stream per client, straight on the database
  (each polling it every 20 ms, since the embedded server cannot block).

Clients keep only (arrival time, raw frame) while the run lasts and decode
afterwards, so the figures are the server's, not the load generator's parsing.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from bench import fanout
from bench.report import chart_bars, spread, write
from bench.site import Site, products_of, site
from loadtest.runner import latencies
from streaming.events import decode

Arrivals = dict[str, float]  # key "product=stock" -> first time this client saw it


class Writer:
    """Open-loop stock changes at ``rate``/s; remembers when each resulting value was sent."""

    def __init__(self, client: httpx.AsyncClient, products: list[str], rate: float) -> None:
        self.client = client
        self.products = products
        self.rate = rate
        self.sent: dict[str, float] = {}
        self.failed = 0

    async def run(self, duration: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        n = 0
        while (elapsed := time.perf_counter() - started) < duration:
            due = n / self.rate
            if due > elapsed:
                await asyncio.sleep(due - elapsed)
                continue
            task = asyncio.create_task(self._one(self.products[n % len(self.products)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def _one(self, product: str) -> None:
        sent = time.perf_counter()
        try:
            response = await self.client.put(f"/api/products/{product}/stock", json={"delta": 1})
            response.raise_for_status()
        except httpx.HTTPError:
            self.failed += 1
            return
        self.sent[f"{product}={response.json()['stock']}"] = sent


def staleness(sent: dict[str, float],
              clients: list[dict[str, list[tuple[int, float]]]]) -> tuple[list[float], int]:
    """For pollers: how long until a client's view showed this write *or a later one* (stock
    only grows in these runs, so a value >= the written one means the write is reflected)."""
    values, missed = [], 0
    for key, at in sent.items():
        product, _, stock = key.rpartition("=")
        wanted = int(stock)
        for views in clients:
            history = views.get(product, [])
            index = bisect.bisect_left([value for value, _ in history], wanted)
            if index == len(history):
                missed += 1
            else:
                values.append(max(0.0, (history[index][1] - at) * 1000))
    return values, missed


async def websockets(bench: Site, clients: int, rate: float, duration: float) -> dict[str, Any]:
    """ChangeCast's own clients, driven by the lean load generator of ``bench.fanout`` (Node
    and ``ws``): Python clients in one process saturate long before the server does."""
    result = await fanout.run_point(await fanout.changecast(bench), clients, int(rate),
                                    duration, base=50_000_000, drain=5.0)
    return {"approach": "changecast-websocket", "clients": clients, "writes": result["writes"],
            "write_errors": result["writes"] - result["applied"], "missed": result["lost"],
            "latency_ms": {"count": result["deliveries"], "p50": result["p50_ms"],
                           "p95": result["p95_ms"], "p99": result["p99_ms"],
                           "max": result["max_ms"]},
            "load_generator": "bench/node/loadgen.js",
            "loadgen_cpu_share": result["loadgen_cpu_share"],
            "server_cpu_share": result["server_cpu_share"]}


async def polling(bench: Site, clients: int, rate: float, duration: float,
                  every: float) -> dict[str, Any]:
    seen: list[dict[str, list[tuple[int, float]]]] = [{} for _ in range(clients)]
    stop = asyncio.Event()
    http = httpx.AsyncClient(base_url=bench.base, timeout=30,
                             limits=httpx.Limits(max_connections=100))
    polls = [0, 0]  # done, failed

    async def poll(n: int) -> None:
        await asyncio.sleep(random.uniform(0, every))
        while not stop.is_set():
            started = time.perf_counter()
            try:
                items = (await http.get("/api/products?limit=500")).json()["items"]
            except (httpx.HTTPError, ValueError, KeyError):
                polls[1] += 1
            else:
                polls[0] += 1
                at = time.perf_counter()
                for product in items:
                    history = seen[n].setdefault(product["_id"], [])
                    if not history or history[-1][0] != product["stock"]:
                        history.append((product["stock"], at))
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - started)))

    pollers = [asyncio.create_task(poll(n)) for n in range(clients)]
    admin = await bench.admin()
    writer = Writer(admin, await products_of(bench), rate)
    await writer.run(duration)
    await asyncio.sleep(every + 1)  # a last full round of polls: what a poller will ever see
    stop.set()
    await asyncio.wait(pollers, timeout=30)
    await admin.aclose()
    await http.aclose()
    values, missed = staleness(writer.sent, seen)
    return {"approach": f"rest-polling-{every:g}s", "clients": clients, "writes": len(writer.sent),
            "write_errors": writer.failed, "missed": missed, "polls": polls[0],
            "poll_errors": polls[1], "latency_ms": spread(values)}


async def streams(bench: Site, clients: int, rate: float, duration: float,
                  poll_s: float = 0.02) -> dict[str, Any]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(bench.nx_uri, maxPoolSize=200)
    products = mongo[bench.db_name].products
    seen: list[Arrivals] = [{} for _ in range(clients)]
    opened = []
    for _ in range(clients):
        opened.append(await products.watch(full_document="updateLookup"))
    stop = asyncio.Event()

    async def follow(n: int) -> None:
        stream = opened[n]
        while not stop.is_set():
            change = await stream.try_next()
            if change is None:
                await asyncio.sleep(poll_s)
                continue
            doc = decode(change.get("fullDocument") or {})
            if "stock" in doc:
                seen[n].setdefault(f"{doc['_id']}={doc['stock']}", time.perf_counter())

    followers = [asyncio.create_task(follow(n)) for n in range(clients)]
    admin = await bench.admin()
    writer = Writer(admin, await products_of(bench), rate)
    await writer.run(duration)
    await _quiet(lambda: sum(len(s) for s in seen), settle=1.0, limit=20)
    stop.set()
    await asyncio.wait(followers, timeout=30)
    for stream in opened:
        with contextlib.suppress(Exception):
            await stream.close()
    await admin.aclose()
    await mongo.close()
    values, missed = latencies(writer.sent, seen)
    return {"approach": "change-stream-per-client", "clients": clients,
            "writes": len(writer.sent), "write_errors": writer.failed, "missed": missed,
            "poll_interval_ms": poll_s * 1000, "latency_ms": spread(values)}


async def _quiet(count: Any, *, settle: float, limit: float) -> None:
    """Wait until ``count()`` stops growing for ``settle`` seconds (at most ``limit``)."""
    deadline = time.perf_counter() + limit
    last, since = -1, time.perf_counter()
    while time.perf_counter() < deadline:
        now = count()
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since >= settle:
            return
        await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    fanout.ensure_node()
    results = []
    for clients in args.clients:
        runs: list[tuple[str, Callable[[Site], Awaitable[dict[str, Any]]]]] = [
            ("websocket", functools.partial(websockets, clients=clients, rate=args.rate,
                                            duration=args.duration)),
            ("poll 1 s", functools.partial(polling, clients=clients, rate=args.rate,
                                           duration=args.duration, every=1.0)),
            ("poll 5 s", functools.partial(polling, clients=clients, rate=args.rate,
                                           duration=args.duration, every=5.0))]
        if clients <= args.stream_clients_max:
            runs.append(("streams", functools.partial(streams, clients=clients, rate=args.rate,
                                                      duration=args.duration)))
        for label, run in runs:
            async with site() as bench:  # a fresh server each time: no run inherits another's load
                result = await run(bench)
            result["rate"] = args.rate
            result["duration_s"] = args.duration
            results.append(result)
            lat = result["latency_ms"]
            print(f"{clients:>5} clients  {label:<10} p50 {lat['p50']} ms  p95 {lat['p95']} ms  "
                  f"p99 {lat['p99']} ms  ({lat['count']} samples)", flush=True)
    targets = {"p50_ms": 5, "p99_ms": 25, "at_clients": 1000}
    top = [r for r in results if r["approach"] == "changecast-websocket"
           and r["clients"] == targets["at_clients"]]
    met = None
    if top:
        lat = top[0]["latency_ms"]
        met = {"p50": lat["p50"] is not None and lat["p50"] <= targets["p50_ms"],
               "p99": lat["p99"] is not None and lat["p99"] <= targets["p99_ms"]}
    write(args.out, {"benchmark": "propagation", "targets": targets, "targets_met": met,
                     "results": results})
    chart_bars(args.out.with_suffix(".png"),
               "Write → client latency (ms, log scale)",
               [f"{r['approach']}\n{r['clients']} clients" for r in results],
               {"p50": [r["latency_ms"]["p50"] for r in results],
                "p99": [r["latency_ms"]["p99"] for r in results]}, log=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--stream-clients-max", type=int, default=100,
                        help="skip the stream-per-client anti-pattern above this many clients")
    parser.add_argument("--out", type=Path, default=Path("bench/results/propagation.json"))
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
