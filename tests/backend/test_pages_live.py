"""The pages' HTTP routes, their htmx actions and the ``/ws/live/{view}`` socket, over real
sockets against the embedded database (the pipeline is off: orders stay where we put them)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.clients import Clients, harness

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.integration]

A, B = "customer01@example.com", "customer02@example.com"
A_ID, B_ID = "user-customer01", "user-customer02"
SEQ = re.compile(r'id="cc-seq" hx-swap-oob="true" data-seq="(\d+)"')


class Site(Clients):
    """Signed in with the demo one-click form, as a browser would (Origin included)."""

    def options(self) -> dict[str, Any]:
        return {"headers": {"Origin": self.base}}

    async def sign_in(self, client: httpx.AsyncClient, who: str) -> None:
        response = await client.post("/login/demo", data={"email": who})
        assert response.status_code == 303, response.text

    async def live(self, who: str, view: str, query: str = "") -> ClientConnection:
        return await self.socket(who, f"/ws/live/{view}{query}")


async def frame(ws: ClientConnection, containing: str, timeout: float = 5) -> str:
    """The next frame that contains ``containing`` (earlier frames are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            text = str(await ws.recv())
            assert "password_hash" not in text and "$argon2" not in text
            if containing in text:
                return text


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, None)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(nx_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    async with harness(Site, nx_uri, tmp_path_factory.mktemp("pages"),
                       pipeline_enabled=False) as clients:
        yield clients


# ---- pages -----------------------------------------------------------------------------------

async def test_pages_need_the_right_role_and_carry_the_snapshot_seq(site: Site) -> None:
    anon = await site.client("anon")
    for path in ("/", "/admin", "/dashboard"):
        response = await anon.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/login")
    customer = await site.client(A)
    for path in ("/admin", "/dashboard"):
        denied = await customer.get(path)
        assert denied.status_code == 403 and "for administrators" in denied.text
    portal = await customer.get("/")
    assert portal.status_code == 200
    assert 'ws-connect="/ws/live/portal"' in portal.text
    assert int(re.search(r'id="cc-seq" data-seq="(\d+)"', portal.text).group(1)) > 0  # type: ignore[union-attr]
    assert "password_hash" not in portal.text and "$argon2" not in portal.text
    admin = await site.client("admin@example.com")
    page = await admin.get("/admin", params={"status": "nonsense"})
    assert page.status_code == 400 and "unknown status" in page.json()["error"]["message"]


async def test_login_page_lists_demo_users_and_one_click_signs_in(site: Site) -> None:
    anon = await site.client("anon")
    page = await anon.get("/login")
    assert "Sign in as" in page.text and "customer25@example.com" in page.text
    unknown = await anon.post("/login/demo", data={"email": "nobody@example.com"})
    assert unknown.status_code == 404
    foreign = await anon.post("/login/demo", data={"email": A},
                              headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403


# ---- htmx actions ----------------------------------------------------------------------------

async def test_cart_add_validates_against_live_stock_and_checkout_prices_from_the_database(
    site: Site,
) -> None:
    customer = await site.client(B)
    bad = await customer.post("/ui/cart", data={"product_id": "SKU-BOO-001", "quantity": "0"})
    assert bad.status_code == 422 and "Choose a quantity from 1 to 1,000" in bad.text
    assert 'role="alert"' in bad.text and 'id="cart"' in bad.text
    words = await customer.post("/ui/cart", data={"product_id": "SKU-BOO-001", "quantity": "x"})
    assert words.status_code == 422 and "whole number" in words.text
    unknown = await customer.post("/ui/cart", data={"product_id": "NOPE", "quantity": "1"})
    assert unknown.status_code == 422 and "There is no product" in unknown.text
    empty = await customer.post("/ui/checkout")
    assert empty.status_code == 422 and "empty" in empty.text

    product = await site.db.products.find_one({"stock": {"$gte": 5}}, sort=[("_id", 1)])
    too_many = await customer.post("/ui/cart", data={"product_id": product["_id"],
                                                     "quantity": str(product["stock"] + 1)})
    assert too_many.status_code == 409
    assert f"Only {product['stock']} of {product['name']} left" in too_many.text
    added = await customer.post("/ui/cart", data={"product_id": product["_id"], "quantity": "2"})
    assert added.status_code == 200 and "Added 2 of" in added.text
    await site.db.products.update_one({"_id": product["_id"]}, {"$set": {"price_cents": 12345}})
    placed = await customer.post("/ui/checkout")
    assert placed.status_code == 201, placed.text
    order_id = re.search(r"ORD-[A-Z0-9]{8}", placed.text).group()  # type: ignore[union-attr]
    order = await site.db.orders.find_one({"_id": order_id})
    assert order["user_id"] == B_ID and order["status"] == "pending"
    assert order["items"][0]["price_cents"] == 12345  # the database's price, not the cart's
    assert "Your cart is empty" in placed.text


async def test_status_and_stock_actions_enforce_roles_and_answer_errors_as_toasts(
    site: Site,
) -> None:
    anon, customer = await site.client("anon"), await site.client(A)
    admin = await site.client("admin@example.com")
    placed = await admin.post("/api/orders", json={"user_id": A_ID, "items": [
        {"product_id": "SKU-BOO-005", "quantity": 1}]})
    order = placed.json()
    await site.db.orders.update_one({"_id": order["_id"]}, {"$set": {"status": "processing"}})
    url = f"/ui/orders/{order['_id']}/status"
    signed_out = await anon.post(url, data={"status": "shipped"})
    assert signed_out.status_code == 401 and signed_out.headers["HX-Redirect"] == "/login"
    denied = await customer.post(url, data={"status": "shipped"})
    assert denied.status_code == 403 and denied.headers["HX-Retarget"] == "#toasts"
    assert "customers may only cancel" in denied.text and 'role="alert"' in denied.text
    other = await site.db.orders.find_one({"user_id": B_ID})
    hidden = await customer.post(f"/ui/orders/{other['_id']}/status", data={"status": "cancelled"})
    assert hidden.status_code == 404
    illegal = await admin.post(url, data={"status": "delivered"})
    assert illegal.status_code == 409 and "can move to" in illegal.text
    assert (await admin.post(url, data={"status": "shipped"})).status_code == 204
    assert (await site.db.orders.find_one({"_id": order["_id"]}))["status"] == "shipped"

    stock_url = "/ui/products/SKU-HOM-001/stock"
    assert (await customer.post(stock_url, data={"delta": "10"})).status_code == 403
    nonsense = await admin.post(stock_url, data={"delta": "ten"})
    assert nonsense.status_code == 422 and "delta must be a whole number" in nonsense.text
    both = await admin.post(stock_url, data={"delta": "1", "stock": "3"})
    assert both.status_code == 422
    assert (await admin.post(stock_url, data={"stock": "3"})).status_code == 204
    below = await admin.post(stock_url, data={"delta": "-10"})
    assert below.status_code == 409 and "below 0" in below.text
    foreign = await admin.post(stock_url, data={"stock": "1"},
                               headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert (await site.db.products.find_one({"_id": "SKU-HOM-001"}))["stock"] == 3

    assert (await customer.post("/ui/simulate/new-order")).status_code == 403
    unknown = await admin.post("/ui/simulate/everything")
    assert unknown.status_code == 404 and "There is no demo action" in unknown.text
    simulated = await admin.post("/ui/simulate/update-stock")
    assert simulated.status_code == 200 and "Stock of" in simulated.text


async def test_shoppers_demo_controls_work_for_customers_and_are_rate_limited(
    site: Site,
) -> None:
    customer = await site.client(B)
    bought = await customer.post("/ui/simulate/shopper-buys")
    assert bought.status_code == 200 and "Another shopper placed order" in bought.text
    order_id = bought.text.split("order ")[1].split(".")[0]
    order = await site.db.orders.find_one({"_id": order_id})
    assert order is not None and order["user_id"] != B_ID  # somebody else's
    lowest = await site.db.products.find_one({}, sort=[("stock", 1), ("_id", 1)])
    restocked = await customer.post("/ui/simulate/restock")
    assert restocked.status_code == 200 and f"Stock of {lowest['name']} is now" in restocked.text
    # Without an order waiting for the shop, nothing moves, and the customer is told why.
    await site.db.orders.update_many({"user_id": B_ID, "status": {"$in": ["processing", "shipped"]}},
                                     {"$set": {"status": "delivered"}})
    idle = await customer.post("/ui/simulate/advance-mine")
    assert idle.status_code == 409 and "None of your orders is waiting" in idle.text
    # 20 demo actions per session per minute, then 429 with Retry-After; other sessions
    # are not affected.
    for _ in range(20 - 3):
        assert (await customer.post("/ui/simulate/restock")).status_code == 200
    limited = await customer.post("/ui/simulate/restock")
    assert limited.status_code == 429 and "20 demo actions in a minute" in limited.text
    assert int(limited.headers["Retry-After"]) >= 1
    other = await site.client("customer03@example.com")
    assert (await other.post("/ui/simulate/restock")).status_code == 200


async def test_order_detail_shows_audit_and_correlation_to_the_owner_and_admins_only(
    site: Site,
) -> None:
    order = await site.db.orders.find_one({"user_id": A_ID})
    detail = await (await site.client("admin@example.com")).get(f"/ui/orders/{order['_id']}")
    assert detail.status_code == 200
    assert order["correlation_id"] in detail.text and "Audit trail" in detail.text
    assert (await (await site.client(B)).get(f"/ui/orders/{order['_id']}")).status_code == 404


# ---- the live socket -------------------------------------------------------------------------

async def test_live_socket_refuses_wrong_pages_users_and_parameters(site: Site) -> None:
    assert await closed_with(await site.live("anon", "portal")) == (1008, "sign in first")
    assert await closed_with(await site.live(A, "admin")) == (1008, "admins only")
    assert await closed_with(await site.live(A, "dashboard")) == (1008, "admins only")
    assert await closed_with(await site.live(A, "nowhere")) == (1008, "no such page")
    bad = await site.live(A, "portal", "?resume_from=soon")
    assert (await closed_with(bad))[0] == 1003
    bad = await site.live("admin@example.com", "admin", "?status=lost")
    code, reason = await closed_with(bad)
    assert code == 1003 and "unknown status" in (reason or "")


async def test_live_portal_gets_its_own_changes_as_fragments_and_never_anothers(
    site: Site,
) -> None:
    admin = await site.client("admin@example.com")
    ws, other = await site.live(A, "portal"), await site.live(B, "portal")
    response = await admin.put("/api/products/SKU-BOO-002/stock", json={"stock": 4})
    assert response.status_code == 200
    html = await frame(ws, "product-SKU-BOO-002-live")
    assert 'data-stock="4"' in html and "Low stock" in html and SEQ.search(html)
    # The product's frame is shared: both customers get the very same text.
    assert await frame(other, "product-SKU-BOO-002-live") == html
    # Customer 02's new order must not reach customer 01; their own next change must.
    response = await admin.post("/api/orders", json={"user_id": B_ID, "items": [
        {"product_id": "SKU-BOO-003", "quantity": 1}]})
    foreign_id = response.json()["_id"]
    mine = await admin.post("/api/orders", json={"user_id": A_ID, "items": [
        {"product_id": "SKU-BOO-003", "quantity": 1}]})
    html = await frame(ws, mine.json()["_id"])
    assert foreign_id not in html and 'data-upsert="afterbegin:#my-orders"' in html
    await ws.close()
    # Every frame customer 02 gets up to a later change (after customer 01's order, so
    # anything of 01's would be among them) shows 02's order and never 01's.
    await admin.put("/api/products/SKU-BOO-002/stock", json={"stock": 5})
    seen = []
    async with asyncio.timeout(5):
        while not seen or 'data-stock="5"' not in seen[-1]:
            seen.append(str(await other.recv()))
    assert any(foreign_id in text for text in seen)
    assert not any(mine.json()["_id"] in text for text in seen)
    await other.close()


async def test_live_portal_resumes_from_its_seq_and_reloads_on_resync(site: Site) -> None:
    admin = await site.client("admin@example.com")
    ws = await site.live(A, "portal")
    await admin.put("/api/products/SKU-BOO-004/stock", json={"stock": 40})
    seq = int(SEQ.search(await frame(ws, "product-SKU-BOO-004-live")).group(1))  # type: ignore[union-attr]
    await ws.close()
    await admin.put("/api/products/SKU-BOO-004/stock", json={"stock": 41})  # while away

    resumed = await site.live(A, "portal", f"?resume_from={seq}")
    html = await frame(resumed, "product-SKU-BOO-004-live")
    assert 'data-stock="41"' in html
    assert 'id="product-grid"' not in html  # a replay, not a reload
    await resumed.close()

    ancient = await site.live(A, "portal", "?resume_from=1")  # long gone from the buffer
    html = await frame(ancient, 'id="product-grid"')
    assert 'id="product-grid" class="grid" hx-swap-oob="true"' in html
    assert 'data-stock="41"' in html and 'id="my-orders"' in html
    await ancient.close()


async def test_live_admin_filter_changes_over_the_socket(site: Site) -> None:
    ws = await site.live("admin@example.com", "admin", "?status=cancelled")
    await ws.send('{"status": "delivered", "HEADERS": {"HX-Request": "true"}}')
    html = await frame(ws, 'id="orders-body"')
    statuses = set(re.findall(
        r'role="row" class="row" id="order-[^"]+" data-id="[^"]+" data-status="(\w+)"', html))
    assert statuses == {"delivered"}
    await ws.send('{"status": "everything"}')
    assert "Not understood" in await frame(ws, "toast")
    await ws.send("x" * 10_000)
    assert "limited to" in await frame(ws, "toast")
    await ws.close()


async def test_live_dashboard_pushes_kpis_on_connect_and_after_an_order(site: Site) -> None:
    admin = await site.client("admin@example.com")
    ws = await site.live("admin@example.com", "dashboard")
    first = await frame(ws, 'id="kpis"')
    orders = int(re.search(r'data-kpi="orders">(\d+)<', first).group(1))  # type: ignore[union-attr]
    await admin.post("/api/simulate/new-order")
    async with asyncio.timeout(5):
        while True:
            html = await frame(ws, 'id="kpis"')
            if int(re.search(r'data-kpi="orders">(\d+)<', html).group(1)) == orders + 1:  # type: ignore[union-attr]
                break
    assert 'id="system"' in await frame(ws, 'id="system"')
    await ws.close()


async def test_orders_page_endpoint_pages_by_keyset_and_refuses_bad_input(site: Site) -> None:
    admin = await site.client("admin@example.com")
    newest = await site.db.orders.find({}, {"_id": 1}).sort([("created_at", -1), ("_id", 1)]) \
        .limit(100).to_list()
    page = await admin.get("/ui/orders", params={"after": newest[49]["_id"]})
    assert page.status_code == 200
    assert re.findall(r'data-id="([^"]+)"', page.text) == [o["_id"] for o in newest[50:100]]
    assert page.text.count('data-upsert="beforeend:#orders-body"') == 50
    assert (await admin.get("/ui/orders", params={"status": "nope"})).status_code == 400
    assert (await admin.get("/ui/orders", params={"after": "ORD-NOTHERE"})).status_code == 404
    customer = await site.client(A)
    assert (await customer.get("/ui/orders")).status_code == 403
