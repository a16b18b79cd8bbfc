"""Counters and latency percentiles, with no web dependency."""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

# Upper bounds (ms) of the all-time histogram buckets; the last bucket is +Inf.
BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000)


def percentile(ordered: Sequence[float], point: float) -> float | None:
    """The nearest-rank ``point``-th percentile of already sorted values (None when empty)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(point / 100 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Count and mean since start; p50/p95/p99 over the recent window (ms)."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Histogram:
    """All-time cumulative buckets ``[(upper bound, samples <= it), ..., ("+Inf", count)]``."""

    buckets: list[tuple[str, int]]
    total: float


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

    def histogram(self) -> Histogram:
        """The all-time histogram and sum."""
        return Histogram(self.cumulative(), self.total)

    def percentiles(self, *points: float) -> dict[str, float | None]:
        """``{"p50": ..., "p95": ...}`` over the window (None when empty)."""
        ordered = sorted(self._samples)
        result: dict[str, float | None] = {}
        for point in points:
            value = percentile(ordered, point)
            result[f"p{point:g}"] = round(value, 3) if value is not None else None
        return result

    def summary(self) -> LatencySummary:
        """Count, mean and p50/p95/p99."""
        mean = round(self.total / self.count, 3) if self.count else None
        p = self.percentiles(50, 95, 99)
        return LatencySummary(self.count, mean, p["p50"], p["p95"], p["p99"])


@dataclass(frozen=True, slots=True)
class MetricsStats:
    """What the engine has counted since start."""

    changes: dict[str, int]
    changes_total: int
    deliveries: int
    coalesced: int
    dropped: int
    resyncs: int
    cutoffs: int
    empty_updates_skipped: int
    queue_depth_max: int
    fanout_passes: int
    handoff_latency_ms: LatencySummary
    delivery_latency_ms: LatencySummary


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
        self.fanout_passes = 0
        self.handoff = LatencyRecorder()
        self.delivery = LatencyRecorder()

    def stats(self) -> MetricsStats:
        """Every counter, typed."""
        return MetricsStats(
            changes=dict(self.changes), changes_total=sum(self.changes.values()),
            deliveries=self.deliveries, coalesced=self.coalesced, dropped=self.dropped,
            resyncs=self.resyncs, cutoffs=self.cutoffs,
            empty_updates_skipped=self.empty_updates, queue_depth_max=self.queue_depth_max,
            fanout_passes=self.fanout_passes, handoff_latency_ms=self.handoff.summary(),
            delivery_latency_ms=self.delivery.summary())
