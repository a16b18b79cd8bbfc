"""``/metrics``: the engine's and the pipeline's figures in Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class ChangeCastCollector(Collector):
    """Reads the live state at scrape time; nothing is double-counted or kept twice."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        engine = self.state.engine
        snap = engine.snapshot()
        changes = CounterMetricFamily("changecast_changes", "Changes emitted per collection",
                                      labels=["collection"])
        for collection, count in snap["changes"].items():
            changes.add_metric([collection], count)
        yield changes
        for name, key, text in (("deliveries", "deliveries", "Deliveries queued to subscribers"),
                                ("drops", "dropped", "Deliveries dropped (slow consumers)"),
                                ("resyncs", "resyncs", "Resync messages sent"),
                                ("coalesced", "coalesced", "Updates merged in full queues")):
            yield CounterMetricFamily(f"changecast_{name}", text, value=snap[key])
        cache = snap["cache"]
        yield CounterMetricFamily("changecast_cache_hits", "Cache hits", value=cache["hits"])
        yield CounterMetricFamily("changecast_cache_misses", "Cache misses",
                                  value=cache["misses"])
        yield GaugeMetricFamily("changecast_cache_hit_ratio", "Cache hit ratio",
                                value=cache["hit_ratio"])
        yield GaugeMetricFamily("changecast_breaker_state",
                                "Circuit breaker: 0 closed, 1 half open, 2 open",
                                value=BREAKER_VALUES[snap["breaker"]["state"]])
        yield GaugeMetricFamily("changecast_websocket_connections", "Open WebSocket connections",
                                value=len(self.state.connections))
        recorder = engine.metrics.delivery
        histogram = HistogramMetricFamily(
            "changecast_delivery_latency_ms", "Change (database time) to WebSocket send, ms",
            buckets=recorder.cumulative(), sum_value=recorder.total)
        yield histogram
        latency = GaugeMetricFamily("changecast_delivery_latency_recent_ms",
                                    "Change to WebSocket send latency (recent window)",
                                    labels=["quantile"])
        for quantile in ("p50", "p95", "p99"):
            value = snap["delivery_latency_ms"][quantile]
            latency.add_metric([quantile], value if value is not None else float("nan"))
        yield latency
        lag = GaugeMetricFamily("changecast_watcher_lag_ms", "Now minus the last change seen",
                                labels=["collection"])
        for name, watcher in snap["watchers"].items():
            if watcher["lag_ms"] is not None:
                lag.add_metric([name], watcher["lag_ms"])
        yield lag
        orders = GaugeMetricFamily("changecast_orders", "Orders per status", labels=["status"])
        for status, count in self.state.analytics.snapshot()["per_status"].items():
            orders.add_metric([status], count)
        yield orders
        pipeline = self.state.pipeline
        if pipeline is not None:
            stages = GaugeMetricFamily("changecast_stage_duration_ms",
                                       "Average pipeline stage duration", labels=["stage"])
            for stage, figures in pipeline.snapshot()["stages"].items():
                stages.add_metric([stage], figures["avg_ms"])
            yield stages


async def metrics_text(request: Request) -> Response:
    """Prometheus exposition of the current figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChangeCastCollector(request.state))
    return Response(generate_latest(registry),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
