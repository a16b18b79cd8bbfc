from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from tests.conftest import ROOT
from tests.support.server import serve_site


def load() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_runs_mongo_8_as_a_healthy_replica_set() -> None:
    mongo = load()["services"]["mongo"]
    assert mongo["image"].startswith("mongo:8")
    command = mongo["command"]
    assert "--replSet" in command and command[command.index("--replSet") + 1] == "rs0"
    health = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate" in health and "isWritablePrimary" in health
    assert any(str(v).endswith(":/data/db") for v in mongo["volumes"])
    assert "mongo-data" in load()["volumes"]


def test_compose_app_points_at_the_replica_set_and_waits_for_it() -> None:
    app = load()["services"]["app"]
    assert app["build"] == "."
    uri = app["environment"]["MONGODB_URI"]
    assert uri.startswith("mongodb://mongo:27017") and "replicaSet=rs0" in uri
    assert app["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert (ROOT / "Dockerfile").read_text().count("changecast") >= 1


def test_the_image_copies_every_package_it_installs() -> None:
    # `pip install .` in the image fails on a package directory the Dockerfile left out.
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in found}
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}
    assert packages and set(packages) <= copied, set(packages) - copied


def container_path(service: dict[str, Any], host_path: str) -> str:
    """Where the compose file mounts ``host_path`` inside the service's container."""
    for volume in service["volumes"]:
        host, _, rest = str(volume).partition(":")
        if host == host_path:
            return rest.split(":")[0]
    raise AssertionError(f"{host_path} is not mounted")


def test_compose_prometheus_scrapes_the_app_and_grafana_is_provisioned() -> None:
    services = load()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    config_path = container_path(prometheus, "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={config_path}" in prometheus["command"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["app:8000"]
    assert "${CHANGECAST_PUBLISH:-127.0.0.1}:8000:8000" in services["app"]["ports"]

    assert container_path(grafana, "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    sources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "${CHANGECAST_PUBLISH:-127.0.0.1}:9090:9090" in prometheus["ports"]
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/changecast.yml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert container_path(grafana, "./deploy/grafana/dashboards") == dashboards_path

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/changecast.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "changes per second", "cache", "pipeline", "lag"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]


async def test_grafana_queries_only_series_that_metrics_exports(nx_uri: str, tmp_path: Path) -> None:
    """Every series a dashboard panel or an alert rule asks for is in a live /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/changecast.json").read_text())
    wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
              for name in re.findall(r"changecast_[a-z_]+", target["expr"])}
    # The alert rules' series too; the oplog window exists on a replica set only.
    wanted |= alert_series() - {"changecast_oplog_window_seconds"}
    async with serve_site(nx_uri, tmp_path, payment_success_rate=1.0,
                          payment_latency_ms=(5, 10)) as (base, _), \
            httpx.AsyncClient(base_url=base) as http:
        login = await http.post("/api/login", json={"email": "admin@example.com",
                                                    "password": DEFAULT_ADMIN_PASSWORD})
        assert login.status_code == 200
        placed = await http.post("/api/orders", json={"items": [
            {"product_id": "SKU-BOO-002", "quantity": 1}]}, headers={"Origin": base})
        assert placed.status_code == 201
        async with asyncio.timeout(10):  # until the pipeline has timed a stage
            while not (await http.get("/api/metrics")).json()["pipeline"]["stages"]:
                await asyncio.sleep(0.05)
        text = (await http.get("/metrics")).text
    exported = {sample.name for family in text_string_to_metric_families(text)
                for sample in family.samples}
    assert wanted <= exported, sorted(wanted - exported)


def test_compose_publishes_on_loopback_only_and_names_the_hosts_it_answers() -> None:
    # Demo mode has well-known passwords: published on every interface (as it was), anyone
    # on the network could sign in as the admin. Prometheus reaches the app as "app".
    services = load()["services"]
    for name in ("app", "prometheus", "grafana"):
        for mapping in services[name]["ports"]:
            assert mapping.startswith("${CHANGECAST_PUBLISH:-127.0.0.1}:"), (name, mapping)
    env = services["app"]["environment"]
    assert "app" in env["CHANGECAST_ALLOWED_HOSTS"] and "localhost" in env["CHANGECAST_ALLOWED_HOSTS"]
    assert env["CHANGECAST_DEMO_LOGIN"] == "${CHANGECAST_DEMO_LOGIN:-auto}"


def test_ci_workflow_runs_the_suite_and_the_replica_set_suite() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    jobs = workflow["jobs"]
    assert any(step.get("run") == "make test" for step in jobs["test"]["steps"])
    mongodb = jobs["test-mongodb"]
    uri = mongodb["env"]["CHANGECAST_TEST_MONGODB_URI"]
    assert uri.startswith("mongodb://") and "replicaSet=rs0" in uri
    start = next(step["run"] for step in mongodb["steps"] if "mongo:8" in step.get("run", ""))
    assert "--replSet rs0" in start and "rs.initiate" in start and "isWritablePrimary" in start
    runs = [step.get("run") for step in mongodb["steps"]]
    assert runs.index("make test-mongodb") > runs.index(start)
    makefile = (ROOT / "Makefile").read_text()
    assert "test-mongodb:" in makefile and "CHANGECAST_TEST_MONGODB_URI" in makefile


def test_alert_rules_are_loaded_and_well_formed() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = load()["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {"ChangeCastCheckpointNearOplogWindow", "ChangeCastWatcherLagHigh",
            "ChangeCastBreakerOpen", "ChangeCastResyncsSpiking"} <= set(alerts)
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), name
        assert re.search(r"(==|<|>)\s*[\d.]+$", expr), name  # a condition, not a bare series


def alert_series() -> set[str]:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    return {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"changecast_[a-z_]+", rule["expr"])}
