"""Server memory per idle WebSocket connection.

    python -m bench.connections [--clients 1000 5000]

A fresh server process per size; its resident memory (VmRSS) is read after a
warm-up and again once N clients are connected and idle. Two kinds of client
in the same run: bare (connected to ``/ws``, no subscription: what uvicorn and
the WebSocket library cost) and subscribed (one ``products`` subscription
each: ChangeCast's own per-client state on top, its queue and routing entry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
from pathlib import Path
from typing import Any

from bench.report import chart_bars, write
from bench.site import site, watchers


async def measure(clients: int, subscribe: bool) -> dict[str, Any]:
    async with site() as bench:
        warm = await watchers(bench, 50, subscribe=subscribe, max_queue=16)  # imports and pools warmed up
        for ws in warm:
            await ws.close()
        await asyncio.sleep(1)
        before = bench.rss_kib()
        sockets = await watchers(bench, clients, subscribe=subscribe, max_queue=16)
        await asyncio.sleep(2)  # idle
        after = bench.rss_kib()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        gc.collect()
    per = (after - before) / clients
    return {"clients": clients, "kind": "subscribed" if subscribe else "bare",
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round(per, 2)}


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.clients) * 2 + 512
    if soft < need:  # the server is our child and inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    results = []
    for clients in args.clients:
        for subscribe in (False, True):
            row = await measure(clients, subscribe)
            results.append(row)
            print(f"{clients:>5} {row['kind']:<10} clients: {row['kib_per_connection']:.1f} KiB "
                  "each", flush=True)
    subscribed = [r for r in results if r["kind"] == "subscribed"]
    write(args.out, {"benchmark": "connections", "command": "python -m bench.connections",
                     "target_kib_per_connection": 64,
                     "targets_met": {str(r["clients"]): r["kib_per_connection"] <= 64
                                     for r in subscribed},
                     "results": results})
    chart_bars(args.out.with_suffix(".png"), "Server memory per idle WebSocket (KiB)",
               [f"{c:,} clients" for c in args.clients],
               {kind: [r["kib_per_connection"] for r in results if r["kind"] == kind]
                for kind in ("bare", "subscribed")}, unit="KiB")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--out", type=Path, default=Path("bench/results/connections.json"))
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
