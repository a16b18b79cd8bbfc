"""In-process fan-out benchmark for the streaming hub (not a test).

    python -m bench.engine [--repeats 5] [--out bench/results/engine.json]

Publishes synthetic changes into a Hub with 1,000 and 10,000 subscribers and
measures deliveries per second on one core (the hub is single-threaded). The
baseline, measured in the same run, is the naive design: one asyncio.Queue per
subscriber and every subscriber's filter evaluated for every change.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import write
from streaming import Hub, compile_filter
from streaming.events import Changes
from streaming.filters import equals_filter

CHANGES = 200


def _doc(n: int, users: int) -> dict[str, Any]:
    return {"_id": f"ORD-{n:08d}", "user_id": f"u{n % users}", "status": "paid",
            "total_cents": 1000 + n}


def run_hub(subscribers: int, scenario: str) -> tuple[float, int]:
    """Seconds spent publishing CHANGES changes, and the deliveries made."""
    hub = Hub(collections=["orders"], queue_size=CHANGES + 10, first_seq=0)
    subs = []
    for n in range(subscribers):
        sub = hub.subscriber()
        if scenario == "broadcast":
            sub.subscribe("s", "orders")
        else:
            sub.subscribe("s", "orders", restriction={"user_id": f"u{n}"})
        sub.drain()
        subs.append(sub)
    before = hub.metrics.deliveries
    changes = Changes({"status": "shipped"}, ())
    started = time.perf_counter()
    for n in range(CHANGES):
        doc = _doc(n, subscribers)
        hub.publish(op="update", collection="orders", key=doc["_id"], doc=doc, before=doc,
                    changes=changes)
    elapsed = time.perf_counter() - started
    return elapsed, hub.metrics.deliveries - before


def run_naive(subscribers: int, scenario: str) -> tuple[float, int]:
    """The baseline: scan every subscriber, one asyncio.Queue each."""
    queues = [asyncio.Queue[dict[str, Any]]() for _ in range(subscribers)]
    filters: list[Callable[[dict[str, Any]], bool] | None]
    if scenario == "broadcast":
        filters = [None] * subscribers
    else:
        filters = [equals_filter({"user_id": f"u{n}"}) for n in range(subscribers)]
    delivered = 0
    started = time.perf_counter()
    for n in range(CHANGES):
        doc = _doc(n, subscribers)
        message = {"type": "change", "op": "update", "key": doc["_id"], "seq": n,
                   "changes": {"set": {"status": "shipped"}, "unset": []}}
        for queue, match in zip(queues, filters, strict=True):
            if match is None or match(doc):
                queue.put_nowait(message)
                delivered += 1
    return time.perf_counter() - started, delivered


def measure(fn: Any, subscribers: int, scenario: str, repeats: int) -> dict[str, Any]:
    rates = []
    deliveries = 0
    for _ in range(repeats):
        elapsed, deliveries = fn(subscribers, scenario)
        rates.append(deliveries / elapsed)
    return {"deliveries_per_run": deliveries, "changes_per_run": CHANGES,
            "deliveries_per_s_median": round(statistics.median(rates)),
            "deliveries_per_s_all": [round(r) for r in rates]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine.json"))
    args = parser.parse_args(argv)
    compile_filter("status = 'paid'")  # warm imports
    results: list[dict[str, Any]] = []
    for scenario in ("broadcast", "per-user"):
        for subscribers in (1_000, 10_000):
            hub = measure(run_hub, subscribers, scenario, args.repeats)
            naive = measure(run_naive, subscribers, scenario, args.repeats)
            row = {"scenario": scenario, "subscribers": subscribers, "hub": hub,
                   "naive_baseline": naive,
                   "ratio_vs_baseline": round(hub["deliveries_per_s_median"]
                                              / max(1, naive["deliveries_per_s_median"]), 2)}
            results.append(row)
            print(f"{scenario:>9} {subscribers:>6} subs: hub {hub['deliveries_per_s_median']:>12,}"
                  f" deliveries/s   naive {naive['deliveries_per_s_median']:>12,}/s"
                  f"   ratio {row['ratio_vs_baseline']}")
    report = {
        "benchmark": "engine-fanout",
        "command": "python -m bench.engine",
        "note": "deliveries = (change, subscriber) pairs queued; single core; medians of "
                f"{args.repeats} runs of {CHANGES} changes",
        "results": results,
    }
    write(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
