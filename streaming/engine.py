"""The engine: watchers + cache + hub + breaker + metrics behind one object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from bson import Timestamp
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from streaming.breaker import CircuitBreaker
from streaming.cache import ABSENT, DocumentCache
from streaming.events import (
    ChangeEvent,
    changes_from_description,
    decode,
    diff,
    epoch_ms,
    full_set,
)
from streaming.hub import Hub, Subscriber
from streaming.metrics import EngineMetrics
from streaming.types import Document, OverflowPolicy
from streaming.watcher import CheckpointStore, CollectionWatcher, WatchMode

logger = logging.getLogger("streaming.engine")

Listener = Callable[[ChangeEvent], None]
MaybeDoc = TypeVar("MaybeDoc", Document, Document | None)
DEFAULT_COLLECTIONS = ("orders", "products", "users", "notifications")


def _breaker_failure(exc: BaseException) -> bool:
    # Only an unavailable database trips the breaker, not a bad query.
    return isinstance(exc, ConnectionFailure | TimeoutError) or (
        isinstance(exc, PyMongoError) and not isinstance(exc, OperationFailure)
    )


class ChangeEngine:
    """One change stream per collection, a coherent cache, and live-query fan-out."""

    def __init__(self, database: Any, *, collections: Iterable[str] = DEFAULT_COLLECTIONS,
                 mode: WatchMode = "await", cache_size: int = 10_000,
                 queue_size: int = 1_000, buffer_size: int = 10_000,
                 policy: OverflowPolicy = "coalesce",
                 checkpoints: CheckpointStore | None = None,
                 breaker: CircuitBreaker | None = None, idle_interval: float = 0.025,
                 backoff_max: float = 5.0,
                 hidden: Mapping[str, Iterable[str]] | None = None) -> None:
        self.database = database
        self.collections = tuple(collections)
        # Top-level fields that never leave the database through the engine: not cached,
        # not in events, and a change to nothing else emits no event (secrets, bookkeeping).
        self.hidden = {name: frozenset(fields) for name, fields in (hidden or {}).items()}
        self.mode: WatchMode = mode
        self.metrics = EngineMetrics()
        self.breaker = breaker or CircuitBreaker(failure_threshold=3, reset_timeout=2.0,
                                                 is_failure=_breaker_failure)
        self.cache = DocumentCache(maxsize=cache_size, loader=self._load, breaker=self.breaker)
        self.hub = Hub(collections=self.collections, buffer_size=buffer_size,
                       queue_size=queue_size, policy=policy, metrics=self.metrics)
        self.watchers = {
            name: CollectionWatcher(
                database[name], handler=self._handle, on_history_lost=self._history_lost,
                mode=mode, breaker=self.breaker, checkpoints=checkpoints,
                idle_interval=idle_interval, backoff_max=backoff_max)
            for name in self.collections
        }
        self._listeners: list[Listener] = []
        self._waiters: dict[tuple[str, Any], list[tuple[asyncio.Future[None], Any]]] = {}
        self._lost_listeners: list[Callable[[str, str], None]] = []
        self.started_at = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, *, timeout: float = 15.0) -> None:
        """Open every change stream; return once all are watching."""
        if self.mode == "poll":
            # NX-27017 tracks changes with triggers on the collection's table: create the
            # collections first, so no stream is opened on a table that is not there yet.
            existing = set(await self.database.list_collection_names())
            for name in self.collections:
                if name not in existing:
                    with contextlib.suppress(PyMongoError):
                        await self.database.create_collection(name)
        await asyncio.gather(*(w.start(timeout=timeout) for w in self.watchers.values()))

    async def stop(self) -> None:
        """Close every stream (saving tokens) and every subscriber."""
        await asyncio.gather(*(w.stop() for w in self.watchers.values()))
        for subscriber in list(self.hub._subscribers):
            subscriber.close()

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

    def nudge(self, collection: str | None = None) -> None:
        """Poll now: call right after this process writes (no-op for await mode)."""
        if collection is None:
            for watcher in self.watchers.values():
                watcher.nudge()
        elif collection in self.watchers:
            self.watchers[collection].nudge()

    def subscriber(self, *, maxsize: int | None = None,
                   policy: OverflowPolicy | None = None) -> Subscriber:
        """A new consumer; use ``subscriber.subscribe(...)``."""
        return self.hub.subscriber(maxsize=maxsize, policy=policy)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every emitted change; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def reset(self, reason: str) -> None:
        """Distrust every stream's history (e.g. the database restarted): each watcher reopens
        from now, then its subscribers resync and the cache forgets that collection."""
        for watcher in self.watchers.values():
            watcher.reset(reason)

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
            await asyncio.wait_for(future, timeout)
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

    def visible(self, collection: str, doc: MaybeDoc) -> MaybeDoc:
        """``doc`` without the collection's hidden fields (the form the engine hands out)."""
        hidden = self.hidden.get(collection)
        if not hidden or doc is None or hidden.isdisjoint(doc):
            return doc
        return {k: v for k, v in doc.items() if k not in hidden}

    def hidden_projection(self, collection: str) -> dict[str, int] | None:
        """A find() projection that leaves the collection's hidden fields in the database."""
        hidden = self.hidden.get(collection)
        return {field: 0 for field in sorted(hidden)} if hidden else None

    async def prime(self, collection: str) -> int:
        """Load a collection into the cache as stream versions (call right after start)."""
        docs = [self.visible(collection, decode(d))
                async for d in self.database[collection].find({})]
        self.cache.prime(collection, docs)
        return len(docs)

    def snapshot(self) -> dict[str, Any]:
        """Every metric as a plain dict."""
        data = self.metrics.snapshot()
        data["seq"] = self.hub.seq
        data["subscribers"] = self.hub.subscriber_count
        data["subscriptions"] = self.hub.subscription_count()
        data["queued"] = self.hub.queued()
        data["cache"] = self.cache.stats()
        data["breaker"] = {"state": self.breaker.state.value,
                           "opened": self.breaker.opened_count}
        data["watchers"] = {name: w.snapshot() for name, w in self.watchers.items()}
        data["uptime_s"] = round(time.monotonic() - self.started_at, 3)
        return data

    # ---- the change path --------------------------------------------------------------------

    async def _load(self, collection: str, key: Any) -> Document | None:
        doc = await self.database[collection].find_one({"_id": key})
        return self.visible(collection, decode(doc)) if doc is not None else None

    def _handle(self, collection: str, raw: Document) -> None:
        event = self._normalize(collection, raw)
        if event is None:
            return
        self.watchers[collection].mark_event_time(event.at)
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

    def _normalize(self, collection: str, raw: Document) -> ChangeEvent | None:
        op = raw.get("operationType")
        if op not in ("insert", "update", "replace", "delete"):
            return None
        key = decode((raw.get("documentKey") or {}).get("_id"))
        full = raw.get("fullDocument")
        doc = self.visible(collection, decode(full)) if full is not None else None
        known = self.cache.stream_version(collection, key)
        before = None if known is ABSENT or op == "insert" else known
        changes = None
        if op == "delete":
            # NX-27017 sends the deleted document; MongoDB sends only the key.
            before = before if before is not None else doc
            doc = None
        elif op in ("update", "replace"):
            description = raw.get("updateDescription")
            if doc is None:
                return None  # deleted before the lookup; the delete event follows
            if op == "update" and description:
                changes = changes_from_description(description)
                hidden = self.hidden.get(collection)
                if hidden:
                    changes = changes.without(hidden)
            elif before is not None:
                changes = diff(before, doc)
            else:
                changes = full_set(doc)
            if before is not None and not changes:
                self.metrics.empty_updates += 1
                return None
        self.cache.apply(ChangeEvent(0, op, collection, key, doc, before, changes, 0))
        return self.hub.publish(op=op, collection=collection, key=key, doc=doc, before=before,
                                changes=changes, at=_event_ms(raw), token=raw.get("_id"))

    def _history_lost(self, collection: str, reason: str) -> None:
        self.cache.invalidate(collection)
        self.hub.history_lost(collection, reason)
        for listener in self._lost_listeners:
            with contextlib.suppress(Exception):
                listener(collection, reason)


def _event_ms(raw: Document) -> int:
    wall = raw.get("wallTime")
    at = epoch_ms(wall)
    if at is not None:
        return at
    cluster = raw.get("clusterTime")
    if isinstance(cluster, Timestamp):
        return cluster.time * 1000
    at = epoch_ms(cluster)
    return at if at is not None else time.time_ns() // 1_000_000
