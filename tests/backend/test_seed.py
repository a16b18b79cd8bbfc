from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.domain.clock import iso
from backend.domain.passwords import verify_password
from seed.data import LOW_STOCK_THRESHOLD, STATUS_PATHS, generate
from seed.loader import seed_database

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_generate_is_deterministic_per_seed() -> None:
    assert generate(seed=7, now=NOW) == generate(seed=7, now=NOW)
    assert generate(seed=7, now=NOW).orders != generate(seed=8, now=NOW).orders


def test_generate_meets_the_demo_floor() -> None:
    data = generate(seed=42, now=NOW)
    assert len(data.products) >= 60
    assert len({p["category"] for p in data.products}) >= 5
    assert all(isinstance(p["price_cents"], int) and p["price_cents"] > 0 for p in data.products)
    stocks = [p["stock"] for p in data.products]
    assert stocks.count(0) >= 2
    assert sum(0 < s < LOW_STOCK_THRESHOLD for s in stocks) >= 3
    customers = [u for u in data.users if u["role"] == "customer"]
    assert len(customers) >= 25 and customers[0]["email"] == "customer01@example.com"
    assert [u["email"] for u in data.users if u["role"] == "admin"] == ["admin@example.com"]
    assert len(data.orders) >= 300
    assert set(Counter(o["status"] for o in data.orders)) == set(STATUS_PATHS)
    oldest = min(o["created_at"] for o in data.orders)
    assert iso(NOW - timedelta(days=14)) <= oldest < iso(NOW - timedelta(days=7))


def test_generate_orders_are_consistent() -> None:
    prices = {p["_id"]: p["price_cents"] for p in generate(seed=1, now=NOW).products}
    for order in generate(seed=1, now=NOW).orders:
        assert order["_id"].startswith("ORD-") and len(order["_id"]) == 12
        assert order["total_cents"] == sum(i["quantity"] * i["price_cents"] for i in order["items"])
        assert all(prices[i["product_id"]] == i["price_cents"] for i in order["items"])
        assert [h["status"] for h in order["history"]] == list(STATUS_PATHS[order["status"]])
        times = [h["at"] for h in order["history"]]
        assert times == sorted(times) and order["created_at"] == times[0]


@pytest.mark.timeout(60)
async def test_seed_database_counts_hashes_and_idempotence(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    report = await seed_database(db, admin_password="admin-pw-1", demo_password="demo-pw-1",
                                 orders=50)
    assert (report.products, report.users, report.orders) == (64, 26, 50)
    admin = await db.users.find_one({"email": "admin@example.com"})
    assert admin is not None and admin["password_hash"].startswith("$argon2")
    assert verify_password(admin["password_hash"], "admin-pw-1")
    customer = await db.users.find_one({"email": "customer02@example.com"})
    assert customer is not None and verify_password(customer["password_hash"], "demo-pw-1")

    again = await seed_database(db, admin_password="other", demo_password="other", orders=50)
    assert again.skipped
    assert await db.orders.count_documents({}) == 50
    assert verify_password((await db.users.find_one({"_id": admin["_id"]}) or {})["password_hash"],
                           "admin-pw-1")

    reset = await seed_database(db, admin_password="admin-pw-2", demo_password=None, orders=5,
                                reset=True)
    assert not reset.skipped and await db.orders.count_documents({}) == 5
    customer = await db.users.find_one({"email": "customer02@example.com"})
    assert customer is not None and not verify_password(customer["password_hash"], "demo-pw-1")
