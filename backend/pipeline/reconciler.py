"""The safety net: re-drive orders stuck in an automatic status, finish half-done stock
moves, restart refunds. Missed events, lost history and crashed workers all end here."""

from __future__ import annotations

import asyncio
import logging

from pymongo.errors import PyMongoError

from backend.domain import stock
from backend.domain.clock import iso_seconds_ago
from backend.pipeline.context import AUTOMATIC, Work
from backend.pipeline.dispatch import Dispatcher
from backend.pipeline.payments import Payments
from streaming import BreakerOpenError

logger = logging.getLogger("changecast.pipeline")


class Reconciler:
    """Sweeps every ``reconcile_after_s / 2`` seconds (at most 10 s, at least 0.5 s)."""

    def __init__(self, work: Work, dispatcher: Dispatcher, payments: Payments) -> None:
        self.work = work
        self.dispatcher = dispatcher
        self.payments = payments

    async def reconcile(self, *, older_than_s: float | None = None) -> int:
        """Re-drive orders stuck in an automatic status; returns how many were found."""
        work = self.work
        age = work.reconcile_after_s if older_than_s is None else older_than_s
        cutoff = iso_seconds_ago(age)
        stuck = await work.db.orders.find(
            {"status": {"$in": sorted(AUTOMATIC)}, "updated_at": {"$lte": cutoff}},
            {"_id": 1}).to_list()
        for doc in stuck:
            self.dispatcher.enqueue(str(doc["_id"]))
        # Counted as soon as they are queued: the sweeps below await, and may fail or be
        # cancelled while the queued orders are already being driven.
        work.counters.reconcile_sweeps += 1
        work.counters.reconciled += len(stuck)
        if stuck:
            logger.info("reconciler re-drives %d stuck orders", len(stuck))
        swept = await stock.sweep(work.db, work.engine, stale_before=cutoff)
        work.counters.stock_repairs += sum(swept.values())
        await self.payments.refunds_due()
        return len(stuck)

    async def run(self) -> None:
        """The sweep loop (runs until cancelled)."""
        interval = max(0.5, min(self.work.reconcile_after_s / 2, 10.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except (PyMongoError, BreakerOpenError) as exc:
                logger.warning("reconcile sweep failed: %s", exc)
