"""Rendering a change to HTML: pure functions, no socket, no database."""

from __future__ import annotations

import itertools
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest

from backend.domain.analytics import hourly_trend, trend
from backend.domain.users import User
from backend.web.live.frames import BasicWire, frame_payloads
from backend.web.live.page_socket import PageOutlet, coalesced
from backend.web.pages.fragments import Fragments, dom_id, money, stock_level
from backend.web.pages.templates import make_templates
from backend.web.pages.views import AdminView, PortalView, product_filter, search_params, status_filter
from streaming import Batch, ChangeEvent, Delivery, DocumentCache, Hub
from streaming.events import diff

ADA = User(id="user-customer01", email="customer01@example.com", name="Ada", role="customer")
ROOT_USER = User(id="user-admin", email="admin@example.com", name="Root", role="admin")


class Elements(HTMLParser):
    """Top-level elements of a fragment, with their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.top: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth == 0:
            self.top.append((tag, dict(attrs)))
        if tag not in {"input", "br", "img", "meta", "link"}:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        self.depth -= 1


def top(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.top


def fragments() -> Fragments:
    return Fragments(make_templates().env, {"user-customer01": "Ada"}.get)  # type: ignore[arg-type]


def state(products: list[dict[str, Any]] | None = None) -> Any:
    cache = DocumentCache(maxsize=100)
    cache.prime("products", products or [])
    return SimpleNamespace(engine=SimpleNamespace(cache=cache), db=None)


def delivery(op: str, collection: str, doc: dict[str, Any] | None,
             before: dict[str, Any] | None = None, seq: int = 7) -> Delivery:
    changes = diff(before, doc) if before and doc else None
    event = ChangeEvent(seq, op, collection, (doc or before or {})["_id"], doc, before,  # type: ignore[arg-type]
                        changes, 1_000)
    return Delivery("s", op, event, doc=doc, changes=changes)  # type: ignore[arg-type]


PRODUCT = {"_id": "SKU-1", "name": "Lamp", "category": "Home", "price_cents": 1999, "stock": 30,
           "low_stock_threshold": 10}
ORDER = {"_id": "ORD-AAAA1111", "user_id": "user-customer01", "status": "processing",
         "total_cents": 3998, "created_at": "2026-11-22T05:00:00.000Z",
         "items": [{"product_id": "SKU-1", "name": "Lamp", "quantity": 2, "price_cents": 1999}],
         "history": [{"status": "pending", "at": "2026-11-22T05:00:00.000Z", "by": "customer"},
                     {"status": "processing", "at": "2026-11-22T05:00:01.000Z", "by": "pipeline"}],
         "correlation_id": "c-1"}


def test_fragments_dom_id_is_safe_for_html_and_css_selectors() -> None:
    assert dom_id("order", "ORD-AB12CD34") == "order-ORD-AB12CD34"
    weird = dom_id("product", 'a b"<x>/é')
    assert weird.startswith("product-a_20_b_22__3c_x_3e__2f__e9_")
    assert all(c.isalnum() or c in "_-" for c in weird)
    assert dom_id("p", "a.b") != dom_id("p", "a_b")


def test_fragments_dom_id_is_one_to_one() -> None:
    # "_" is the escape character: left as is, "a b" and "a_20_b" both gave product-a_20_b.
    assert dom_id("product", "a b") != dom_id("product", "a_20_b")
    keys = ["a b", "a_20_b", "a_b", "a_5f_b", "_", "__", "a-b", "a.b", "é", "_e9_"]
    assert len({dom_id("product", k) for k in keys}) == len(keys)


def test_fragments_money_and_stock_levels() -> None:
    assert money(123456) == "$1,234.56" and money(5) == "$0.05" and money(None) == "—"
    assert stock_level({"stock": 0}) == "out"
    assert stock_level({"stock": 9, "low_stock_threshold": 10}) == "low"
    assert stock_level({"stock": 10, "low_stock_threshold": 10}) == "ok"
    assert stock_level({"stock": 4}) == "low"  # threshold defaults to 10


def test_fragments_escape_every_document_value() -> None:
    evil = dict(PRODUCT, name='<script>alert("x")</script>', category="<b>")
    html = fragments().product_card(evil)
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html
    note = {"_id": "n1", "kind": "status", "message": "<img src=x onerror=alert(1)>",
            "created_at": "2026-11-22T05:00:00.000Z"}
    assert "<img" not in fragments().notification(note)


def test_portal_stock_change_swaps_only_the_cards_live_part_with_badges() -> None:
    view = PortalView(state([PRODUCT]), ADA, fragments())
    low = dict(PRODUCT, stock=3)
    [html] = view.render(delivery("update", "products", low, PRODUCT))
    [(_, attrs)] = top(html)
    assert attrs["id"] == "product-SKU-1-live" and attrs["hx-swap-oob"] == "true"
    assert "data-if-present" in attrs
    assert "Low stock" in html and "disabled" not in html
    [html] = view.render(delivery("update", "products", dict(PRODUCT, stock=0), low))
    assert "Out of stock" in html and "disabled" in html
    [html] = view.render(delivery("update", "products", dict(PRODUCT, stock=50), low))
    assert "badge" not in html


def test_portal_order_and_notification_inserts_are_upserts_and_toasts() -> None:
    view = PortalView(state(), ADA, fragments())
    [html] = view.render(delivery("insert", "orders", ORDER))
    [(tag, attrs)] = top(html)
    assert (tag, attrs["id"], attrs["data-upsert"]) == ("li", "my-order-ORD-AAAA1111",
                                                        "afterbegin:#my-orders")
    assert "Processing" in html and "Cancel order" in html  # still cancellable
    note = {"_id": "ORD-AAAA1111:shipped", "user_id": ADA.id, "kind": "status",
            "message": "Order ORD-AAAA1111 has shipped.", "created_at": "2026-11-22T05:00:02Z"}
    listed, toast = view.render(delivery("insert", "notifications", note))
    assert top(listed)[0][1]["data-upsert"] == "afterbegin:#notifications"
    assert top(toast)[0][1]["hx-swap-oob"] == "beforeend:#toasts"
    assert "has shipped" in toast
    [gone] = view.render(delivery("delete", "orders", None, ORDER))
    assert top(gone)[0][1] == {"id": "my-order-ORD-AAAA1111", "hx-swap-oob": "delete",
                               "data-if-present": None}


def test_admin_rows_offer_the_next_step_and_leave_when_filtered_out() -> None:
    view = AdminView(state(), ROOT_USER, fragments(), {"status": "processing"})
    [html] = view.render(delivery("update", "orders", ORDER, dict(ORDER, status="paid")))
    assert 'hx-vals=\'{"status": "shipped"}\'' in html and "Mark shipped" in html
    assert ">Ada<" in html  # the customer's name, from the cache
    shipped = dict(ORDER, status="shipped")
    leave = Delivery("orders", "leave", delivery("update", "orders", shipped, ORDER).event)
    [gone] = view.render(leave)
    assert top(gone)[0][1]["hx-swap-oob"] == "delete"
    [orders] = [sub for sub in view.subscriptions() if sub.id == "orders"]
    assert orders.where is not None and orders.where.matches(ORDER)
    assert not orders.where.matches(shipped)


def test_admin_stock_change_updates_inventory_cell_and_alert_list() -> None:
    view = AdminView(state([PRODUCT]), ROOT_USER, fragments())
    low = delivery("update", "products", dict(PRODUCT, stock=2), PRODUCT)
    [cell] = view.render(low.for_subscription("inventory"))  # the searched table
    assert top(cell)[0][1]["id"] == "inv-SKU-1-live"
    [alert] = view.render(low.for_subscription("products"))  # every product: the alerts
    assert top(alert)[0][1]["data-upsert"] == "beforeend:#alerts" and "2 left" in alert
    healthy = delivery("update", "products", PRODUCT, dict(PRODUCT, stock=2))
    [alert] = view.render(healthy.for_subscription("products"))
    assert top(alert)[0][1] == {"id": "alert-SKU-1", "hx-swap-oob": "delete",
                                "data-if-present": None}
    # A product entering the searched inventory gets its whole row, leaving it goes.
    entered = Delivery("inventory", "enter", low.event, doc=low.event.doc)
    [row] = view.render(entered)
    assert top(row)[0][1]["data-upsert"] == "beforeend:#inventory-body"
    [gone] = view.render(Delivery("inventory", "leave", low.event))
    assert top(gone)[0][1]["id"] == "inv-SKU-1" and top(gone)[0][1]["hx-swap-oob"] == "delete"


def test_product_search_becomes_an_engine_filter() -> None:
    assert product_filter({"q": "", "category": ""}) is None
    where = product_filter(search_params("  summit   KETTLE ", "Home"))
    assert where is not None
    assert where.matches({"_id": "SKU-HOM-1", "name": "Summit Kettle", "category": "Home"})
    assert not where.matches({"_id": "SKU-HOM-2", "name": "Summit Kettle", "category": "Toys"})
    assert not where.matches({"_id": "SKU-HOM-3", "name": "Summit Mug", "category": "Home"})
    assert where.constraints == {"category": frozenset({"Home"})}  # routed by the index
    # Quotes and wildcards typed into the box are text, not syntax.
    tricky = product_filter(search_params("it's 100%", ""))
    assert tricky is not None and tricky.matches({"_id": "x", "name": "It's 100 days"})
    with pytest.raises(ValueError):
        search_params(["list"], "")


def test_status_filter_accepts_known_statuses_only() -> None:
    assert status_filter("") is None and status_filter("paid") == "paid"
    with pytest.raises(ValueError, match="unknown status"):
        status_filter("paid' OR 1=1")


def test_trend_fills_every_minute_of_the_window() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 5, 30, 40, tzinfo=UTC)
    xs, ys = trend([{"minute": "2026-11-22T05:30", "orders": 3},
                    {"minute": "2026-11-22T05:28", "orders": 1}], now=now, minutes=5)
    assert ys == [0, 0, 1, 0, 3]
    assert xs[-1] == int(datetime(2026, 11, 22, 5, 30, tzinfo=UTC).timestamp())
    assert [b - a for a, b in itertools.pairwise(xs)] == [60] * 4


def test_hourly_trend_covers_fourteen_days_hour_by_hour() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 5, 30, 40, tzinfo=UTC)
    xs, ys = hourly_trend([{"hour": "2026-11-22T05", "orders": 2},
                           {"hour": "2026-11-08T06", "orders": 4},
                           {"hour": "2026-11-08T05", "orders": 9}], now=now)
    assert len(xs) == len(ys) == 14 * 24
    assert ys[0] == 4 and ys[-1] == 2 and sum(ys) == 6  # 05:00 two weeks back is outside
    assert [b - a for a, b in itertools.pairwise(xs)] == [3600] * (14 * 24 - 1)


class Wire(BasicWire):
    """A socket that takes everything (what the outlet wrote, as frame payloads)."""

    on_drain = None

    def __init__(self) -> None:
        self.frames: list[str] = []

    def frames_open(self) -> bool:
        return True

    def paused(self) -> bool:
        return False

    def write_frames(self, data: bytes) -> None:
        self.frames.extend(p.decode() for p in frame_payloads(data))

    def abort(self) -> None:
        raise AssertionError("not expected")


def test_a_batch_renders_once_for_every_page_of_a_kind_and_differs_per_kind() -> None:
    shared = state([PRODUCT])
    bob = User("user-customer02", "customer02@example.com", "Bob", "customer")
    views = [PortalView(shared, ADA, fragments()), PortalView(shared, bob, fragments()),
             AdminView(shared, ROOT_USER, fragments())]
    hub = Hub(collections=["products"], first_seq=10)
    wires = []
    for view in views:
        wire = Wire()
        outlet = PageOutlet(wire, view)
        subscriber = hub.subscriber(outlet=outlet)
        outlet.attach(subscriber)
        subscriber.subscribe("products", "products")
        wires.append(wire)
    rendered = 0
    original = PortalView.render

    def counting(self: PortalView, d: Delivery) -> list[str]:
        nonlocal rendered
        rendered += 1
        return original(self, d)

    PortalView.render = counting  # type: ignore[method-assign]
    try:
        hub.publish(op="update", collection="products", key=PRODUCT["_id"],
                    doc=dict(PRODUCT, stock=3), before=PRODUCT, changes=None)
    finally:
        PortalView.render = original  # type: ignore[method-assign]
    assert rendered == 1
    ada_frames, bob_frames, admin_frames = (w.frames for w in wires)
    assert ada_frames == bob_frames and ada_frames != admin_frames
    assert "product-SKU-1-live" in ada_frames[0] and 'data-seq="11"' in ada_frames[-1]


def test_a_page_batch_keeps_only_the_latest_state_of_each_document() -> None:
    new = delivery("insert", "products", PRODUCT, None, seq=1)
    later = delivery("update", "products", dict(PRODUCT, stock=3), PRODUCT, seq=2)
    other = delivery("update", "products", dict(PRODUCT, _id="SKU-2"), None, seq=3)
    latest = delivery("update", "products", dict(PRODUCT, stock=2), PRODUCT, seq=4)
    result = coalesced(Batch([new, later, other, latest]).deliveries)
    assert [(d.op, d.event.seq if d.event else None) for d in result] == [
        ("update", 3), ("insert", 4)]
    assert result[1].doc == dict(PRODUCT, stock=2)  # the card appears with the latest stock
