"""Fan-out: live queries over change events, bounded queues, replay and resync.

A ``Subscriber`` is one consumer (say, a WebSocket connection) with one
bounded queue; it holds any number of ``Subscription``s (collection + compiled
filter + mandatory restriction). ``Hub.publish`` never awaits anybody: it
routes the event through an index of equality constraints, decides per
subscription what the change means to it, and appends to queues.

A subscription that is told to ``resync`` is closed on the server: the client
reloads its snapshot and subscribes again with ``resume_from`` set to the
snapshot's ``seq``, so there is never a gap nor a duplicate.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from streaming.errors import SubscriptionError
from streaming.events import ChangeEvent, Changes, diff, full_set, path_values
from streaming.filters import Filter, Predicate, equals_filter, hashable
from streaming.metrics import EngineMetrics
from streaming.types import DeliveryOp, Document, OverflowPolicy

ClockMs = Callable[[], int]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Delivery:
    """One item in a subscriber's queue: a change, a resync, or a control message."""

    __slots__ = ("changes", "doc", "event", "message", "op", "sub_id")

    def __init__(self, sub_id: str, op: DeliveryOp | None, event: ChangeEvent | None,
                 *, doc: Document | None = None, changes: Changes | None = None,
                 message: dict[str, Any] | None = None) -> None:
        self.sub_id = sub_id
        self.op = op
        self.event = event
        self.doc = doc
        self.changes = changes
        self.message = message

    def to_message(self) -> dict[str, Any]:
        """The WebSocket-contract form of this delivery."""
        if self.message is not None:
            return self.message
        event = self.event
        if event is None:
            raise ValueError("a change delivery needs an event")
        msg: dict[str, Any] = {"type": "change", "id": self.sub_id, "seq": event.seq,
                               "op": self.op, "collection": event.collection,
                               "key": event.key, "at": event.at}
        if self.op in ("insert", "replace", "enter"):
            msg["doc"] = self.doc
        elif self.op == "update":
            msg["changes"] = (self.changes or Changes()).as_dict()
        return msg


def merge_changes(first: Changes, second: Changes) -> Changes:
    """The changes of ``first`` then ``second`` as one update."""
    later = list(second.set) + list(second.unset)

    def covered(path: str) -> bool:
        return any(path == p or path.startswith(p + ".") for p in later)

    merged = {p: v for p, v in first.set.items() if not covered(p)}
    merged.update(second.set)
    unset = [p for p in first.unset if not covered(p)]
    unset.extend(p for p in second.unset if p not in unset)
    return Changes(merged, tuple(unset))


class Subscription:
    """A collection, an optional ``where`` filter and a mandatory restriction."""

    __slots__ = ("active", "collection", "id", "restriction", "restriction_fields",
                 "subscriber", "where")

    def __init__(self, subscriber: Subscriber, sub_id: str, collection: str,
                 where: Filter | None, restriction: dict[str, Any] | None) -> None:
        self.subscriber = subscriber
        self.id = sub_id
        self.collection = collection
        self.where = where
        self.restriction_fields = dict(restriction or {})
        self.restriction: Predicate | None = (
            equals_filter(self.restriction_fields) if self.restriction_fields else None
        )
        self.active = True

    def route(self, event: ChangeEvent) -> Delivery | None:
        """What ``event`` means to this subscription, or None when nothing."""
        op = event.op
        after = event.doc
        before = event.before
        restriction = self.restriction
        where = self.where
        if where is None:
            image = after if after is not None else before
            if restriction is not None and (image is None or not restriction(image)):
                return None
            if op == "update":
                return Delivery(self.id, "update", event, changes=event.changes)
            return Delivery(self.id, op, event, doc=after)
        matches = where.matches
        after_ok = after is not None and (restriction is None or restriction(after)) \
            and matches(after)
        if before is None and op != "insert":
            # No previous version known: an upsert-style enter, or a leave if it is ours.
            if after_ok:
                return Delivery(self.id, "enter", event, doc=after)
            image = after if after is not None else None
            if image is not None and (restriction is None or restriction(image)):
                return Delivery(self.id, "leave", event)
            return None
        before_ok = before is not None and (restriction is None or restriction(before)) \
            and matches(before)
        if after_ok and before_ok:
            changes = event.changes
            if changes is None and after is not None:
                changes = diff(before, after) if before is not None else full_set(after)
            return Delivery(self.id, "update", event, changes=changes)
        if after_ok:
            return Delivery(self.id, "enter", event, doc=after)
        if before_ok:
            return Delivery(self.id, "leave", event)
        return None


class Subscriber:
    """One consumer's bounded queue and its subscriptions."""

    def __init__(self, hub: Hub, *, maxsize: int, policy: OverflowPolicy) -> None:
        self.hub = hub
        self.maxsize = maxsize
        self.policy = policy
        self.subscriptions: dict[str, Subscription] = {}
        self._queue: deque[Delivery] = deque()
        # The newest queued change per (subscription, key), built when the queue is first
        # found full and kept while it stays so: coalescing finds its match in O(1) instead of
        # scanning a full queue for every delivery. None while not needed (no cost per put).
        self._latest: dict[tuple[str, Any], Delivery] | None = None
        self._ready = asyncio.Event()
        self.dropped = 0
        self.cutoffs = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._queue)

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def subscribe(self, sub_id: str, collection: str, *, where: Filter | None = None,
                  restriction: dict[str, Any] | None = None,
                  resume_from: int | None = None) -> Subscription:
        """Start a subscription (see ``Hub.subscribe``)."""
        return self.hub.subscribe(self, sub_id, collection, where=where,
                                  restriction=restriction, resume_from=resume_from)

    def unsubscribe(self, sub_id: str) -> bool:
        """Stop a subscription; False when there was none with that id."""
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            return False
        self.hub.detach(sub)
        return True

    def close(self) -> None:
        """Remove every subscription and stop receiving."""
        for sub_id in list(self.subscriptions):
            self.unsubscribe(sub_id)
        self.closed = True
        self.hub.forget(self)
        self._queue.clear()
        self._latest = None
        self._ready.set()

    def send_control(self, message: dict[str, Any]) -> None:
        """Queue a control message (never dropped, may exceed the bound by a little)."""
        self._put(Delivery("", None, None, message=message))

    def drain(self, limit: int = 256) -> list[Delivery]:
        """Take up to ``limit`` queued deliveries without waiting."""
        queue = self._queue
        count = min(limit, len(queue))
        items = [queue.popleft() for _ in range(count)]
        self._latest = None
        if not queue:
            self._ready.clear()
        return items

    async def get_batch(self, limit: int = 256) -> list[Delivery]:
        """Wait until something is queued, then drain; an empty list means it was closed."""
        while not self._queue and not self.closed:
            await self._ready.wait()
        return self.drain(limit)

    def _put(self, delivery: Delivery) -> None:
        queue = self._queue
        queue.append(delivery)
        if self._latest is not None and delivery.event is not None:
            self._latest[(delivery.sub_id, delivery.event.key)] = delivery
        if len(queue) == 1:
            self._ready.set()

    def offer(self, sub: Subscription, delivery: Delivery) -> None:
        """Queue a change; coalesce or cut the subscriber off when the queue is full."""
        metrics = self.hub.metrics
        queue = self._queue
        if len(queue) < self.maxsize:
            self._put(delivery)
            metrics.deliveries += 1
            if len(queue) > metrics.queue_depth_max:
                metrics.queue_depth_max = len(queue)
            return
        if self.policy == "coalesce" and self._coalesce(delivery):
            metrics.coalesced += 1
            return
        self._cut_off(f"slow consumer: more than {self.maxsize} changes queued")

    def _coalesce(self, delivery: Delivery) -> bool:
        if delivery.op != "update" or delivery.event is None:
            return False
        if self._latest is None:
            self._latest = {(d.sub_id, d.event.key): d for d in self._queue if d.event is not None}
        queued = self._latest.get((delivery.sub_id, delivery.event.key))
        if queued is None or queued.event is None:
            return False
        if queued.op == "enter":
            merged = Delivery(delivery.sub_id, "enter", delivery.event, doc=delivery.event.doc)
        elif queued.op == "update":
            merged = Delivery(delivery.sub_id, "update", delivery.event,
                              changes=_merged_changes(queued, delivery))
        else:
            return False
        # Moved to the end: seq order in the queue must stay increasing.
        self._queue.remove(queued)
        self._put(merged)
        return True

    def _cut_off(self, reason: str) -> None:
        dropped = sum(1 for d in self._queue if d.message is None) + 1
        self.dropped += dropped
        self.cutoffs += 1
        self.hub.metrics.dropped += dropped
        self.hub.metrics.cutoffs += 1
        controls = [d for d in self._queue if d.message is not None]
        self._queue.clear()
        self._latest = None
        for control in controls:
            self._put(control)
        for sub_id in list(self.subscriptions):
            self.hub.resync(self.subscriptions[sub_id], reason)


def _merged_changes(queued: Delivery, newer: Delivery) -> Changes:
    first_event, second_event = queued.event, newer.event
    if first_event is not None and second_event is not None \
            and first_event.before is not None and second_event.doc is not None:
        return diff(first_event.before, second_event.doc)
    return merge_changes(queued.changes or Changes(), newer.changes or Changes())


class _Routes:
    """One collection's subscriptions, indexed by an equality-constrained field."""

    __slots__ = ("by_field", "unindexed")

    def __init__(self) -> None:
        self.unindexed: dict[Subscription, None] = {}
        self.by_field: dict[str, dict[Any, dict[Subscription, None]]] = {}

    def add(self, sub: Subscription) -> None:
        field, values = _index_key(sub)
        if field is None:
            self.unindexed[sub] = None
            return
        index = self.by_field.setdefault(field, {})
        for value in values:
            index.setdefault(value, {})[sub] = None

    def remove(self, sub: Subscription) -> None:
        field, values = _index_key(sub)
        if field is None:
            self.unindexed.pop(sub, None)
            return
        index = self.by_field.get(field, {})
        for value in values:
            bucket = index.get(value)
            if bucket is not None:
                bucket.pop(sub, None)
                if not bucket:
                    del index[value]
        if not index:
            self.by_field.pop(field, None)

    def candidates(self, event: ChangeEvent) -> Iterator[Subscription]:
        yield from self.unindexed
        if not self.by_field:
            return
        for field, index in self.by_field.items():
            keys = [v for v in (*path_values(event.doc, field), *path_values(event.before, field))
                    if hashable(v)]
            buckets = [bucket for key in dict.fromkeys(keys) if (bucket := index.get(key))]
            if len(buckets) == 1:
                yield from buckets[0]
            elif buckets:
                yield from dict.fromkeys(sub for bucket in buckets for sub in bucket)


def _index_key(sub: Subscription) -> tuple[str | None, frozenset[Any]]:
    for field, value in sub.restriction_fields.items():
        if hashable(value):
            return field, frozenset([value])
    if sub.where is not None:
        for field, values in sub.where.constraints.items():
            return field, values
    return None, frozenset()


class Hub:
    """Assigns ``seq``, keeps the replay ring, routes changes to subscriptions."""

    def __init__(self, *, collections: tuple[str, ...] | list[str] | None = None,
                 buffer_size: int = 10_000, queue_size: int = 1_000,
                 policy: OverflowPolicy = "coalesce", first_seq: int | None = None,
                 metrics: EngineMetrics | None = None, clock_ms: ClockMs = _now_ms) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.collections = tuple(collections) if collections is not None else None
        self.queue_size = queue_size
        self.policy: OverflowPolicy = policy
        self.metrics = metrics or EngineMetrics()
        self._clock_ms = clock_ms
        # Start from the clock so another process's (or an earlier run's) seq never
        # lands inside ours: resuming across instances resyncs instead of replaying wrongly.
        self._seq = first_seq if first_seq is not None else clock_ms() * 1000
        self._ring: deque[ChangeEvent] = deque(maxlen=buffer_size)
        self._routes: dict[str, _Routes] = {}
        self._barrier: dict[str, int] = {}
        self._subscribers: set[Subscriber] = set()

    @property
    def seq(self) -> int:
        """The ``seq`` of the last emitted change (a snapshot taken now is complete up to it)."""
        return self._seq

    @property
    def subscriber_count(self) -> int:
        """Open subscribers."""
        return len(self._subscribers)

    def queued(self) -> int:
        """Deliveries waiting in subscriber queues right now (consumer lag, in changes)."""
        return sum(len(s) for s in self._subscribers)

    def subscription_count(self) -> int:
        """Active subscriptions across all subscribers."""
        return sum(len(s.subscriptions) for s in self._subscribers)

    def subscriber(self, *, maxsize: int | None = None,
                   policy: OverflowPolicy | None = None) -> Subscriber:
        """A new consumer with its own bounded queue."""
        subscriber = Subscriber(self, maxsize=maxsize or self.queue_size,
                                policy=policy or self.policy)
        self._subscribers.add(subscriber)
        return subscriber

    def subscribe(self, subscriber: Subscriber, sub_id: str, collection: str, *,
                  where: Filter | None = None, restriction: dict[str, Any] | None = None,
                  resume_from: int | None = None) -> Subscription:
        """Queue ``subscribed``, then replay from ``resume_from`` (or ``resync``), then go live."""
        if subscriber.closed:
            raise SubscriptionError("this subscriber is closed")
        if self.collections is not None and collection not in self.collections:
            raise SubscriptionError(
                f"unknown collection {collection!r}; expected one of {', '.join(self.collections)}"
            )
        if sub_id in subscriber.subscriptions:
            raise SubscriptionError(f"subscription id {sub_id!r} is already in use")
        sub = Subscription(subscriber, sub_id, collection, where, restriction)
        subscriber.subscriptions[sub_id] = sub
        subscriber.send_control({"type": "subscribed", "id": sub_id, "seq": self._seq})
        if resume_from is not None:
            reason = self._replay_gap(collection, resume_from)
            if reason is not None:
                self.resync(sub, reason)
                return sub
            for event in self._since(resume_from):
                if event.collection == collection:
                    delivery = sub.route(event)
                    if delivery is not None:
                        subscriber.offer(sub, delivery)
                        if not sub.active:
                            return sub
        self._routes.setdefault(collection, _Routes()).add(sub)
        return sub

    def _replay_gap(self, collection: str, resume_from: int) -> str | None:
        if resume_from > self._seq:
            return f"resume_from {resume_from} is ahead of this server (seq {self._seq})"
        if resume_from < self._barrier.get(collection, -1):
            return f"{collection} change history was lost after seq {resume_from}"
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if resume_from < oldest - 1:
            return f"seq {resume_from} is older than the replay buffer (oldest {oldest})"
        return None

    def _since(self, resume_from: int) -> Iterator[ChangeEvent]:
        if not self._ring:
            return iter(())
        start = max(0, resume_from + 1 - self._ring[0].seq)
        return itertools.islice(self._ring, start, None)

    def forget(self, subscriber: Subscriber) -> None:
        """A closed subscriber leaves the hub."""
        self._subscribers.discard(subscriber)

    def close_all(self) -> None:
        """Close every subscriber (the engine is stopping)."""
        for subscriber in list(self._subscribers):
            subscriber.close()

    def detach(self, sub: Subscription) -> None:
        if sub.active:
            sub.active = False
            routes = self._routes.get(sub.collection)
            if routes is not None:
                routes.remove(sub)

    def resync(self, sub: Subscription, reason: str) -> None:
        """End ``sub`` with a ``resync`` message: its client reloads a snapshot."""
        self.detach(sub)
        sub.subscriber.subscriptions.pop(sub.id, None)
        sub.subscriber.send_control({"type": "resync", "id": sub.id, "reason": reason})
        self.metrics.resyncs += 1

    def publish(self, *, op: str, collection: str, key: Any, doc: Document | None,
                before: Document | None, changes: Changes | None, at: int | None = None,
                token: Any = None) -> ChangeEvent:
        """Emit one change: next ``seq``, into the ring, to every subscription it concerns."""
        self._seq += 1
        event = ChangeEvent(self._seq, op, collection, key, doc, before, changes,  # type: ignore[arg-type]
                            at if at is not None else self._clock_ms(), token)
        self._ring.append(event)
        self.metrics.changes[collection] += 1
        routes = self._routes.get(collection)
        if routes is not None:
            # A copy: a cut-off during the loop removes subscriptions from the index.
            for sub in list(routes.candidates(event)):
                delivery = sub.route(event)
                if delivery is not None:
                    sub.subscriber.offer(sub, delivery)
        return event

    def history_lost(self, collection: str, reason: str) -> int:
        """Tell every subscription of ``collection`` to resync; returns how many."""
        self._barrier[collection] = self._seq
        routes = self._routes.pop(collection, None)
        if routes is None:
            return 0
        subs = list(routes.unindexed)
        for index in routes.by_field.values():
            for bucket in index.values():
                subs.extend(bucket)
        unique = list(dict.fromkeys(subs))
        for sub in unique:
            self.resync(sub, reason)
        return len(unique)
