"""A quiet server: CPU with no client and no change, and the first change after the quiet.

    python -m bench.idle [--quiet 60] [--settle 10] [--repeats 5] [--out bench/results/idle.json]

Two configurations, each a fresh server on a fresh embedded database, run alternately:

- **busy-polling**: ``CHANGECAST_IDLE_POLL_MAX_S=0.025``, the watchers' poll every 25 ms
  whether anything happens or not (ChangeCast before the back-off);
- **backing-off** (the default): a quiet stream polls less and less often, up to once a
  second, and this process's own writes wake it at once.

Per run: the app server's and the database's CPU share over ``--quiet`` seconds with no
client at all; then a client connects to ``/ws`` and subscribes to ``products``, an admin
signs in, and after ``--settle`` more quiet seconds (the stream is back at its quietest
pace) the admin writes one stock value (ready bytes on a kept-alive connection, as
``bench.writepath`` sends them): the write → client latency of that first change, and of
the ten changes that follow it one by one (the busy pace, for comparison).
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
from bench.site import SUBSCRIBE_PRODUCTS, RawHttp, Site, cpu_seconds, products_of, site

WAYS = {"busy-polling": {"CHANGECAST_IDLE_POLL_MAX_S": "0.025"}, "backing-off": {}}
FOLLOWING = 10


async def first_changes(cc: Site, settle: float) -> list[tuple[float, float]]:
    """Per change, the write's answer and its arrival at the client, in milliseconds after
    the write was sent: the first change after ``settle`` quiet seconds, then the next."""
    product = (await products_of(cc))[0]
    cookie = await cc.admin_cookie()
    async with connect(cc.ws, origin=cc.base) as ws:  # type: ignore[arg-type]
        await ws.send(SUBSCRIBE_PRODUCTS)
        await ws.recv()  # subscribed
        await asyncio.sleep(settle)
        http = await RawHttp.open(cc.base, cookie)
        try:
            found = []
            for n in range(1 + FOLLOWING):
                value = 700_000 + n
                request = http.request("PUT", f"/api/products/{product}/stock",
                                       b'{"stock":%d}' % value)
                seen = asyncio.create_task(_frame(ws, f'"stock":{value}'))
                await asyncio.sleep(0)  # the reader is waiting on the socket
                started = time.perf_counter_ns()
                if await http.send(request) != 200:
                    raise RuntimeError("the stock write did not answer 200")
                answered = time.perf_counter_ns()
                async with asyncio.timeout(10):
                    received = await seen
                found.append(((answered - started) / 1e6, (received - started) / 1e6))
            return found
        finally:
            await http.close()


async def _frame(ws: Any, needle: str) -> int:
    while needle not in str(await ws.recv()):
        pass
    return time.perf_counter_ns()


async def run(way: str, quiet: float, settle: float) -> dict[str, Any]:
    async with site(extra_env=WAYS[way]) as cc:
        await asyncio.sleep(5)  # start-up work (priming, first checkpoints) is not idling
        pids = [cc.server.pid]
        server0, db0 = cpu_seconds(pids), cpu_seconds([cc.database_pid or 0])
        wall0 = time.perf_counter()
        await asyncio.sleep(quiet)
        wall = time.perf_counter() - wall0
        server = cpu_seconds(pids) - server0
        database = cpu_seconds([cc.database_pid or 0]) - db0
        latencies = await first_changes(cc, settle)
    row = {"way": way, "quiet_s": round(wall, 1),
           "server_cpu_share": round(server / wall, 4),
           "database_cpu_share": round(database / wall, 4),
           "first_write_ms": round(latencies[0][0], 2),
           "first_change_ms": round(latencies[0][1], 2),
           "following_write_p50_ms": round(statistics.median(w for w, _ in latencies[1:]), 2),
           "following_p50_ms": round(statistics.median(c for _, c in latencies[1:]), 2)}
    print(f"{way:>13}: idle cpu server {row['server_cpu_share']:.2%}, database "
          f"{row['database_cpu_share']:.2%}; first change after {quiet:.0f} + {settle:.0f} s quiet "
          f"{row['first_change_ms']} ms, its write answered in {row['first_write_ms']} ms "
          f"(then p50 {row['following_p50_ms']} ms, writes {row['following_write_p50_ms']} ms)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=float, default=60.0, help="seconds of quiet per run")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds of quiet between the client's arrival and the write")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/idle.json"))
    args = parser.parse_args()
    rows = [asyncio.run(run(way, args.quiet, args.settle)) for _ in range(args.repeats)
            for way in WAYS]
    medians = {way: {key: statistics.median(r[key] for r in rows if r["way"] == way)
                     for key in ("server_cpu_share", "database_cpu_share", "first_write_ms",
                                 "first_change_ms", "following_write_p50_ms",
                                 "following_p50_ms")} for way in WAYS}
    for way, figures in medians.items():
        print(f"median {way}: {figures}")
    write(args.out, {"benchmark": "idle", "command": "python -m bench.idle",
                     "quiet_s": args.quiet, "settle_s": args.settle, "repeats": args.repeats,
                     "medians": medians, "runs": rows})


if __name__ == "__main__":
    main()
