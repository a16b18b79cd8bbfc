"""The three live pages: what each loads, subscribes to, and renders for a change.

A ``View`` is shared by the HTTP page (first render) and its live socket
(``backend/live.py``): the same loaders fill the page and re-fill a fragment
after a ``resync``, and ``render`` turns one delivery into out-of-band swaps.
``render`` is pure: it reads only the delivery and the engine's cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from backend.domain.analytics import trend
from backend.domain.orders import STATUSES
from backend.domain.users import User
from backend.web.pages.fragments import REPLACE, Fragments, dom_id, stock_level
from backend.web.state import AppState
from streaming import Delivery, Document, Filter, compile_filter

MY_ORDERS = 20
NOTES = 20
ADMIN_ORDERS = 50
ALERT_LEVELS = ("out", "low")


@dataclass(frozen=True, slots=True)
class Sub:
    """One subscription a page's socket holds."""

    id: str
    collection: str
    where: Filter | None = None
    restriction: dict[str, Any] | None = None


def product_sort_key(product: Document) -> tuple[str, str, str]:
    return (str(product.get("category", "")), str(product.get("name", "")), str(product["_id"]))


def low_stock(products: list[Document]) -> list[Document]:
    """The products the admin's alert list shows: low or out of stock."""
    return [p for p in products if stock_level(p) in ALERT_LEVELS]


def status_filter(value: str | None) -> str | None:
    """A valid order status, or None for "all"; anything else is a ValueError."""
    if not value:
        return None
    if value not in STATUSES:
        raise ValueError(f"unknown status {value!r}; expected one of {', '.join(STATUSES)}")
    return value


class View:
    """One page: access rule, page data, subscriptions, and change → fragments."""

    name: ClassVar[str]
    title: ClassVar[str]
    admin_only: ClassVar[bool] = False

    def __init__(self, state: AppState, user: User, fragments: Fragments,
                 params: dict[str, str] | None = None) -> None:
        self.state = state
        self.engine = state.engine
        self.db = state.db
        self.user = user
        self.fragments = fragments
        self.params = dict(params or {})

    @classmethod
    def allows(cls, user: User | None) -> bool:
        return user is not None and (user.is_admin or not cls.admin_only)

    def subscriptions(self) -> list[Sub]:
        return []

    async def context(self) -> dict[str, Any]:
        """Everything the page template needs (also used to re-fill after a resync)."""
        return {}

    def render(self, delivery: Delivery) -> list[str]:
        """Out-of-band swaps for one change delivery."""
        return []

    async def reload(self, collection: str) -> list[str]:
        """Fresh fragments for everything on the page that shows ``collection``."""
        return []

    async def products(self) -> list[Document]:
        docs = self.engine.documents("products")
        if docs is None:
            docs = await self.db.products.find(
                {}, self.engine.hidden_projection("products")).to_list()
        return sorted(docs, key=product_sort_key)


class PortalView(View):
    """``/``: catalog with live stock, cart, my orders with timelines, notifications."""

    name = "portal"
    title = "Shop"

    def subscriptions(self) -> list[Sub]:
        own = {"user_id": self.user.id}
        return [Sub("products", "products"), Sub("orders", "orders", restriction=own),
                Sub("notifications", "notifications", restriction=own)]

    async def my_orders(self) -> list[Document]:
        return await self.db.orders.find({"user_id": self.user.id}) \
            .sort([("created_at", -1), ("_id", 1)]).limit(MY_ORDERS).to_list()

    async def notes(self) -> list[Document]:
        return await self.db.notifications.find({"user_id": self.user.id}) \
            .sort([("created_at", -1), ("_id", 1)]).limit(NOTES).to_list()

    async def context(self) -> dict[str, Any]:
        return {"products": await self.products(), "orders": await self.my_orders(),
                "notes": await self.notes()}

    def render(self, delivery: Delivery) -> list[str]:
        event, op, f = delivery.event, delivery.op, self.fragments
        if event is None:
            return []
        doc = event.doc
        if event.collection == "products":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("product", event.key))]
            if op == "insert":
                return [f.product_card(doc, {"upsert": "beforeend:#product-grid"})]
            return [f.product_live(doc)]
        if event.collection == "orders":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("my-order", event.key))]
            return [f.my_order(doc, {"upsert": "afterbegin:#my-orders"})]
        if event.collection == "notifications":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("note", event.key))]
            parts = [f.notification(doc, {"upsert": "afterbegin:#notifications"})]
            if op in ("insert", "enter"):
                order_id = doc.get("order_id")
                parts.append(f.toast(str(doc.get("message", "")),
                                     "error" if doc.get("kind") == "failure" else "info",
                                     key=str(order_id) if order_id else None))
            return parts
        return []

    async def reload(self, collection: str) -> list[str]:
        f = self.fragments
        if collection == "products":
            return [f.render("_product_grid.html", {"oob": "true"}, products=await self.products())]
        if collection == "orders":
            return [f.render("_my_orders.html", {"oob": "true"}, orders=await self.my_orders())]
        if collection == "notifications":
            return [f.render("_notifications.html", {"oob": "true"}, notes=await self.notes())]
        return []


class AdminView(View):
    """``/admin``: live orders (filterable), order detail, inventory, low-stock alerts."""

    name = "admin"
    title = "Admin"
    admin_only = True

    @property
    def status(self) -> str | None:
        return status_filter(self.params.get("status"))

    def subscriptions(self) -> list[Sub]:
        status = self.status
        where = compile_filter(f"status = '{status}'") if status else None
        return [Sub("orders", "orders", where=where), Sub("products", "products"),
                Sub("notifications", "notifications", restriction={"user_id": self.user.id})]

    async def orders(self, after: Document | None = None) -> list[Document]:
        """A page of the table, newest first; ``after`` an order: the ones older than it
        (a keyset, so that orders arriving at the top meanwhile shift nothing)."""
        query: Document = {"status": self.status} if self.status else {}
        if after is not None:
            older = {"$or": [{"created_at": {"$lt": after["created_at"]}},
                             {"created_at": after["created_at"], "_id": {"$gt": after["_id"]}}]}
            query = {"$and": [query, older]} if query else older
        return await self.db.orders.find(query).sort([("created_at", -1), ("_id", 1)]) \
            .limit(ADMIN_ORDERS).to_list()

    async def total(self) -> int:
        """How many orders the table's filter matches."""
        return await self.db.orders.count_documents({"status": self.status} if self.status
                                                     else {})

    async def context(self) -> dict[str, Any]:
        products = await self.products()
        return {"orders": await self.orders(), "total": await self.total(),
                "products": products, "alerts": low_stock(products),
                "status": self.status or "", "statuses": STATUSES}

    def render(self, delivery: Delivery) -> list[str]:
        event, op, f = delivery.event, delivery.op, self.fragments
        if event is None:
            return []
        doc = event.doc
        if event.collection == "orders":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("order", event.key))]
            if op in ("insert", "enter"):
                return [f.order_row(doc, {"upsert": "afterbegin:#orders-body"})]
            return [f.order_row(doc, REPLACE)]
        if event.collection == "products":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("inv", event.key)), f.deleted(dom_id("alert", event.key))]
            if op == "insert":
                return [f.inventory_row(doc, {"upsert": "beforeend:#inventory-body"}), f.alert(doc)]
            return [f.inventory_live(doc), f.alert(doc)]
        if event.collection == "notifications" and op in ("insert", "enter") and doc is not None:
            kind = "warning" if doc.get("kind") in ("low_stock", "sold_out") else "info"
            return [f.toast(str(doc.get("message", "")), kind)]
        return []

    async def reload(self, collection: str) -> list[str]:
        f = self.fragments
        if collection == "orders":
            orders, total = await self.orders(), await self.total()
            return [f.render("_orders_body.html", {"oob": "true"}, orders=orders),
                    f.render("_orders_count.html", {"oob": "true"}, shown=len(orders),
                             total=total)]
        if collection == "products":
            products = await self.products()
            return [f.render("_inventory_body.html", {"oob": "true"}, products=products),
                    f.render("_alerts.html", {"oob": "true"},
                             alerts=low_stock(products))]
        return []


class DashboardView(View):
    """``/dashboard``: KPIs, top customers and products, the order trend, the system panel."""

    name = "dashboard"
    title = "Dashboard"
    admin_only = True

    def figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = self.state.analytics.snapshot()
        for row in figures["top_products"]:
            product = self.engine.peek("products", row["product_id"]) or {}
            row["name"] = product.get("name", row["product_id"])
        figures["trend"] = trend(figures["orders_per_minute"])
        return figures

    async def context(self) -> dict[str, Any]:
        return {"figures": self.figures(), "system": system_figures(self.state, None)}


def system_figures(state: AppState, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The system panel: rates need the previous sample (None on the first)."""
    stats = state.engine.stats()
    now = stats.uptime_s
    total = stats.metrics.changes_total
    rate = None
    if previous is not None and now > previous["at"]:
        rate = (total - previous["changes_total"]) / (now - previous["at"])
    pipeline = state.pipeline.stats() if state.pipeline is not None else None
    latency = stats.metrics.delivery_latency_ms
    states = {w.state for w in stats.watchers.values()}
    breaker = stats.breaker.state
    database = "unreachable" if breaker == "open" or "backoff" in states else \
        "recovering" if breaker == "half_open" or "connecting" in states else "ok"
    return {
        "database": database,
        "at": now, "changes_total": total, "changes_per_s": rate,
        "latency_p50": latency.p50, "latency_p99": latency.p99,
        "cache_hit_ratio": stats.cache.hit_ratio,
        "clients": len(state.connections),
        "breaker": breaker,
        "watchers": {name: dataclasses.asdict(w) for name, w in stats.watchers.items()},
        "backlog": pipeline.backlog if pipeline else None,
        "payments_in_flight": pipeline.payments_in_flight if pipeline else None,
        "history": state.history.stats(),
        "queued": stats.queued, "resyncs": stats.metrics.resyncs,
        "dropped": stats.metrics.dropped,
    }


VIEWS: dict[str, type[View]] = {v.name: v for v in (PortalView, AdminView, DashboardView)}
