"""One meaning for ``where``: what a REST list returns (the database's answer, or on the
embedded server the engine's predicate over the sorted collection) and what a live view
matches agree, document by document, on one table of cases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from streaming import compile_filter
from tests.support.server import serve_site

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.integration,
              pytest.mark.timeout(60)]

DOCS: list[dict[str, Any]] = [
    {"_id": "o1", "status": "paid", "total_cents": 1_000, "tags": ["gift", "rush"],
     "items": [{"product_id": "SKU-1", "quantity": 2}, {"product_id": "SKU-2", "quantity": 1}],
     "payment": {"status": "captured"}},
    {"_id": "o2", "status": "pending", "total_cents": 25_000, "tags": [],
     "items": [{"product_id": "SKU-2", "quantity": 5}], "payment": None},
    {"_id": "o3", "status": "cancelled", "total_cents": 12_500.0, "tags": ["rush"],
     "items": [{"product_id": "SKU-3", "quantity": 1}]},
    {"_id": "o4", "status": "paid", "total_cents": 7, "items": [],
     "payment": {"status": "refunded"}, "note": None},
    {"_id": "o5", "status": "shipped", "total_cents": 99_999, "tags": ["gift"],
     "items": [{"product_id": "SKU-1", "quantity": 10}], "payment": {"status": "captured"},
     "note": "leave at the door"},
]
OURS = "_id IN ('o1', 'o2', 'o3', 'o4', 'o5')"
CASES = [
    "items.product_id = 'SKU-1'",
    "items.product_id = 'SKU-9'",
    "items.product_id != 'SKU-2'",
    "items.product_id IN ('SKU-2', 'SKU-3')",
    "items.product_id NOT IN ('SKU-1')",
    "items.quantity >= 5",
    "items.quantity < 2 AND status = 'paid'",
    "tags = 'rush'",
    "tags != 'gift'",
    "tags IN ('gift')",
    "status = 'paid'",
    "status != 'paid'",
    "status IN ('paid', 'shipped') AND total_cents > 100",
    "total_cents = 12500",
    "total_cents >= 12500 OR payment.status = 'refunded'",
    "payment.status = 'captured'",
    "payment.status IS NULL",
    "payment.status IS NOT NULL",
    "note IS NULL",
    "note IS NOT NULL",
    "NOT (status = 'paid')",
    "NOT items.product_id = 'SKU-1'",
    "status LIKE 'p%'",
    "status NOT LIKE 'p%'",
    "note LIKE '%DOOR'",
    "tags LIKE 'gi_t'",
    "tags NOT LIKE 'gi_t'",
    "items.product_id LIKE 'sku-_'",
]
# What MongoDB answers (its documented array and null rules), by hand: the live view's
# predicate must give exactly these, so that a replica set's REST answer agrees too.
EXPECTED = {
    "items.product_id = 'SKU-1'": ["o1", "o5"],
    "items.product_id NOT IN ('SKU-1')": ["o2", "o3"],
    "tags = 'rush'": ["o1", "o3"],
    "payment.status IS NULL": ["o2", "o3"],
    "note IS NULL": ["o1", "o2", "o3", "o4"],
    "status LIKE 'p%'": ["o1", "o2", "o4"],
    "note LIKE '%DOOR'": ["o5"],
    "tags NOT LIKE 'gi_t'": ["o2", "o3"],
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def admin(nx_uri: str, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_site(nx_uri, tmp_path_factory.mktemp("where"),
                          pipeline_enabled=False) as (base, db):
        await db.orders.insert_many([{**d, "user_id": "user-customer01",
                                      "created_at": f"2026-01-0{n}T00:00:00.000Z"}
                                     for n, d in enumerate(DOCS, 1)])
        async with httpx.AsyncClient(base_url=base, headers={"Origin": base}) as client:
            login = await client.post("/api/login", json={"email": "admin@example.com",
                                                          "password": DEFAULT_ADMIN_PASSWORD})
            assert login.status_code == 200
            yield client


@pytest.mark.parametrize("where", CASES)
async def test_where_means_the_same_to_a_rest_list_and_a_live_view(
        admin: httpx.AsyncClient, where: str) -> None:
    page = await admin.get("/api/orders", params={"where": f"({where}) AND {OURS}",
                                                  "limit": 500})
    assert page.status_code == 200, page.text
    rest = sorted(o["_id"] for o in page.json()["items"])
    live = sorted(d["_id"] for d in DOCS if compile_filter(where).matches(d))
    assert rest == live, where
    if where in EXPECTED:
        assert live == EXPECTED[where]


async def test_where_paging_counts_matches_not_scanned_documents(
        admin: httpx.AsyncClient) -> None:
    where = f"items.product_id IN ('SKU-1', 'SKU-2') AND {OURS}"
    first = (await admin.get("/api/orders", params={"where": where, "limit": 2,
                                                    "sort": "created_at"})).json()
    second = (await admin.get("/api/orders", params={"where": where, "limit": 2,
                                                     "sort": "created_at",
                                                     "cursor": first["next_cursor"]})).json()
    assert [o["_id"] for o in first["items"]] == ["o1", "o2"]
    assert [o["_id"] for o in second["items"]] == ["o5"] and second["next_cursor"] is None
