"""The JavaScript client in a real Chromium, imported from the app (/static/changecast-client.js)
under the page's CSP: it signs in with the page's own cookie, loads a customer's orders and
keeps them current as the admin moves one on."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from tests.browser.conftest import Site, open_page

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.browser, pytest.mark.integration]

CUSTOMER = "customer02@example.com"

START = """async () => {
  const cc = await import("/static/changecast-client.js");
  const shop = await cc.connect(location.origin);
  const orders = await shop.subscribe("orders");
  window.__orders = orders;
  window.__events = [];
  (async () => { for await (const event of orders) window.__events.push(event.type); })();
  let users = "allowed";
  try { await shop.subscribe("users"); } catch (error) { users = `${error.name} ${error.code}`; }
  return {size: orders.view.size, users, seq: orders.seq};
}"""


async def test_the_served_module_works_in_a_browser_with_the_pages_session(
    site: Site, browser: Browser
) -> None:
    page = await open_page(browser, site, CUSTOMER, "/")
    response = await page.request.get(site.base + "/static/changecast-client.js")
    assert response.ok and "javascript" in response.headers["content-type"]
    user = await site.db.users.find_one({"email": CUSTOMER})
    assert user is not None
    own = [o["_id"] async for o in site.db.orders.find({"user_id": user["_id"]})]
    started = await page.evaluate(START)
    assert started["size"] == len(own) > 0  # the customer's own orders only
    assert started["users"] == "AccessDenied forbidden"
    order = own[0]
    await site.db.orders.update_one({"_id": order}, {"$set": {"note": "from the test"}})
    await page.wait_for_function(
        "id => window.__orders.view.get(id)?.note === 'from the test'", arg=order)
    assert await page.evaluate("window.__events") == ["snapshot", "change"]
    assert not site.page_errors and not [e for e in site.console_errors[page] if "CSP" in e]
