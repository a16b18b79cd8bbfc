"""Counters and latency percentiles, with no web dependency."""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from typing import Any

# Upper bounds (ms) of the all-time histogram buckets; the last bucket is +Inf.
BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000)


class LatencyRecorder:
    """Keeps the last ``window`` samples (ms) for percentiles, plus an all-time count, sum and
    histogram (``BUCKETS_MS``) for exporters such as Prometheus."""

    def __init__(self, window: int = 20_000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self._samples: deque[float] = deque(maxlen=window)
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS_MS) + 1)

    def observe(self, value_ms: float) -> None:
        """Record one sample in milliseconds."""
        self._samples.append(value_ms)
        self.count += 1
        self.total += value_ms
        self.buckets[bisect.bisect_left(BUCKETS_MS, value_ms)] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound, samples <= it), ..., ("+Inf", count)]`` since start."""
        running = 0
        result = []
        for bound, count in zip((*BUCKETS_MS, math.inf), self.buckets, strict=True):
            running += count
            result.append(("+Inf" if bound == math.inf else f"{bound:g}", running))
        return result

    def percentiles(self, *points: float) -> dict[str, float | None]:
        """``{"p50": ..., "p95": ...}`` over the window (None when empty)."""
        ordered = sorted(self._samples)
        result: dict[str, float | None] = {}
        for point in points:
            name = f"p{point:g}"
            if not ordered:
                result[name] = None
                continue
            rank = max(0, math.ceil(point / 100 * len(ordered)) - 1)
            result[name] = round(ordered[rank], 3)
        return result

    def snapshot(self) -> dict[str, Any]:
        """Count, mean and p50/p95/p99."""
        mean = round(self.total / self.count, 3) if self.count else None
        return {"count": self.count, "mean": mean, **self.percentiles(50, 95, 99)}


class EngineMetrics:
    """What the engine counts: changes, deliveries, drops, resyncs, latency, reconnects."""

    def __init__(self) -> None:
        self.changes: Counter[str] = Counter()
        self.deliveries = 0
        self.coalesced = 0
        self.dropped = 0
        self.resyncs = 0
        self.cutoffs = 0
        self.empty_updates = 0
        self.queue_depth_max = 0
        self.handoff = LatencyRecorder()
        self.delivery = LatencyRecorder()

    def snapshot(self) -> dict[str, Any]:
        """A plain dict of every counter."""
        return {
            "changes": dict(self.changes),
            "changes_total": sum(self.changes.values()),
            "deliveries": self.deliveries,
            "coalesced": self.coalesced,
            "dropped": self.dropped,
            "resyncs": self.resyncs,
            "cutoffs": self.cutoffs,
            "empty_updates_skipped": self.empty_updates,
            "queue_depth_max": self.queue_depth_max,
            "handoff_latency_ms": self.handoff.snapshot(),
            "delivery_latency_ms": self.delivery.snapshot(),
        }
