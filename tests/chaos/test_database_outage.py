"""The database goes away: the API says 503 within a second, health says down, the dashboard
shows it, and everything comes back on its own when the database does."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from backend.infra.database import open_database
from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, Settings
from backend.web.app import create_app
from tests.conftest import free_port, start_nx
from tests.support.server import running

pytestmark = [
    pytest.mark.embedded_only(reason="it kills and restarts its own database server"),
    pytest.mark.integration,
    pytest.mark.timeout(120),
]


async def dashboard_until(ws: ClientConnection, state: str, timeout: float = 20) -> str:
    """Read dashboard frames until the system panel says the database is ``state``."""
    async with asyncio.timeout(timeout):
        while True:
            frame = str(await ws.recv())
            found = re.search(r'data-stat="database"><span class="state state-db-(\w+)"', frame)
            if found and found.group(1) == state:
                return frame


async def test_database_outage_503_fast_dashboard_shows_it_and_all_recovers(tmp_path: Path) -> None:
    port = free_port()
    proc = start_nx(tmp_path / "nx", port)
    settings = Settings(
        mongodb_uri=f"mongodb://127.0.0.1:{port}/?directConnection=true",
        db_name="outage",
        data_dir=tmp_path,
        demo=True,
        secret_key="o" * 48,
        pipeline_enabled=False,
    )
    timings: dict[str, float] = {}
    try:
        async with (
            open_database(settings) as database,
            running(create_app(settings, database=database)) as base,
            httpx.AsyncClient(base_url=base, timeout=10, headers={"Origin": base}) as http,
        ):
            login = await http.post(
                "/api/login", json={"email": "admin@example.com", "password": DEFAULT_ADMIN_PASSWORD}
            )
            assert login.status_code == 200
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
            ws_base = base.replace("http://", "ws://")
            dashboard = await connect(
                ws_base + "/ws/live/dashboard",
                origin=base,  # type: ignore[arg-type]
                additional_headers={"Cookie": cookie},
            )
            await dashboard_until(dashboard, "ok")
            watcher = await connect(ws_base + "/ws", origin=base)  # type: ignore[arg-type]
            await watcher.send(json.dumps({"op": "subscribe", "id": "p", "collection": "products"}))

            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for path in ("/api/orders", "/api/orders/ORD-NOTHERE", "/api/health"):
                started = time.monotonic()
                response = await http.get(path)
                timings[path] = time.monotonic() - started
                assert response.status_code == 503, (path, response.text)
                assert timings[path] < 1.0, (path, timings[path])
            assert (await http.get("/api/health")).json()["status"] == "down"
            # Products are served from the change-coherent cache: reads keep working.
            assert (await http.get("/api/products/SKU-BOO-001")).status_code == 200
            write = await http.put("/api/products/SKU-BOO-001/stock", json={"stock": 7})
            assert write.status_code == 503 and "Retry-After" in write.headers
            await dashboard_until(dashboard, "unreachable")

            proc = start_nx(tmp_path / "nx", port)
            deadline = time.monotonic() + 30
            while (await http.get("/api/health")).status_code != 200:
                assert time.monotonic() < deadline, "health did not recover"
                await asyncio.sleep(0.2)
            await dashboard_until(dashboard, "ok", timeout=30)
            while (await http.put("/api/products/SKU-BOO-001/stock", json={"stock": 77})).status_code != 200:
                assert time.monotonic() < deadline, "writes did not recover"
                await asyncio.sleep(0.2)
            # The live path works again: the write reaches a socket opened before the outage
            # (as a change, or as a resync if the outage cost history).
            async with asyncio.timeout(10):
                async for raw in watcher:
                    msg = json.loads(raw)
                    if msg.get("type") == "resync" or (
                        msg.get("type") == "change"
                        and (msg.get("changes") or {}).get("set", {}).get("stock") == 77
                    ):
                        break
            await dashboard.close()
            await watcher.close()
    finally:
        proc.kill()
        proc.wait()
    print("503 times:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
