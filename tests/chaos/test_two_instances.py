"""Two real `changecast serve` processes on one database; one is killed with SIGKILL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.support.instance import AppProcess, app_env
from tests.support.ledger import AUTOMATIC, UNFINISHED, shelf, sold
from tests.support.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def instances(nx_uri: str, db_name: str, tmp_path: Path) -> Iterator[list[AppProcess]]:
    env = app_env(MONGODB_URI=nx_uri, CHANGECAST_DB=db_name, CHANGECAST_RECONCILE_AFTER_S="2",
                  CHANGECAST_PAYMENT_LATENCY_MS="50-300")
    started: list[AppProcess] = []
    try:
        started.append(AppProcess(env, tmp_path))  # the first one seeds
        started.append(AppProcess(env, tmp_path))
        yield started
    finally:
        for instance in started:
            instance.stop()


def test_two_processes_exactly_once_and_nothing_stuck_after_one_is_killed(
    instances: list[AppProcess], nx_uri: str, db_name: str
) -> None:
    first, second = instances
    client: MongoClient[dict[str, Any]] = MongoClient(nx_uri)
    db = client[db_name]
    try:
        # Seeded orders still moving when the instances started move stock too: let them.
        wait_until(lambda: db.orders.count_documents(UNFINISHED) == 0, 30, "the seed to settle")
        seeded = {o["_id"] for o in db.orders.find({}, {"_id": 1})}
        initial = {p["_id"]: p["stock"] for p in db.products.find({})}
        products = [p for p, count in sorted(initial.items()) if count >= 50]
        for n in range(100):
            first.order(f"user-customer{n % 20 + 1:02d}", products[n % len(products)])
        in_flight = db.orders.count_documents({"_id": {"$nin": list(seeded)},
                                               "status": {"$in": AUTOMATIC}})
        first.stop()  # SIGKILL mid-run
        for n in range(100):
            second.order(f"user-customer{n % 20 + 1:02d}", products[n % len(products)])

        wait_until(lambda: db.orders.count_documents(UNFINISHED) == 0, 60,
                   "every order to leave pending/reserved/paid and give back what it must")
        # Whatever the killed instance was doing to a product, the survivor's sweep ends it.
        wait_until(lambda: all(not p.get("holds") for p in db.products.find({}, {"holds": 1})),
                   30, "no stock marker left")
        orders = [o for o in db.orders.find({}) if o["_id"] not in seeded]
        assert len(orders) == 200
        assert {o["status"] for o in orders} <= {"processing", "rejected", "payment_failed"}
        audit = Counter(a["order_id"] for a in db.audit.find({}))
        for order in orders:
            statuses = [h["status"] for h in order["history"]]
            assert len(statuses) == len(set(statuses)), order["_id"]
            assert audit[order["_id"]] == len(statuses), order["_id"]
        taken = sold(orders)
        assert shelf(db.products.find({})) == {p: (count - taken[p], [])
                                               for p, count in initial.items()}
        print(f"orders in flight when the first instance was killed: {in_flight}")
    finally:
        client.close()
