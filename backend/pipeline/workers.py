"""One app instance's pipeline: the parts wired together and fed by change events on
``orders`` (never by polling for work).

pending --reserve stock--> reserved --pay--> paid --> processing   (then an admin ships)
pending --out of stock--> rejected;  reserved --declined--> payment_failed (stock released)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase

from backend.pipeline.context import AUTOMATIC, Counters, StageStats, Work
from backend.pipeline.dispatch import Dispatcher
from backend.pipeline.gateway import PaymentGateway
from backend.pipeline.notices import Notices
from backend.pipeline.payments import Payments
from backend.pipeline.reconciler import Reconciler
from streaming import ChangeEngine, ChangeEvent, Document


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """What ``/api/metrics`` and the dashboard show of the pipeline."""

    instance: str
    backlog: int
    in_flight: int
    payments_in_flight: int
    payment_concurrency: int
    stages: dict[str, StageStats]
    counters: Counters

    def as_dict(self) -> dict[str, object]:
        """The JSON form (counters at the top level)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "counters"}
        return {**data, **dataclasses.asdict(self.counters)}


class Pipeline:
    """Dispatch and claims, payments and refunds, notices, and the reconciler of one
    instance."""

    def __init__(self, db: AsyncDatabase[Document], engine: ChangeEngine, *,
                 gateway: PaymentGateway | None = None, reconcile_after_s: float = 30.0,
                 max_in_flight: int = 512, instance: str | None = None) -> None:
        self.work = Work(db, engine, reconcile_after_s)
        if instance is not None:
            self.work.instance = instance
        self.gateway = gateway or PaymentGateway()
        self.notices = Notices(self.work)
        self.payments = Payments(self.work, self.gateway, self.notices)
        self.dispatcher = Dispatcher(self.work, self.payments, max_in_flight=max_in_flight)
        self.reconciler = Reconciler(self.work, self.dispatcher, self.payments)
        self._runners: list[asyncio.Task[None]] = []
        self._unlisten: Callable[[], None] | None = None

    @property
    def instance(self) -> str:
        """This instance's name in claims."""
        return self.work.instance

    @property
    def counters(self) -> Counters:
        return self.work.counters

    async def start(self) -> None:
        """Listen to changes, pick up unfinished orders, start the sweeps."""
        await self.notices.load_admins()
        self._unlisten = self.work.engine.listen(self._on_change)
        self._runners = [
            asyncio.create_task(self.dispatcher.run(), name="pipeline-dispatch"),
            asyncio.create_task(self.reconciler.run(), name="pipeline-reconcile")]
        await self.reconcile(older_than_s=0)  # orders left over from before this start

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        tasks = [*self._runners, *self.work.tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runners.clear()

    async def reconcile(self, *, older_than_s: float | None = None) -> int:
        """One reconciler sweep now; returns how many stuck orders it re-drives."""
        return await self.reconciler.reconcile(older_than_s=older_than_s)

    def claim_placed(self, order_id: str) -> Document:
        """For ``place_order(claim=...)``: the fields that give a new order to this instance's
        pipeline as it is written (see ``Dispatcher.claim_placed``)."""
        return self.dispatcher.claim_placed(order_id)

    def stats(self) -> PipelineStats:
        return PipelineStats(
            instance=self.instance, backlog=self.dispatcher.queue.qsize(),
            in_flight=len(self.dispatcher.in_flight),
            payments_in_flight=self.gateway.in_flight,
            payment_concurrency=self.gateway.concurrency,
            stages=self.work.stages.summary(), counters=dataclasses.replace(self.counters))

    def _on_change(self, event: ChangeEvent) -> None:
        if event.collection == "orders" and event.doc is not None:
            if event.doc.get("status") in AUTOMATIC:
                self.dispatcher.enqueue(str(event.key), event.doc)
            if event.op == "insert" or (event.changes and "status" in event.changes.set):
                self.work.spawn(self.notices.record_transition(event.doc))
            if event.doc.get("refund") == "due":
                self.work.spawn(self.payments.refund(str(event.key)))
        elif event.collection == "products" and event.doc is not None:
            self.notices.check_stock(event)
