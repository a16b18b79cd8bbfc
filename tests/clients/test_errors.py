"""What each client tells its application when the server says no: refused credentials, a bad
``where``, a collection the user may not read, a session that ends mid-stream (1008) — and
that a change written right after ``subscribe`` returns is never lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from tests.clients.drivers import DRIVERS, Driver
from tests.support.server import serve_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ADMIN = ("admin@example.com", DEFAULT_ADMIN_PASSWORD)
CUSTOMER = ("customer01@example.com", DEFAULT_DEMO_PASSWORD)


@pytest.fixture
async def site(nx_uri: str, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    async with serve_site(nx_uri, tmp_path / "site", pipeline_enabled=False) as served:
        yield served


@pytest.fixture(params=["python", "js"])
async def driver(request: pytest.FixtureRequest) -> AsyncIterator[Driver]:
    made: Driver = DRIVERS[request.param]()
    yield made
    await made.stop()


@pytest.mark.parametrize(("collection", "auth", "where", "error", "code", "says"), [
    ("products", ("admin@example.com", "not-the-password"), None, "AuthError", None,
     "refused the credentials"),
    ("products", ADMIN, "stock <", "FilterError", "bad_where", "expected a value"),
    ("orders", None, None, "AccessDenied", "unauthorized", ""),
    ("users", CUSTOMER, None, "AccessDenied", "forbidden", "not allowed"),
    ("no_such", ADMIN, None, "ProtocolError", "unknown_collection", "unknown collection"),
])
async def test_refusals_are_typed_errors_with_the_servers_message(
    site: tuple[str, Any], driver: Driver, collection: str, auth: tuple[str, str] | None,
    where: str | None, error: str, code: str | None, says: str
) -> None:
    base, _ = site
    result = await driver.start(base, collection, auth, heartbeat_s=5, where=where)
    assert result["ready"] is False
    assert result["error"] == error, result
    if code is not None:
        assert result["code"] == code, result
    assert says in result["message"], result


async def test_a_session_that_ends_mid_stream_is_a_session_closed_error_not_a_retry_loop(
    site: tuple[str, Any], driver: Driver
) -> None:
    base, db = site
    assert (await driver.start(base, "orders", CUSTOMER, heartbeat_s=5))["ready"] is True
    await db.users.update_one({"email": CUSTOMER[0]}, {"$set": {"role": "admin"}})  # a new role
    async with asyncio.timeout(20):
        while (state := await driver.state())["failure"] is None:
            await asyncio.sleep(0.05)
    assert state["failure"]["error"] == "SessionClosed"
    assert "sign in again" in state["failure"]["message"]
    assert state["state"] == "closed" and state["reconnects"] == 0


async def test_a_write_right_after_subscribe_is_delivered_and_the_view_is_the_snapshot_plus_it(
    site: tuple[str, Any], driver: Driver
) -> None:
    base, db = site
    assert (await driver.start(base, "products", ADMIN, heartbeat_s=5, where="stock < 10"))["ready"]
    before = await driver.state()
    assert [e[0] for e in before["log"]][:1] == ["snapshot"]
    expected = {d["_id"] for d in await db.products.find({"stock": {"$lt": 10}}).to_list()}
    assert set(before["view"]) == expected
    await db.products.update_one({"_id": "SKU-BOO-001"}, {"$set": {"stock": 3}})
    async with asyncio.timeout(10):
        while "SKU-BOO-001" not in (state := await driver.state())["view"] or \
                state["view"]["SKU-BOO-001"]["stock"] != 3:
            await asyncio.sleep(0.05)
    changes = [e for e in state["log"] if e[0] == "change"]
    assert [(e[2], e[4]) for e in changes][-1] == ("SKU-BOO-001", 3)
    assert changes[-1][3] in ("enter", "update")
