"""ChangeCast's change-stream engine: watch, diff, cache, breaker, filters, fan-out, metrics.

Framework-free: it imports PyMongo and cachetools, never a web framework.
"""

from __future__ import annotations

from streaming.breaker import BreakerState, CircuitBreaker
from streaming.cache import DocumentCache
from streaming.engine import DEFAULT_COLLECTIONS, ChangeEngine
from streaming.errors import BreakerOpenError, FilterError, StreamingError, SubscriptionError
from streaming.events import ChangeEvent, Changes, decode, diff
from streaming.filters import Filter, compile_filter
from streaming.hub import Delivery, Hub, Subscriber, Subscription, merge_changes
from streaming.metrics import EngineMetrics, LatencyRecorder
from streaming.watcher import (
    CheckpointStore,
    CollectionWatcher,
    HistoryLost,
    MemoryCheckpoints,
    MongoCheckpoints,
    WatcherState,
    is_history_lost,
    is_resumable,
)

__all__ = [
    "DEFAULT_COLLECTIONS",
    "BreakerOpenError",
    "BreakerState",
    "ChangeEngine",
    "ChangeEvent",
    "Changes",
    "CheckpointStore",
    "CircuitBreaker",
    "CollectionWatcher",
    "Delivery",
    "DocumentCache",
    "EngineMetrics",
    "Filter",
    "FilterError",
    "HistoryLost",
    "Hub",
    "LatencyRecorder",
    "MemoryCheckpoints",
    "MongoCheckpoints",
    "StreamingError",
    "Subscriber",
    "Subscription",
    "SubscriptionError",
    "WatcherState",
    "compile_filter",
    "decode",
    "diff",
    "is_history_lost",
    "is_resumable",
    "merge_changes",
]
