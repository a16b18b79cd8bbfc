"""Driving orders: one queue of order ids, a claim per order, then each automatic step.

Exactly once, with several workers or app instances: a worker first *claims*
an order with a compare-and-set (status + no live claim), and every
transition is conditional on the status and the claim. A claim older than
the reconcile timeout may be taken over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from backend.domain import stock
from backend.domain.clock import now_ms
from backend.domain.orders import apply_transition
from backend.pipeline.batch import UpdateBatcher
from backend.pipeline.context import AUTOMATIC, Work
from backend.pipeline.payments import Payments
from streaming import BreakerOpenError, Document

# Where the pipeline leaves an order (to an admin, or for good).
FINISHED = frozenset({"processing", "rejected", "payment_failed"})
FINISHED_KEEP = 20_000  # orders whose end this process remembers

logger = logging.getLogger("changecast.pipeline")


class Dispatcher:
    """Takes order ids off a queue and drives each, at most ``max_in_flight`` at once."""

    def __init__(self, work: Work, payments: Payments, *, max_in_flight: int = 512) -> None:
        self.work = work
        self.payments = payments
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.in_flight: set[str] = set()
        # Orders this instance took out of the automatic statuses, which no order re-enters:
        # the change events of their earlier steps, arriving after the last, drive nothing.
        self.finished: OrderedDict[str, None] = OrderedDict()
        # What the change event that queued an order said of it (status, claim): the claim
        # tries that first, without reading the order.
        self._seen: dict[str, Document] = {}
        # Orders this instance claimed as they were placed (``claim_placed``): when of each.
        self._placed: OrderedDict[str, int] = OrderedDict()
        self._slots = asyncio.Semaphore(max_in_flight)
        # Transitions of many orders at once go out in one command (see batch.py).
        self.transitions = UpdateBatcher(work.db.orders, proof_field="transition_id",
                                         spawn=work.spawn)
        # And the stock takes of the orders being reserved at that moment.
        self.takes = stock.TakeBatcher(work.db, spawn=work.spawn)

    def enqueue(self, order_id: str, seen: Document | None = None) -> None:
        """Drive this order (again); an order already being driven is skipped. ``seen``: the
        order as a change event showed it."""
        if seen is not None:
            self._seen[order_id] = seen
        self.queue.put_nowait(order_id)

    def claim_placed(self, order_id: str) -> Document:
        """The claim a new order is written with, so that this instance drives it without
        a write to claim it first. (Should the instance die before it does, the claim goes
        stale and another instance takes the order over, as one it died driving.)"""
        claim_at = now_ms()
        _remember(self._placed, order_id, claim_at)  # placements that failed leave theirs
        return {"claim": self.work.instance, "claim_at": claim_at}

    def _finish(self, order_id: str) -> None:
        _remember(self.finished, order_id, None)

    async def run(self) -> None:
        """The dispatch loop (runs until cancelled)."""
        while True:
            order_id = await self.queue.get()
            if order_id in self.in_flight:
                continue
            if order_id in self.finished:
                self._seen.pop(order_id, None)
                continue
            await self._slots.acquire()
            self.in_flight.add(order_id)
            self.work.spawn(self._drive_and_release(order_id))

    async def _drive_and_release(self, order_id: str) -> None:
        try:
            await self.drive(order_id)
        finally:
            self.in_flight.discard(order_id)
            self._seen.pop(order_id, None)  # what arrived meanwhile was skipped with it
            self._slots.release()

    async def drive(self, order_id: str) -> None:
        """Claim the order, then move it on until it needs somebody else."""
        order: Document | None = None
        correlation = None
        try:
            # Claimed once; each step hands on the updated document, claim included.
            started = time.perf_counter()
            order = await self.claim(order_id)
            self.work.stages.record("claim", started)
            while order is not None:
                correlation = order.get("correlation_id")
                status = order["status"]
                if status == "pending":
                    order = await self.reserve(order)
                elif status == "reserved":
                    order = await self.pay(order)
                elif status == "paid":
                    order = await self.advance(order, "processing", "pipeline")
                else:
                    return
        except (PyMongoError, BreakerOpenError) as exc:
            self.work.counters.errors += 1
            logger.warning("pipeline paused on %s: %s", order_id, exc,
                           extra={"order_id": order_id, "correlation_id": correlation})

    async def claim(self, order_id: str) -> Document | None:
        """Take the order for this instance, unless a live claim of another holds it.

        Read, decide, then compare-and-set on the observed status and claim: only
        equality conditions, which NX-27017 answers from its index (an ``$or`` makes it
        scan the collection).
        """
        db, instance = self.work.db, self.work.instance
        seen = self._seen.pop(order_id, None)
        placed_at = self._placed.pop(order_id, None)
        if seen is not None and placed_at is not None and seen.get("status") == "pending" \
                and placed_at >= self.work.stale_ms():
            # Written with this instance's claim, still fresh, so nobody can have taken it
            # over; and still pending, so nothing but that claim was written since.
            return {**seen, "claim": instance, "claim_at": placed_at}
        if seen is not None and seen.get("status") in AUTOMATIC \
                and seen.get("claim") in (None, instance):
            # As the event showed it, neither read nor read back: the status and claim it
            # showed are still the order's, so is the rest the pipeline uses (items, total,
            # history: only a transition changes those). Only if it moved on is it read.
            claim = {"claim": instance, "claim_at": now_ms()}
            if await self._take_claim(order_id, seen["status"], seen.get("claim"), claim,
                                      projection={"_id": 1}) is not None:
                return {**seen, **claim}
        current = await db.orders.find_one({"_id": order_id})
        if current is None or current["status"] not in AUTOMATIC:
            if current is not None:
                self._finish(order_id)
            return None
        holder = current.get("claim")
        if holder not in (None, instance) and int(current.get("claim_at") or 0) >= \
                self.work.stale_ms():
            return None  # another instance is on it
        return await self._take_claim(order_id, current["status"], holder,
                                      {"claim": instance, "claim_at": now_ms()},
                                      return_document=ReturnDocument.AFTER)

    async def _take_claim(self, order_id: str, status: str, holder: object, claim: Document,
                          **options: Any) -> Document | None:
        """:meth:`claim`'s compare-and-set on the observed status and claim."""
        found: Document | None = await self.work.db.orders.find_one_and_update(
            {"_id": order_id, "status": status, "claim": holder}, {"$set": claim}, **options)
        return found

    async def advance(self, order: Document, target: str, actor: str, *,
                      extra: dict[str, Any] | None = None) -> Document | None:
        """One transition under this instance's claim; None when the claim was lost."""
        release = {"claim": None} if target not in AUTOMATIC else {}
        started = time.perf_counter()
        updated = await apply_transition(self.work.db, order, target, actor=actor,
                                         extra={**release, **(extra or {})},
                                         condition={"claim": self.work.instance},
                                         send=self.transitions.update)
        self.work.stages.record("transition", started)
        if updated is None:
            self.work.counters.claims_lost += 1
            return None
        self.work.counters.transitions += 1
        self.work.engine.nudge("orders")
        if target not in AUTOMATIC:
            self._finish(str(order["_id"]))
        # One INFO line per order, when the pipeline is done with it; each step at DEBUG.
        logger.log(logging.INFO if target in FINISHED else logging.DEBUG,
                   "order %s: %s -> %s", order["_id"], order["status"], target,
                   extra={"correlation_id": order.get("correlation_id"),
                          "order_id": order["_id"], "stage": target})
        return updated

    async def reserve(self, order: Document) -> Document | None:
        """Take every item's units, then ``reserved``, or give them back and ``rejected``."""
        started = time.perf_counter()
        order_id, items = str(order["_id"]), order["items"]
        logger.debug("reserving %d items", len(items),
                     extra={"correlation_id": order.get("correlation_id"), "order_id": order_id})
        # Exactly once even when this is a re-drive of an attempt that died half-way: the
        # product remembers which orders it gave units to (backend.domain.stock).
        failure, taken = await self.takes.take_all(order_id, items)
        if taken:  # a nudge promises a change: the watcher treats silence after it as a stall
            self.work.engine.nudge("products")
        if failure is not None:
            moved = await self.advance(order, "rejected", "pipeline", extra=failure)
        else:
            moved = await self.advance(order, "reserved", "pipeline")
        # Ours, or whatever the order became meanwhile, says commit or give back.
        await stock.settle_takes(self.work.db, order_id, items, order=moved)
        self.work.stages.record("reserve", started)
        return moved if moved is not None and moved["status"] == "reserved" else None

    async def pay(self, order: Document) -> Document | None:
        """Charge; ``paid``, or ``payment_failed`` with the units going back."""
        payment = await self.payments.charge(order, ready=lambda: self._still_claimed(order))
        if payment is None:
            self.work.counters.claims_lost += 1
            return None
        reason = payment.pop("reason")
        if payment["status"] == "captured":
            return await self.advance(order, "paid", "payment", extra={"payment": payment})
        failed = await self.advance(order, "payment_failed", "payment",
                                    extra={"payment": payment, "failure_reason": reason,
                                           "restock": "due"})
        if failed is not None:
            await self.payments.restock(failed)
        return None

    async def _still_claimed(self, order: Document) -> bool:
        """Just before the bank is asked to charge the order: whether it is still this
        instance's. The wait for one of the bank's slots can outlast the claim, and another
        instance may then take the order over and charge it too; so a claim older than half
        the reconcile timeout is renewed first (one conditional write, on the status and
        the claim), and a claim already taken over means no charge here."""
        if int(order.get("claim_at") or 0) >= now_ms() - int(self.work.reconcile_after_s * 500):
            return True
        claim = {"claim": self.work.instance, "claim_at": now_ms()}
        if await self._take_claim(str(order["_id"]), order["status"], self.work.instance,
                                  claim, projection={"_id": 1}) is None:
            return False
        order.update(claim)
        return True


def _remember(recent: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Keep ``key`` among the ``FINISHED_KEEP`` most recent, dropping the oldest."""
    recent[key] = value
    recent.move_to_end(key)
    while len(recent) > FINISHED_KEEP:
        recent.popitem(last=False)
