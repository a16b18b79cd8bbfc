"""Abuse: hostile content, hostile bodies and frames, and who may do what on the pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosed

from tests import conftest
from tests.backend.test_pages_live import A_ID, A, Site, frame
from tests.support.clients import harness

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.integration]

XSS = '<script>alert("owned")</script>'
ADMIN = "admin@example.com"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(nx_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    async with harness(Site, nx_uri, tmp_path_factory.mktemp("abuse"),
                       pipeline_enabled=False) as clients:
        yield clients


async def test_the_secret_scanner_itself_catches_a_leak() -> None:
    def leak(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"password_hash": "$argon2id$v=19$..."})

    async with httpx.AsyncClient(transport=httpx.MockTransport(leak)) as client:
        await client.get("http://example.invalid/")
    assert conftest.SECRETS_SEEN and "password_hash" in conftest.SECRETS_SEEN[-1]
    conftest.SECRETS_SEEN.clear()  # this one was planted


async def test_script_in_a_product_name_and_a_notification_renders_escaped_everywhere(
    site: Site,
) -> None:
    product = await site.db.products.find_one({"stock": {"$gt": 5}}, sort=[("_id", 1)])
    admin, customer = await site.client(ADMIN), await site.client(A)
    portal = await site.live(A, "portal")
    console = await site.live(ADMIN, "admin")
    await site.db.products.update_one({"_id": product["_id"]}, {"$set": {"name": XSS}})
    await site.db.notifications.insert_one({
        "_id": "xss-note", "user_id": A_ID, "order_id": None, "kind": "status",
        "message": XSS, "created_at": "2026-11-22T07:00:00.000Z", "read": False})
    order = await admin.post("/api/orders", json={"user_id": A_ID, "items": [
        {"product_id": product["_id"], "quantity": 1}]})  # the name goes into the order too
    assert order.status_code == 201
    frames = [await frame(portal, "xss-note"), await frame(console, order.json()["_id"])]
    pages = [(await customer.get("/")).text, (await admin.get("/admin")).text,
             (await admin.get(f"/ui/orders/{order.json()['_id']}")).text]
    cart = await customer.post("/ui/cart", data={"product_id": product["_id"], "quantity": "1"})
    pages.append(cart.text)
    for text in frames + pages:
        assert "<script>alert" not in text
    assert all("&lt;script&gt;" in text for text in pages)
    await portal.close()
    await console.close()


@pytest.mark.parametrize("body", [
    b"{" * 100_000,  # deeply nested
    b"[" * 5_000 + b"]" * 5_000,
    b'{"items": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    b'{"items": [{"product_id": "' + b"x" * 70_000 + b'", "quantity": 1}]}',  # over 64 KiB
    b"\xff\xfe not utf-8",
    b'{"items": [{"product_id": "SKU-BOO-001", "quantity": 1e400}]}',
])
async def test_hostile_json_bodies_get_4xx_and_the_server_stays_up(site: Site,
                                                                   body: bytes) -> None:
    customer = await site.client(A)
    response = await customer.post("/api/orders", content=body,
                                   headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]
    assert (await customer.get("/api/health")).status_code == 200


async def test_hostile_forms_on_the_page_actions_get_4xx(site: Site) -> None:
    customer = await site.client(A)
    huge = await customer.post("/ui/cart", content=b"product_id=" + b"x" * 70_000,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413
    many = "&".join(f"f{n}=1" for n in range(200))
    crowded = await customer.post("/ui/cart", content=many.encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= crowded.status_code < 500


async def test_hostile_websocket_frames_get_errors_and_the_connection_stays(site: Site) -> None:
    ws = await site.socket(ADMIN, "/ws")
    replies = []
    for raw in ("[" * 100_000, "{" * 50 + "}" * 50, "\ud800", "null", "[]", '"op"',
                json.dumps({"op": "subscribe", "id": "x" * 1000, "collection": "orders"}),
                json.dumps({"op": "subscribe", "id": "w", "collection": "orders",
                            "where": "(" * 5_000 + "status = 'paid'" + ")" * 5_000})):
        await ws.send(raw.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    assert all(r["type"] == "error" and r["message"] for r in replies), replies
    await ws.send(b"\x00\x01 binary")  # binary frames are not part of the protocol
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    still = await site.socket(ADMIN, "/ws")
    await still.send('{"op": "ping"}')
    assert json.loads(await asyncio.wait_for(still.recv(), 5))["type"] == "pong"
    await still.close()


PAGE_MATRIX: list[tuple[str, str, str, dict[str, Any], dict[str, int]]] = [
    # method, path, what, form,                                  expected per role
    ("GET", "/", "portal", {}, {"anon": 303, "customer": 200, "admin": 200}),
    ("GET", "/admin", "console", {}, {"anon": 303, "customer": 403, "admin": 200}),
    ("GET", "/dashboard", "dashboard", {}, {"anon": 303, "customer": 403, "admin": 200}),
    ("POST", "/ui/products/SKU-BOO-001/stock", "stock", {"delta": "1"},
     {"anon": 401, "customer": 403, "admin": 204}),
    ("POST", "/ui/simulate/update-stock", "simulate", {},
     {"anon": 401, "customer": 403, "admin": 200}),
    ("POST", "/ui/cart/remove", "cart", {"product_id": "SKU-BOO-001"},
     {"anon": 401, "customer": 200, "admin": 200}),
    ("GET", "/ui/orders/ORD-NOTHERE", "detail", {}, {"anon": 401, "customer": 404, "admin": 404}),
]


@pytest.mark.parametrize(("method", "path", "what", "form", "expected"), PAGE_MATRIX,
                         ids=[row[2] for row in PAGE_MATRIX])
async def test_pages_and_actions_authorization_matrix(site: Site, method: str, path: str,
                                                      what: str, form: dict[str, Any],
                                                      expected: dict[str, int]) -> None:
    for role, who in (("anon", "anon"), ("customer", A), ("admin", ADMIN)):
        client = await site.client(who)
        response = await client.request(method, path, data=form or None)
        assert response.status_code == expected[role], (role, path, response.text[:200])


@pytest.mark.parametrize(("view", "allowed"), [("portal", {"customer", "admin"}),
                                               ("admin", {"admin"}), ("dashboard", {"admin"})])
async def test_live_sockets_authorization_matrix(site: Site, view: str, allowed: set[str]) -> None:
    for role, who in (("anon", "anon"), ("customer", A), ("admin", ADMIN)):
        ws = await site.live(who, view)
        if role in allowed:
            assert "<" in str(await asyncio.wait_for(ws.recv(), 5))  # fragments flow
            await ws.close()
        else:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
