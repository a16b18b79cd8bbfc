"""What a change means to a subscription (``route``), one such decision (``Delivery``),
and a group's decisions of one fan-out pass, shared by its members (``Batch``)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from streaming.events import ChangeEvent, Changes, diff, full_set
from streaming.filters import Filter, Predicate
from streaming.types import DeliveryOp, Document


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
