"""Two real `changecast serve` processes on one database; one is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from backend.settings import DEFAULT_ADMIN_PASSWORD
from tests.conftest import ROOT, free_port
from tests.support.procs import kill_quietly, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class Instance:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.port = free_port()
        self.log = (tmp / f"serve-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve"], cwd=ROOT, stdout=self.log,
            stderr=subprocess.STDOUT, env={**env, "CHANGECAST_PORT": str(self.port),
                                           "CHANGECAST_DATA_DIR": str(tmp / str(self.port))})
        self.base = f"http://127.0.0.1:{self.port}"
        self.cookie = ""
        wait_until(self.healthy, 60, f"instance on {self.port}")
        self.cookie = self.login()

    def healthy(self) -> bool:
        assert self.proc.poll() is None, "instance exited"
        try:
            with urllib.request.urlopen(self.base + "/api/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def login(self) -> str:
        body = json.dumps({"email": "admin@example.com", "password": DEFAULT_ADMIN_PASSWORD})
        request = urllib.request.Request(self.base + "/api/login", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return str(r.headers["Set-Cookie"].split(";")[0])

    def order(self, user: str, product: str) -> None:
        body = json.dumps({"user_id": user, "items": [{"product_id": product, "quantity": 1}]})
        request = urllib.request.Request(self.base + "/api/orders", data=body.encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Cookie": self.cookie})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 201

    def stop(self) -> None:
        kill_quietly(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def instances(nx_uri: str, db_name: str, tmp_path: Path) -> Iterator[list[Instance]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANGECAST_", "MONGODB_"))}
    env.update({"MONGODB_URI": nx_uri, "CHANGECAST_DB": db_name, "CHANGECAST_DEMO": "on",
                "CHANGECAST_RECONCILE_AFTER_S": "2", "CHANGECAST_PAYMENT_LATENCY_MS": "50-300"})
    started: list[Instance] = []
    try:
        started.append(Instance(env, tmp_path))  # the first one seeds
        started.append(Instance(env, tmp_path))
        yield started
    finally:
        for instance in started:
            instance.stop()


def test_two_processes_exactly_once_and_nothing_stuck_after_one_is_killed(
    instances: list[Instance], nx_uri: str, db_name: str
) -> None:
    first, second = instances
    client: MongoClient[dict[str, Any]] = MongoClient(nx_uri)
    db = client[db_name]
    try:
        seeded = {o["_id"] for o in db.orders.find({}, {"_id": 1})}
        products = [p["_id"] for p in db.products.find({"stock": {"$gte": 50}}, {"_id": 1})]
        for n in range(100):
            first.order(f"user-customer{n % 20 + 1:02d}", products[n % len(products)])
        in_flight = db.orders.count_documents({"_id": {"$nin": list(seeded)},
                                               "status": {"$in": ["pending", "reserved", "paid"]}})
        first.stop()  # SIGKILL mid-run
        for n in range(100):
            second.order(f"user-customer{n % 20 + 1:02d}", products[n % len(products)])

        def settled() -> bool:
            return db.orders.count_documents(
                {"status": {"$in": ["pending", "reserved", "paid"]}}) == 0

        wait_until(settled, 60, "every order to leave pending/reserved/paid")
        orders = [o for o in db.orders.find({}) if o["_id"] not in seeded]
        assert len(orders) == 200
        assert {o["status"] for o in orders} <= {"processing", "rejected", "payment_failed"}
        audit = Counter(a["order_id"] for a in db.audit.find({}))
        for order in orders:
            statuses = [h["status"] for h in order["history"]]
            assert len(statuses) == len(set(statuses)), order["_id"]
            assert audit[order["_id"]] == len(statuses), order["_id"]
        print(f"orders in flight when the first instance was killed: {in_flight}")
    finally:
        client.close()
