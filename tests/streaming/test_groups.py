"""Subscription groups and push fan-out: a change is routed once per group, members get
the same batch, passes are bounded per loop turn, and members stay independent."""

from __future__ import annotations

import asyncio
from typing import Any

from streaming.filters import compile_filter
from streaming.hub import Batch, Hub, Subscriber, Subscription


class Recorder:
    """An outlet that keeps what it is handed."""

    def __init__(self) -> None:
        self.passes: list[tuple[list[tuple[Subscription, Batch]], int]] = []
        self.controls: list[dict[str, Any]] = []

    def deliver(self, items: list[tuple[Subscription, Batch]], seq: int) -> None:
        self.passes.append((items, seq))

    def control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    def seqs(self, sub_id: str | None = None) -> list[int]:
        return [d.event.seq for items, _ in self.passes for sub, batch in items
                if sub_id is None or sub.id == sub_id
                for d in batch.deliveries if d.event is not None]


def make_hub(**kwargs: Any) -> Hub:
    return Hub(collections=["orders", "products"], first_seq=0, clock_ms=lambda: 1_000,
               **kwargs)


def stock(hub: Hub, key: str, value: int, before: int | None = None) -> None:
    doc = {"_id": key, "stock": value, "category": "books"}
    old = {"_id": key, "stock": before, "category": "books"} if before is not None else None
    hub.publish(op="update" if old else "insert", collection="products", key=key, doc=doc,
                before=old, changes=None)


def pushers(hub: Hub, count: int, kind: type[Recorder] = Recorder,
            **subscribe: Any) -> list[tuple[Subscriber, Recorder]]:
    found = []
    for _ in range(count):
        outlet = kind()
        subscriber = hub.subscriber(outlet=outlet)
        subscriber.subscribe("s", "products", **subscribe)
        found.append((subscriber, outlet))
    return found


def test_the_same_query_written_two_ways_is_one_group_and_a_restriction_is_another() -> None:
    hub = make_hub()
    a, b, c = hub.subscriber(), hub.subscriber(), hub.subscriber()
    a.subscribe("x", "orders", where=compile_filter("status = 'paid'"))
    b.subscribe("y", "orders", where=compile_filter("  status='paid' "))
    c.subscribe("x", "orders", where=compile_filter("status = 'paid'"),
                restriction={"user_id": "u1"})
    assert hub.group_sizes() == [2, 1]
    assert a.subscriptions["x"].group is b.subscriptions["y"].group
    a.close()
    b.close()
    assert hub.group_sizes() == [1]


async def test_a_change_is_routed_once_and_every_member_gets_the_same_batch(
    group_routes: list[int],
) -> None:
    hub = make_hub()
    members = pushers(hub, 500)
    stock(hub, "p1", 5)
    stock(hub, "p1", 4, before=5)
    assert len(group_routes) == 2
    hub.flush()
    batches = {id(outlet.passes[0][0][0][1]) for _, outlet in members}
    assert len(batches) == 1  # one shared object: whatever one member encodes, all reuse
    assert all(outlet.seqs() == [1, 2] for _, outlet in members)
    assert hub.metrics.deliveries == 1000


async def test_changes_published_while_a_pass_is_written_go_out_together_in_the_next() -> None:
    hub = make_hub(fanout_chunk=10)
    members = pushers(hub, 35)
    stock(hub, "p1", 5)
    await asyncio.sleep(0)  # one loop turn: the first 10 members
    assert sum(1 for _, outlet in members if outlet.passes) == 10
    assert hub.settled_seq == 0  # not every member has seq 1 yet
    stock(hub, "p1", 4, before=5)
    stock(hub, "p1", 3, before=4)
    for _ in range(10):
        await asyncio.sleep(0)
    for _, outlet in members:
        assert [len(items[0][1]) for items, _ in outlet.passes] == [1, 2]
        assert outlet.seqs() == [1, 2, 3]
    assert hub.settled_seq == 3
    assert hub.metrics.fanout_passes == 2


async def test_a_member_resuming_is_replayed_alone_then_joins_without_a_duplicate() -> None:
    hub = make_hub()
    (_, steady), = pushers(hub, 1)
    stock(hub, "p1", 5)
    stock(hub, "p2", 7)  # both pending: no loop turn yet
    late_outlet = Recorder()
    late = hub.subscriber(outlet=late_outlet)
    late.subscribe("s", "products", resume_from=1)
    assert late_outlet.controls[0]["type"] == "subscribed"
    assert late_outlet.seqs() == [2]  # replayed at once, on its own
    stock(hub, "p2", 6, before=7)
    hub.flush()
    assert late_outlet.seqs() == [2, 3]
    assert steady.seqs() == [1, 2, 3]


async def test_members_with_different_restrictions_never_share_what_they_see() -> None:
    hub = make_hub()
    alice, bob = Recorder(), Recorder()
    for outlet, user in ((alice, "alice"), (bob, "bob")):
        hub.subscriber(outlet=outlet).subscribe("o", "orders", restriction={"user_id": user})
    hub.publish(op="insert", collection="orders", key="a1", doc={"_id": "a1", "user_id": "alice"},
                before=None, changes=None)
    hub.flush()
    assert alice.seqs() == [1] and bob.seqs() == []


async def test_a_member_cut_off_by_its_outlet_resyncs_alone() -> None:
    hub = make_hub()
    (slow, slow_outlet), (_, fast_outlet) = pushers(hub, 2)
    stock(hub, "p1", 5)
    hub.flush()
    slow.cut_off("slow consumer: backlog full", dropped=3)
    assert slow_outlet.controls[-1] == {"type": "resync", "id": "s",
                                        "reason": "slow consumer: backlog full"}
    assert not slow.subscriptions
    stock(hub, "p1", 4, before=5)
    hub.flush()
    assert slow_outlet.seqs() == [1] and fast_outlet.seqs() == [1, 2]
    assert hub.metrics.dropped == 3 and hub.group_sizes() == [1]


async def test_a_member_with_two_subscriptions_gets_both_in_one_hand_over() -> None:
    hub = make_hub()
    outlet = Recorder()
    subscriber = hub.subscriber(outlet=outlet)
    subscriber.subscribe("p", "products")
    subscriber.subscribe("o", "orders")
    stock(hub, "p1", 5)
    hub.publish(op="insert", collection="orders", key="o1", doc={"_id": "o1"}, before=None,
                changes=None)
    hub.flush()
    (items, seq), = outlet.passes
    assert sorted(sub.id for sub, _ in items) == ["o", "p"] and seq == 2


def test_without_an_event_loop_the_fan_out_is_handed_over_at_once() -> None:
    hub = make_hub()
    (_, outlet), = pushers(hub, 1)
    stock(hub, "p1", 5)
    assert outlet.seqs() == [1]


async def test_a_pass_records_delivery_latency_once_per_change_and_counts_itself() -> None:
    clock = [1_000]
    hub = Hub(collections=["products"], first_seq=0, clock_ms=lambda: clock[0])
    pushers(hub, 3)
    stock(hub, "p1", 5)  # at 1,000 ms
    clock[0] = 1_040
    hub.flush()
    summary = hub.metrics.delivery.summary()
    assert summary.count == 1 and summary.p50 == 40
    assert hub.metrics.fanout_passes == 1


class EachRecorder(Recorder):
    """A recorder whose class takes a broadcast group's members in one call."""

    calls: list[int] = []

    @staticmethod
    def deliver_each(subs: list[Subscription], batch: Batch, seq: int) -> int:
        EachRecorder.calls.append(len(subs))
        taken = 0
        for sub in subs:
            if sub.active:
                outlet = sub.subscriber.outlet
                assert isinstance(outlet, EachRecorder)
                outlet.passes.append(([(sub, batch)], seq))
                taken += 1
        return taken


async def test_a_broadcast_group_is_handed_to_each_outlet_class_in_one_call_per_turn() -> None:
    EachRecorder.calls = []
    hub = make_hub(fanout_chunk=100)
    each = [outlet for _, outlet in pushers(hub, 250, EachRecorder)]
    plain = pushers(hub, 150)  # the same group, outlets without deliver_each
    stock(hub, "p1", 5)
    stock(hub, "p1", 4, before=5)
    while hub.settled_seq < hub.seq:
        await asyncio.sleep(0)
    # 400 members in turns of 100: the 250 of one class in three calls, none of them
    # longer than a turn, then the others one by one.
    assert EachRecorder.calls == [100, 100, 50]
    assert all(outlet.seqs() == [1, 2] for outlet in each)
    assert all(outlet.seqs() == [1, 2] for _, outlet in plain)
    assert hub.metrics.deliveries == 800 and hub.metrics.fanout_passes == 1


async def test_a_member_that_leaves_during_a_pass_is_handed_nothing_more() -> None:
    EachRecorder.calls = []
    hub = make_hub(fanout_chunk=10)
    members = pushers(hub, 35, EachRecorder)
    stock(hub, "p1", 5)
    await asyncio.sleep(0)  # the first 10 members
    members[20][0].close()
    while hub.settled_seq < hub.seq:
        await asyncio.sleep(0)
    assert [n for n, (_, outlet) in enumerate(members) if not outlet.passes] == [20]
    assert hub.metrics.deliveries == 34
