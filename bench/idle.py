"""A quiet server: CPU with no client and no change, and the first change after the quiet.

    python -m bench.idle [--quiet 60] [--repeats 3] [--out bench/results/idle.json]

Two configurations, each a fresh server on a fresh embedded database, run alternately:

- **busy-polling**: ``CHANGECAST_IDLE_POLL_MAX_S=0.025``, the watchers' poll every 25 ms
  whether anything happens or not (ChangeCast before the back-off);
- **backing-off** (the default): a quiet stream polls less and less often, up to once a
  second, and this process's own writes wake it at once.

Per run: the app server's and the database's CPU share over ``--quiet`` seconds with no
client at all; then a client connects to ``/ws``, subscribes to ``products``, and an admin
writes one stock value: the write → client latency of that first change, and of the ten
changes that follow it one by one (the busy pace, for comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bench.report import write
from bench.site import SUBSCRIBE_PRODUCTS, Site, cpu_seconds, products_of, site

WAYS = {"busy-polling": {"CHANGECAST_IDLE_POLL_MAX_S": "0.025"}, "backing-off": {}}
FOLLOWING = 10


async def first_changes(cc: Site) -> list[tuple[float, float]]:
    """Per change, the write's answer and its arrival at the client, in milliseconds after
    the write was sent: the first change after the quiet, then the next ones."""
    product = (await products_of(cc))[0]
    admin = await cc.admin()
    try:
        async with connect(cc.ws, origin=cc.base) as ws:  # type: ignore[arg-type]
            await ws.send(SUBSCRIBE_PRODUCTS)
            await ws.recv()  # subscribed
            found = []
            for n in range(1 + FOLLOWING):
                value = 700_000 + n
                started = time.perf_counter()
                (await admin.put(f"/api/products/{product}/stock",
                                 json={"stock": value})).raise_for_status()
                answered = time.perf_counter()
                async with asyncio.timeout(10):
                    while f'"stock":{value}' not in str(await ws.recv()):
                        pass
                found.append(((answered - started) * 1000,
                              (time.perf_counter() - started) * 1000))
            return found
    finally:
        await admin.aclose()


async def run(way: str, quiet: float) -> dict[str, Any]:
    async with site(extra_env=WAYS[way]) as cc:
        await asyncio.sleep(5)  # start-up work (priming, first checkpoints) is not idling
        pids = [cc.server.pid]
        server0, db0 = cpu_seconds(pids), cpu_seconds([cc.database_pid or 0])
        wall0 = time.perf_counter()
        await asyncio.sleep(quiet)
        wall = time.perf_counter() - wall0
        server = cpu_seconds(pids) - server0
        database = cpu_seconds([cc.database_pid or 0]) - db0
        latencies = await first_changes(cc)
    row = {"way": way, "quiet_s": round(wall, 1),
           "server_cpu_share": round(server / wall, 4),
           "database_cpu_share": round(database / wall, 4),
           "first_write_ms": round(latencies[0][0], 2),
           "first_change_ms": round(latencies[0][1], 2),
           "following_write_p50_ms": round(statistics.median(w for w, _ in latencies[1:]), 2),
           "following_p50_ms": round(statistics.median(c for _, c in latencies[1:]), 2)}
    print(f"{way:>13}: idle cpu server {row['server_cpu_share']:.2%}, database "
          f"{row['database_cpu_share']:.2%}; first change after {quiet:.0f} s quiet "
          f"{row['first_change_ms']} ms, its write answered in {row['first_write_ms']} ms "
          f"(then p50 {row['following_p50_ms']} ms, writes {row['following_write_p50_ms']} ms)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=float, default=60.0, help="seconds of quiet per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/idle.json"))
    args = parser.parse_args()
    rows = [asyncio.run(run(way, args.quiet)) for _ in range(args.repeats) for way in WAYS]
    medians = {way: {key: statistics.median(r[key] for r in rows if r["way"] == way)
                     for key in ("server_cpu_share", "database_cpu_share", "first_write_ms",
                                 "first_change_ms", "following_write_p50_ms",
                                 "following_p50_ms")} for way in WAYS}
    for way, figures in medians.items():
        print(f"median {way}: {figures}")
    write(args.out, {"benchmark": "idle", "command": "python -m bench.idle",
                     "quiet_s": args.quiet, "repeats": args.repeats, "medians": medians,
                     "runs": rows})


if __name__ == "__main__":
    main()
