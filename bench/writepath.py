"""A write's fixed cost, stage by stage: from an admin's stock write to the client's frame.

    python -m bench.writepath [--writes 300] [--repeats 3] [--gap 0.02]
                              [--out bench/results/writepath.json]

One client on ``/ws`` subscribed to ``products``; one admin writing stock values one at a
time (each after the previous one's frame arrived and a pause of one to three ``--gap``,
at random: the watcher is found anywhere between two polls, as a shop's writes find it).
The server is ``changecast serve`` with stopwatches on its stages (``bench.tracing``:
uvicorn's protocol, the ASGI app, the driver's command events, the engine, the hub's
fan-out pass); the client's stamps are taken on the same monotonic clock, so every write
splits into:

- **request in**: the client sends (ready bytes on a kept-alive connection, no HTTP
  library) → uvicorn has the bytes → the app is called;
- **ours before the write**: the app → ChangeCast's guard → Starlette's session
  middleware and router → the endpoint (the admin check, the body's validation) → it
  calls the driver; then the **driver** (PyMongo) until ``findAndModify`` is sent;
- **database write**: ``findAndModify`` sent → replied (NX-27017 and the driver);
- **stream wake**: the write's reply → the change stream's ``getMore`` that carries it
  (negative when that read was sent while the write was on its way);
- **stream read**: that ``getMore`` sent → replied;
- **ours after the read**: replied → the engine has published the event (normalize, diff,
  cache, hub), → the fan-out pass starts → has written the frame;
- **frame out**: the pass's write → the client has the frame;
- the **response** (sent once the engine saw the write: read-your-writes).

Two ways, a fresh server each, ``--repeats`` runs of each alternately: ChangeCast as it
is ("now") and as it was before what this benchmark found ("before": the stream's read
began on the write's reply, not as the write was sent, and the fan-out pass waited
behind the stream's next read).

Baselines in the same run, from this process with the same driver against the same
database: one ``findAndModify`` alone, one ``getMore`` of an idle change stream alone, and
one write followed at once by the read that sees it; and ``GET /api/health`` (the app's
cheapest request) for the HTTP round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from websockets.asyncio.client import connect

from bench.report import write
from bench.site import SUBSCRIBE_PRODUCTS, RawHttp, Site, products_of, site

now = time.perf_counter_ns
NOW = "now"
# Each way is a fresh server; "before" is ChangeCast before this benchmark's findings: the
# stream's read started on the write's reply (not as the write is sent: engine.writing) and
# the fan-out pass waited behind the next read (streaming.watcher.buffered).
WAYS = {"before": {"CHANGECAST_BENCH_BEFORE": "1"}, NOW: {}}
# (name, from stamp, to stamp) over one write's stamps; "client.*" are this process's.
STAGES = (
    ("request in (client → uvicorn has the bytes)", "client.sent", "bytes"),
    ("uvicorn: bytes → the app is called", "bytes", "app"),
    ("ours: the guard (host, origin, body, deadline, breaker)", "app", "session"),
    ("ours: Starlette's session middleware and routing", "session", "handler"),
    ("ours: the endpoint (admin check, body) → the driver", "handler", "driver"),
    ("driver: PyMongo until findAndModify is sent", "driver", "db.findAndModify.sent"),
    ("database write: findAndModify round trip", "db.findAndModify.sent",
     "db.findAndModify.replied"),
    ("stream wake: the write's reply → the getMore that carries it (< 0: sent before)",
     "db.findAndModify.replied", "db.getMore.sent"),
    ("stream read: that getMore's round trip", "db.getMore.sent", "db.getMore.replied"),
    ("ours: getMore reply → event published", "db.getMore.replied", "event"),
    ("ours: event → fan-out pass starts", "event", "pass"),
    ("ours: the pass writes the frame", "pass", "passed"),
    ("frame out (the pass's write → the client has it)", "passed", "client.received"),
)
TOTALS: tuple[tuple[str, str | None, str | None], ...] = (
    ("write → client", "client.sent", "client.received"),
    ("write → response", "client.sent", "client.answered"),
    ("ours on the server (all the 'ours' stages)", None, None),
)


def split(stamps: list[tuple[str, int]], writes: list[dict[str, int]]) -> list[dict[str, int]]:
    """Each write's stamps: the server's first of each kind inside the write's window, and
    for the stream the ``getMore`` whose reply came last before the event."""
    out = []
    ordered = sorted(stamps, key=lambda s: s[1])
    for w in writes:
        inside = [(stage, t) for stage, t in ordered
                  if w["client.sent"] <= t <= max(w["client.received"], w["client.answered"])]
        found: dict[str, int] = dict(w)
        for stage, t in inside:
            if stage in ("bytes", "app", "session", "handler", "driver", "db.findAndModify.sent",
                         "db.findAndModify.replied", "response") and stage not in found:
                found[stage] = t
        written = found.get("db.findAndModify.replied")
        event = next((t for stage, t in inside if stage == "event" and written is not None
                      and t >= written), None)
        if written is None or event is None:
            continue
        found["event"] = event
        replies = [t for stage, t in inside if stage == "db.getMore.replied" and t <= event]
        if not replies:
            continue
        found["db.getMore.replied"] = replies[-1]
        sends = [t for stage, t in ordered if stage == "db.getMore.sent" and t <= replies[-1]]
        found["db.getMore.sent"] = sends[-1]
        after = [t for stage, t in inside if stage == "pass" and t >= event]
        if not after:
            continue
        found["pass"] = after[0]
        found["passed"] = next(t for stage, t in inside if stage == "passed" and t >= after[0])
        out.append(found)
    return out


def _ms(ns: list[int]) -> dict[str, float]:
    values = sorted(n / 1e6 for n in ns)
    return {"p50_ms": round(statistics.median(values), 3),
            "p90_ms": round(values[int(0.9 * (len(values) - 1))], 3)}


def stages(traced: list[dict[str, int]]) -> list[dict[str, Any]]:
    rows = []
    ours = [0] * len(traced)
    for name, first, last in STAGES:
        spans = [w[last] - w[first] for w in traced]
        if name.startswith("ours"):
            ours = [a + b for a, b in zip(ours, spans, strict=True)]
        rows.append({"stage": name, **_ms(spans)})
    for name, start, end in TOTALS:
        spans = ours if start is None or end is None else [w[end] - w[start] for w in traced]
        rows.append({"stage": name, **_ms(spans), "total": True})
    return rows


async def _frame(ws: Any, needle: str) -> int:
    """When the frame carrying ``needle`` arrived."""
    while needle not in str(await ws.recv()):
        pass
    return now()


async def traced_writes(cc: Site, count: int, gap: float) -> list[dict[str, int]]:
    product = (await products_of(cc))[0]
    http = await RawHttp.open(cc.base, await cc.admin_cookie())
    rng = random.Random(count)  # the same pauses for every run of the same length
    writes = []
    try:
        async with connect(cc.ws, origin=cc.base) as ws:  # type: ignore[arg-type]
            await ws.send(SUBSCRIBE_PRODUCTS)
            await ws.recv()  # subscribed
            for n in range(count):
                value = 500_000 + n
                request = http.request("PUT", f"/api/products/{product}/stock",
                                       b'{"stock":%d}' % value)
                # The frame is awaited while the request is under way (it may come first).
                seen = asyncio.create_task(_frame(ws, f'"stock":{value}'))
                await asyncio.sleep(0)  # the reader is waiting on the socket
                sent = now()
                status = await http.send(request)
                answered = now()
                if status != 200:
                    raise RuntimeError(f"the stock write answered {status}")
                async with asyncio.timeout(10):
                    received = await seen
                writes.append({"client.sent": sent, "client.answered": answered,
                               "client.received": received})
                await asyncio.sleep(gap * rng.uniform(1, 3))
    finally:
        await http.close()
    return writes


async def database_alone(uri: str, count: int, gap: float) -> dict[str, Any]:
    """The same driver and database from this process, no app: a write alone, an idle
    stream's read alone, a write and the read that sees it."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, directConnection=True)
    probe = client["bench_probe"]["probe"]
    try:
        await probe.insert_one({"_id": "p", "n": 0})
        stream = await probe.watch(full_document="updateLookup")
        writes, reads, both = [], [], []
        for n in range(count):
            t0 = now()
            await probe.find_one_and_update({"_id": "p"}, {"$set": {"n": n}},
                                            return_document=ReturnDocument.AFTER)
            t1 = now()
            change = await stream.try_next()
            while change is None:
                change = await stream.try_next()
            t2 = now()
            writes.append(t1 - t0)
            both.append(t2 - t0)
            t3 = now()
            await stream.try_next()  # nothing new: an idle read
            reads.append(now() - t3)
            await asyncio.sleep(gap)
        await stream.close()
        return {"findAndModify": _ms(writes), "idle getMore": _ms(reads),
                "write, then the read that sees it": _ms(both)}
    finally:
        await client.drop_database("bench_probe")
        await client.close()


async def health(cc: Site, count: int) -> dict[str, float]:
    http = await RawHttp.open(cc.base, "")
    request = http.request("GET", "/api/health", b"")
    spans = []
    try:
        for _ in range(count):
            t0 = now()
            if await http.send(request) != 200:
                raise RuntimeError("/api/health did not answer 200")
            spans.append(now() - t0)
    finally:
        await http.close()
    return _ms(spans)


async def one_way(env: dict[str, str], args: argparse.Namespace, *,
                  baselines: bool) -> tuple[list[dict[str, int]], dict[str, Any]]:
    """One fresh server: its traced writes, and (``baselines``) the same run's baselines."""
    with tempfile.TemporaryDirectory(prefix="changecast-trace-") as tmp:
        trace = Path(tmp) / "stamps.json"
        extra: dict[str, Any] = {}
        async with site(module="bench.tracing",
                        extra_env={"CHANGECAST_BENCH_TRACE": str(trace), **env}) as cc:
            writes = await traced_writes(cc, args.writes, args.gap)
            if baselines:
                extra["health"] = await health(cc, args.writes)
            cc.server.send_signal(signal.SIGUSR1)
            async with asyncio.timeout(10):
                while not trace.exists():
                    await asyncio.sleep(0.05)
            if baselines:
                extra["database_alone"] = await database_alone(cc.nx_uri, args.writes,
                                                               args.gap)
        stamps = [(str(s), int(t)) for s, t in json.loads(trace.read_text())]
    return split(stamps, writes), extra


async def run(args: argparse.Namespace) -> dict[str, Any]:
    traced: dict[str, list[dict[str, int]]] = {way: [] for way in WAYS}
    runs: dict[str, list[float]] = {way: [] for way in WAYS}
    extra: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for way, env in WAYS.items():
            found, more = await one_way(env, args, baselines=repeat == 0 and way == NOW)
            traced[way].extend(found)
            runs[way].append(_ms([w["client.received"] - w["client.sent"]
                                  for w in found])["p50_ms"])
            extra.update(more)
    rows = {way: stages(found) for way, found in traced.items()}
    print(f"{'stage (p50, ms)':<64} " + "  ".join(f"{way:>14}" for way in WAYS))
    for n, row in enumerate(rows[NOW]):
        print(f"{row['stage']:<64} "
              + "  ".join(f"{rows[way][n]['p50_ms']:14.3f}" for way in WAYS))
    for way, medians in runs.items():
        print(f"write → client p50 of each {way} run: {medians}")
    print(f"{'GET /api/health round trip':<64} {extra['health']['p50_ms']:14.3f}")
    for name, figures in extra["database_alone"].items():
        print(f"{'database alone: ' + name:<64} {figures['p50_ms']:14.3f}")
    return {"benchmark": "writepath", "command": "python -m bench.writepath",
            "writes_per_run": args.writes, "repeats": args.repeats, "gap_s": args.gap,
            "traced": {way: len(found) for way, found in traced.items()},
            "ways": {way: {"stages": r, "write_to_client_p50_ms_per_run": runs[way]}
                     for way, r in rows.items()}, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way, alternately")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between writes")
    parser.add_argument("--out", type=Path, default=Path("bench/results/writepath.json"))
    args = parser.parse_args()
    write(args.out, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
