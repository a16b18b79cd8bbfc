from __future__ import annotations

from streaming.metrics import EngineMetrics, LatencyRecorder, percentile


def test_metrics_percentile_is_nearest_rank_over_sorted_values() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_metrics_latency_recorder_window_and_all_time_histogram() -> None:
    recorder = LatencyRecorder(window=3)
    for value in (0.2, 3.0, 40.0, 700.0):
        recorder.observe(value)
    summary = recorder.summary()
    assert summary.count == 4 and summary.p50 == 40.0  # the window keeps the last 3
    histogram = recorder.histogram()
    assert dict(histogram.buckets)["0.5"] == 1 and dict(histogram.buckets)["+Inf"] == 4
    assert histogram.total == 743.2


def test_metrics_stats_are_typed_and_total_the_changes() -> None:
    metrics = EngineMetrics()
    metrics.changes["orders"] += 2
    metrics.changes["products"] += 1
    stats = metrics.stats()
    assert stats.changes_total == 3 and stats.changes == {"orders": 2, "products": 1}
    assert stats.delivery_latency_ms.p99 is None
