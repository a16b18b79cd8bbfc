"""Fan-out: live queries over change events, shared per group, bounded per member.

A ``Subscriber`` is one consumer (say, a WebSocket connection); it holds any
number of ``Subscription``s (collection + compiled filter + mandatory
restriction). Subscriptions that would receive identical output (same
collection, same normalized ``where``, same restriction) are members of one
``Group``: ``Hub.publish`` routes a change through an index of equality
constraints to groups, and decides **once per group** what the change means
(enter, update with its diff, leave, or nothing).

Two kinds of member:

- a *queue* subscriber (the default: ``hub.subscriber()``) gets the group's
  decision appended to its own bounded queue at once, and drains it with
  ``get_batch()``; a full queue coalesces updates or cuts the subscriber off
  with ``resync``.
- a *push* subscriber (``hub.subscriber(outlet=...)``): the group's decisions
  accumulate in a ``Batch`` that is handed, as the same object, to every
  member's ``Outlet`` in a fan-out pass run from the event loop soon after.
  Whatever the outlet derives from a batch (a JSON encoding, rendered HTML,
  frame bytes) it may keep in ``batch.encoded``, so that a thousand members
  cost one encoding and a thousand writes. While a pass is being written
  (bounded work per loop turn, so writes and reads of other clients keep
  their turn), new changes accumulate and go out together in the next pass.
  The outlet owns its member's backlog and calls ``cut_off`` when it is full.

A subscription that is told to ``resync`` is closed on the server: the client
reloads its snapshot and subscribes again with ``resume_from`` set to the
snapshot's ``seq``, so there is never a gap nor a duplicate.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

from streaming.errors import SubscriptionError
from streaming.events import ChangeEvent, Changes, diff, full_set, path_values
from streaming.filters import Filter, Predicate, equals_filter, hashable, index_keys
from streaming.metrics import EngineMetrics
from streaming.types import DeliveryOp, Document, OverflowPolicy

ClockMs = Callable[[], int]

# Members handed their part of a fan-out pass per event-loop turn. Against 256, measured
# alternately on one server pair (1,000 clients, 4 runs each): the same delivery latency
# and CPU per delivery, and the admin's write p99 22 ms instead of 32 at 30 changes/s
# (61 instead of 69 at 70/s): a turn of 128 socket writes is about 1 ms here.
FANOUT_CHUNK = 128


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Delivery:
    """One change as a subscription sees it, a resync, or a control message."""

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

    def for_subscription(self, sub_id: str) -> Delivery:
        """This (shared) decision, addressed to one subscription."""
        return Delivery(sub_id, self.op, self.event, doc=self.doc, changes=self.changes)

    def body(self) -> dict[str, Any]:
        """The change message without its ``type`` and ``id`` (the part all members share)."""
        event = self.event
        if event is None:
            raise ValueError("a change delivery needs an event")
        msg: dict[str, Any] = {"seq": event.seq, "op": self.op, "collection": event.collection,
                               "key": event.key, "at": event.at}
        if self.op in ("insert", "replace", "enter"):
            msg["doc"] = self.doc
        elif self.op == "update":
            msg["changes"] = (self.changes or Changes()).as_dict()
        return msg

    def to_message(self) -> dict[str, Any]:
        """The WebSocket-contract form of this delivery."""
        if self.message is not None:
            return self.message
        return {"type": "change", "id": self.sub_id, **self.body()}


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


def route(event: ChangeEvent, where: Filter | None, restriction: Predicate | None,
          sub_id: str = "") -> Delivery | None:
    """What ``event`` means to a subscription with this filter and restriction, or None."""
    op = event.op
    after = event.doc
    before = event.before
    if where is None:
        image = after if after is not None else before
        if restriction is not None and (image is None or not restriction(image)):
            return None
        if op == "update":
            return Delivery(sub_id, "update", event, changes=event.changes)
        return Delivery(sub_id, op, event, doc=after)
    matches = where.matches
    after_ok = after is not None and (restriction is None or restriction(after)) \
        and matches(after)
    if before is None and op != "insert":
        # No previous version known: an upsert-style enter, or a leave if it is ours.
        if after_ok:
            return Delivery(sub_id, "enter", event, doc=after)
        if after is not None and (restriction is None or restriction(after)):
            return Delivery(sub_id, "leave", event)
        return None
    before_ok = before is not None and (restriction is None or restriction(before)) \
        and matches(before)
    if after_ok and before_ok:
        changes = event.changes
        if changes is None and after is not None:
            changes = diff(before, after) if before is not None else full_set(after)
        return Delivery(sub_id, "update", event, changes=changes)
    if after_ok:
        return Delivery(sub_id, "enter", event, doc=after)
    if before_ok:
        return Delivery(sub_id, "leave", event)
    return None


class Batch:
    """A group's decisions for one fan-out pass, in ``seq`` order, shared by its members.

    ``encoded`` is the members' outlets' cache: what one of them derives from the batch
    (keyed by format), the next one reuses."""

    __slots__ = ("deliveries", "encoded", "first_seq", "last_seq", "size")

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self.size = len(deliveries)
        self.first_seq = deliveries[0].event.seq if deliveries[0].event else 0
        self.last_seq = deliveries[-1].event.seq if deliveries[-1].event else 0
        self.encoded: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return self.size

    def after(self, seq: int) -> Batch | None:
        """The part of this batch newer than ``seq`` (a member that joined mid-way)."""
        newer = [d for d in self.deliveries if d.event is not None and d.event.seq > seq]
        return Batch(newer) if newer else None


class Outlet(Protocol):
    """Where a push subscriber's changes go (a socket, for the web app)."""

    def deliver(self, items: list[tuple[Subscription, Batch]], seq: int) -> None:
        """This member's part of a fan-out pass: per subscription, the group's batch; after
        it the member has every change up to ``seq`` for all of its subscriptions."""

    def control(self, message: dict[str, Any]) -> None:
        """A control message (``subscribed``, ``resync``, …), in order with the changes."""

    def __len__(self) -> int:
        """What waits in this member's own backlog (its lag)."""


# An outlet class may offer ``deliver_each(subs, batch, seq) -> int`` (a static method):
# hand one group's whole batch to each of these subscriptions, all of whose outlets are of
# that class, and say how many took it. The hub calls it for the members of a group that
# get its batch whole and have no other part in the pass (the broadcast case: a thousand
# pages on one product grid), so the outlet can build its bytes once and write them member
# by member in one tight loop instead of one ``deliver`` call each.
DeliverEach = Callable[[list["Subscription"], "Batch", int], int]


def deliver_each(subs: list[Subscription], batch: Batch, seq: int) -> int:
    """The generic ``deliver_each``: each member's outlet is handed the batch on its own."""
    delivered = 0
    for sub in subs:
        outlet = sub.outlet
        if sub.active and outlet is not None:
            outlet.deliver([(sub, batch)], seq)
            delivered += 1
    return delivered


class Subscription:
    """A collection, an optional ``where`` filter and a mandatory restriction."""

    __slots__ = ("active", "collection", "context", "group", "id", "outlet", "restriction",
                 "restriction_fields", "since", "subscriber", "where")

    def __init__(self, subscriber: Subscriber, sub_id: str, collection: str,
                 where: Filter | None, restriction: dict[str, Any] | None) -> None:
        self.subscriber = subscriber
        self.outlet = subscriber.outlet  # the subscriber's, read once per member and pass
        self.id = sub_id
        self.collection = collection
        self.where = where
        self.restriction_fields = dict(restriction or {})
        self.restriction: Predicate | None = (
            equals_filter(self.restriction_fields) if self.restriction_fields else None
        )
        self.active = True
        self.group: Group | None = None
        # Changes up to this seq reached the member before it joined its group.
        self.since = 0
        # Free for the consumer (the web app keeps a subscription's encoded id here).
        self.context: Any = None

    def route(self, event: ChangeEvent) -> Delivery | None:
        """What ``event`` means to this subscription, or None when nothing."""
        return route(event, self.where, self.restriction, self.id)

    def group_key(self) -> tuple[Hashable, ...]:
        """Equal for subscriptions whose output is identical."""
        where = repr(self.where.node) if self.where is not None else None
        restriction = tuple(sorted((k, repr(v)) for k, v in self.restriction_fields.items()))
        return (self.collection, where, restriction)


class Group:
    """Subscriptions with the same collection, ``where`` and restriction: a change is
    routed once for all of them."""

    __slots__ = ("collection", "joined", "key", "kinds", "pending", "pulled", "pushed",
                 "repeats", "restriction", "restriction_fields", "subscribers", "where")

    def __init__(self, key: tuple[Hashable, ...], first: Subscription) -> None:
        self.key = key
        self.collection = first.collection
        self.where = first.where
        self.restriction = first.restriction
        self.restriction_fields = first.restriction_fields
        self.pulled: dict[Subscription, None] = {}
        self.pushed: dict[Subscription, None] = {}
        self.pending: list[Delivery] = []
        # Push members per subscriber, and the subscribers with two or more here (an admin's
        # page holds two subscriptions on products): those get one merged hand-over per
        # pass, every other member is written on its own.
        self.subscribers: dict[Subscriber, int] = {}
        self.repeats: dict[Subscriber, None] = {}
        # Push members by their outlet's class (each class may write its members together),
        # and the newest ``since`` among them: a batch that begins after it goes to every
        # member whole, with no member to trim it for.
        self.kinds: dict[type, dict[Subscription, None]] = {}
        self.joined = 0

    def __len__(self) -> int:
        return len(self.pulled) + len(self.pushed)

    def push(self, sub: Subscription) -> None:
        self.pushed[sub] = None
        self.kinds.setdefault(type(sub.outlet), {})[sub] = None
        self.joined = max(self.joined, sub.since)
        count = self.subscribers.get(sub.subscriber, 0) + 1
        self.subscribers[sub.subscriber] = count
        if count == 2:
            self.repeats[sub.subscriber] = None

    def unpush(self, sub: Subscription) -> None:
        if sub not in self.pushed:
            return
        del self.pushed[sub]
        kind = type(sub.outlet)
        same = self.kinds.get(kind)
        if same is not None:
            same.pop(sub, None)
            if not same:
                del self.kinds[kind]
        count = self.subscribers.pop(sub.subscriber, 1) - 1
        if count:
            self.subscribers[sub.subscriber] = count
        if count == 1:
            self.repeats.pop(sub.subscriber, None)

    def route(self, event: ChangeEvent) -> Delivery | None:
        return route(event, self.where, self.restriction)


class Subscriber:
    """One consumer: its subscriptions, and its bounded queue (or its outlet)."""

    def __init__(self, hub: Hub, *, maxsize: int, policy: OverflowPolicy,
                 outlet: Outlet | None = None) -> None:
        self.hub = hub
        self.maxsize = maxsize
        self.policy = policy
        self.outlet = outlet
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
        return len(self._queue) if self.outlet is None else len(self.outlet)

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
        if self.outlet is not None:
            self.outlet.control(message)
            return
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
        self.cut_off(f"slow consumer: more than {self.maxsize} changes queued", dropped=1)

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

    def cut_off(self, reason: str, dropped: int = 0) -> None:
        """Drop what is queued for this member and ``resync`` each of its subscriptions
        (its reader fell behind; an outlet says how many changes it dropped)."""
        dropped += sum(1 for d in self._queue if d.message is None)
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
    """One collection's groups, indexed by an equality-constrained field."""

    __slots__ = ("by_field", "unindexed")

    def __init__(self) -> None:
        self.unindexed: dict[Group, None] = {}
        self.by_field: dict[str, dict[Any, dict[Group, None]]] = {}

    def add(self, group: Group) -> None:
        field, values = _index_key(group)
        if field is None:
            self.unindexed[group] = None
            return
        index = self.by_field.setdefault(field, {})
        for value in values:
            index.setdefault(value, {})[group] = None

    def remove(self, group: Group) -> None:
        field, values = _index_key(group)
        if field is None:
            self.unindexed.pop(group, None)
            return
        index = self.by_field.get(field, {})
        for value in values:
            bucket = index.get(value)
            if bucket is not None:
                bucket.pop(group, None)
                if not bucket:
                    del index[value]
        if not index:
            self.by_field.pop(field, None)

    def groups(self) -> list[Group]:
        found = list(self.unindexed)
        for index in self.by_field.values():
            for bucket in index.values():
                found.extend(bucket)
        return list(dict.fromkeys(found))

    def candidates(self, event: ChangeEvent) -> Iterator[Group]:
        yield from self.unindexed
        if not self.by_field:
            return
        for field, index in self.by_field.items():
            keys = index_keys((*path_values(event.doc, field), *path_values(event.before, field)))
            buckets = [bucket for key in dict.fromkeys(keys) if (bucket := index.get(key))]
            if len(buckets) == 1:
                yield from buckets[0]
            elif buckets:
                yield from dict.fromkeys(group for bucket in buckets for group in bucket)


def _index_key(group: Group) -> tuple[str | None, frozenset[Any]]:
    for field, value in group.restriction_fields.items():
        if hashable(value):
            return field, frozenset([value])
    if group.where is not None:
        for field, values in group.where.constraints.items():
            return field, values
    return None, frozenset()


class _Pass:
    """One fan-out pass being written: each push member's part, and how far it got.

    ``items`` are the members handed several parts at once (a subscriber with two or more
    subscriptions in this pass, or a part trimmed for a member that joined mid-way), each
    merged by its outlet's ``deliver``; ``runs`` are the rest: per group and outlet class,
    members that each get that group's batch whole, written by the class's
    ``deliver_each``. Members are written items first, then runs, ``limit`` per turn."""

    __slots__ = ("batches", "items", "next", "runs", "seq", "size")

    def __init__(self, items: list[tuple[Subscriber, list[tuple[Subscription, Batch]]]],
                 seq: int, batches: list[Batch],
                 runs: list[tuple[DeliverEach, list[Subscription], Batch]]) -> None:
        self.items = items
        self.seq = seq
        self.batches = batches
        self.runs = runs
        self.size = len(items) + sum(len(subs) for _, subs, _ in runs)
        self.next = 0

    def __len__(self) -> int:
        return self.size


def _merged_subscribers(groups: list[Group]) -> dict[Subscriber, None] | set[Subscriber]:
    """The subscribers with two or more push members among these groups: each gets one
    merged hand-over. Only the smaller groups are walked; the largest (the thousand portal
    pages on ``products``) is asked by lookup, so a broadcast costs nothing per member here."""
    if len(groups) == 1:
        return groups[0].repeats
    largest = max(groups, key=lambda g: len(g.pushed))
    merged = set(largest.repeats)
    seen: set[Subscriber] = set()
    within = largest.subscribers
    for group in groups:
        if group is largest:
            continue
        for sub in group.pushed:
            subscriber = sub.subscriber
            if subscriber in seen or subscriber in within:
                merged.add(subscriber)
            else:
                seen.add(subscriber)
    return merged


class Hub:
    """Assigns ``seq``, keeps the replay ring, routes changes to groups, fans them out."""

    def __init__(self, *, collections: tuple[str, ...] | list[str] | None = None,
                 buffer_size: int = 10_000, queue_size: int = 1_000,
                 policy: OverflowPolicy = "coalesce", first_seq: int | None = None,
                 metrics: EngineMetrics | None = None, clock_ms: ClockMs = _now_ms,
                 fanout_chunk: int = FANOUT_CHUNK) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if fanout_chunk < 1:
            raise ValueError(f"fanout_chunk must be >= 1, got {fanout_chunk!r}")
        self.collections = tuple(collections) if collections is not None else None
        self.queue_size = queue_size
        self.policy: OverflowPolicy = policy
        self.metrics = metrics or EngineMetrics()
        self.fanout_chunk = fanout_chunk
        self._clock_ms = clock_ms
        # Start from the clock so another process's (or an earlier run's) seq never
        # lands inside ours: resuming across instances resyncs instead of replaying wrongly.
        self._seq = first_seq if first_seq is not None else clock_ms() * 1000
        self._ring: deque[ChangeEvent] = deque(maxlen=buffer_size)
        self._routes: dict[str, _Routes] = {}
        self._groups: dict[tuple[Hashable, ...], Group] = {}
        self._barrier: dict[str, int] = {}
        self._subscribers: set[Subscriber] = set()
        # Push fan-out: groups with pending changes, the pass being written, the next turn.
        self._dirty: dict[Group, None] = {}
        self._pass: _Pass | None = None
        self._turn: asyncio.Handle | None = None
        self._settled = self._seq

    @property
    def seq(self) -> int:
        """The ``seq`` of the last emitted change (a snapshot taken now is complete up to it)."""
        return self._seq

    @property
    def settled_seq(self) -> int:
        """Every push member has been handed every change up to this ``seq``."""
        if self._pass is None and not self._dirty:
            return self._seq
        return self._settled

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

    def group_sizes(self) -> list[int]:
        """Members per group, largest first."""
        return sorted((len(g) for g in self._groups.values()), reverse=True)

    def subscriber(self, *, maxsize: int | None = None, policy: OverflowPolicy | None = None,
                   outlet: Outlet | None = None) -> Subscriber:
        """A new consumer: with its own bounded queue, or pushing to ``outlet``."""
        subscriber = Subscriber(self, maxsize=maxsize or self.queue_size,
                                policy=policy or self.policy, outlet=outlet)
        self._subscribers.add(subscriber)
        return subscriber

    def subscribe(self, subscriber: Subscriber, sub_id: str, collection: str, *,
                  where: Filter | None = None, restriction: dict[str, Any] | None = None,
                  resume_from: int | None = None) -> Subscription:
        """Send ``subscribed``, then replay from ``resume_from`` (or ``resync``), then join
        the subscription's group."""
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
            self._replay(sub, resume_from)
            if not sub.active:
                return sub
        sub.since = self._seq
        self._join(sub)
        return sub

    def _replay(self, sub: Subscription, resume_from: int) -> None:
        replayed = [d for event in self._since(resume_from)
                    if event.collection == sub.collection and (d := sub.route(event)) is not None]
        subscriber = sub.subscriber
        if subscriber.outlet is None:
            for delivery in replayed:
                subscriber.offer(sub, delivery)
                if not sub.active:
                    return
        elif replayed:
            self.metrics.deliveries += len(replayed)
            subscriber.outlet.deliver([(sub, Batch(replayed))], self.settled_seq)

    def _join(self, sub: Subscription) -> None:
        key = sub.group_key()
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(key, sub)
            self._routes.setdefault(sub.collection, _Routes()).add(group)
        if sub.subscriber.outlet is None:
            group.pulled[sub] = None
        else:
            group.push(sub)
        sub.group = group

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
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        self._pass = None
        self._dirty.clear()
        for subscriber in list(self._subscribers):
            subscriber.close()

    def detach(self, sub: Subscription) -> None:
        if not sub.active:
            return
        sub.active = False
        group, sub.group = sub.group, None
        if group is None:
            return
        group.pulled.pop(sub, None)
        group.unpush(sub)
        if not group.pulled and not group.pushed and self._groups.get(group.key) is group:
            del self._groups[group.key]
            self._dirty.pop(group, None)
            routes = self._routes.get(group.collection)
            if routes is not None:
                routes.remove(group)

    def resync(self, sub: Subscription, reason: str) -> None:
        """End ``sub`` with a ``resync`` message: its client reloads a snapshot."""
        self.detach(sub)
        sub.subscriber.subscriptions.pop(sub.id, None)
        sub.subscriber.send_control({"type": "resync", "id": sub.id, "reason": reason})
        self.metrics.resyncs += 1

    def publish(self, *, op: str, collection: str, key: Any, doc: Document | None,
                before: Document | None, changes: Changes | None, at: int | None = None,
                token: Any = None) -> ChangeEvent:
        """Emit one change: next ``seq``, into the ring, to every group it concerns."""
        self._seq += 1
        event = ChangeEvent(self._seq, op, collection, key, doc, before, changes,  # type: ignore[arg-type]
                            at if at is not None else self._clock_ms(), token)
        self._ring.append(event)
        self.metrics.changes[collection] += 1
        routes = self._routes.get(collection)
        if routes is None:
            return event
        pushed = False
        # A copy: a cut-off during the loop removes groups from the index.
        for group in list(routes.candidates(event)):
            delivery = group.route(event)
            if delivery is None:
                continue
            if group.pushed:
                group.pending.append(delivery)
                self._dirty[group] = None
                pushed = True
            if group.pulled:
                for sub in list(group.pulled):
                    sub.subscriber.offer(sub, delivery.for_subscription(sub.id))
        if pushed:
            self._schedule()
        return event

    # ---- push fan-out -----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._turn is not None or self._pass is not None:
            return  # the pass being written starts the next one when it ends
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no event loop (a script, a unit test): hand it over now
            return
        self._turn = loop.call_soon(self._step)

    def flush(self) -> None:
        """Write every pending fan-out pass to the end, now."""
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        while self._pass is not None or self._dirty:
            self._write(limit=None)

    def _step(self) -> None:
        self._turn = None
        self._write(limit=self.fanout_chunk)
        if self._pass is not None or self._dirty:
            self._turn = asyncio.get_running_loop().call_soon(self._step)

    def _write(self, limit: int | None) -> None:
        current = self._pass
        if current is None:
            current = self._pass = self._start_pass()
        size = len(current)
        end = size if limit is None else min(size, current.next + limit)
        seq = current.seq
        items = current.items
        done = current.next
        for n in range(done, min(end, len(items))):
            subscriber, parts = items[n]
            if not subscriber.closed and subscriber.outlet is not None:
                subscriber.outlet.deliver(parts, seq)
        if end > len(items):
            self._write_runs(current, max(0, done - len(items)), end - len(items))
        current.next = end
        if end >= size:
            self._pass = None
            self._settled = seq
            metrics = self.metrics
            metrics.fanout_passes += 1
            # Delivery latency: from the change to its hand-over to the pass's last member.
            now = self._clock_ms()
            for batch in current.batches:
                for delivery in batch.deliveries:
                    if delivery.event is not None:
                        metrics.delivery.observe(max(0.0, now - delivery.event.at))

    def _write_runs(self, current: _Pass, done: int, end: int) -> None:
        """Runs' members from ``done`` to ``end`` (counted over the runs alone)."""
        seq = current.seq
        delivered = start = 0
        for write, subs, batch in current.runs:
            stop = start + len(subs)
            if stop > done and start < end:
                if start >= done and stop <= end:
                    taken = write(subs, batch, seq)
                else:
                    taken = write(subs[max(done, start) - start:min(end, stop) - start],
                                  batch, seq)
                delivered += taken * batch.size
            start = stop
        self.metrics.deliveries += delivered

    def _start_pass(self) -> _Pass:
        dirty, self._dirty = self._dirty, {}
        groups = [group for group in dirty if group.pending]
        merged = _merged_subscribers(groups)
        members: dict[Subscriber, list[tuple[Subscription, Batch]]] = {}
        runs: list[tuple[DeliverEach, list[Subscription], Batch]] = []
        batches: list[Batch] = []
        delivered = 0
        for group in groups:
            batch = Batch(group.pending)
            batches.append(batch)
            group.pending = []
            first = batch.first_seq
            # Some member joined or replayed while the batch was pending: it gets only the
            # part after its ``since``.
            late = first <= group.joined
            for kind, subs in group.kinds.items():
                if not merged and not late:
                    whole = list(subs)
                else:
                    whole = []
                    for sub in subs:
                        part: Batch | None = batch
                        if late and sub.since >= first:
                            part = batch.after(sub.since)
                        elif sub.subscriber not in merged:
                            whole.append(sub)
                            continue
                        if part is None:
                            continue
                        delivered += part.size
                        parts = members.get(sub.subscriber)
                        if parts is None:
                            members[sub.subscriber] = [(sub, part)]
                        else:
                            parts.append((sub, part))
                if whole:
                    runs.append((getattr(kind, "deliver_each", deliver_each), whole, batch))
        self.metrics.deliveries += delivered
        return _Pass(list(members.items()), self._seq, batches, runs)

    def history_lost(self, collection: str, reason: str) -> int:
        """Tell every subscription of ``collection`` to resync; returns how many."""
        self._barrier[collection] = self._seq
        routes = self._routes.pop(collection, None)
        if routes is None:
            return 0
        subs = [sub for group in routes.groups() for sub in (*group.pulled, *group.pushed)]
        for sub in subs:
            self.resync(sub, reason)
        return len(subs)
