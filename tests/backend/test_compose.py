from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import ROOT


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
