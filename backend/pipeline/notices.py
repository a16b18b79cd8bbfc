"""Notifications, audit entries and stock alerts: idempotent across instances, because
their ids are deterministic (the instance that writes second changes nothing)."""

from __future__ import annotations

import time
from collections import OrderedDict

from backend.domain.clock import ms_between, now_iso
from backend.pipeline.batch import InsertBatcher
from backend.pipeline.context import Work
from streaming import ChangeEvent, Document

MESSAGES = {
    "reserved": "Items reserved for order {id}.",
    "paid": "Payment received for order {id}.",
    "processing": "Order {id} is being prepared.",
    "shipped": "Order {id} has shipped.",
    "delivered": "Order {id} was delivered.",
    "rejected": "Order {id} was rejected: {reason}.",
    "payment_failed": "Payment for order {id} failed: {reason}.",
    "cancelled": "Order {id} was cancelled.",
}
FAILURES = frozenset({"rejected", "payment_failed"})
RECORDED_KEEP = 20_000  # orders whose recorded history length this process remembers


class Notices:
    """Tells customers and admins what happened, and keeps the audit trail."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self.admins: list[str] = []
        self._recorded: OrderedDict[str, int] = OrderedDict()
        # Orders being recorded now, each with the newest copy that arrived meanwhile: one
        # recording per order at a time, so two quick events do not write a stage twice.
        self._recording: dict[str, Document] = {}
        self.audit = InsertBatcher(work.db.audit, spawn=work.spawn)
        self.notifications = InsertBatcher(work.db.notifications, spawn=work.spawn)

    async def load_admins(self) -> None:
        """Who gets the stock alerts."""
        self.admins = [str(u["_id"]) async for u in
                       self.work.db.users.find({"role": "admin"}, {"_id": 1})]

    async def record_transition(self, order: Document) -> None:
        """One audit entry per stage, and the customer's notification of it.

        Every stage of the history this process has not recorded yet, not only the last:
        a change stream that looks documents up late (NX-27017, MongoDB's updateLookup)
        can deliver two quick transitions both carrying the second, and the first then
        arrives as no change at all; another instance that recorded it may have died
        half-way.
        """
        order_id = str(order["_id"])
        if order_id in self._recording:  # the recording under way takes this copy next
            if len(order.get("history") or []) >= \
                    len(self._recording[order_id].get("history") or []):
                self._recording[order_id] = order
            return
        self._recording[order_id] = order
        try:
            while True:
                latest = self._recording[order_id]
                if not await self._record_history(order_id, latest) \
                        or self._recording[order_id] is latest:
                    return  # done, or the database failed: the next event or sweep tries again
        finally:
            del self._recording[order_id]

    async def _record_history(self, order_id: str, order: Document) -> bool:
        history = order.get("history") or []
        done = self._recorded.get(order_id, 0)
        for index in range(done, len(history)):
            if not await self._record_stage(order, index):
                return False
            self._recorded[order_id] = index + 1
            self._recorded.move_to_end(order_id)
        while len(self._recorded) > RECORDED_KEEP:
            self._recorded.popitem(last=False)
        return True

    async def _record_stage(self, order: Document, index: int) -> bool:
        started = time.perf_counter()
        try:
            return await self._write_stage(order, index)
        finally:
            self.work.stages.record("audit_and_notice", started)

    async def _write_stage(self, order: Document, index: int) -> bool:
        history = order["history"]
        entry = history[index]
        status = entry["status"]
        previous = history[index - 1]["at"] if index else entry["at"]
        audit = {"_id": f"{order['_id']}:{index + 1}:{status}",
                 "correlation_id": order.get("correlation_id"), "order_id": order["_id"],
                 "stage": status, "event": "entered", "actor": entry.get("by"),
                 "at": entry["at"], "duration_ms": ms_between(previous, entry["at"])}
        if not await self.audit.insert(audit):
            return False
        if status not in MESSAGES:
            return True
        message = MESSAGES[status].format(id=order["_id"],
                                          reason=order.get("failure_reason") or "unknown")
        return await self.notify(f"{order['_id']}:{status}", str(order["user_id"]),
                                 "failure" if status in FAILURES else "status", message,
                                 order_id=str(order["_id"]))

    async def notify(self, notification_id: str, user_id: str, kind: str, message: str, *,
                     order_id: str | None = None) -> bool:
        """Write a notification once (a second write of the same id changes nothing)."""
        doc = {"_id": notification_id, "user_id": user_id, "order_id": order_id, "kind": kind,
               "message": message, "created_at": now_iso(), "read": False}
        written = await self.notifications.insert(doc)
        if written:
            self.work.engine.nudge("notifications")
        return written

    def check_stock(self, event: ChangeEvent) -> None:
        """Alert every admin when a product drops below its threshold or sells out."""
        alert = stock_alert(event)
        if alert is None:
            return
        kind, text = alert
        after = event.doc or {}
        for admin in self.admins:
            self.work.spawn(self.notify(f"{kind}:{event.key}:{after.get('updated_at')}:{admin}",
                                        admin, kind, text))


def stock_alert(event: ChangeEvent) -> tuple[str, str] | None:
    """``(kind, message)`` when a product change crosses below its threshold or to 0."""
    after, before = event.doc or {}, event.before or {}
    threshold = int(after.get("low_stock_threshold", 10))
    new, old = after.get("stock"), before.get("stock")
    if not isinstance(new, int) or not isinstance(old, int) or new >= old:
        return None
    if new == 0:
        return "sold_out", f"{after.get('name')} ({event.key}) is sold out."
    if new < threshold <= old:
        return "low_stock", f"{after.get('name')} ({event.key}) is low: {new} left."
    return None
