"""The change-coherent document cache under Zipf reads with concurrent writes.

    python -m bench.cache [--products 2000] [--seconds 10] [--write-rate 50]

Readers fetch products by a Zipf law (s = 1.1) while a writer changes random
products (also Zipf) at ``--write-rate``/s. A read is *stale* when it returns
an older version of a product than a write that had completed before the read
began. ChangeCast's cache (``ChangeEngine.get``; primed at start, as the app
does; writes settle on the stream before they complete, as the API's do) is
measured against the usual alternative in the same run: a ``cachetools``
TTL cache (1 s) that loads from the database on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from pymongo import ReturnDocument

from backend.infra.database import make_client
from backend.infra.embedded import EmbeddedServer
from bench.report import chart_bars, write
from streaming import ChangeEngine


class Zipf:
    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        weights = [1 / (k ** s) for k in range(1, n + 1)]
        total = sum(weights)
        running = 0.0
        self.cumulative = []
        for weight in weights:
            running += weight / total
            self.cumulative.append(running)
        self.rng = rng

    def pick(self) -> int:
        return min(len(self.cumulative) - 1,
                   bisect.bisect_left(self.cumulative, self.rng.random()))


class Ledger:
    """Completed writes per key: (completed at, version), in order."""

    def __init__(self) -> None:
        self.done: dict[str, list[tuple[float, int]]] = {}

    def record(self, key: str, version: int) -> None:
        self.done.setdefault(key, []).append((time.perf_counter(), version))

    def newest_before(self, key: str, moment: float) -> int:
        history = self.done.get(key, [])
        index = bisect.bisect_left(history, (moment, -1))
        return history[index - 1][1] if index else 0


async def run(kind: str, db: Any, keys: list[str], seconds: float, write_rate: float,
              readers: int) -> dict[str, Any]:
    rng = random.Random(5)
    zipf = Zipf(len(keys), 1.1, rng)
    ledger = Ledger()
    reads = stale = hits = misses = 0
    engine: ChangeEngine | None = None
    ttl: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=10_000, ttl=1.0)
    if kind == "changecast":
        engine = ChangeEngine(db, collections=("products",), mode="poll")
        await engine.start()
        await engine.prime("products")
    stop = asyncio.Event()

    async def get(key: str) -> dict[str, Any] | None:
        nonlocal hits, misses
        if engine is not None:
            return await engine.get("products", key)
        doc = ttl.get(key)
        if doc is not None:
            hits += 1
            return doc
        misses += 1
        loaded: dict[str, Any] | None = await db.products.find_one({"_id": key})
        if loaded is not None:
            ttl[key] = loaded
        return loaded

    async def reader() -> None:
        nonlocal reads, stale
        while not stop.is_set():
            key = keys[zipf.pick()]
            began = time.perf_counter()
            doc = await get(key)
            reads += 1
            if doc is not None and doc["v"] < ledger.newest_before(key, began):
                stale += 1
            if reads % 64 == 0:
                await asyncio.sleep(0)

    async def writer() -> None:
        n = 0
        started = time.perf_counter()
        while not stop.is_set():
            due = n / write_rate
            now = time.perf_counter() - started
            if due > now:
                await asyncio.sleep(due - now)
                continue
            n += 1
            key = keys[zipf.pick()]
            doc = await db.products.find_one_and_update(
                {"_id": key}, {"$inc": {"stock": 1, "v": 1}}, return_document=ReturnDocument.AFTER)
            if engine is not None:  # as the API does: complete once the stream has it
                engine.nudge("products")
                await engine.settle("products", key, doc, timeout=1.0)
            ledger.record(key, doc["v"])

    tasks = [asyncio.create_task(reader()) for _ in range(readers)]
    tasks.append(asyncio.create_task(writer()))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    writes = sum(len(v) for v in ledger.done.values())
    if engine is not None:
        stats = engine.stats().cache
        hits, misses = stats.hits, stats.misses
        await engine.stop()
    return {"cache": kind, "reads": reads, "writes": writes, "stale_reads": stale,
            "hits": hits, "misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "reads_per_s": round(reads / seconds)}


async def main(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="changecast-cache-") as tmp:
        async with EmbeddedServer(data_dir=Path(tmp)) as server:
            client = make_client(server.uri)
            for kind in ("changecast", "ttl-1s"):
                db = client[f"cache_{kind.replace('-', '_')}"]
                keys = [f"P-{n:05d}" for n in range(args.products)]
                await db.products.insert_many([{"_id": k, "name": k, "stock": 100, "v": 0,
                                                "price_cents": 1000} for k in keys])
                result = await run(kind, db, keys, args.seconds, args.write_rate, args.readers)
                results.append(result)
                print(f"{kind:<11} hit ratio {result['hit_ratio']:.2%}  stale reads "
                      f"{result['stale_reads']} of {result['reads']:,}  "
                      f"({result['writes']} writes)", flush=True)
            await client.close()
    ours = results[0]
    write(args.out, {"benchmark": "cache", "command": "python -m bench.cache",
                     "products": args.products, "zipf_s": 1.1, "seconds": args.seconds,
                     "write_rate": args.write_rate, "readers": args.readers,
                     "targets": {"hit_ratio": 0.95, "stale_reads": 0},
                     "targets_met": {"hit_ratio": (ours["hit_ratio"] or 0) >= 0.95,
                                     "stale_reads": ours["stale_reads"] == 0},
                     "results": results})
    chart_bars(args.out.with_suffix(".png"), "Cache under Zipf reads and concurrent writes",
               [r["cache"] for r in results],
               {"hit ratio %": [round(100 * (r["hit_ratio"] or 0), 1) for r in results],
                "stale reads per 10k": [round(10_000 * r["stale_reads"] / max(1, r["reads"]), 1)
                                        for r in results]})


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write-rate", type=float, default=50.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cache.json"))
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
