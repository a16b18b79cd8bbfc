"""Taking payment for a reserved order, and refunding a cancelled one, exactly once."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from backend.domain import stock
from backend.domain.clock import now_iso, now_ms
from backend.pipeline.context import Work
from backend.pipeline.gateway import PaymentGateway
from backend.pipeline.notices import Notices
from streaming import BreakerOpenError, Document

logger = logging.getLogger("changecast.pipeline")

REFUNDED = "Your payment of {amount} for order {id} was refunded ({refund})."


class Payments:
    """Charges through the gateway, records the outcome, refunds once."""

    def __init__(self, work: Work, gateway: PaymentGateway, notices: Notices) -> None:
        self.work = work
        self.gateway = gateway
        self.notices = notices
        self._refunding: set[str] = set()

    async def charge(self, order: Document, *,
                     ready: Callable[[], Awaitable[bool]] | None = None
                     ) -> dict[str, object] | None:
        """Ask the bank; returns the ``payment`` the order's next transition records, or
        None when ``ready`` (asked once a bank slot is free) said not to."""
        started = time.perf_counter()
        result = await self.gateway.charge(int(order["total_cents"]), ready=ready)
        if result is None:
            return None
        logger.debug("payment %s in %.0f ms", "captured" if result.ok else "declined",
                    result.duration_ms, extra={"correlation_id": order.get("correlation_id"),
                                               "order_id": order["_id"], "stage": "payment"})
        self.work.stages.record("payment", started)
        return {"status": "captured" if result.ok else "declined",
                "transaction_id": result.transaction_id,
                "duration_ms": round(result.duration_ms, 1),
                "reason": result.reason}

    async def refund(self, order_id: str) -> None:
        """Refund a cancelled order's captured payment, once: claim it (``refund: "due"`` →
        this instance), call the bank, then record it. A claim older than the reconcile
        timeout goes back to due (the bank call is idempotent on the transaction id)."""
        if order_id in self._refunding:
            return
        self._refunding.add(order_id)
        holder = f"processing:{self.work.instance}"
        db = self.work.db
        try:
            order = await db.orders.find_one_and_update(
                {"_id": order_id, "refund": "due"},
                {"$set": {"refund": holder, "refund_at": now_ms()}},
                return_document=ReturnDocument.AFTER)
            if order is None:
                return  # done, or another instance has it
            payment = order["payment"]
            refund_id = await self.gateway.refund(payment["transaction_id"],
                                                  int(order["total_cents"]))
            done = await db.orders.find_one_and_update(
                {"_id": order_id, "refund": holder},
                {"$set": {"refund": "done", "updated_at": now_iso(),
                          "payment": {**payment, "status": "refunded", "refund_id": refund_id}}},
                return_document=ReturnDocument.AFTER)
            if done is None:
                return
            self.work.counters.refunds += 1
            self.work.engine.nudge("orders")
            logger.info("order %s: payment refunded (%s)", order_id, refund_id,
                        extra={"correlation_id": order.get("correlation_id"),
                               "order_id": order_id, "stage": "refund"})
            await self.notices.notify(
                f"{order_id}:refunded", str(order["user_id"]), "status",
                REFUNDED.format(amount=f"${int(order['total_cents']) / 100:,.2f}", id=order_id,
                                refund=refund_id), order_id=order_id)
        except (PyMongoError, BreakerOpenError) as exc:
            logger.warning("refund of %s paused: %s", order_id, exc, extra={"order_id": order_id})
        finally:
            self._refunding.discard(order_id)

    async def refunds_due(self) -> None:
        """Refunds never started, or claimed by an instance that went quiet, go again."""
        db = self.work.db
        for doc in await db.orders.find({"refund": {"$regex": "^processing:"},
                                         "refund_at": {"$lte": self.work.stale_ms()}},
                                        {"refund": 1}).to_list():
            await db.orders.update_one({"_id": doc["_id"], "refund": doc["refund"]},
                                       {"$set": {"refund": "due"}})
        for doc in await db.orders.find({"refund": "due"}, {"_id": 1}).to_list():
            self.work.spawn(self.refund(str(doc["_id"])))

    async def restock(self, order: Document) -> None:
        """A failed payment's units go back (exactly once, see backend.domain.stock)."""
        await stock.restock(self.work.db, self.work.engine, order)
