"""In-process fan-out benchmark for the streaming hub (not a test).

    python -m bench.engine [--repeats 5] [--out bench/results/engine.json]

Publishes synthetic changes into a Hub with 1,000 and 10,000 subscribers and
measures deliveries per second on one core (the hub is single-threaded). Three
ways, measured in the same run:

- ``hub``: push subscribers, each with the real ``/ws`` outlet (``JsonOutlet``) writing
  to an in-memory wire: route once per group, encode once, splice the id, one write per
  member per pass; one change published per event-loop turn, timed until every member
  has every change's frame.
- ``hub_burst``: the same, with the changes published ``BURST`` per loop turn, as a
  change stream hands over the events of one ``getMore`` batch under load (its buffered
  events come without a wait); the changes of a burst share one pass.
- ``naive_baseline``: one asyncio.Queue per subscriber, every subscriber's filter
  evaluated for every change, the same message object put in each queue (no consumer,
  nothing encoded: the cheapest half of a naive server).
- ``naive_to_wire``: the same plus what a naive server then does per client: a consumer
  task per queue that encodes the message with the client's id and writes the frame.

The ways take turns within each repeat, and the garbage collector is paused during each
run (as ``timeit`` does), so that noise and the previous way's garbage fall on none of them
in particular. A broadcast run is 2,000,000 deliveries (2,000 changes to 1,000
subscribers), a per-user run 200 changes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.web.jsonio import dumps
from backend.web.live.frames import text_frame
from backend.web.live.json_socket import JsonOutlet
from bench.report import write
from streaming import Hub, compile_filter
from streaming.events import Changes
from streaming.filters import equals_filter

CHANGES = 200  # per run, with restricted (per-user) subscribers
BROADCAST_DELIVERIES = 2_000_000  # per broadcast run: 2,000 changes to 1,000 subscribers


def changes_for(subscribers: int, scenario: str) -> int:
    """Changes per run: a broadcast run is long enough (many fan-out passes) to be timed."""
    return max(CHANGES, BROADCAST_DELIVERIES // subscribers) if scenario == "broadcast" \
        else CHANGES
BURST = 10


def _doc(n: int, users: int) -> dict[str, Any]:
    return {"_id": f"ORD-{n:08d}", "user_id": f"u{n % users}", "status": "paid",
            "total_cents": 1000 + n}


class MemoryWire:
    """A socket that is never full: counts the frames' bytes written to it."""

    def __init__(self) -> None:
        self.on_drain: Callable[[], None] | None = None
        self.open = True
        self.written = 0
        self.writes = 0

    def frames_open(self) -> bool:
        return self.open

    def paused(self) -> bool:
        return False

    def write_frames(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def try_write(self, data: bytes) -> bool:
        # As the server's protocol does: one check of its state, then the write itself.
        if not self.open:
            return False
        self.written += len(data)
        self.writes += 1
        return True

    def abort(self) -> None:
        raise RuntimeError("not expected")


def run_hub(subscribers: int, scenario: str) -> tuple[float, int]:
    """Seconds from the first publish until every member has every frame, and deliveries."""
    return asyncio.run(_run_hub(subscribers, scenario, per_turn=1))


def run_hub_burst(subscribers: int, scenario: str) -> tuple[float, int]:
    """As ``run_hub``, the changes published ``BURST`` per loop turn."""
    return asyncio.run(_run_hub(subscribers, scenario, per_turn=BURST))


async def _run_hub(subscribers: int, scenario: str, per_turn: int) -> tuple[float, int]:
    hub = Hub(collections=["orders"], first_seq=0)
    wires = []
    for n in range(subscribers):
        wire = MemoryWire()
        outlet = JsonOutlet(wire)
        sub = hub.subscriber(outlet=outlet)
        outlet.attach(sub)
        if scenario == "broadcast":
            sub.subscribe("s", "orders")
        else:
            sub.subscribe("s", "orders", restriction={"user_id": f"u{n}"})
        wires.append(wire)
    before = hub.metrics.deliveries
    changes = Changes({"status": "shipped"}, ())
    started = time.perf_counter()
    for n in range(changes_for(subscribers, scenario)):
        doc = _doc(n, subscribers)
        hub.publish(op="update", collection="orders", key=doc["_id"], doc=doc, before=doc,
                    changes=changes)
        if (n + 1) % per_turn == 0:
            await asyncio.sleep(0)  # the next change (or burst) on a later loop turn
    while hub.settled_seq < hub.seq:
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    return elapsed, hub.metrics.deliveries - before


def _naive_filters(subscribers: int, scenario: str) -> list[Callable[[dict[str, Any]], bool] | None]:
    """Every subscriber's own filter, evaluated for every change (the naive design)."""
    if scenario == "broadcast":
        return [None] * subscribers
    return [equals_filter({"user_id": f"u{n}"}) for n in range(subscribers)]


def run_naive_to_wire(subscribers: int, scenario: str) -> tuple[float, int]:
    """The naive design to the socket: a queue and a consumer task per subscriber."""
    return asyncio.run(_run_naive_to_wire(subscribers, scenario))


async def _run_naive_to_wire(subscribers: int, scenario: str) -> tuple[float, int]:
    queues = [asyncio.Queue[dict[str, Any]]() for _ in range(subscribers)]
    filters = _naive_filters(subscribers, scenario)
    wire = MemoryWire()
    expected = [0]

    async def consume(queue: asyncio.Queue[dict[str, Any]], sub_id: str) -> None:
        while True:
            message = await queue.get()
            wire.write_frames(text_frame(dumps({"type": "change", "id": sub_id, **message})))

    tasks = [asyncio.create_task(consume(q, "s")) for q in queues]
    await asyncio.sleep(0)
    started = time.perf_counter()
    for n in range(changes_for(subscribers, scenario)):
        doc = _doc(n, subscribers)
        message = {"seq": n, "op": "update", "collection": "orders", "key": doc["_id"],
                   "changes": {"set": {"status": "shipped"}, "unset": []}, "at": 1}
        for queue, match in zip(queues, filters, strict=True):
            if match is None or match(doc):
                queue.put_nowait(message)
                expected[0] += 1
        await asyncio.sleep(0)
    while wire.writes < expected[0]:
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    return elapsed, wire.writes


def run_naive(subscribers: int, scenario: str) -> tuple[float, int]:
    """The baseline: scan every subscriber, one asyncio.Queue each."""
    queues = [asyncio.Queue[dict[str, Any]]() for _ in range(subscribers)]
    filters = _naive_filters(subscribers, scenario)
    delivered = 0
    started = time.perf_counter()
    for n in range(changes_for(subscribers, scenario)):
        doc = _doc(n, subscribers)
        message = {"type": "change", "op": "update", "key": doc["_id"], "seq": n,
                   "changes": {"set": {"status": "shipped"}, "unset": []}}
        for queue, match in zip(queues, filters, strict=True):
            if match is None or match(doc):
                queue.put_nowait(message)
                delivered += 1
    return time.perf_counter() - started, delivered


def measure(fns: dict[str, Any], subscribers: int, scenario: str,
            repeats: int) -> dict[str, dict[str, Any]]:
    """Each way ``repeats`` times, the ways taking turns (hub, burst, naive, …, then again),
    so that the machine's noise falls on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    deliveries: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            # As timeit does: no collection of the previous way's garbage mid-run.
            gc.collect()
            gc.disable()
            try:
                elapsed, deliveries[name] = fn(subscribers, scenario)
            finally:
                gc.enable()
            rates[name].append(deliveries[name] / elapsed)
    return {name: {"deliveries_per_run": deliveries[name],
                   "changes_per_run": changes_for(subscribers, scenario),
                   "deliveries_per_s_median": round(statistics.median(rates[name])),
                   "deliveries_per_s_all": [round(r) for r in rates[name]]}
            for name in fns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine.json"))
    args = parser.parse_args(argv)
    compile_filter("status = 'paid'")  # warm imports
    results: list[dict[str, Any]] = []
    for scenario in ("broadcast", "per-user"):
        for subscribers in (1_000, 10_000):
            ways = measure({"hub": run_hub, "hub_burst": run_hub_burst,
                            "naive_baseline": run_naive, "naive_to_wire": run_naive_to_wire},
                           subscribers, scenario, args.repeats)
            hub, burst, naive, to_wire = (ways["hub"], ways["hub_burst"],
                                          ways["naive_baseline"], ways["naive_to_wire"])
            rate, burst_rate = hub["deliveries_per_s_median"], burst["deliveries_per_s_median"]
            naive_rate = max(1, naive["deliveries_per_s_median"])
            row = {"scenario": scenario, "subscribers": subscribers, "hub": hub,
                   "hub_burst": burst, "naive_baseline": naive, "naive_to_wire": to_wire,
                   "ratio_vs_baseline": round(rate / naive_rate, 2),
                   "burst_ratio_vs_baseline": round(burst_rate / naive_rate, 2),
                   "ratio_vs_naive_to_wire": round(
                       rate / max(1, to_wire["deliveries_per_s_median"]), 2)}
            results.append(row)
            print(f"{scenario:>9} {subscribers:>6} subs: hub {rate:>11,}/s (ratio "
                  f"{row['ratio_vs_baseline']}), in bursts of {BURST} {burst_rate:>11,}/s "
                  f"(ratio {row['burst_ratio_vs_baseline']})   naive queues "
                  f"{naive['deliveries_per_s_median']:>10,}/s   naive to the wire "
                  f"{to_wire['deliveries_per_s_median']:>9,}/s (hub's ratio "
                  f"{row['ratio_vs_naive_to_wire']})")
    report = {
        "benchmark": "engine-fanout",
        "command": "python -m bench.engine",
        "note": "deliveries = (change, subscriber) pairs handed over (hub: frames written "
                f"to every member's wire, one change per loop turn or {BURST} per turn "
                "(hub_burst); naive_baseline: put in its queue; naive_to_wire: "
                "encoded and written by its consumer); one core; medians of "
                f"{args.repeats} runs of {BROADCAST_DELIVERIES:,} deliveries (broadcast) or "
                f"{CHANGES} changes (per-user)",
        "results": results,
    }
    write(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
