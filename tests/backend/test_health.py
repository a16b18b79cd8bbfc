from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from backend.infra.database import open_database
from backend.infra.settings import Settings
from backend.web.app import create_app
from tests.conftest import free_port, start_nx
from tests.support.server import running

pytestmark = [
    pytest.mark.embedded_only(reason="it kills and restarts its own database server"),
    pytest.mark.timeout(90),
]


async def test_health_reports_down_within_a_second_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    proc = start_nx(tmp_path / "nx", port)
    settings = Settings(
        mongodb_uri=f"mongodb://127.0.0.1:{port}/?directConnection=true",
        data_dir=tmp_path,
        demo=True,
        secret_key="k" * 40,
        pipeline_enabled=False,
    )  # health alone: no pipeline traffic in the outage
    try:
        async with (
            open_database(settings) as database,
            running(create_app(settings, database=database)) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            response = await http.get("/api/health")
            assert response.status_code == 200
            body = response.json()
            assert body["status"] == "ok" and body["database"]["kind"] == "embedded"
            assert body["uptime_s"] >= 0

            proc.send_signal(signal.SIGKILL)
            proc.wait()
            started = time.monotonic()
            response = await http.get("/api/health")
            assert time.monotonic() - started < 1.5
            assert response.status_code == 503 and response.json()["status"] == "down"

            proc = start_nx(tmp_path / "nx", port)
            deadline = time.monotonic() + 20
            while (await http.get("/api/health")).status_code != 200:
                assert time.monotonic() < deadline, "health did not recover"
    finally:
        proc.kill()
        proc.wait()
