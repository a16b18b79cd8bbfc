"""Order analytics kept from change events: revenue, counts, top customers and products, trend.

``LiveAnalytics`` rebuilds from the database once, then follows the engine's
events; it runs whether or not this instance runs the pipeline, so every
instance's dashboard and ``/api/metrics`` agree. Dashboards wait on
``changed()`` instead of polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from backend.domain.clock import iso
from streaming import ChangeEngine, ChangeEvent, Document

REVENUE_STATUSES = frozenset({"paid", "processing", "shipped", "delivered"})
TREND_MINUTES = 30
HISTORY_HOURS = 14 * 24


class Analytics:
    """Figures over every order it has seen (a pure fold; no I/O)."""

    def __init__(self) -> None:
        self._orders: dict[str, tuple[str, int, str, tuple[tuple[str, int], ...], str]] = {}

    def rebuild(self, orders: list[Document]) -> None:
        self._orders.clear()
        for order in orders:
            self.observe(order)

    def observe(self, order: Document) -> None:
        items = tuple((str(i["product_id"]), int(i["quantity"])) for i in order.get("items", []))
        self._orders[str(order["_id"])] = (order["status"], int(order.get("total_cents", 0)),
                                           str(order.get("user_id")), items,
                                           str(order.get("created_at", "")))

    def forget(self, order_id: str) -> None:
        self._orders.pop(order_id, None)

    def count(self, status: str | None = None) -> int:
        """Orders seen, or those in ``status``: as of the last event, no database read."""
        if status is None:
            return len(self._orders)
        return sum(1 for seen in self._orders.values() if seen[0] == status)

    def snapshot(self, *, now: datetime | None = None) -> dict[str, Any]:
        per_status: dict[str, int] = {}
        revenue = 0
        paid_orders = 0
        customers: dict[str, int] = {}
        products: dict[str, int] = {}
        minutes: dict[str, int] = {}
        hours: dict[str, int] = {}
        now = now or datetime.now(UTC)
        cutoff = iso(now - timedelta(minutes=TREND_MINUTES))
        since = iso(now - timedelta(hours=HISTORY_HOURS))
        for status, total, user, items, created in self._orders.values():
            per_status[status] = per_status.get(status, 0) + 1
            if status in REVENUE_STATUSES:
                revenue += total
                paid_orders += 1
                customers[user] = customers.get(user, 0) + total
                for product, quantity in items:
                    products[product] = products.get(product, 0) + quantity
            if created >= cutoff:
                minute = created[:16]
                minutes[minute] = minutes.get(minute, 0) + 1
            if created >= since:
                hour = created[:13]
                hours[hour] = hours.get(hour, 0) + 1
        top = sorted(customers.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        best = sorted(products.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return {
            "orders": len(self._orders), "revenue_cents": revenue,
            "average_order_value_cents": round(revenue / paid_orders) if paid_orders else 0,
            "per_status": dict(sorted(per_status.items())),
            "top_customers": [{"user_id": u, "revenue_cents": r} for u, r in top],
            "top_products": [{"product_id": p, "quantity": q} for p, q in best],
            "orders_per_minute": [{"minute": m, "orders": n} for m, n in sorted(minutes.items())],
            "orders_per_hour": [{"hour": h, "orders": n} for h, n in sorted(hours.items())],
        }


class LiveAnalytics:
    """``Analytics`` fed by the engine, with a change signal for live dashboards."""

    def __init__(self, engine: ChangeEngine, db: AsyncDatabase[Document]) -> None:
        self.engine = engine
        self.db = db
        self.figures = Analytics()
        self.version = 0
        self._changed = asyncio.Event()
        self._unlisten: Callable[[], None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        # Listen first, then load: an order changing in between is observed twice, which is
        # harmless (observe replaces), instead of not at all.
        self._unlisten = self.engine.listen(self._on_change)
        self.engine.on_history_lost(self._on_lost)
        await self._rebuild()

    async def _rebuild(self) -> None:
        self.figures.rebuild(await self.db.orders.find({}).to_list())
        self._bump()

    def _on_lost(self, collection: str, reason: str) -> None:
        if collection == "orders" and self._unlisten is not None:
            task = asyncio.ensure_future(self._rebuild())  # events may be missing: recount
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self._bump()

    def snapshot(self) -> dict[str, Any]:
        return self.figures.snapshot()

    async def changed(self, since: int) -> int:
        """Wait until ``version`` moves past ``since``; returns the new version."""
        while self.version == since:
            await self._changed.wait()
        return self.version

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_change(self, event: ChangeEvent) -> None:
        if event.collection != "orders":
            return
        if event.doc is not None:
            self.figures.observe(event.doc)
        elif event.op == "delete":
            self.figures.forget(str(event.key))
        self._bump()


def _series(rows: list[dict[str, Any]], key: str, *, end: datetime, step: timedelta,
            count: int, width: int) -> list[list[int]]:
    """``[[epoch seconds of each step], [orders in it]]``, the ``count`` steps up to ``end``
    (rows are keyed by the first ``width`` characters of the ISO time), gaps as 0."""
    counts = {row[key]: row["orders"] for row in rows}
    xs: list[int] = []
    ys: list[int] = []
    for back in range(count - 1, -1, -1):
        at = end - step * back
        xs.append(int(at.timestamp()))
        ys.append(counts.get(iso(at)[:width], 0))
    return [xs, ys]


def trend(per_minute: list[dict[str, Any]], *, now: datetime | None = None,
          minutes: int = TREND_MINUTES) -> list[list[int]]:
    """Orders per minute over the last ``minutes`` (see ``_series``)."""
    end = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    return _series(per_minute, "minute", end=end, step=timedelta(minutes=1), count=minutes,
                   width=16)


def hourly_trend(per_hour: list[dict[str, Any]], *, now: datetime | None = None,
                 hours: int = HISTORY_HOURS) -> list[list[int]]:
    """Orders per hour over the last ``hours`` (see ``_series``)."""
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    return _series(per_hour, "hour", end=end, step=timedelta(hours=1), count=hours, width=13)
