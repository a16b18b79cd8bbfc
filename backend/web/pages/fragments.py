"""Rendering documents to HTML fragments: pure functions, no socket, no database.

Every live element has a stable ``id`` derived from its document key, so a
change can be pushed as an htmx out-of-band swap that touches only that
element. Three swap forms are used on the wire (``frontend/static/app.js``'s
``cc-live`` extension reads the two ``data-`` ones before htmx swaps):

- ``hx-swap-oob="true"`` with ``data-if-present``: replace the element if the
  page shows it, otherwise drop the fragment quietly;
- ``data-upsert="afterbegin:#list"``: replace in place when present, else
  insert into the list (an insert replayed after a snapshot never doubles);
- ``hx-swap-oob="delete"`` with ``data-if-present``: remove it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from jinja2 import Environment
from markupsafe import Markup, escape

from backend.domain.orders import ADMIN_NEXT, TRANSITIONS
from streaming import Document

STATUS_LABELS = {
    "pending": "Pending", "reserved": "Reserved", "paid": "Paid", "processing": "Processing",
    "shipped": "Shipped", "delivered": "Delivered", "rejected": "Rejected",
    "payment_failed": "Payment failed", "cancelled": "Cancelled",
}
NEXT_LABELS = {"processing": "Start processing", "shipped": "Mark shipped",
               "delivered": "Mark delivered"}
# "_" is escaped too: it is the escape character, so no two keys give one id.
_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


def dom_id(prefix: str, key: Any) -> str:
    """An element id for ``key`` that is safe in HTML and in CSS selectors, one-to-one:
    every character but letters, digits and ``-`` becomes ``_<hex>_``."""
    return prefix + "-" + _UNSAFE.sub(lambda m: f"_{ord(m.group()):x}_", str(key))


def money(cents: Any) -> str:
    if not isinstance(cents, int) or isinstance(cents, bool):
        return "—"
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def clock(value: Any) -> str:
    """``HH:MM:SS`` (UTC) of an ISO timestamp; the full value goes in ``datetime=``."""
    text = str(value or "")
    return text[11:19] if len(text) >= 19 and text[10] == "T" else text


def day(value: Any) -> str:
    text = str(value or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).strftime("%b %d, %H:%M")
    except ValueError:
        return text


def ago(ms: Any) -> str:
    """A short "how long ago" for a duration in milliseconds."""
    if not isinstance(ms, int | float):
        return "—"
    if ms < 1_000:
        return f"{ms:.0f} ms ago"
    if ms < 120_000:
        return f"{ms / 1000:.0f} s ago"
    return f"{ms / 60_000:.0f} min ago"


def duration(seconds: Any) -> str:
    """A short span of time: ``40 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    if not isinstance(seconds, int | float):
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def stock_level(product: Document) -> str:
    """``out`` at 0, ``low`` below the product's threshold, else ``ok``."""
    stock = product.get("stock")
    if not isinstance(stock, int) or stock <= 0:
        return "out"
    return "low" if stock < int(product.get("low_stock_threshold", 10)) else "ok"


def can_cancel(status: str) -> bool:
    return "cancelled" in TRANSITIONS.get(status, frozenset())


def swap_attrs(swap: dict[str, Any] | None) -> Markup:
    """The attributes that make an element an out-of-band swap (empty when rendered inline)."""
    if not swap:
        return Markup("")
    parts = []
    if swap.get("oob"):
        parts.append(f'hx-swap-oob="{escape(swap["oob"])}"')
    if swap.get("upsert"):
        parts.append(f'data-upsert="{escape(swap["upsert"])}"')
    if swap.get("if_present"):
        parts.append("data-if-present")
    return Markup(" " + " ".join(parts))


REPLACE = {"oob": "true", "if_present": True}
DELETE = {"oob": "delete", "if_present": True}


def configure(env: Environment) -> None:
    """Filters and globals every template may use."""
    env.filters.update(money=money, clock=clock, day=day, duration=duration)
    env.globals.update(ago=ago, dom_id=dom_id, stock_level=stock_level, can_cancel=can_cancel,
                       swap_attrs=swap_attrs, STATUS_LABELS=STATUS_LABELS,
                       ADMIN_NEXT=ADMIN_NEXT, NEXT_LABELS=NEXT_LABELS)


class Fragments:
    """Named partials rendered to strings; ``name_of`` resolves a user id to a display name."""

    def __init__(self, env: Environment, name_of: Callable[[str], str] | None = None) -> None:
        self.env = env
        self.name_of = name_of or (lambda user_id: user_id)

    def render(self, template: str, swap: dict[str, Any] | None = None, **context: Any) -> str:
        return self.env.get_template(template).render(swap=swap, name_of=self.name_of, **context)

    def deleted(self, element_id: str) -> str:
        return f'<div id="{escape(element_id)}"{swap_attrs(DELETE)}></div>'

    def seq(self, seq: int) -> str:
        return f'<span id="cc-seq" hx-swap-oob="true" data-seq="{int(seq)}" hidden></span>'

    def viewers(self, order_id: str, people: list[Document]) -> str:
        """Who is looking at an order's detail (the page hides its own admin)."""
        return self.render("_viewers.html", REPLACE, order_id=order_id, viewers=people)

    def database(self, reachable: bool) -> str:
        """Whether the database answers: the page shows its last known data meanwhile."""
        state = "up" if reachable else "down"
        return f'<span id="db-status" hx-swap-oob="true" data-db="{state}" hidden></span>'

    # ---- products --------------------------------------------------------------------------

    def product_card(self, product: Document, swap: dict[str, Any] | None = None) -> str:
        return self.render("_product_card.html", swap, product=product)

    def product_live(self, product: Document) -> str:
        return self.render("_product_live.html", REPLACE, product=product)

    def inventory_live(self, product: Document) -> str:
        return self.render("_inventory_live.html", REPLACE, product=product)

    def inventory_row(self, product: Document, swap: dict[str, Any] | None = None) -> str:
        return self.render("_inventory_row.html", swap, product=product)

    def alert(self, product: Document) -> str:
        """A low-stock alert when the product is low or out, else its removal."""
        if stock_level(product) == "ok":
            return self.deleted(dom_id("alert", product["_id"]))
        return self.render("_alert.html", {"upsert": "beforeend:#alerts"}, product=product)

    # ---- orders ----------------------------------------------------------------------------

    def order_row(self, order: Document, swap: dict[str, Any] | None = None) -> str:
        return self.render("_order_row.html", swap, order=order)

    def my_order(self, order: Document, swap: dict[str, Any] | None = None) -> str:
        return self.render("_my_order.html", swap, order=order)

    def order_detail(self, order: Document, audit: Iterable[Document],
                     viewers: list[Document] | None = None) -> str:
        return self.render("_order_detail.html", None, order=order, audit=list(audit),
                           viewers=viewers or [])

    # ---- notifications ---------------------------------------------------------------------

    def notification(self, note: Document, swap: dict[str, Any] | None = None) -> str:
        return self.render("_notification.html", swap, note=note)

    def toast(self, message: str, kind: str = "info", key: str | None = None) -> str:
        """A toast; one with a ``key`` (an order's id) replaces the one on screen with the
        same key instead of piling up: one toast per order, updated as the order moves."""
        if key is not None:
            return self.render("_toast.html", {"upsert": "beforeend:#toasts"}, message=message,
                               kind=kind, key=key)
        return self.render("_toast.html", {"oob": "beforeend:#toasts"}, message=message,
                           kind=kind, key=None)

    # ---- dashboard -------------------------------------------------------------------------

    def kpis(self, figures: dict[str, Any], swap: dict[str, Any] | None = None) -> str:
        return self.render("_kpis.html", swap, figures=figures)

    def system(self, system: dict[str, Any], swap: dict[str, Any] | None = None) -> str:
        return self.render("_system.html", swap, system=system)
