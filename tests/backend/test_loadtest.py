"""``changecast loadtest`` against a live server (short scenarios)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from loadtest import runner as loadtest
from loadtest.scenarios import scenario_with
from tests.conftest import ROOT, free_port
from tests.support.server import serve_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def run(base: str, tmp_path: Path, name: str, **overrides: float) -> dict:  # type: ignore[type-arg]
    scenario = scenario_with(name, duration=overrides.get("duration", 3),
                                      rps=overrides.get("rps", 20),
                                      clients=int(overrides.get("clients", 5)))
    return await loadtest.run(base, scenario, report_path=tmp_path / f"{name}.json",
                              admin_email="admin@example.com",
                              admin_password=DEFAULT_ADMIN_PASSWORD,
                              customer_password=DEFAULT_DEMO_PASSWORD)


async def test_loadtest_mixed_reports_latencies_stages_and_writes_json(
    nx_uri: str, tmp_path: Path
) -> None:
    async with serve_site(nx_uri, tmp_path / "site", payment_latency_ms=(10, 30),
                          payment_success_rate=0.8) as (base, db):
        report = await run(base, tmp_path, "mixed")
        orders = await db.orders.count_documents({})
    assert json.loads((tmp_path / "mixed.json").read_text()) == report
    assert 45 <= report["requests"] <= 75  # 20/s offered for 3 s
    assert report["unexpected_errors"] == 0 and report["success_rate"] == 1.0
    assert report["expected_errors"] >= 1  # mixed injects some invalid requests
    push = report["write_to_client_ms"]
    assert push["count"] == report["writes"] * 5 and report["deliveries_missed"] == 0
    assert 0 < push["p50"] <= push["p99"] < 2_000
    assert report["api_latency_ms"]["p50"] > 0
    assert orders >= 300 + 1  # the seed plus what the run placed
    assert "reserved" in report["stages"]
    assert all(s["health"] in ("healthy", "warning", "critical") for s in report["stages"].values())
    text = loadtest.summary(report)
    assert "write → client" in text and "recommendations:" in text


async def test_loadtest_errors_scenario_counts_refusals_and_the_server_stays_up(
    nx_uri: str, tmp_path: Path
) -> None:
    async with serve_site(nx_uri, tmp_path / "site", pipeline_enabled=False) as (base, _):
        report = await run(base, tmp_path, "errors", clients=2)
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/api/health")).status_code == 200
    assert report["expected_errors"] >= 10
    assert report["unexpected_errors"] == 0
    statuses = set(report["by_status"])
    assert {"400", "422"} <= statuses and ("409" in statuses or "403" in statuses)


def test_loadtest_cli_refuses_bad_options_and_unreachable_servers(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "backend.cli", "loadtest", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})

    unknown = cli("--scenario", "apocalypse")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    negative = cli("--scenario", "baseline", "--rps", "-5")
    assert negative.returncode == 2 and "above 0" in negative.stderr
    closed = cli("--scenario", "baseline", "--url", f"http://127.0.0.1:{free_port()}")
    assert closed.returncode == 2 and "cannot reach" in closed.stderr
    assert "Traceback" not in closed.stderr
