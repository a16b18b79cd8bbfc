"""Hardening: what an anonymous visitor, a careless client or a local user could do to the
server before, each tried for real against a served app (see docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.domain.passwords import hash_password
from backend.domain.users import set_password, set_role
from backend.infra.embedded import EmbeddedServer
from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD, Settings
from tests.support.server import Captured, serve_captured

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.integration]

ADMIN, A, B = "admin@example.com", "customer01@example.com", "customer02@example.com"


class Site:
    def __init__(self, base: str, db: Any, front: Captured) -> None:
        self.base, self.db, self.front = base, db, front
        self.host, self.port = base.removeprefix("http://").split(":")

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=10,
                                 headers={"Origin": self.base, **kwargs.pop("headers", {})},
                                 **kwargs)

    async def signed_in(self, email: str, password: str = DEFAULT_DEMO_PASSWORD,
                        **kwargs: Any) -> httpx.AsyncClient:
        client = self.client(**kwargs)
        response = await client.post("/api/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return client

    async def raw(self, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, int(self.port))
        writer.write(data)
        await writer.drain()
        return reader, writer

    async def breaker(self) -> str:
        async with self.client() as anon:
            return str((await anon.get("/api/metrics")).json()["breaker"]["state"])

    def ws(self, path: str, client: httpx.AsyncClient | None = None, **kwargs: Any) -> Any:
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items()) if client else ""
        return connect(self.base.replace("http://", "ws://") + path, origin=self.base,
                       additional_headers={"Cookie": cookie} if cookie else None, **kwargs)


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(nx_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    async with serve_captured(nx_uri, tmp_path_factory.mktemp("hardening"),
                          pipeline_enabled=False, body_timeout_s=1.0, header_timeout_s=1.0,
                          idle_socket_s=1.0, forwarded_allow_ips="127.0.0.1",
                          max_connections_per_client=60) as (base, db, front):
        yield Site(base, db, front)


# ---- High: the breaker, bodies -------------------------------------------------------------

async def test_slow_uploads_get_408_and_never_open_the_breaker(site: Site) -> None:
    # Content-Length 33, 5 bytes sent, then nothing: before, each one ran out the 0.8 s
    # database deadline, counted as a database failure, and five opened the breaker.
    request = (f"POST /api/login HTTP/1.1\r\nHost: {site.host}:{site.port}\r\n"
               "Content-Type: application/json\r\nContent-Length: 33\r\n\r\n{\"ema").encode()
    started = time.monotonic()
    streams = [await site.raw(request) for _ in range(5)]
    heads = await asyncio.gather(*(reader.readuntil(b"\r\n") for reader, _ in streams))
    assert [status_of(h) for h in heads] == [408] * 5
    assert time.monotonic() - started < 5
    for _, writer in streams:
        writer.close()
    assert await site.breaker() == "closed"
    async with site.client() as victim:
        assert (await victim.get("/api/products")).status_code == 200
    await (await site.signed_in(A)).aclose()


async def test_bursts_of_wrong_passwords_get_401_and_never_open_the_breaker(site: Site) -> None:
    # argon2 takes ~0.3 s a check: six at once on two cores ran past the deadline (503) and
    # opened the breaker for everyone, again every 5 s.
    async with site.client(headers={"X-Forwarded-For": "198.51.100.7"}) as attacker:
        for _ in range(2):
            answers = await asyncio.gather(*(attacker.post(
                "/api/login", json={"email": ADMIN, "password": f"guess-{n}"})
                for n in range(6)))
            assert [r.status_code for r in answers] == [401] * 6
    assert await site.breaker() == "closed"
    async with site.client() as victim:
        assert (await victim.get("/api/products")).status_code == 200


async def test_huge_bodies_are_refused_before_they_are_read(site: Site) -> None:
    # Content-Length 200 MB: refused at once, with nothing read (before: 390 MB read).
    reader, writer = await site.raw(
        f"POST /api/login HTTP/1.1\r\nHost: {site.host}:{site.port}\r\nContent-Type: "
        "application/json\r\nContent-Length: 209715200\r\n\r\n".encode())
    assert status_of(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)) == 413
    writer.close()
    # Chunked, without a length: cut off at the limit.
    reader, writer = await site.raw(
        f"POST /api/login HTTP/1.1\r\nHost: {site.host}:{site.port}\r\nContent-Type: "
        "application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"x" * 16_384
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        for _ in range(64):  # 1 MiB, if the server let it in
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                break
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status_of(head) == 413
        raise ConnectionError("refused")  # what the client sees after the 413
    writer.close()


# ---- Medium --------------------------------------------------------------------------------

async def test_numbers_beyond_int64_get_4xx_in_the_error_shape(site: Site) -> None:
    admin = await site.signed_in(ADMIN, DEFAULT_ADMIN_PASSWORD)
    product = (await admin.get("/api/products", params={"limit": 1})).json()["items"][0]["_id"]
    tries = [
        admin.get("/api/orders", params={"cursor": "9223372036854775808"}),
        admin.get("/api/orders", params={"where": "total_cents > 99999999999999999999"}),
        admin.get("/api/products", params={"where": "stock < -99999999999999999999"}),
        admin.put(f"/api/products/{product}/stock", json={"stock": 2**63}),
        admin.put(f"/api/products/{product}/stock", json={"delta": -(2**63)}),
        admin.post("/api/orders", json={"items": [{"product_id": product, "quantity": 2**63}]}),
    ]
    for response in [await t for t in tries]:
        assert 400 <= response.status_code < 500, (response.request.url, response.text)
        assert set(response.json()["error"]) == {"code", "message"}
    form = await admin.post(f"/ui/products/{product}/stock",
                            data={"stock": "9223372036854775808"})
    assert form.status_code == 422 and "at most" in form.text
    # The connection is still good for the next request.
    assert (await admin.get("/api/me")).json()["user"]["email"] == ADMIN
    await admin.aclose()


async def test_stock_has_an_upper_bound_and_never_becomes_a_float(site: Site) -> None:
    admin = await site.signed_in(ADMIN, DEFAULT_ADMIN_PASSWORD)
    product = (await admin.get("/api/products", params={"limit": 1})).json()["items"][0]["_id"]
    high = await admin.put(f"/api/products/{product}/stock", json={"stock": 1_000_000_000})
    assert high.status_code == 200 and high.json()["stock"] == 1_000_000_000
    over = await admin.put(f"/api/products/{product}/stock", json={"delta": 1})
    assert over.status_code == 409 and "above" in over.json()["error"]["message"]
    assert (await admin.put(f"/api/products/{product}/stock",
                            json={"stock": 9223372036854775807})).status_code == 422
    assert (await admin.get(f"/api/products/{product}")).json()["stock"] == 1_000_000_000
    await admin.put(f"/api/products/{product}/stock", json={"stock": 50})
    await admin.aclose()


async def test_logout_ends_the_session_even_for_a_saved_copy_of_the_cookie(site: Site) -> None:
    customer = await site.signed_in(B)
    saved = dict(customer.cookies)
    assert (await customer.post("/api/logout")).status_code == 200
    async with site.client(cookies=saved) as thief:
        assert (await thief.get("/api/me")).json()["user"] is None
        assert (await thief.get("/api/orders")).status_code == 401
    await customer.aclose()
    again = await site.signed_in(B)  # signing in again works
    assert (await again.get("/api/me")).json()["user"]["email"] == B
    await again.aclose()


async def test_a_password_change_ends_the_sessions(site: Site) -> None:
    state = site.front.app_state
    user = await site.db.users.find_one({"email": "customer03@example.com"})
    client = await site.signed_in("customer03@example.com")
    await set_password(state.db, state.engine, user["_id"], hash_password("new-secret-1"))
    assert (await client.get("/api/me")).json()["user"] is None
    await (await site.signed_in("customer03@example.com", "new-secret-1")).aclose()
    await client.aclose()


async def test_a_demoted_admin_loses_open_sockets_and_new_subscriptions(site: Site) -> None:
    state = site.front.app_state
    await site.db.users.insert_one({
        "_id": "user-ops", "email": "ops@example.com", "name": "Ops", "role": "admin",
        "password_hash": hash_password("ops-secret-1")})
    ops = await site.signed_in("ops@example.com", "ops-secret-1")
    json_socket = await site.ws("/ws", ops).__aenter__()
    await json_socket.send(json.dumps({"op": "subscribe", "id": "all", "collection": "orders"}))
    assert json.loads(await json_socket.recv())["type"] == "subscribed"
    page_socket = await site.ws("/ws/live/admin", ops).__aenter__()
    await set_role(state.db, state.engine, "user-ops", "customer")
    for socket in (json_socket, page_socket):
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # The old cookie opens nothing an admin could: it is signed out.
    async with site.ws("/ws", ops) as fresh:
        await fresh.send(json.dumps({"op": "subscribe", "id": "u", "collection": "users"}))
        assert json.loads(await fresh.recv())["code"] == "unauthorized"
    assert (await ops.get("/api/me")).json()["user"] is None
    await ops.aclose()


async def test_business_figures_in_metrics_are_for_admins_only(site: Site) -> None:
    async with site.client() as anon:
        public = (await anon.get("/api/metrics")).json()
    assert "orders" not in public and "breaker" in public and "cache" in public
    admin = await site.signed_in(ADMIN, DEFAULT_ADMIN_PASSWORD)
    assert "revenue_cents" in (await admin.get("/api/metrics")).json()["orders"]
    await admin.aclose()


async def test_unknown_hosts_get_400_and_no_demo_sign_in(site: Site) -> None:
    evil = "rebind.evil.example:18777"
    async with site.client(headers={"Host": evil, "Origin": f"http://{evil}"}) as rebound:
        demo = await rebound.post("/login/demo", data={"email": ADMIN})
        assert demo.status_code == 400 and "changecast_session" not in demo.cookies
        assert (await rebound.get("/")).status_code == 400
    reader, writer = await site.raw(
        f"GET /ws HTTP/1.1\r\nHost: {evil}\r\nUpgrade: websocket\r\nConnection: Upgrade"
        "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
        "\r\n\r\n".encode())
    assert status_of(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)) == 403
    writer.close()
    async with site.client(headers={"Host": f"localhost:{site.port}",
                                    "Origin": f"http://localhost:{site.port}"}) as local:
        assert (await local.get("/login")).status_code == 200


async def test_one_click_demo_sign_in_is_for_loopback_clients_only(site: Site) -> None:
    async with site.client() as here:
        page = await here.get("/login")
        assert "Demo: sign in with one click" in page.text
    # A client elsewhere (as told by the trusted proxy, here on loopback).
    async with site.client(headers={"X-Forwarded-For": "203.0.113.9"}) as remote:
        assert "Demo: sign in with one click" not in (await remote.get("/login")).text
        refused = await remote.post("/login/demo", data={"email": ADMIN})
        assert refused.status_code == 403


async def test_security_headers_on_every_page_and_answer(site: Site) -> None:
    async with site.client() as anon:
        for path in ("/login", "/api/products", "/static/app.css"):
            headers = (await anon.get(path)).headers
            assert "script-src 'self'" in headers["content-security-policy"], path
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"
            assert "strict-transport-security" not in headers  # not served over https here


async def test_the_embedded_database_is_this_users_alone(tmp_path: Path) -> None:
    # Before: TCP on loopback with no authentication (any local account could make itself
    # admin), data files 0644 and a secret key created 0644 and chmod'ed after.
    settings = Settings.from_env({"CHANGECAST_DATA_DIR": str(tmp_path / "data")})
    secret = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(settings.secret_key) >= 32
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    async with EmbeddedServer(data_dir=tmp_path / "data") as server:
        assert server.socket_path is not None and "%2F" in server.uri and server.port is None
        assert stat.S_ISSOCK(server.socket_path.stat().st_mode)
        assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri)
        await client.t.c.insert_one({"_id": 1})
        await client.close()
        files = [p for p in server.db_dir.iterdir() if p.is_file()]
        assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), \
            {p.name: oct(p.stat().st_mode) for p in files}
        assert stat.S_IMODE(server.db_dir.stat().st_mode) == 0o700
        listening = Path(f"/proc/{server.pid}/net/tcp").read_text().splitlines()[1:]
        inode_of_socks = {os.readlink(f"/proc/{server.pid}/fd/{fd}")
                          for fd in os.listdir(f"/proc/{server.pid}/fd")}
        tcp_listeners = [line for line in listening if line.split()[3] == "0A"
                         and f"socket:[{line.split()[9]}]" in inode_of_socks]
        assert tcp_listeners == []


# ---- Low -----------------------------------------------------------------------------------

async def test_slow_headers_and_idle_sockets_are_closed_and_clients_are_capped(
        site: Site) -> None:
    reader, writer = await site.raw(b"GET /api/health HTTP/1.1\r\nHost: x")  # ...and stop
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, without an answer
    writer.close()
    async with site.ws("/ws") as idle:  # never subscribes
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await idle.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    held = []
    for n in range(60):  # the per-client cap (60 here), all subscribed and open
        socket = await site.ws("/ws").__aenter__()
        await socket.send(json.dumps({"op": "subscribe", "id": f"s{n}",
                                      "collection": "products"}))
        assert json.loads(await socket.recv())["type"] == "subscribed"
        held.append(socket)
    async with site.client() as one_more:
        refused = await one_more.get("/api/health")
        assert refused.status_code == 429, refused.text
        for socket in held:
            await socket.close()
        async with asyncio.timeout(5):
            while (await one_more.get("/api/health")).status_code == 429:
                await asyncio.sleep(0.05)


async def test_quantity_limit_counts_repeated_lines_of_one_product(site: Site) -> None:
    customer = await site.signed_in(A)
    product = (await customer.get("/api/products", params={"limit": 1})).json()["items"][0]["_id"]
    twice = await customer.post("/api/orders", json={"items": [
        {"product_id": product, "quantity": 1_000}, {"product_id": product, "quantity": 1_000}]})
    assert twice.status_code == 422 and "1..1000" in twice.json()["error"]["message"]
    await customer.aclose()


async def test_the_login_throttle_trusts_no_forwarded_header_and_locks_no_owner_out(
        site: Site) -> None:
    # Failures from one address block that address for that account, not the owner's.
    async with site.client(headers={"X-Forwarded-For": "198.51.100.20"}) as attacker:
        for _ in range(10):
            assert (await attacker.post("/api/login", json={
                "email": "customer05@example.com", "password": "nope"})).status_code == 401
        blocked = await attacker.post("/api/login", json={
            "email": "customer05@example.com", "password": DEFAULT_DEMO_PASSWORD})
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    owner = await site.signed_in("customer05@example.com",
                                 headers={"X-Forwarded-For": "198.51.100.21"})
    await owner.aclose()
    # An unknown email costs what a known one does (no account enumeration by timing).
    async with site.client(headers={"X-Forwarded-For": "198.51.100.22"}) as prober:
        timings = {}
        for email in ("customer06@example.com", "nobody-here@example.com"):
            started = time.monotonic()
            await prober.post("/api/login", json={"email": email, "password": "wrong"})
            timings[email] = time.monotonic() - started
    known, unknown = timings.values()
    assert unknown > known / 3, timings


async def test_binary_frames_close_the_socket_with_1003(site: Site) -> None:
    async with site.ws("/ws") as socket:
        await socket.send(b"\x00\x01binary")
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


async def test_options_lists_every_method_and_signed_out_htmx_actions_redirect(
        site: Site) -> None:
    async with site.client() as anon:
        allow = (await anon.options("/api/orders")).headers["allow"]
        assert {"GET", "POST"} <= {m.strip() for m in allow.split(",")}
        for path in ("/ui/cart", "/ui/checkout", "/ui/cart/remove"):
            response = await anon.post(path, data={"product_id": "x"})
            assert (response.status_code, response.headers.get("hx-redirect")) == (401, "/login")
        schema = (await anon.get("/openapi.json")).json()
    listing = schema["paths"]["/api/orders"]["get"]["parameters"]
    limit = next(p for p in listing if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 500)
    body = schema["paths"]["/api/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["additionalProperties"] is False
    assert body["schema"]["properties"]["items"]["minItems"] == 1
    stock = schema["paths"]["/api/products/{product_id}/stock"]["put"]["requestBody"]
    assert stock["content"]["application/json"]["schema"]["oneOf"] == [
        {"required": ["stock"]}, {"required": ["delta"]}]


async def test_where_on_an_array_means_the_same_over_rest_and_the_socket(site: Site) -> None:
    admin = await site.signed_in(ADMIN, DEFAULT_ADMIN_PASSWORD)
    product = (await admin.get("/api/products", params={"limit": 1})).json()["items"][0]["_id"]
    where = f"items.product_id = '{product}'"
    async with site.ws("/ws", admin) as socket:
        await socket.send(json.dumps({"op": "subscribe", "id": "w", "collection": "orders",
                                      "where": where}))
        assert json.loads(await socket.recv())["type"] == "subscribed"
        placed = await admin.post("/api/orders", json={
            "user_id": "user-customer01", "items": [{"product_id": product, "quantity": 1}]})
        assert placed.status_code == 201
        async with asyncio.timeout(5):
            while True:
                message = json.loads(await socket.recv())
                if message.get("key") == placed.json()["_id"]:
                    break
        assert message["op"] in ("insert", "enter")
    listed = (await admin.get("/api/orders", params={"where": where, "limit": 500})).json()
    assert placed.json()["_id"] in {o["_id"] for o in listed["items"]}
    await admin.aclose()
