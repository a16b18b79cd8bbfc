"""Fan-out: deliveries per second in-process (the hub alone) and over real sockets.

    python -m bench.fanout [--clients 100 1000] [--writes 1000] [--repeats 3]

In-process: ``bench.engine`` (the hub against a naive queue-per-subscriber
baseline, same run). Over sockets: a server process on the embedded database,
N WebSocket clients subscribed to ``products``, and an admin writing stock
changes as fast as 16 concurrent requests go; deliveries/s is the number of
change frames all clients received divided by the time from the first write
to the last frame. The baseline in the same run is the write rate itself
with no client connected (what the server can do when it fans out to nobody).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench import engine
from bench.report import chart_bars, write
from bench.site import Site, hang_up, products_of, site, watchers


async def burst(admin: httpx.AsyncClient, products: list[str], writes: int,
                concurrency: int = 16) -> float:
    """Write ``writes`` stock changes with ``concurrency`` in flight; returns when started."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in range(writes):
        queue.put_nowait(products[n % len(products)])

    async def worker() -> None:
        while not queue.empty():
            product = queue.get_nowait()
            with contextlib.suppress(httpx.HTTPError):
                await admin.put(f"/api/products/{product}/stock", json={"delta": 1})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return started


async def over_sockets(bench: Site, clients: int, writes: int) -> dict[str, Any]:
    counts = [0] * clients
    last = [0.0]
    sockets = await watchers(bench, clients)

    async def listen(n: int) -> None:
        async for _ in sockets[n]:
            counts[n] += 1
            last[0] = time.perf_counter()

    listeners = [asyncio.create_task(listen(n)) for n in range(clients)]
    admin = await bench.admin()
    products = await products_of(bench)
    started = await burst(admin, products, writes)
    wrote = time.perf_counter()
    expected = writes * clients
    deadline = time.perf_counter() + 60
    while sum(counts) < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await hang_up(sockets, listeners)
    await admin.aclose()
    received = sum(counts)
    elapsed = max(last[0], wrote) - started
    return {"clients": clients, "writes": writes, "deliveries": received,
            "expected": expected, "seconds": round(elapsed, 3),
            "deliveries_per_s": round(received / elapsed),
            "writes_per_s": round(writes / (wrote - started), 1)}


async def sockets_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    async with site() as bench:
        admin = await bench.admin()
        started = await burst(admin, await products_of(bench), args.writes)
        alone = args.writes / (time.perf_counter() - started)
        await admin.aclose()
    print(f"writes with nobody watching: {alone:,.0f}/s", flush=True)
    for clients in args.clients:
        runs = []
        for _ in range(args.repeats):
            async with site() as bench:
                runs.append(await over_sockets(bench, clients, args.writes))
        best = sorted(runs, key=lambda r: r["deliveries_per_s"])[len(runs) // 2]
        row = {**best, "deliveries_per_s_median": round(statistics.median(
            r["deliveries_per_s"] for r in runs)), "runs": runs,
            "baseline_writes_per_s_no_clients": round(alone, 1)}
        rows.append(row)
        print(f"{clients:>5} clients: {row['deliveries_per_s_median']:>9,} deliveries/s over "
              f"sockets ({row['writes_per_s']} writes/s while fanning out)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fanout.json"))
    args = parser.parse_args()
    engine.main(["--repeats", str(args.repeats), "--out", str(args.out.with_name("engine.json"))])
    in_process = __import__("json").loads(args.out.with_name("engine.json").read_text())
    sockets = asyncio.run(sockets_main(args))
    write(args.out, {"benchmark": "fanout", "command": "python -m bench.fanout",
                     "in_process": in_process["results"], "over_sockets": sockets})
    rows = in_process["results"]
    chart_bars(args.out.with_suffix(".png"), "Fan-out: deliveries per second (log scale)",
               [f"hub {r['scenario']}\n{r['subscribers']:,} subs" for r in rows]
               + [f"sockets\n{r['clients']:,} clients" for r in sockets],
               {"ChangeCast": [r["hub"]["deliveries_per_s_median"] for r in rows]
                + [r["deliveries_per_s_median"] for r in sockets],
                "naive baseline": [r["naive_baseline"]["deliveries_per_s_median"] for r in rows]
                + [None] * len(sockets)}, log=True)


if __name__ == "__main__":
    main()
