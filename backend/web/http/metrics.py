"""The figures endpoints: ``/api/metrics`` (JSON) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import dataclasses
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
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import Response

from backend.web.http.auth import current_user
from backend.web.jsonio import JSON
from backend.web.state import AppState, app_state
from streaming import BreakerOpenError, LatencySummary

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


async def metrics(request: Request) -> Response:
    """
    summary: Engine and connection metrics (JSON)
    responses: {200: {description: metrics}}
    """
    state = app_state(request)
    stats = state.engine.stats()
    body: dict[str, Any] = stats.as_dict()
    body["connections"] = {"websockets": len(state.connections)}
    if await _is_admin(request):  # revenue and top customers are business data
        body["orders"] = state.analytics.snapshot()
    backlog = 0
    if state.pipeline is not None:
        pipeline = state.pipeline.stats()
        body["pipeline"] = pipeline.as_dict()
        backlog = pipeline.backlog
    history = state.history.stats()
    body["history"] = {**dataclasses.asdict(history), "at_risk": history.at_risk}
    body["lag"] = {name: {"lag_ms": w.lag_ms, "last_change_at": w.last_change_at,
                          "last_batch": w.last_batch, "backlog": backlog}
                   for name, w in stats.watchers.items()}
    return JSON(body)


async def _is_admin(request: Request) -> bool:
    try:
        user = await current_user(request)
    except (PyMongoError, BreakerOpenError):  # this endpoint answers while the database is down
        return False
    return user is not None and user.is_admin


class ChangeCastCollector(Collector):
    """Reads the live state at scrape time; nothing is double-counted or kept twice."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        engine = self.state.engine
        stats = engine.stats()
        counted = stats.metrics
        changes = CounterMetricFamily("changecast_changes", "Changes emitted per collection",
                                      labels=["collection"])
        for collection, count in counted.changes.items():
            changes.add_metric([collection], count)
        yield changes
        for name, value, text in (
                ("deliveries", counted.deliveries, "Deliveries handed to subscribers"),
                ("drops", counted.dropped, "Deliveries dropped (slow consumers)"),
                ("resyncs", counted.resyncs, "Resync messages sent"),
                ("coalesced", counted.coalesced, "Updates merged in full queues")):
            yield CounterMetricFamily(f"changecast_{name}", text, value=value)
        cache = stats.cache
        yield CounterMetricFamily("changecast_cache_hits", "Cache hits", value=cache.hits)
        yield CounterMetricFamily("changecast_cache_misses", "Cache misses", value=cache.misses)
        yield GaugeMetricFamily("changecast_cache_hit_ratio", "Cache hit ratio",
                                value=cache.hit_ratio)
        yield GaugeMetricFamily("changecast_breaker_state",
                                "Circuit breaker: 0 closed, 1 half open, 2 open",
                                value=BREAKER_VALUES[stats.breaker.state])
        yield GaugeMetricFamily("changecast_websocket_connections", "Open WebSocket connections",
                                value=len(self.state.connections))
        yield GaugeMetricFamily("changecast_subscription_groups",
                                "Groups of identical subscriptions (routed once each)",
                                value=stats.groups)
        yield GaugeMetricFamily("changecast_largest_group", "Members of the largest group",
                                value=stats.largest_group)
        yield CounterMetricFamily("changecast_fanout_passes",
                                  "Fan-out passes written to push subscribers",
                                  value=counted.fanout_passes)
        histogram = engine.delivery_histogram()
        yield HistogramMetricFamily(
            "changecast_delivery_latency_ms", "Change (database time) to WebSocket send, ms",
            buckets=histogram.buckets, sum_value=histogram.total)
        yield _quantiles("changecast_delivery_latency_recent_ms",
                         "Change to WebSocket send latency (recent window)",
                         counted.delivery_latency_ms)
        yield _quantiles("changecast_handoff_latency_recent_ms",
                         "Change written (database time) to the engine's hand-off, ms (recent "
                         "window): how far the streams are behind", counted.handoff_latency_ms)
        lag = GaugeMetricFamily("changecast_watcher_lag_ms", "Now minus the last change seen",
                                labels=["collection"])
        for name, watcher in stats.watchers.items():
            if watcher.lag_ms is not None:
                lag.add_metric([name], watcher.lag_ms)
        yield lag
        history = self.state.history.stats()
        if history.window_s is not None:
            yield GaugeMetricFamily("changecast_oplog_window_seconds",
                                    "Time from the oplog's first to its last entry",
                                    value=history.window_s)
        ages = GaugeMetricFamily("changecast_checkpoint_age_seconds",
                                 "Since the stream's resume token was last saved",
                                 labels=["collection"])
        risk = GaugeMetricFamily("changecast_checkpoint_at_risk",
                                 "1 when the checkpoint is older than half the oplog window",
                                 labels=["collection"])
        for name, checkpoint in history.checkpoints.items():
            if checkpoint.age_s is not None:
                ages.add_metric([name], checkpoint.age_s)
            risk.add_metric([name], 1.0 if checkpoint.at_risk else 0.0)
        yield ages
        yield risk
        orders = GaugeMetricFamily("changecast_orders", "Orders per status", labels=["status"])
        for status, count in self.state.analytics.snapshot()["per_status"].items():
            orders.add_metric([status], count)
        yield orders
        if self.state.pipeline is not None:
            stages = GaugeMetricFamily("changecast_stage_duration_ms",
                                       "Average pipeline stage duration", labels=["stage"])
            for stage, figures in self.state.pipeline.stats().stages.items():
                stages.add_metric([stage], figures.avg_ms)
            yield stages


def _quantiles(name: str, text: str, summary: LatencySummary) -> GaugeMetricFamily:
    """A gauge of a latency summary's p50/p95/p99 (NaN while it has no samples)."""
    gauge = GaugeMetricFamily(name, text, labels=["quantile"])
    for quantile, value in (("p50", summary.p50), ("p95", summary.p95), ("p99", summary.p99)):
        gauge.add_metric([quantile], value if value is not None else float("nan"))
    return gauge


async def metrics_text(request: Request) -> Response:
    """Prometheus exposition of the current figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChangeCastCollector(app_state(request)))
    return Response(generate_latest(registry),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
