"""The engine: a source + cache + hub + breaker + metrics behind one object."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from streaming.breaker import CircuitBreaker
from streaming.cache import ABSENT, CacheStats, DocumentCache
from streaming.events import ChangeEvent, normalize, visible
from streaming.hub import Hub, Outlet, Subscriber
from streaming.metrics import EngineMetrics, Histogram, MetricsStats
from streaming.source import MongoSource, Source
from streaming.types import Document, OverflowPolicy
from streaming.watcher import (
    CheckpointStore,
    FullDocument,
    WatcherStats,
    WatchMode,
    WatchOptions,
)

logger = logging.getLogger("streaming.engine")

Listener = Callable[[ChangeEvent], None]
MaybeDoc = TypeVar("MaybeDoc", Document, Document | None)
DEFAULT_COLLECTIONS = ("orders", "products", "users", "notifications")


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """The database circuit breaker: its state and how often it opened."""

    state: str
    opened: int


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Everything the engine reports, typed; ``as_dict()`` is the JSON form."""

    seq: int
    subscribers: int
    subscriptions: int
    groups: int
    largest_group: int
    queued: int
    uptime_s: float
    metrics: MetricsStats
    cache: CacheStats
    breaker: BreakerStats
    watchers: dict[str, WatcherStats]

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON shape of ``/api/metrics`` (counters at the top level)."""
        data = dataclasses.asdict(self.metrics)
        data.update(seq=self.seq, subscribers=self.subscribers,
                    subscriptions=self.subscriptions, groups=self.groups,
                    largest_group=self.largest_group, queued=self.queued,
                    cache=dataclasses.asdict(self.cache),
                    breaker=dataclasses.asdict(self.breaker),
                    watchers={k: dataclasses.asdict(w) for k, w in self.watchers.items()},
                    uptime_s=self.uptime_s)
        return data


class ChangeEngine:
    """Live queries over one database: its changes, a coherent cache, and fan-out.

    ``ChangeEngine(db, ...)`` watches a MongoDB database (one change stream per
    collection); ``ChangeEngine(source=MySQLSource(...))`` any other ``Source``.
    """

    def __init__(self, database: Any = None, *, source: Source | None = None,
                 collections: Iterable[str] = DEFAULT_COLLECTIONS,
                 mode: WatchMode = "await", cache_size: int = 10_000,
                 queue_size: int = 1_000, buffer_size: int = 10_000,
                 policy: OverflowPolicy = "coalesce",
                 checkpoints: CheckpointStore | None = None,
                 breaker: CircuitBreaker | None = None, idle_interval: float = 0.025,
                 idle_max_interval: float = 1.0,
                 backoff_max: float = 5.0,
                 hidden: Mapping[str, Iterable[str]] | None = None,
                 full_document: FullDocument = "updateLookup") -> None:
        if (database is None) == (source is None):
            raise TypeError("ChangeEngine needs a MongoDB database or a source=, not both")
        if source is None:
            options = WatchOptions(mode=mode, idle_interval=idle_interval,
                                   idle_max_interval=idle_max_interval,
                                   backoff_max=backoff_max, full_document=full_document)
            source = MongoSource(database, collections=collections, options=options,
                                 checkpoints=checkpoints)
        self.database = database
        self.source: Source = source
        self.collections = source.collections
        # Top-level fields that never leave the database through the engine: not cached,
        # not in events, and a change to nothing else emits no event (secrets, bookkeeping).
        self.hidden = {name: frozenset(fields) for name, fields in (hidden or {}).items()}
        self.mode: WatchMode = mode
        self.metrics = EngineMetrics()
        self.breaker = breaker or CircuitBreaker(failure_threshold=3, reset_timeout=2.0,
                                                 is_failure=source.is_unavailable)
        self.cache = DocumentCache(maxsize=cache_size, loader=self._load, breaker=self.breaker)
        self.hub = Hub(collections=self.collections, buffer_size=buffer_size,
                       queue_size=queue_size, policy=policy, metrics=self.metrics)
        source.attach(handler=self._handle, on_history_lost=self._history_lost,
                      breaker=self.breaker)
        self._listeners: list[Listener] = []
        self._waiters: dict[tuple[str, Any], list[tuple[asyncio.Future[None], Any]]] = {}
        self._lost_listeners: list[Callable[[str, str], None]] = []
        self.started_at = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, *, timeout: float = 15.0) -> None:
        """Open the source at its stored position; return once every collection is watched."""
        await self.source.start(timeout=timeout)

    async def stop(self) -> None:
        """Close the source (saving its position) and every subscriber."""
        await self.source.stop()
        self.hub.close_all()

    async def __aenter__(self) -> ChangeEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- public API -------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The ``seq`` of the last emitted change."""
        return self.hub.seq

    @property
    def settled_seq(self) -> int:
        """Every pushed subscriber has been handed every change up to this ``seq``."""
        return self.hub.settled_seq

    def nudge(self, collection: str | None = None) -> None:
        """Poll now: call right after this process writes (no-op for await mode)."""
        self.source.nudge(collection)

    def wake(self, collection: str) -> None:
        """Poll ``collection`` now without promising a change (any write of this process's
        to it, seen by the driver: see ``backend.infra.database.WriteListener``)."""
        self.source.wake(collection)

    def writing(self, collection: str) -> None:
        """Poll ``collection`` now, as a write of this process to it is being sent (the
        driver's command started: ``backend.infra.database.WriteListener``): the stream's
        read overlaps the write's round trip. Keeps a quiet stream's pace."""
        self.source.writing(collection)

    def subscriber(self, *, maxsize: int | None = None, policy: OverflowPolicy | None = None,
                   outlet: Outlet | None = None) -> Subscriber:
        """A new consumer (queued, or pushing to ``outlet``); use ``subscriber.subscribe``."""
        return self.hub.subscriber(maxsize=maxsize, policy=policy, outlet=outlet)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every emitted change; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def reset(self, reason: str) -> None:
        """Distrust every stream's history (e.g. the database restarted): each watcher reopens
        from now, then its subscribers resync and the cache forgets that collection."""
        self.source.reset(reason)

    def on_history_lost(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(collection, reason)`` when a collection's history is lost."""
        self._lost_listeners.append(listener)

    async def settle(self, collection: str, key: Any, doc: Document | None, *,
                     timeout: float = 1.0) -> bool:
        """Wait until the stream has delivered ``doc`` (this process's own write) for ``key``.

        After it returns True, cache reads see the write and subscribers have it queued:
        read-your-writes for the API. False when it did not arrive within ``timeout``
        (e.g. a later write got there first on a server that looks documents up late).
        """
        doc = self.visible(collection, doc)
        if self.cache.stream_version(collection, key) == doc:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault((collection, key), [])
        entry = (future, doc)
        waiters.append(entry)
        self.nudge(collection)
        try:
            async with asyncio.timeout(timeout):  # wait_for may swallow a cancel (3.11)
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiters.remove(entry)
            if not waiters:
                self._waiters.pop((collection, key), None)

    async def get(self, collection: str, key: Any) -> Document | None:
        """A document through the cache (read-through on a miss, guarded by the breaker)."""
        return await self.cache.get(collection, key)

    def documents(self, collection: str) -> list[Document] | None:
        """Every document of ``collection`` when the cache holds it whole, else None."""
        return self.cache.documents(collection)

    def peek(self, collection: str, key: Any) -> Document | None:
        """The cached version of a document, if any (no database read, no hit counted)."""
        return self.cache.peek(collection, key)

    def visible(self, collection: str, doc: MaybeDoc) -> MaybeDoc:
        """``doc`` without the collection's hidden fields (the form the engine hands out)."""
        if doc is None:
            return doc
        return visible(doc, self.hidden.get(collection, frozenset()))

    # ---- the database guard (for callers that bound their own database calls) --------------

    def admit(self) -> None:
        """Raise BreakerOpenError while the database circuit is open (fail fast)."""
        self.breaker.before_call()

    def record_outcome(self, *, ok: bool) -> None:
        """Tell the breaker how a database call guarded by ``admit()`` ended."""
        if ok:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()

    def observe_delivery(self, event_at_ms: int, now_ms: float | None = None) -> None:
        """A change written at ``event_at_ms`` reached a client (delivery latency)."""
        now = now_ms if now_ms is not None else time.time() * 1000
        self.metrics.delivery.observe(max(0.0, now - event_at_ms))

    def delivery_histogram(self) -> Histogram:
        """All-time change → client latency buckets (for exporters)."""
        return self.metrics.delivery.histogram()

    def hidden_projection(self, collection: str) -> dict[str, int] | None:
        """A find() projection that leaves the collection's hidden fields in the database."""
        hidden = self.hidden.get(collection)
        return {field: 0 for field in sorted(hidden)} if hidden else None

    async def prime(self, collection: str) -> int:
        """Load a collection into the cache as stream versions (call right after start)."""
        docs = [self.visible(collection, d) for d in await self.source.scan(collection)]
        self.cache.prime(collection, docs, key=lambda doc: self.source.key_of(collection, doc))
        return len(docs)

    def checkpoint_ages(self) -> dict[str, float | None]:
        """Per collection, seconds since its stream's resume token was saved."""
        return {name: w.checkpoint_age_s for name, w in self.source.stats().items()}

    def stats(self) -> EngineStats:
        """Every figure the engine keeps, typed."""
        sizes = self.hub.group_sizes()
        return EngineStats(
            seq=self.hub.seq, subscribers=self.hub.subscriber_count,
            subscriptions=self.hub.subscription_count(), groups=len(sizes),
            largest_group=sizes[0] if sizes else 0, queued=self.hub.queued(),
            uptime_s=round(time.monotonic() - self.started_at, 3),
            metrics=self.metrics.stats(), cache=self.cache.stats(),
            breaker=BreakerStats(self.breaker.state.value, self.breaker.opened_count),
            watchers=self.source.stats())

    def snapshot(self) -> dict[str, Any]:
        """Every metric as a plain dict (the JSON form of ``stats()``)."""
        return self.stats().as_dict()

    # ---- the change path --------------------------------------------------------------------

    async def _load(self, collection: str, key: Any) -> Document | None:
        doc = await self.source.load(collection, key)
        return self.visible(collection, doc) if doc is not None else None

    def _handle(self, collection: str, raw: Document) -> int | None:
        """One raw change from a watcher: normalize, cache, publish, wake writers, tell
        listeners; returns the change's time when it became an event."""
        hidden = self.hidden.get(collection, frozenset())
        change = normalize(raw, hidden=hidden,
                           previous=lambda key: self._previous(collection, key))
        if change is None:
            return None
        if change.empty:
            self.metrics.empty_updates += 1
            return None
        self.cache.store(collection, change.key, change.doc)
        event = self.hub.publish(op=change.op, collection=collection, key=change.key,
                                 doc=change.doc, before=change.before, changes=change.changes,
                                 at=change.at, token=change.token)
        waiters = self._waiters.get((collection, event.key))
        if waiters:
            for future, expected in waiters:
                if not future.done() and event.doc == expected:
                    future.set_result(None)
        self.metrics.handoff.observe(max(0.0, time.time() * 1000 - event.at))
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("change listener failed on %s %s", collection, event.key)
        return event.at

    def _previous(self, collection: str, key: Any) -> Document | None:
        known = self.cache.stream_version(collection, key)
        return None if known is ABSENT else known

    def _history_lost(self, collection: str, reason: str) -> None:
        self.cache.invalidate(collection)
        self.hub.history_lost(collection, reason)
        for listener in self._lost_listeners:
            with contextlib.suppress(Exception):
                listener(collection, reason)

