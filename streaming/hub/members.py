"""The members of the fan-out: a ``Subscriber`` (one consumer, with a bounded queue or an
``Outlet``), its ``Subscription``s, and the ``Group`` of subscriptions whose output is
identical. They ask the hub for what only it knows through ``HubSide``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from streaming.events import ChangeEvent, Changes, diff
from streaming.filters import Filter, Predicate, equals_filter
from streaming.hub.deliveries import Batch, Delivery, merge_changes, route
from streaming.metrics import EngineMetrics
from streaming.types import OverflowPolicy


class HubSide(Protocol):
    """What a subscriber asks of its hub (``streaming.hub.Hub`` is one)."""

    metrics: EngineMetrics

    def subscribe(self, subscriber: Subscriber, sub_id: str, collection: str, *,
                  where: Filter | None = None, restriction: dict[str, Any] | None = None,
                  resume_from: int | None = None) -> Subscription: ...

    def detach(self, sub: Subscription) -> None: ...

    def forget(self, subscriber: Subscriber) -> None: ...

    def resync(self, sub: Subscription, reason: str) -> None: ...


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

    def __init__(self, hub: HubSide, *, maxsize: int, policy: OverflowPolicy,
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
