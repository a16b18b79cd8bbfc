"""Both sources side by side, in one run: write → event latency and events/s.

    python -m bench.sources [--repeats 3] [--latency-writes 300] [--rate 50]
                            [--bulk 10000] [--writers 4]

The same engine (``streaming.ChangeEngine``) fed by the embedded NX-27017 server's
change stream and by a private MariaDB's binlog (``streaming.mysql.MySQLSource``):

- **latency**: one writer in the engine's process updates one row/document at
  ``--rate``/s (NX: PyMongo, then ``nudge()`` as the app does after its own writes;
  MariaDB: PyMySQL in a thread). Latency is from just before the write is sent to the
  moment the engine publishes the change; "after ack" from the write's acknowledgement.
- **throughput**: ``--writers`` processes (the load generator) update ``--bulk`` rows as
  fast as they can; events/s is what the engine published over the whole run (first write
  to last event), beside the rate the writers managed and the lag at the end. Each change
  carries its write's wall-clock time, so latency under that load is measured too.

CPU is reported for the database server, the writers and the engine's process. Each
figure is the median over ``--repeats`` runs, the two sources alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymysql
from pymongo import MongoClient

from backend.infra.database import make_client
from backend.infra.embedded import EmbeddedServer, free_port
from bench.report import chart_bars, percentile, write
from streaming import ChangeEngine, ChangeEvent
from streaming.mysql import MySQLSource
from tests.support.mariadb import MariaDB

KEYS = 200
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its finished children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK


# ---- the writer processes (the load generator) ----------------------------------------------

def writer_main(argv: list[str]) -> None:
    kind, target, worker, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    if kind == "nx":
        client: MongoClient[dict[str, Any]] = MongoClient(target)
        items = client.bench.items
        for i in range(count):
            items.update_one({"_id": f"k{(worker * count + i) % KEYS}"},
                             {"$set": {"v": i, "t_ns": time.time_ns()}})
        client.close()
    else:
        conn = pymysql.connect(host="127.0.0.1", port=int(target), user="root", password="",
                               database="bench", autocommit=True)
        with conn.cursor() as cur:
            for i in range(count):
                cur.execute("UPDATE items SET v = %s, t_ns = %s WHERE id = %s",
                            (i, time.time_ns(), f"k{(worker * count + i) % KEYS}"))
        conn.close()


# ---- one source -----------------------------------------------------------------------------

class Side:
    """One source: its server, the engine on it, and how to write to it."""

    name: str
    server_pid: int
    writer_target: str
    engine: ChangeEngine

    async def open(self) -> None:
        raise NotImplementedError

    async def write(self, key: str, v: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def pct(values: list[float], p: float) -> float:
    found = percentile(values, p)
    return round(found, 2) if found is not None else float("nan")


class NxSide(Side):
    name = "mongodb (NX-27017 change stream)"

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        assert server.pid is not None
        self.server_pid = server.pid
        self.writer_target = server.uri

    async def open(self) -> None:
        self.client = make_client(self.server.uri)
        db = self.client.bench
        await db.items.delete_many({})
        await db.items.insert_many([{"_id": f"k{n}", "v": 0, "t_ns": 0} for n in range(KEYS)])
        self.items = db.items
        self.engine = ChangeEngine(db, collections=["items"], mode="poll", queue_size=100_000,
                                   buffer_size=50_000)
        await self.engine.start()

    async def write(self, key: str, v: int) -> None:
        await self.items.update_one({"_id": key}, {"$set": {"v": v, "t_ns": time.time_ns()}})
        self.engine.nudge("items")

    async def close(self) -> None:
        await self.engine.stop()
        await self.client.close()


class MariaSide(Side):
    name = "mariadb (binlog)"

    def __init__(self, server: MariaDB) -> None:
        self.server = server
        assert server.proc is not None
        self.server_pid = server.proc.pid
        self.writer_target = str(server.port)
        self.pool = ThreadPoolExecutor(1)
        self.conn: Any = None

    async def open(self) -> None:
        self.server.execute(None, "DROP DATABASE IF EXISTS bench", "CREATE DATABASE bench")
        self.server.execute("bench", "CREATE TABLE items (id VARCHAR(16) PRIMARY KEY, "
                                     "v INT NOT NULL, t_ns BIGINT NOT NULL)")
        with contextlib.closing(self.server.connect("bench")) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, 0, 0)", [(f"k{n}",) for n in range(KEYS)])
        self.conn = self.server.connect("bench")
        self.engine = ChangeEngine(source=MySQLSource(database="bench", tables=["items"],
                                                      **self.server.settings),
                                   queue_size=100_000, buffer_size=50_000)
        await self.engine.start()

    def _update(self, key: str, v: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute("UPDATE items SET v = %s, t_ns = %s WHERE id = %s", (v, time.time_ns(), key))

    async def write(self, key: str, v: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._update, key, v)

    async def close(self) -> None:
        await self.engine.stop()
        self.conn.close()


# ---- the two measurements ---------------------------------------------------------------------

async def latency(side: Side, writes: int, rate: float) -> dict[str, Any]:
    await side.open()
    seen: dict[int, float] = {}
    arrived: dict[int, asyncio.Future[None]] = {}

    def on_event(event: ChangeEvent) -> None:
        if event.doc is not None and event.doc.get("v") in arrived:
            v = event.doc["v"]
            seen[v] = time.perf_counter()
            if not arrived[v].done():
                arrived[v].set_result(None)

    side.engine.listen(on_event)
    loop = asyncio.get_running_loop()
    issued: dict[int, float] = {}
    acked: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(1, writes + 1):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        arrived[i] = loop.create_future()
        issued[i] = time.perf_counter()
        await side.write(f"k{i % KEYS}", i)
        acked[i] = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*arrived.values()), 30)
    await side.close()
    total = [1000 * (seen[i] - issued[i]) for i in issued]
    after_ack = [1000 * max(0.0, seen[i] - acked[i]) for i in issued]
    return {"writes": writes, "rate": rate,
            "p50_ms": pct(total, 50), "p95_ms": pct(total, 95),
            "p99_ms": pct(total, 99),
            "after_ack_p50_ms": pct(after_ack, 50),
            "after_ack_p99_ms": pct(after_ack, 99)}


async def throughput(side: Side, bulk: int, writers: int) -> dict[str, Any]:
    await side.open()
    kind = "nx" if isinstance(side, NxSide) else "mariadb"
    per = bulk // writers
    target = per * writers
    lags: list[float] = []
    done = asyncio.Event()
    last = [0.0]

    def on_event(event: ChangeEvent) -> None:
        if event.doc is None or not event.doc.get("t_ns"):
            return
        lags.append((time.time_ns() - event.doc["t_ns"]) / 1e6)
        last[0] = time.perf_counter()
        if len(lags) >= target:
            done.set()

    side.engine.listen(on_event)
    server_cpu, own_cpu = cpu_seconds(side.server_pid), time.process_time()
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.sources", "--writer", kind,
                               side.writer_target, str(n), str(per)])
             for n in range(writers)]
    while any(p.poll() is None for p in procs):
        await asyncio.sleep(0.05)
    writes_done = time.perf_counter()
    for proc in procs:
        if proc.returncode:
            raise RuntimeError(f"a writer process failed ({proc.returncode})")
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        wall = last[0] - start
        server_used = cpu_seconds(side.server_pid) - server_cpu
        engine_used = time.process_time() - own_cpu
        await side.close()
    return {"changes": target, "writers": writers,
            "events_per_s": round(target / wall), "writes_per_s": round(target / (writes_done - start)),
            "lag_at_end_ms": round(1000 * max(0.0, last[0] - writes_done), 1),
            "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99),
            "server_cpu_share": round(server_used / wall, 2),
            "engine_cpu_share": round(engine_used / wall, 2),
            "engine_cpu_us_per_event": round(1e6 * engine_used / target, 1)}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = statistics.median(values) if isinstance(values[0], int | float) else values[0]
    return out


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="changecast-sources-") as tmp:
        maria = MariaDB(Path(tmp) / "mariadb", free_port())
        await asyncio.to_thread(maria.start)
        try:
            async with EmbeddedServer(data_dir=Path(tmp) / "nx") as nx:
                sides: list[Side] = [NxSide(nx), MariaSide(maria)]
                runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                    s.name: {"latency": [], "throughput": []} for s in sides}
                for repeat in range(args.repeats):
                    for side in (sides if repeat % 2 == 0 else sides[::-1]):
                        lat = await latency(side, args.latency_writes, args.rate)
                        runs[side.name]["latency"].append(lat)
                        # The writer processes are reaped children: their CPU is ours as
                        # "children" (RUSAGE_CHILDREN).
                        before = sum(os.times()[2:4])
                        thr = await throughput(side, args.bulk, args.writers)
                        used = sum(os.times()[2:4]) - before
                        thr["writers_cpu_share"] = round(
                            used / (thr["changes"] / thr["events_per_s"]), 2)
                        runs[side.name]["throughput"].append(thr)
                        print(f"{side.name:<34} latency p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms"
                              f" | {thr['events_per_s']:,} events/s ({thr['writes_per_s']:,} "
                              f"writes/s) p99 {thr['p99_ms']} ms", flush=True)
        finally:
            maria.stop()
    results: list[dict[str, Any]] = [{"source": name, "latency": median_of(r["latency"]),
                "throughput": median_of(r["throughput"]), "runs": r}
               for name, r in runs.items()]
    nx_row, maria_row = results
    write(args.out, {
        "benchmark": "sources", "command": "python -m bench.sources",
        "repeats": args.repeats, "latency_writes": args.latency_writes, "rate": args.rate,
        "bulk": args.bulk, "writers": args.writers, "results": results,
        "ratios_mariadb_vs_mongodb": {
            "latency_p50": round(maria_row["latency"]["p50_ms"] / nx_row["latency"]["p50_ms"], 2),
            "events_per_s": round(maria_row["throughput"]["events_per_s"]
                                  / nx_row["throughput"]["events_per_s"], 2)}})
    chart_bars(args.out.with_suffix(".png"), "One engine, two sources (medians)",
               [r["source"] for r in results],
               {"latency p50 ms": [r["latency"]["p50_ms"] for r in results],
                "latency p99 ms": [r["latency"]["p99_ms"] for r in results],
                "k events/s": [round(r["throughput"]["events_per_s"] / 1000, 1) for r in results]})


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-writes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "sources.json")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
