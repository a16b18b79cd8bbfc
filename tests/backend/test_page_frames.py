"""The push side of the pages' socket: a group's fragments rendered once per pass for every
page of a kind and written to each member as the same bytes, a customer's own orders only
ever in that customer's frames, and an admin's page (two subscriptions on products) still
one frame per pass beside a thousand portal pages on the fast path."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

from backend.domain.users import User
from backend.web.live.frames import frame_payloads
from backend.web.live.page_socket import PageOutlet
from backend.web.pages.fragments import Fragments
from backend.web.pages.templates import make_templates
from backend.web.pages.views import AdminView, PortalView, View
from streaming import Hub
from tests.backend.test_frames import Wire

A, B = "user-customer01", "user-customer02"
SEQ = re.compile(r'id="cc-seq" hx-swap-oob="true" data-seq="(\d+)"')


class CountingFragments(Fragments):
    """Fragments that count how often each partial is rendered."""

    def __init__(self) -> None:
        super().__init__(make_templates().env)
        self.rendered: dict[str, int] = {}

    def render(self, template: str, swap: dict[str, Any] | None = None, **context: Any) -> str:
        self.rendered[template] = self.rendered.get(template, 0) + 1
        return super().render(template, swap, **context)


def page(hub: Hub, fragments: Fragments, kind: type[View], user_id: str,
         role: str = "customer") -> Wire:
    state = SimpleNamespace(engine=SimpleNamespace(documents=lambda _: []), db=None)
    user = User(id=user_id, email=f"{user_id}@example.com", name=user_id, role=role)
    view = kind(state, user, fragments)  # type: ignore[arg-type]
    wire = Wire()
    outlet = PageOutlet(wire, view)
    subscriber = hub.subscriber(outlet=outlet)
    outlet.attach(subscriber)
    for sub in view.subscriptions():
        subscriber.subscribe(sub.id, sub.collection, where=sub.where,
                             restriction=sub.restriction)
    wire.writes.clear()
    return wire


def texts(wire: Wire) -> list[str]:
    return [p.decode() for data in wire.writes for p in frame_payloads(data)]


async def settled(hub: Hub) -> None:
    """Let the event loop run the fan-out passes of everything published so far."""
    while hub.settled_seq < hub.seq:
        await asyncio.sleep(0)


def product(hub: Hub, key: str, stock: int) -> None:
    doc = {"_id": key, "name": "Atlas", "category": "books", "price_cents": 1200,
           "stock": stock, "low_stock_threshold": 10}
    hub.publish(op="update", collection="products", key=key, doc=doc,
                before={**doc, "stock": stock + 1}, changes=None)


def order(hub: Hub, key: str, user_id: str) -> None:
    doc = {"_id": key, "user_id": user_id, "status": "pending", "total_cents": 1200,
           "items": [{"product_id": "SKU-1", "name": "Atlas", "quantity": 1,
                      "price_cents": 1200}],
           "history": [{"status": "pending", "at": "2026-12-06T00:00:00Z", "by": "api"}],
           "created_at": "2026-12-06T00:00:00Z", "updated_at": "2026-12-06T00:00:00Z"}
    hub.publish(op="insert", collection="orders", key=key, doc=doc, before=None, changes=None)


async def test_a_thousand_portal_pages_share_one_rendering_and_one_frame_per_pass() -> None:
    hub = Hub(collections=["products", "orders", "notifications", "presence"], first_seq=0)
    fragments = CountingFragments()
    pages = [page(hub, fragments, PortalView, f"user-customer{n % 40:02d}") for n in range(1000)]
    product(hub, "SKU-1", 4)
    product(hub, "SKU-2", 30)
    await settled(hub)
    first = pages[0].writes[0]
    assert all(wire.writes == [first] and wire.writes[0] is first for wire in pages)
    (text,) = texts(pages[0])
    assert 'data-stock="4"' in text and 'data-stock="30"' in text and "Low stock" in text
    assert SEQ.search(text).group(1) == str(hub.seq)  # type: ignore[union-attr]
    assert fragments.rendered == {"_product_live.html": 2}  # once per change, not per page


async def test_a_customers_own_orders_reach_only_their_pages_and_shared_frames_hold_none() -> None:
    hub = Hub(collections=["products", "orders", "notifications", "presence"], first_seq=0)
    fragments = CountingFragments()
    mine = [page(hub, fragments, PortalView, A) for _ in range(3)]
    theirs = [page(hub, fragments, PortalView, B) for _ in range(300)]
    admins = [page(hub, fragments, AdminView, "user-admin", role="admin") for _ in range(2)]
    # One pass: a product changes and customer 01 places an order.
    product(hub, "SKU-1", 3)
    order(hub, "ORD-A0000001", A)
    await settled(hub)
    for wire in (*mine, *theirs, *admins):
        assert len(wire.writes) == 1  # everything of the pass in one frame
    for wire in theirs:
        (text,) = texts(wire)
        assert 'data-stock="3"' in text and "ORD-A0000001" not in text
        assert wire.writes[0] is theirs[0].writes[0]
    for wire in mine:
        (text,) = texts(wire)
        assert 'data-stock="3"' in text and 'id="my-order-ORD-A0000001"' in text
    for wire in admins:
        (text,) = texts(wire)
        assert 'id="order-ORD-A0000001"' in text  # the admins' table row
        assert 'id="inv-SKU-1-live"' in text and 'id="alert-SKU-1"' in text
    # The customer's order was rendered once for their three pages, the product card once
    # for all 303 portal pages.
    assert fragments.rendered["_my_order.html"] == 1
    assert fragments.rendered["_product_live.html"] == 1
    # Customer 02 is told of their own order, and customer 01 is not.
    order(hub, "ORD-B0000001", B)
    await settled(hub)
    assert all("ORD-B0000001" in texts(wire)[-1] for wire in theirs)
    assert all(len(wire.writes) == 1 for wire in mine)


async def test_a_page_that_joins_while_a_change_is_pending_gets_only_what_follows() -> None:
    hub = Hub(collections=["products", "orders", "notifications", "presence"], first_seq=0)
    fragments = CountingFragments()
    early = [page(hub, fragments, PortalView, A) for _ in range(5)]
    product(hub, "SKU-1", 8)  # pending until the loop's next turn
    late = page(hub, fragments, PortalView, B)  # its snapshot already shows stock 8
    product(hub, "SKU-1", 7)
    await settled(hub)
    (text,) = texts(late)
    assert 'data-stock="7"' in text and 'data-stock="8"' not in text
    for wire in early:
        (text,) = texts(wire)  # both changes, coalesced to the latest state
        assert 'data-stock="7"' in text and text.count('id="product-SKU-1-live"') == 1
