"""The order pipeline, driven by change events on ``orders`` (never by polling for work).

pending --reserve stock--> reserved --pay--> paid --> processing   (then an admin ships)
pending --out of stock--> rejected;  reserved --declined--> payment_failed (stock released)

Exactly once, with several workers or app instances: a worker first *claims*
an order with a conditional update (status + no live claim), every transition
is conditional on the status and the claim, and stock moves are exactly once
through ``backend.stock``. A cancelled order's captured payment is refunded
by whichever instance claims ``refund: "due"`` first. Notifications and audit
entries have deterministic ids, so the instance that writes second changes
nothing. A reconciler re-drives orders stuck longer than a timeout, finishes
half-done stock moves and refunds; claims older than the timeout may be taken
over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from backend import stock
from backend.analytics import iso_seconds_ago
from backend.orders import apply_transition
from streaming import BreakerOpenError, ChangeEngine, ChangeEvent

logger = logging.getLogger("changecast.pipeline")

Document = dict[str, Any]
AUTOMATIC = {"pending", "reserved", "paid"}  # statuses the pipeline moves on by itself
FRAUD_CHECK_ABOVE_CENTS = 100_000
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
REFUNDED = "Your payment of {amount} for order {id} was refunded ({refund})."


@dataclass(frozen=True, slots=True)
class PaymentResult:
    ok: bool
    transaction_id: str | None
    reason: str | None
    duration_ms: float


class PaymentGateway:
    """A bank stand-in: success rate, a delay distribution, a slower fraud check on big totals."""

    def __init__(self, *, success_rate: float = 0.9, latency_ms: tuple[int, int] = (100, 800),
                 concurrency: int = 64, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not 0 <= success_rate <= 1:
            raise ValueError(f"success_rate must be within 0..1, got {success_rate!r}")
        self.success_rate = success_rate
        self.latency_ms = latency_ms
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.in_flight = 0
        self.refunds: dict[str, str] = {}  # transaction id -> refund id

    async def charge(self, total_cents: int) -> PaymentResult:
        """Charge ``total_cents``; waits like a bank would, never blocking other orders."""
        async with self._slots:
            self.in_flight += 1
            started = time.perf_counter()
            try:
                delay = self._rng.uniform(*self.latency_ms)
                if total_cents > FRAUD_CHECK_ABOVE_CENTS:
                    delay += self._rng.uniform(500, 1_500)
                await self._sleep(delay / 1000)
                ok = self._rng.random() < self.success_rate
            finally:
                self.in_flight -= 1
        duration = (time.perf_counter() - started) * 1000
        if ok:
            return PaymentResult(True, "TXN-" + uuid.uuid4().hex[:12].upper(), None, duration)
        return PaymentResult(False, None, "card declined", duration)

    async def refund(self, transaction_id: str, total_cents: int) -> str:
        """Refund a captured payment; the bank's answer is the refund id. Idempotent on the
        transaction id, as a real gateway's refund call is with an idempotency key."""
        if transaction_id not in self.refunds:
            async with self._slots:
                await self._sleep(self._rng.uniform(*self.latency_ms) / 1000)
            self.refunds.setdefault(transaction_id, "RFD-" + uuid.uuid4().hex[:12].upper())
        return self.refunds[transaction_id]


class Pipeline:
    """Workers, payment, notifications, audit and the reconciler of one instance."""

    def __init__(self, db: AsyncDatabase[Document], engine: ChangeEngine, *,
                 gateway: PaymentGateway | None = None, reconcile_after_s: float = 30.0,
                 max_in_flight: int = 512, instance: str | None = None) -> None:
        self.db = db
        self.engine = engine
        self.gateway = gateway or PaymentGateway()
        self.reconcile_after_s = reconcile_after_s
        self.instance = instance or uuid.uuid4().hex[:8]
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._in_flight: set[str] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: list[asyncio.Task[None]] = []
        self._unlisten: Callable[[], None] | None = None
        self.stage_ms: dict[str, list[float]] = {}
        self.counters = {"transitions": 0, "claims_lost": 0, "reconciled": 0,
                         "reconcile_sweeps": 0, "stock_repairs": 0, "refunds": 0, "errors": 0}
        self._admins: list[str] = []
        self._refunding: set[str] = set()

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to changes, pick up unfinished orders, start the sweeps."""
        self._admins = [str(u["_id"]) async for u in self.db.users.find({"role": "admin"},
                                                                        {"_id": 1})]
        self._unlisten = self.engine.listen(self._on_change)
        self._runners = [asyncio.create_task(self._dispatch(), name="pipeline-dispatch"),
                         asyncio.create_task(self._reconcile_loop(), name="pipeline-reconcile")]
        await self.reconcile(older_than_s=0)  # orders left over from before this start

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for task in [*self._runners, *self._tasks]:
            task.cancel()
        for task in [*self._runners, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runners.clear()

    def snapshot(self) -> dict[str, Any]:
        stages = {}
        for stage, samples in self.stage_ms.items():
            ordered = sorted(samples[-2000:])
            p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
            stages[stage] = {"count": len(samples),
                             "avg_ms": round(sum(ordered) / len(ordered), 1),
                             "p95_ms": round(p95, 1)}
        return {"instance": self.instance, "backlog": self._queue.qsize(),
                "in_flight": len(self._in_flight), "payments_in_flight": self.gateway.in_flight,
                "payment_concurrency": self.gateway.concurrency,
                "stages": stages, **self.counters}

    # ---- events -----------------------------------------------------------------------------

    def _on_change(self, event: ChangeEvent) -> None:
        if event.collection == "orders" and event.doc is not None:
            status = event.doc.get("status")
            if status in AUTOMATIC:
                self._queue.put_nowait(str(event.key))
            if event.op == "insert" or (event.changes and "status" in event.changes.set):
                self._spawn(self._record_transition(event.doc))
            if event.doc.get("refund") == "due":
                self._spawn(self._refund(str(event.key)))
        elif event.collection == "products" and event.doc is not None:
            self._check_stock(event)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        while True:
            order_id = await self._queue.get()
            if order_id in self._in_flight:
                continue
            await self._slots.acquire()
            self._in_flight.add(order_id)
            task = asyncio.create_task(self._drive(order_id))
            self._tasks.add(task)
            task.add_done_callback(lambda t, oid=order_id: self._done(t, oid))

    def _done(self, task: asyncio.Task[None], order_id: str) -> None:
        self._tasks.discard(task)
        self._in_flight.discard(order_id)
        self._slots.release()

    # ---- driving one order ------------------------------------------------------------------

    async def _drive(self, order_id: str) -> None:
        order: Document | None = None
        correlation = None
        try:
            # Claimed once; each step hands on the updated document, claim included.
            order = await self._claim(order_id)
            while order is not None:
                correlation = order.get("correlation_id")
                status = order["status"]
                if status == "pending":
                    order = await self._reserve(order)
                elif status == "reserved":
                    order = await self._pay(order)
                elif status == "paid":
                    order = await self._advance(order, "processing", "pipeline")
                else:
                    return
        except (PyMongoError, BreakerOpenError) as exc:
            self.counters["errors"] += 1
            logger.warning("pipeline paused on %s: %s", order_id, exc,
                           extra={"order_id": order_id, "correlation_id": correlation})

    async def _claim(self, order_id: str) -> Document | None:
        """Take the order for this instance, unless a live claim of another holds it.

        Read, decide, then compare-and-set on the observed status and claim: only
        equality conditions, which NX-27017 answers from its index (an ``$or`` makes it
        scan the collection).
        """
        current = await self.db.orders.find_one({"_id": order_id})
        if current is None or current["status"] not in AUTOMATIC:
            return None
        holder = current.get("claim")
        now_ms = int(time.time() * 1000)
        stale = now_ms - int(self.reconcile_after_s * 1000)
        if holder not in (None, self.instance) and int(current.get("claim_at") or 0) >= stale:
            return None  # another instance is on it
        order: Document | None = await self.db.orders.find_one_and_update(
            {"_id": order_id, "status": current["status"], "claim": holder},
            {"$set": {"claim": self.instance, "claim_at": now_ms}},
            return_document=ReturnDocument.AFTER)
        return order

    async def _advance(self, order: Document, target: str, actor: str, *,
                       extra: dict[str, Any] | None = None) -> Document | None:
        release = {"claim": None} if target not in AUTOMATIC else {}
        updated = await apply_transition(self.db, order, target, actor=actor,
                                         extra={**release, **(extra or {})},
                                         condition={"claim": self.instance})
        if updated is None:
            self.counters["claims_lost"] += 1
            return None
        self.counters["transitions"] += 1
        self.engine.nudge("orders")
        logger.info("order %s: %s -> %s", order["_id"], order["status"], target,
                    extra={"correlation_id": order.get("correlation_id"),
                           "order_id": order["_id"], "stage": target})
        return updated

    async def _reserve(self, order: Document) -> Document | None:
        started = time.perf_counter()
        order_id, items = str(order["_id"]), order["items"]
        logger.debug("reserving %d items", len(items),
                     extra={"correlation_id": order.get("correlation_id"), "order_id": order_id})
        failure, taken = None, 0
        for item in items:
            # Exactly once even when this is a re-drive of an attempt that died half-way:
            # the product remembers which orders it gave units to (backend.stock).
            failure = await stock.take(self.db, order_id, item)
            if failure is not None:
                break
            taken += 1
        if taken:  # a nudge promises a change: the watcher treats silence after it as a stall
            self.engine.nudge("products")
        if failure is not None:
            moved = await self._advance(order, "rejected", "pipeline",
                                        extra={"failure_reason": failure})
        else:
            moved = await self._advance(order, "reserved", "pipeline")
        # Ours, or whatever the order became meanwhile, says commit or give back.
        await stock.settle_takes(self.db, order_id, items, order=moved)
        self._stage("reserve", started)
        return moved if moved is not None and moved["status"] == "reserved" else None

    async def _pay(self, order: Document) -> Document | None:
        started = time.perf_counter()
        result = await self.gateway.charge(int(order["total_cents"]))
        logger.info("payment %s in %.0f ms", "captured" if result.ok else "declined",
                    result.duration_ms, extra={"correlation_id": order.get("correlation_id"),
                                               "order_id": order["_id"], "stage": "payment"})
        payment = {"status": "captured" if result.ok else "declined",
                   "transaction_id": result.transaction_id,
                   "duration_ms": round(result.duration_ms, 1)}
        self._stage("payment", started)
        if result.ok:
            return await self._advance(order, "paid", "payment", extra={"payment": payment})
        failed = await self._advance(order, "payment_failed", "payment",
                                     extra={"payment": payment, "failure_reason": result.reason,
                                            "restock": "due"})
        if failed is not None:
            await stock.restock(self.db, self.engine, failed)
        return None

    async def _refund(self, order_id: str) -> None:
        """Refund a cancelled order's captured payment, once: claim it (``refund: "due"`` →
        this instance), call the bank, then record it. A claim older than the reconcile
        timeout goes back to due (the bank call is idempotent on the transaction id)."""
        if order_id in self._refunding:
            return
        self._refunding.add(order_id)
        holder = f"processing:{self.instance}"
        try:
            order = await self.db.orders.find_one_and_update(
                {"_id": order_id, "refund": "due"},
                {"$set": {"refund": holder, "refund_at": int(time.time() * 1000)}},
                return_document=ReturnDocument.AFTER)
            if order is None:
                return  # done, or another instance has it
            payment = order["payment"]
            refund_id = await self.gateway.refund(payment["transaction_id"],
                                                  int(order["total_cents"]))
            done = await self.db.orders.find_one_and_update(
                {"_id": order_id, "refund": holder},
                {"$set": {"refund": "done", "updated_at": stock.now_iso(),
                          "payment": {**payment, "status": "refunded", "refund_id": refund_id}}},
                return_document=ReturnDocument.AFTER)
            if done is None:
                return
            self.counters["refunds"] += 1
            self.engine.nudge("orders")
            logger.info("order %s: payment refunded (%s)", order_id, refund_id,
                        extra={"correlation_id": order.get("correlation_id"),
                               "order_id": order_id, "stage": "refund"})
            await self._notify(f"{order_id}:refunded", str(order["user_id"]), "status",
                               REFUNDED.format(amount=f"${int(order['total_cents']) / 100:,.2f}",
                                               id=order_id, refund=refund_id),
                               order_id=order_id)
        except (PyMongoError, BreakerOpenError) as exc:
            logger.warning("refund of %s paused: %s", order_id, exc, extra={"order_id": order_id})
        finally:
            self._refunding.discard(order_id)

    async def _refunds_due(self, cutoff_ms: int) -> None:
        """Refunds never started, or claimed by an instance that went quiet, go again."""
        for doc in await self.db.orders.find({"refund": {"$regex": "^processing:"},
                                              "refund_at": {"$lte": cutoff_ms}},
                                             {"refund": 1}).to_list():
            await self.db.orders.update_one({"_id": doc["_id"], "refund": doc["refund"]},
                                            {"$set": {"refund": "due"}})
        for doc in await self.db.orders.find({"refund": "due"}, {"_id": 1}).to_list():
            self._spawn(self._refund(str(doc["_id"])))

    def _stage(self, stage: str, started: float) -> None:
        samples = self.stage_ms.setdefault(stage, [])
        samples.append((time.perf_counter() - started) * 1000)
        if len(samples) > 10_000:
            del samples[:5_000]

    # ---- notifications and audit (idempotent across instances) ------------------------------

    async def _record_transition(self, order: Document) -> None:
        history = order.get("history") or []
        if not history:
            return
        entry = history[-1]
        status = entry["status"]
        previous = history[-2]["at"] if len(history) > 1 else entry["at"]
        audit = {"_id": f"{order['_id']}:{len(history)}:{status}",
                 "correlation_id": order.get("correlation_id"), "order_id": order["_id"],
                 "stage": status, "event": "entered", "actor": entry.get("by"),
                 "at": entry["at"], "duration_ms": _ms_between(previous, entry["at"])}
        with contextlib.suppress(DuplicateKeyError, PyMongoError):
            await self.db.audit.insert_one(audit)
        if status in MESSAGES:
            message = MESSAGES[status].format(id=order["_id"],
                                              reason=order.get("failure_reason") or "unknown")
            kind = "failure" if status in {"rejected", "payment_failed"} else "status"
            await self._notify(f"{order['_id']}:{status}", str(order["user_id"]), kind,
                               message, order_id=str(order["_id"]))

    async def _notify(self, notification_id: str, user_id: str, kind: str, message: str, *,
                      order_id: str | None = None) -> None:
        doc = {"_id": notification_id, "user_id": user_id, "order_id": order_id, "kind": kind,
               "message": message, "created_at": stock.now_iso(), "read": False}
        with contextlib.suppress(DuplicateKeyError, PyMongoError):
            await self.db.notifications.insert_one(doc)
            self.engine.nudge("notifications")

    def _check_stock(self, event: ChangeEvent) -> None:
        after, before = event.doc or {}, event.before or {}
        threshold = int(after.get("low_stock_threshold", 10))
        new, old = after.get("stock"), before.get("stock")
        if not isinstance(new, int) or not isinstance(old, int) or new >= old:
            return
        if new == 0:
            kind, text = "sold_out", f"{after.get('name')} ({event.key}) is sold out."
        elif new < threshold <= old:
            kind, text = "low_stock", f"{after.get('name')} ({event.key}) is low: {new} left."
        else:
            return
        for admin in self._admins:
            self._spawn(self._notify(f"{kind}:{event.key}:{after.get('updated_at')}:{admin}",
                                     admin, kind, text))

    # ---- reconciler --------------------------------------------------------------------------

    async def reconcile(self, *, older_than_s: float | None = None) -> int:
        """Re-drive orders stuck in an automatic status; returns how many were found."""
        age = self.reconcile_after_s if older_than_s is None else older_than_s
        cutoff = iso_seconds_ago(age)
        stuck = await self.db.orders.find(
            {"status": {"$in": sorted(AUTOMATIC)}, "updated_at": {"$lte": cutoff}},
            {"_id": 1}).to_list()
        for doc in stuck:
            self._queue.put_nowait(str(doc["_id"]))
        # Counted as soon as they are queued: the sweeps below await, and may fail or be
        # cancelled while the queued orders are already being driven.
        self.counters["reconcile_sweeps"] += 1
        self.counters["reconciled"] += len(stuck)
        if stuck:
            logger.info("reconciler re-drives %d stuck orders", len(stuck))
        swept = await stock.sweep(self.db, self.engine, stale_before=cutoff)
        self.counters["stock_repairs"] += sum(swept.values())
        await self._refunds_due(int((time.time() - self.reconcile_after_s) * 1000))
        return len(stuck)

    async def _reconcile_loop(self) -> None:
        interval = max(0.5, min(self.reconcile_after_s / 2, 10.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except (PyMongoError, BreakerOpenError) as exc:
                logger.warning("reconcile sweep failed: %s", exc)


def _ms_between(start: str, end: str) -> float:
    from datetime import datetime

    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return 0.0
    return round((b - a).total_seconds() * 1000, 1)

