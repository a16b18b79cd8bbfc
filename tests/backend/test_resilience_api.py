"""Login throttling, the HTML sign-in, 503 when the database is down, shutdown close."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD, Settings
from backend.web.app import create_app
from tests.support.server import running

pytestmark = pytest.mark.timeout(120)


def settings_for(uri: str, tmp_path: Path) -> Settings:
    return Settings(mongodb_uri=uri, db_name="r" + uuid.uuid4().hex[:8], data_dir=tmp_path,
                    demo=True, secret_key="s" * 48)


async def test_login_is_throttled_after_ten_failures(nx_uri: str, tmp_path: Path) -> None:
    async with running(create_app(settings_for(nx_uri, tmp_path))) as base, \
            httpx.AsyncClient(base_url=base) as http:
        for _ in range(10):
            bad = await http.post("/api/login", json={"email": "customer03@example.com",
                                                      "password": "wrong"})
            assert bad.status_code == 401
        throttled = await http.post("/api/login", json={"email": "customer03@example.com",
                                                        "password": DEFAULT_DEMO_PASSWORD})
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
        # That pair is throttled, not the address: another account from it still signs in
        # (an address is refused only after 100 failures over every account).
        other = await http.post("/api/login", json={"email": "customer04@example.com",
                                                    "password": DEFAULT_DEMO_PASSWORD})
        assert other.status_code == 200


async def test_html_login_sets_a_fresh_httponly_session(nx_uri: str, tmp_path: Path) -> None:
    async with running(create_app(settings_for(nx_uri, tmp_path))) as base, \
            httpx.AsyncClient(base_url=base) as http:
        page = await http.get("/login")
        assert page.status_code == 200 and 'name="password"' in page.text
        wrong = await http.post("/login", data={"email": "<script>x</script>@e.com",
                                                "password": "no"})
        assert wrong.status_code == 401 and "<script>x" not in wrong.text
        assert "&lt;script&gt;x" in wrong.text
        ok = await http.post("/login", data={"email": "customer05@example.com",
                                             "password": DEFAULT_DEMO_PASSWORD})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        me = (await http.get("/api/me")).json()["user"]
        assert me == {"id": "user-customer05", "email": "customer05@example.com",
                      "name": me["name"], "role": "customer"}
        first = http.cookies["changecast_session"]
        await http.post("/api/login", json={"email": "customer06@example.com",
                                            "password": DEFAULT_DEMO_PASSWORD})
        assert http.cookies["changecast_session"] != first
        assert (await http.get("/api/me")).json()["user"]["id"] == "user-customer06"
        await http.post("/api/logout")
        assert (await http.get("/api/me")).json()["user"] is None


async def test_websocket_clients_get_a_going_away_close_on_shutdown(nx_uri: str,
                                                                    tmp_path: Path) -> None:
    async with running(create_app(settings_for(nx_uri, tmp_path))) as base:
        ws = await connect(base.replace("http", "ws") + "/ws")
        await ws.send(json.dumps({"op": "subscribe", "id": "p", "collection": "products"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
    with pytest.raises(ConnectionClosed) as info:
        while True:  # changes queued before the shutdown may still arrive first
            json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert info.value.rcvd is not None and info.value.rcvd.code in (1001, 1012)


async def test_metrics_carry_analytics_pipeline_and_lag_with_the_pipeline_on(
    nx_uri: str, tmp_path: Path
) -> None:
    settings = settings_for(nx_uri, tmp_path)
    async with running(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as http:
        await http.post("/api/login", json={"email": "customer07@example.com",
                                            "password": DEFAULT_DEMO_PASSWORD})
        order = (await http.post("/api/orders", json={"items": [
            {"product_id": "SKU-GRO-002", "quantity": 1}]})).json()
        deadline = time.monotonic() + 30
        while (await http.get(f"/api/orders/{order['_id']}")).json()["status"] in (
                "pending", "reserved", "paid"):
            assert time.monotonic() < deadline, "the pipeline did not move the order"
            await asyncio.sleep(0.1)
        assert "orders" not in (await http.get("/api/metrics")).json()  # business data
        await http.post("/api/login", json={"email": "admin@example.com",
                                            "password": DEFAULT_ADMIN_PASSWORD})
        metrics = (await http.get("/api/metrics")).json()
        assert metrics["orders"]["orders"] >= 301
        assert sum(metrics["orders"]["per_status"].values()) == metrics["orders"]["orders"]
        assert metrics["orders"]["revenue_cents"] > 0
        assert len(metrics["orders"]["top_products"]) == 5
        assert metrics["pipeline"]["transitions"] >= 2
        assert metrics["lag"]["orders"]["last_change_at"] is not None
        assert metrics["watchers"]["orders"]["state"] == "watching"
        audit = [a for a in metrics["pipeline"]["stages"]]
        assert "reserve" in audit


async def test_prometheus_metrics_parse_and_carry_the_engine_figures(nx_uri: str,
                                                                    tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with running(create_app(settings_for(nx_uri, tmp_path))) as base, \
            httpx.AsyncClient(base_url=base) as http:
        await http.get("/api/products/SKU-BOO-001")
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        for name in ("changecast_deliveries", "changecast_drops", "changecast_resyncs",
                     "changecast_cache_hits", "changecast_cache_misses",
                     "changecast_breaker_state", "changecast_websocket_connections",
                     "changecast_delivery_latency_ms", "changecast_orders"):
            assert name in families, name
        assert families["changecast_cache_hits"].samples[0].value >= 1
        latency = families["changecast_delivery_latency_ms"]
        assert latency.type == "histogram"
        buckets = [s for s in latency.samples if s.name.endswith("_bucket")]
        assert buckets[-1].labels["le"] == "+Inf" and len(buckets) >= 10
        assert families["changecast_breaker_state"].samples[0].value == 0
        statuses = {s.labels["status"] for s in families["changecast_orders"].samples}
        assert "delivered" in statuses
