"""The ``Hub``: assigns ``seq``, keeps the replay ring, routes each change to its groups
and writes the push members' fan-out passes (``_Pass``) a bounded number per loop turn."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from streaming.errors import SubscriptionError
from streaming.events import ChangeEvent, Changes
from streaming.filters import Filter
from streaming.hub.deliveries import Batch
from streaming.hub.members import (
    DeliverEach,
    Group,
    Outlet,
    Subscriber,
    Subscription,
    deliver_each,
)
from streaming.hub.routing import Routes
from streaming.metrics import EngineMetrics
from streaming.types import Document, OverflowPolicy

ClockMs = Callable[[], int]

# Members handed their part of a fan-out pass per event-loop turn. Against 256, measured
# alternately on one server pair (1,000 clients, 4 runs each): the same delivery latency
# and CPU per delivery, and the admin's write p99 22 ms instead of 32 at 30 changes/s
# (61 instead of 69 at 70/s): a turn of 128 socket writes is about 1 ms here.
FANOUT_CHUNK = 128


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self._routes: dict[str, Routes] = {}
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
            self._routes.setdefault(sub.collection, Routes()).add(group)
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
