"""ChangeCast's change-stream engine: watch, diff, cache, breaker, filters, fan-out, metrics.

Framework-free: it imports PyMongo and cachetools, never a web framework. The MySQL /
MariaDB binlog source is ``streaming.mysql.MySQLSource`` (the ``mysql`` extra), imported
on its own so that the engine needs nothing of it.
"""

from __future__ import annotations

from streaming.backoff import Backoff
from streaming.breaker import BreakerState, CircuitBreaker
from streaming.cache import CacheStats, DocumentCache
from streaming.engine import DEFAULT_COLLECTIONS, BreakerStats, ChangeEngine, EngineStats
from streaming.errors import (
    BreakerOpenError,
    FilterError,
    HistoryLost,
    StreamingError,
    SubscriptionError,
)
from streaming.events import ChangeEvent, Changes, decode, diff, get_path
from streaming.filters import Filter, compile_filter
from streaming.hub import Batch, Delivery, Group, Hub, Outlet, Subscriber, Subscription, merge_changes
from streaming.metrics import (
    EngineMetrics,
    Histogram,
    LatencyRecorder,
    LatencySummary,
    MetricsStats,
    percentile,
)
from streaming.source import MongoSource, Source
from streaming.types import Document
from streaming.watcher import (
    CheckpointStore,
    CollectionWatcher,
    MemoryCheckpoints,
    MongoCheckpoints,
    WatcherState,
    WatcherStats,
    WatchOptions,
    is_history_lost,
    is_resumable,
)

__all__ = [
    "DEFAULT_COLLECTIONS",
    "Backoff",
    "Batch",
    "BreakerOpenError",
    "BreakerState",
    "BreakerStats",
    "CacheStats",
    "ChangeEngine",
    "ChangeEvent",
    "Changes",
    "CheckpointStore",
    "CircuitBreaker",
    "CollectionWatcher",
    "Delivery",
    "Document",
    "DocumentCache",
    "EngineMetrics",
    "EngineStats",
    "Filter",
    "FilterError",
    "Group",
    "Histogram",
    "HistoryLost",
    "Hub",
    "LatencyRecorder",
    "LatencySummary",
    "MemoryCheckpoints",
    "MetricsStats",
    "MongoCheckpoints",
    "MongoSource",
    "Outlet",
    "Source",
    "StreamingError",
    "Subscriber",
    "Subscription",
    "SubscriptionError",
    "WatchOptions",
    "WatcherState",
    "WatcherStats",
    "compile_filter",
    "decode",
    "diff",
    "get_path",
    "is_history_lost",
    "is_resumable",
    "merge_changes",
    "percentile",
]
