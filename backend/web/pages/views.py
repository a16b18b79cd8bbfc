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

from backend.domain.analytics import hourly_trend, trend
from backend.domain.orders import STATUSES
from backend.domain.users import User
from backend.web.live.presence import online, viewers
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


SEARCH_WORDS = 5
SEARCH_CHARS = 60


def search_params(q: Any, category: Any) -> dict[str, str]:
    """A product search as the page asked for it (``q``: words, ``category``: one exact
    category, both optional), bounded; ValueError when not strings."""
    if not isinstance(q or "", str) or not isinstance(category or "", str):
        raise ValueError("q and category must be strings")
    return {"q": " ".join(str(q or "").split()[:SEARCH_WORDS])[:SEARCH_CHARS],
            "category": str(category or "").strip()[:SEARCH_CHARS]}


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def product_filter(params: dict[str, str]) -> Filter | None:
    """The engine filter of a product search: every word in the name, SKU or category
    (``LIKE``, any case), and the category; None when the search is empty. Cards then
    enter and leave the page live as names, categories or searches change."""
    parts = []
    for word in params.get("q", "").split():
        word = word.replace("%", "").replace("_", "")
        if word:
            like = _quoted(f"%{word}%")
            parts.append(f"(name LIKE {like} OR _id LIKE {like} OR category LIKE {like})")
    if params.get("category"):
        parts.append(f"category = {_quoted(params['category'])}")
    return compile_filter(" AND ".join(parts)) if parts else None


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
        """Out-of-band swaps for one change delivery (``delivery.sub_id`` says for which of
        the page's subscriptions)."""
        return []

    async def reload(self, sub_id: str) -> list[str]:
        """Fresh fragments for everything on the page that subscription ``sub_id`` shows."""
        return []

    @property
    def search(self) -> Filter | None:
        return product_filter(self.params)

    async def products(self, where: Filter | None = None) -> list[Document]:
        docs = self.engine.documents("products")
        if docs is None:
            docs = await self.db.products.find(
                where.mongo if where else {}, self.engine.hidden_projection("products")).to_list()
        elif where is not None:
            docs = [doc for doc in docs if where.matches(doc)]
        return sorted(docs, key=product_sort_key)

    def search_context(self, every: list[Document]) -> dict[str, Any]:
        """From every product: those the search matches, and the search form (its values,
        the categories to choose from)."""
        where = self.search
        return {"products": [p for p in every if where.matches(p)] if where else every,
                "q": self.params.get("q", ""), "category": self.params.get("category", ""),
                "categories": sorted({str(p["category"]) for p in every if p.get("category")})}


class PortalView(View):
    """``/``: catalog with live stock, cart, my orders with timelines, notifications."""

    name = "portal"
    title = "Shop"

    def subscriptions(self) -> list[Sub]:
        own = {"user_id": self.user.id}
        return [Sub("products", "products", where=self.search),
                Sub("orders", "orders", restriction=own),
                Sub("notifications", "notifications", restriction=own)]

    async def my_orders(self) -> list[Document]:
        return await self.db.orders.find({"user_id": self.user.id}) \
            .sort([("created_at", -1), ("_id", 1)]).limit(MY_ORDERS).to_list()

    async def notes(self) -> list[Document]:
        return await self.db.notifications.find({"user_id": self.user.id}) \
            .sort([("created_at", -1), ("_id", 1)]).limit(NOTES).to_list()

    async def context(self) -> dict[str, Any]:
        return {"orders": await self.my_orders(), "notes": await self.notes(),
                **self.search_context(await self.products())}

    def render(self, delivery: Delivery) -> list[str]:
        event, op, f = delivery.event, delivery.op, self.fragments
        if event is None:
            return []
        doc = event.doc
        if event.collection == "products":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("product", event.key))]
            if op in ("insert", "enter"):  # new, or now matching the search
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

    async def reload(self, sub_id: str) -> list[str]:
        f = self.fragments
        if sub_id == "products":
            return [f.render("_product_grid.html", {"oob": "true"},
                             products=await self.products(self.search))]
        if sub_id == "orders":
            return [f.render("_my_orders.html", {"oob": "true"}, orders=await self.my_orders())]
        if sub_id == "notifications":
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
        # Two on products: every product for the low-stock alerts, the searched ones for
        # the inventory table (one group, so one delivery, while the search is empty).
        return [Sub("orders", "orders", where=where), Sub("products", "products"),
                Sub("inventory", "products", where=self.search),
                Sub("notifications", "notifications", restriction={"user_id": self.user.id}),
                Sub("presence", "presence")]

    def presence(self) -> list[Document]:
        return self.engine.documents("presence") or []

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

    def total(self) -> int:
        """How many orders the table's filter matches, as of the engine's last event: read
        before any await, it agrees with the ``seq`` the page starts from (the orders after
        it arrive as changes and count themselves)."""
        return self.state.analytics.figures.count(self.status)

    async def context(self) -> dict[str, Any]:
        total = self.total()
        every = await self.products()
        return {"orders": await self.orders(), "total": total, "alerts": low_stock(every),
                "status": self.status or "", "statuses": STATUSES,
                "online": online(self.presence()), **self.search_context(every)}

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
        if delivery.sub_id == "products":  # the alerts
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("alert", event.key))]
            return [f.alert(doc)]
        if delivery.sub_id == "inventory":
            if op in ("delete", "leave") or doc is None:
                return [f.deleted(dom_id("inv", event.key))]
            if op in ("insert", "enter"):
                return [f.inventory_row(doc, {"upsert": "beforeend:#inventory-body"})]
            return [f.inventory_live(doc)]
        if event.collection == "notifications" and op in ("insert", "enter") and doc is not None:
            kind = "warning" if doc.get("kind") in ("low_stock", "sold_out") else "info"
            return [f.toast(str(doc.get("message", "")), kind)]
        if event.collection == "presence":
            diff = delivery.changes or event.changes
            changed = set(diff.set) | set(diff.unset) if diff is not None else None
            if op == "update" and changed == {"seen_at"}:
                return []  # still there: nothing a person would notice
            docs = self.presence()
            orders = sorted({str(d["order_id"]) for d in (event.doc, event.before)
                             if d and d.get("order_id")})
            return [f.render("_presence.html", {"oob": "true"}, online=online(docs)),
                    *(f.viewers(order_id, viewers(docs, order_id)) for order_id in orders)]
        return []

    async def reload(self, sub_id: str) -> list[str]:
        f = self.fragments
        if sub_id == "orders":
            total = self.total()
            orders = await self.orders()
            return [f.render("_orders_body.html", {"oob": "true"}, orders=orders),
                    f.render("_orders_count.html", {"oob": "true"}, shown=len(orders),
                             total=total)]
        if sub_id == "products":
            return [f.render("_alerts.html", {"oob": "true"},
                             alerts=low_stock(await self.products()))]
        if sub_id == "inventory":
            return [f.render("_inventory_body.html", {"oob": "true"},
                             products=await self.products(self.search))]
        if sub_id == "presence":
            return [f.render("_presence.html", {"oob": "true"}, online=online(self.presence()))]
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
        figures["trend_hours"] = hourly_trend(figures["orders_per_hour"])
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
