"""Notifications, audit entries and stock alerts: idempotent across instances, because
their ids are deterministic (the instance that writes second changes nothing)."""

from __future__ import annotations

import contextlib

from pymongo.errors import DuplicateKeyError, PyMongoError

from backend.domain.clock import ms_between, now_iso
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


class Notices:
    """Tells customers and admins what happened, and keeps the audit trail."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self.admins: list[str] = []

    async def load_admins(self) -> None:
        """Who gets the stock alerts."""
        self.admins = [str(u["_id"]) async for u in
                       self.work.db.users.find({"role": "admin"}, {"_id": 1})]

    async def record_transition(self, order: Document) -> None:
        """One audit entry per stage, and the customer's notification of it."""
        history = order.get("history") or []
        if not history:
            return
        entry = history[-1]
        status = entry["status"]
        previous = history[-2]["at"] if len(history) > 1 else entry["at"]
        audit = {"_id": f"{order['_id']}:{len(history)}:{status}",
                 "correlation_id": order.get("correlation_id"), "order_id": order["_id"],
                 "stage": status, "event": "entered", "actor": entry.get("by"),
                 "at": entry["at"], "duration_ms": ms_between(previous, entry["at"])}
        with contextlib.suppress(DuplicateKeyError, PyMongoError):
            await self.work.db.audit.insert_one(audit)
        if status in MESSAGES:
            message = MESSAGES[status].format(id=order["_id"],
                                              reason=order.get("failure_reason") or "unknown")
            await self.notify(f"{order['_id']}:{status}", str(order["user_id"]),
                              "failure" if status in FAILURES else "status", message,
                              order_id=str(order["_id"]))

    async def notify(self, notification_id: str, user_id: str, kind: str, message: str, *,
                     order_id: str | None = None) -> None:
        """Write a notification once (a second write of the same id changes nothing)."""
        doc = {"_id": notification_id, "user_id": user_id, "order_id": order_id, "kind": kind,
               "message": message, "created_at": now_iso(), "read": False}
        with contextlib.suppress(DuplicateKeyError, PyMongoError):
            await self.work.db.notifications.insert_one(doc)
            self.work.engine.nudge("notifications")

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
