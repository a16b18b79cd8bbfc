from __future__ import annotations

from typing import Any

import pytest

from streaming.errors import SubscriptionError
from streaming.events import Changes, diff
from streaming.filters import compile_filter
from streaming.hub import Hub, Subscriber, merge_changes


def make_hub(**kwargs: Any) -> Hub:
    return Hub(collections=["orders", "products"], first_seq=0, clock_ms=lambda: 1_000, **kwargs)


def publish(hub: Hub, op: str, key: str, doc: dict[str, Any] | None,
            before: dict[str, Any] | None = None) -> None:
    changes = diff(before, doc) if op == "update" and before and doc else None
    hub.publish(op=op, collection="orders", key=key, doc=doc, before=before, changes=changes)


def messages(sub: Subscriber) -> list[dict[str, Any]]:
    return [d.to_message() for d in sub.drain(10_000)]


def changes_only(sub: Subscriber) -> list[tuple[str, Any, Any]]:
    return [(m["id"], m.get("op", m["type"]), m.get("key")) for m in messages(sub)
            if m["type"] != "subscribed"]


def test_hub_unfiltered_subscription_gets_every_op_with_doc_or_changes() -> None:
    hub = make_hub()
    sub = hub.subscriber()
    sub.subscribe("s1", "orders")
    a = {"_id": "a", "status": "pending"}
    b = {"_id": "a", "status": "paid"}
    publish(hub, "insert", "a", a)
    publish(hub, "update", "a", b, before=a)
    publish(hub, "delete", "a", None, before=b)
    got = messages(sub)
    assert got[0] == {"type": "subscribed", "id": "s1", "seq": 0}
    assert [m["op"] for m in got[1:]] == ["insert", "update", "delete"]
    assert [m["seq"] for m in got[1:]] == [1, 2, 3]
    assert got[1]["doc"] == a
    assert got[2]["changes"] == {"set": {"status": "paid"}, "unset": []}
    assert "doc" not in got[3] and "changes" not in got[3]


def test_hub_filtered_subscription_gets_enter_update_leave() -> None:
    hub = make_hub()
    sub = hub.subscriber()
    sub.subscribe("big", "orders", where=compile_filter("total >= 100"))
    v1 = {"_id": "a", "total": 50}
    v2 = {"_id": "a", "total": 150}
    v3 = {"_id": "a", "total": 175}
    v4 = {"_id": "a", "total": 20}
    publish(hub, "insert", "a", v1)
    publish(hub, "update", "a", v2, before=v1)
    publish(hub, "update", "a", v3, before=v2)
    publish(hub, "update", "a", v4, before=v3)
    got = [m for m in messages(sub) if m["type"] == "change"]
    assert [m["op"] for m in got] == ["enter", "update", "leave"]
    assert got[0]["doc"] == v2
    assert got[1]["changes"]["set"] == {"total": 175}


def test_hub_restriction_cannot_be_widened_by_where() -> None:
    hub = make_hub()
    alice = hub.subscriber()
    alice.subscribe("mine", "orders", where=compile_filter("user_id = 'bob' OR total > 0"),
                    restriction={"user_id": "alice"})
    alice.subscribe("plain", "orders", restriction={"user_id": "alice"})
    publish(hub, "insert", "b1", {"_id": "b1", "user_id": "bob", "total": 5})
    publish(hub, "insert", "a1", {"_id": "a1", "user_id": "alice", "total": 5})
    assert changes_only(alice) == [("mine", "enter", "a1"), ("plain", "insert", "a1")]


def test_hub_routes_through_the_equality_index_not_every_subscriber(
    group_routes: list[int],
) -> None:
    hub = make_hub()
    subs = []
    for n in range(1_000):
        sub = hub.subscriber()
        sub.subscribe("s", "orders", restriction={"user_id": f"u{n}"})
        subs.append(sub)
    publish(hub, "insert", "x", {"_id": "x", "user_id": "u7"})
    assert len(group_routes) == 1
    assert len(subs[7]) == 2 and len(subs[8]) == 1  # subscribed + the change / subscribed


def test_hub_index_sees_a_document_leave_its_indexed_value() -> None:
    hub = make_hub()
    sub = hub.subscriber()
    sub.subscribe("pending", "orders", where=compile_filter("status = 'pending'"))
    v1 = {"_id": "a", "status": "pending"}
    publish(hub, "insert", "a", v1)
    publish(hub, "update", "a", {"_id": "a", "status": "paid"}, before=v1)
    assert changes_only(sub) == [("pending", "enter", "a"), ("pending", "leave", "a")]


def test_hub_coalesces_queued_updates_of_the_same_document_when_full() -> None:
    hub = make_hub(queue_size=3)
    sub = hub.subscriber()
    sub.subscribe("s", "orders")
    sub.drain()
    doc = {"_id": "a", "stock": 0, "name": "x"}
    publish(hub, "insert", "a", doc)
    for stock in range(1, 6):
        new = {**doc, "stock": stock}
        publish(hub, "update", "a", new, before=doc)
        doc = new
    got = messages(sub)
    assert [m["op"] for m in got] == ["insert", "update", "update"]
    assert got[-1]["seq"] == 6 and got[-1]["changes"]["set"] == {"stock": 5}
    assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
    assert hub.metrics.coalesced == 3


def test_hub_cuts_off_a_full_subscriber_with_a_resync_and_counts_drops() -> None:
    hub = make_hub(queue_size=3)
    slow = hub.subscriber()
    fast = hub.subscriber()
    slow.subscribe("s", "orders")
    fast.subscribe("f", "orders")
    slow.drain()
    for n in range(4):
        publish(hub, "insert", f"k{n}", {"_id": f"k{n}"})
        fast.drain()
    got = messages(slow)
    assert got == [{"type": "resync", "id": "s",
                    "reason": "slow consumer: more than 3 changes queued"}]
    assert slow.subscriptions == {} and hub.metrics.dropped == 4
    publish(hub, "insert", "k9", {"_id": "k9"})
    assert len(slow) == 0 and len(fast) == 1  # the cut-off subscription is closed


def test_hub_replays_from_resume_from_without_gap_or_duplicate() -> None:
    hub = make_hub()
    for n in range(5):
        publish(hub, "insert", f"k{n}", {"_id": f"k{n}"})
        hub.publish(op="insert", collection="products", key=f"p{n}", doc={"_id": f"p{n}"},
                    before=None, changes=None)
    sub = hub.subscriber()
    sub.subscribe("s", "orders", resume_from=5)
    publish(hub, "insert", "k5", {"_id": "k5"})
    got = messages(sub)
    assert [m["key"] for m in got[1:]] == ["k3", "k4", "k5"]
    assert [m["seq"] for m in got[1:]] == [7, 9, 11]


@pytest.mark.parametrize(("resume_from", "reason"), [(1, "older than the replay buffer"),
                                                      (99, "ahead of this server")])
def test_hub_resyncs_when_the_gap_cannot_be_replayed(resume_from: int, reason: str) -> None:
    hub = make_hub(buffer_size=3)
    for n in range(6):
        publish(hub, "insert", f"k{n}", {"_id": f"k{n}"})
    sub = hub.subscriber()
    sub.subscribe("s", "orders", resume_from=resume_from)
    got = messages(sub)
    assert got[1]["type"] == "resync" and reason in got[1]["reason"]
    assert sub.subscriptions == {}
    ok = hub.subscriber()
    ok.subscribe("s", "orders", resume_from=3)
    assert [m["key"] for m in messages(ok)[1:]] == ["k3", "k4", "k5"]


def test_hub_history_lost_resyncs_subscribers_of_that_collection_only() -> None:
    hub = make_hub()
    sub = hub.subscriber()
    sub.subscribe("o", "orders", restriction={"user_id": "u1"})
    sub.subscribe("p", "products")
    publish(hub, "insert", "k", {"_id": "k", "user_id": "u1"})
    assert hub.history_lost("orders", "server lost history") == 1
    got = messages(sub)
    assert got[-1] == {"type": "resync", "id": "o", "reason": "server lost history"}
    assert list(sub.subscriptions) == ["p"]
    late = hub.subscriber()
    late.subscribe("o", "orders", resume_from=0)
    assert messages(late)[1]["type"] == "resync"


def test_hub_rejects_unknown_collection_and_duplicate_ids() -> None:
    hub = make_hub()
    sub = hub.subscriber()
    with pytest.raises(SubscriptionError, match="unknown collection 'users'"):
        sub.subscribe("s", "users")
    sub.subscribe("s", "orders")
    with pytest.raises(SubscriptionError, match="already in use"):
        sub.subscribe("s", "orders")
    assert sub.unsubscribe("s") and not sub.unsubscribe("s")


def test_merge_changes_later_paths_win() -> None:
    first = Changes({"a": 1, "b.c": 2, "d": 3}, ("x",))
    second = Changes({"b": {"c": 9}, "x": 1}, ("d",))
    merged = merge_changes(first, second)
    assert merged.set == {"a": 1, "b": {"c": 9}, "x": 1}
    assert merged.unset == ("d",)


async def test_subscriber_get_batch_waits_for_a_delivery() -> None:
    hub = make_hub()
    sub = hub.subscriber()
    async with sub:
        sub.subscribe("s", "orders")
        assert (await sub.get_batch())[0].to_message()["type"] == "subscribed"
        publish(hub, "insert", "a", {"_id": "a"})
        assert [d.to_message()["key"] for d in await sub.get_batch()] == ["a"]
    assert sub.closed and hub.subscriber_count == 0


def test_hub_queued_counts_undelivered_changes_across_subscribers() -> None:
    hub = make_hub()
    first, second = hub.subscriber(), hub.subscriber()
    first.subscribe("s", "orders")
    second.subscribe("s", "orders", where=compile_filter("status = 'paid'"))
    assert hub.queued() == 2  # the two "subscribed" messages
    publish(hub, "insert", "a", {"_id": "a", "status": "pending"})
    assert hub.queued() == 3  # only the unfiltered subscriber wants it
    first.drain()
    assert hub.queued() == 1
