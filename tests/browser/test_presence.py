"""Presence across two app instances on one database: which admins have the console open,
and who else is looking at an order, appearing and going within a second, without ghosts
after a reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from playwright.async_api import Browser, expect

from backend.domain.clock import iso
from backend.web.live.presence import EXPIRY_S, Presence
from backend.web.pages.fragments import dom_id
from tests.browser.conftest import ADMIN, Site, open_page
from tests.support.server import serve_site

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.browser, pytest.mark.integration]

OPS = {"_id": "user-ops", "email": "ops@example.com", "name": "Olga Ops", "role": "admin"}
LIVE = 1_000  # ms


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def second(site: Site, nx_uri: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Site]:
    """Another instance of the app on the same database (its own engine and streams)."""
    await site.db.users.update_one({"_id": OPS["_id"]}, {"$set": OPS}, upsert=True)
    async with serve_site(nx_uri, tmp_path_factory.mktemp("second"), db_name=site.db.name,
                          pipeline_enabled=False, heartbeat_s=1.0,
                          idle_poll_max_s=0.1) as (base, db):  # as the first (conftest)
        yield Site(base, db, site.front, site.page_errors, site.console_errors, site.contexts)


async def test_admins_see_each_other_and_who_is_on_an_order_across_instances(
    site: Site, second: Site, browser: Browser
) -> None:
    admin = await open_page(browser, site, ADMIN, "/admin")  # instance 1
    ops = await open_page(browser, second, OPS["email"], "/admin")  # instance 2
    admin_name = (await site.db.users.find_one({"email": ADMIN}))["name"]
    await expect(admin.locator("#presence")).to_contain_text("Olga Ops", timeout=LIVE)
    await expect(ops.locator("#presence")).to_contain_text(admin_name, timeout=LIVE)
    await expect(admin.locator("#presence .me")).to_have_text(admin_name)  # "(you)"

    # Both open the same order: each sees the other there, not themselves.
    order = await site.db.orders.find_one({}, sort=[("created_at", -1)])
    order_id = order["_id"]
    for page in (admin, ops):
        await page.locator("#orders-body").get_by_role(
            "button", name=f"Show order {order_id}").click()
        await expect(page.locator("#order-detail")).to_contain_text(order["correlation_id"])
    viewers = "#" + dom_id("viewers", order_id)
    shown = " .person:not([hidden])"  # "who else": each page hides its own admin
    await expect(admin.locator(viewers + shown)).to_have_text("Olga Ops", timeout=LIVE)
    await expect(admin.locator(viewers)).to_be_visible()
    await expect(ops.locator(viewers + shown)).to_have_text(admin_name, timeout=LIVE)

    # The admin's socket drops and the page reconnects: still one of them, still on it.
    for connection in site.live_connections("admin", ADMIN):
        await connection.websocket.close(code=1012, reason="test: server restart")
    await expect(admin.locator("#conn")).to_have_attribute("data-state", "connected",
                                                           timeout=10_000)
    await expect(ops.locator(viewers + shown)).to_have_text(admin_name, timeout=LIVE)
    await expect(ops.locator("#presence .person")).to_have_count(2)
    # The old socket's end and the new one's start may come in either order; what stays
    # is one document, the new connection's.
    async with asyncio.timeout(5):
        while await site.db.presence.count_documents({"user_id": "user-admin"}) != 1:
            await asyncio.sleep(0.05)
    await expect(ops.locator("#presence .person")).to_have_count(2)
    await expect(ops.locator(viewers + shown)).to_have_text(admin_name)

    # Olga closes her tab: gone from the other console within a second.
    await ops.context.close()
    site.contexts.remove(ops.context)
    await expect(admin.locator("#presence")).not_to_contain_text("Olga Ops", timeout=LIVE)
    await expect(admin.locator(viewers)).to_be_hidden(timeout=LIVE)
    assert await site.db.presence.count_documents({"user_id": OPS["_id"]}) == 0
    # A customer's page carries nothing of it.
    customer = await open_page(browser, site, "customer05@example.com", "/")
    assert await customer.locator("#presence").count() == 0
    assert site.console_errors[admin] == []


async def test_an_instance_that_died_leaves_no_ghost_for_long(
    site: Site, browser: Browser
) -> None:
    admin = await open_page(browser, site, ADMIN, "/admin")
    # What an instance killed with -9 leaves behind: a tab nobody refreshes any more. It is
    # written fresh first, so that the site's own sweep cannot take it before the page has
    # shown it, then made stale.
    await site.db.presence.insert_one({
        "_id": "user-ghost:tab", "user_id": "user-ghost", "name": "Gone Away", "conn": "x",
        "instance": "dead", "order_id": None, "seen_at": iso(datetime.now(UTC))})
    await expect(admin.locator("#presence")).to_contain_text("Gone Away", timeout=LIVE)
    last_seen = datetime.now(UTC) - timedelta(seconds=EXPIRY_S + 5)
    await site.db.presence.update_one({"_id": "user-ghost:tab"},
                                      {"$set": {"seen_at": iso(last_seen)}})
    # Any live instance expires it at its next sweep (a new one sweeps as it starts); the
    # living, refreshed every beat, stay.
    sweeper = Presence(site.db)
    await sweeper.start()
    try:
        await expect(admin.locator("#presence")).not_to_contain_text("Gone Away",
                                                                     timeout=LIVE)
    finally:
        await sweeper.stop()
    await expect(admin.locator("#presence .me")).to_be_visible()
