"""The three pages in a real Chromium, several browser contexts at once, against a live server.

"Within 1 s" is Playwright's expect timeout started after the action returned:
nothing is reloaded, and every update arrives over the page's socket.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from backend.web.pages.fragments import dom_id
from tests.browser.conftest import (
    ADMIN,
    DESKTOP,
    PHONE,
    Site,
    in_stock_product,
    open_page,
    place_order,
    same_document,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.browser, pytest.mark.integration]

CUSTOMER = "customer01@example.com"
# The README's screenshots are refreshed with `make screenshots`; a plain run keeps its own.
SCREENSHOTS_DIR = os.environ.get("CHANGECAST_SCREENSHOTS_DIR")
LIVE = 1_000  # ms



async def watched_card(site: Site, browser: Browser) -> tuple[Page, dict[str, Any], Any]:
    """A customer's portal and the card of a product with stock to spare, as it shows now."""
    customer = await open_page(browser, site, CUSTOMER, "/")
    product = await in_stock_product(site, minimum=12)
    card = customer.locator("#" + dom_id("product", product["_id"]))
    await expect(card.locator(".stock-count")).to_have_text(str(product["stock"]))
    return customer, product, card


async def kpi(page: Page, name: str) -> str:
    return (await page.locator(f"[data-kpi={name}]").inner_text()).strip()


async def test_customer_order_shows_on_admin_table_and_dashboard_within_a_second(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    admin = await open_page(browser, site, ADMIN, "/admin")
    dashboard = await open_page(browser, site, ADMIN, "/dashboard")
    orders_before = int(await kpi(dashboard, "orders"))
    product = await in_stock_product(site)

    order_id = await place_order(customer, product, quantity=2)

    row = admin.locator("#" + dom_id("order", order_id))
    await expect(row).to_be_visible(timeout=LIVE)
    await dashboard.wait_for_function(
        "n => Number(document.querySelector('[data-kpi=orders]').textContent) >= n",
        arg=orders_before + 1, timeout=LIVE)
    customer_name = (await site.db.users.find_one({"email": CUSTOMER}))["name"]
    await expect(row).to_contain_text(customer_name)
    # The customer's own list got it too, and the pipeline moves it on while we watch.
    mine = customer.locator("#" + dom_id("my-order", order_id))
    await expect(mine).to_be_visible(timeout=LIVE)
    await expect(mine.locator(".pill")).to_have_text("Processing", timeout=10_000)
    await expect(mine.locator(".timeline .step")).to_have_count(4)
    for page in (customer, admin, dashboard):
        assert await same_document(page)


async def test_admin_advancing_status_updates_customer_timeline_and_notifications(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    admin = await open_page(browser, site, ADMIN, "/admin")
    order_id = await place_order(customer, await in_stock_product(site))
    row = admin.locator("#" + dom_id("order", order_id))
    ship = row.get_by_role("button", name=f"Mark shipped: {order_id}")
    await expect(ship).to_be_visible(timeout=10_000)  # the pipeline took it to processing

    await ship.click()

    mine = customer.locator("#" + dom_id("my-order", order_id))
    await expect(mine.locator(".pill")).to_have_text("Shipped", timeout=LIVE)
    await expect(mine.locator(".timeline")).to_contain_text("Shipped", timeout=LIVE)
    await expect(customer.locator("#notifications")).to_contain_text(
        f"Order {order_id} has shipped.", timeout=LIVE)
    await expect(customer.locator("#toasts")).to_contain_text(
        f"Order {order_id} has shipped.", timeout=LIVE)
    # The admin's row moved on too, and its detail shows the audit trail and correlation id.
    await expect(row.locator(".pill")).to_have_text("Shipped", timeout=LIVE)
    await row.get_by_role("button", name=f"Show order {order_id}").click()
    detail = admin.locator("#order-detail")
    order = await site.db.orders.find_one({"_id": order_id})
    await expect(detail).to_contain_text(order["correlation_id"])
    await expect(detail.locator(".audit li")).to_have_count(5, timeout=5_000)
    # Filter the table to shipped orders (sent over the socket): the row stays, others go;
    # delivering it makes it leave the filtered table live.
    await admin.get_by_label("Status", exact=True).select_option("shipped")
    await expect(admin.locator("#orders-body [data-status]:not([data-status=shipped])")) \
        .to_have_count(0, timeout=LIVE)
    await expect(row).to_be_visible()
    await row.get_by_role("button", name=f"Mark delivered: {order_id}").click()
    await expect(detail.locator(".pill").first).to_have_text("Delivered", timeout=2 * LIVE)
    await expect(row).to_have_count(0, timeout=LIVE)
    assert await same_document(customer) and await same_document(admin)


async def test_admin_stock_cut_below_threshold_shows_badges_live_on_customer_cards(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    admin = await open_page(browser, site, ADMIN, "/admin")
    product = await in_stock_product(site, minimum=12)
    card = customer.locator("#" + dom_id("product", product["_id"]))
    inventory = admin.locator("#" + dom_id("inv", product["_id"]))
    await expect(card.locator(".badge")).to_have_count(0)

    await inventory.get_by_label(f"New stock of {product['name']}").fill("4")
    await inventory.get_by_role("button", name=f"Set stock of {product['name']}").click()

    await expect(card.locator(".badge-low")).to_have_text("Low stock", timeout=LIVE)
    await expect(card.locator(".stock-count")).to_have_text("4", timeout=LIVE)
    await expect(admin.locator("#" + dom_id("alert", product["_id"]))).to_contain_text("4 left")

    # Below zero is refused with a message, and nothing changes.
    await inventory.get_by_role("button", name=f"Remove 10 units of {product['name']}").click()
    await expect(admin.locator("#toasts")).to_contain_text("below 0")
    await expect(card.locator(".stock-count")).to_have_text("4")

    await inventory.get_by_label(f"New stock of {product['name']}").fill("0")
    await inventory.get_by_role("button", name=f"Set stock of {product['name']}").click()
    await expect(card.locator(".badge-out")).to_have_text("Out of stock", timeout=LIVE)
    await expect(card.get_by_role("button", name=f"Add {product['name']} to cart")).to_be_disabled()

    await inventory.get_by_role("button", name=f"Add 10 units of {product['name']}").click()
    await inventory.get_by_role("button", name=f"Add 10 units of {product['name']}").click()
    await expect(card.locator(".stock-count")).to_have_text("20", timeout=LIVE)
    await expect(card.locator(".badge")).to_have_count(0, timeout=LIVE)
    await expect(admin.locator("#" + dom_id("alert", product["_id"]))).to_have_count(0)
    assert await same_document(customer)


async def test_checkout_refuses_more_than_the_stock_with_an_inline_message(
    site: Site, browser: Browser
) -> None:
    customer, product, card = await watched_card(site, browser)
    await site.db.products.update_one({"_id": product["_id"]}, {"$set": {"stock": 3}})
    await expect(card.locator(".stock-count")).to_have_text("3", timeout=LIVE)
    await card.locator("input[name=quantity]").fill("5")
    await card.get_by_role("button", name=f"Add {product['name']} to cart").click()
    error = customer.locator("#cart [role=alert]")
    await expect(error).to_contain_text(f"Only 3 of {product['name']} left")
    # A quantity of 0 never leaves the browser: the field says why (the server checks too).
    quantity = card.locator("input[name=quantity]")
    await quantity.fill("0")
    await card.get_by_role("button", name=f"Add {product['name']} to cart").click()
    assert await quantity.evaluate("el => el.validationMessage") != ""
    await expect(customer.locator("#cart")).to_contain_text("Your cart is empty")


async def test_simulate_button_moves_the_dashboard_kpis(site: Site, browser: Browser) -> None:
    dashboard = await open_page(browser, site, ADMIN, "/dashboard")
    before = int(await kpi(dashboard, "orders"))

    await dashboard.get_by_role("button", name="Simulate new order").click()

    await dashboard.wait_for_function(
        "n => Number(document.querySelector('[data-kpi=orders]').textContent) > n",
        arg=before, timeout=LIVE)
    await expect(dashboard.locator("#toasts")).to_contain_text("Simulated order")
    # The system panel is pushed too: connected clients counts this page.
    assert int(await dashboard.locator("[data-stat=clients]").inner_text()) >= 1
    assert await same_document(dashboard)


async def test_dropped_socket_shows_reconnecting_then_catches_up_on_missed_changes(
    site: Site, browser: Browser
) -> None:
    customer, product, card = await watched_card(site, browser)
    site.front.refuse_live = True  # reconnections fail until the missed change is made
    try:
        for connection in site.live_connections("portal", CUSTOMER):  # server-side disconnect
            await connection.websocket.close(code=1012, reason="test: server restart")
        await expect(customer.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        await site.db.products.update_one({"_id": product["_id"]}, {"$set": {"stock": 7}})
        site.front.app_state.engine.nudge("products")
        async with asyncio.timeout(5):  # the page retried (and was refused) meanwhile
            while site.front.refused < 1:
                await asyncio.sleep(0.02)
        await expect(customer.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        await expect(card.locator(".stock-count")).to_have_text(str(product["stock"]))
    finally:
        site.front.refuse_live = False

    await expect(customer.locator("#conn")).to_have_attribute("data-state", "connected",
                                                              timeout=10_000)
    await expect(card.locator(".stock-count")).to_have_text("7", timeout=LIVE)
    await expect(card.locator(".badge-low")).to_be_visible()
    assert await same_document(customer)


async def test_a_socket_that_goes_silent_is_dropped_and_the_page_catches_up(
    site: Site, browser: Browser
) -> None:
    customer, product, card = await watched_card(site, browser)
    # The indicator's states, as the user would have seen them (the reconnecting one is short).
    await customer.evaluate("""() => {
        const conn = document.getElementById('conn'); window.__states = []
        new MutationObserver(() => window.__states.push(conn.dataset.state))
            .observe(conn, {attributes: true, attributeFilter: ['data-state']}) }""")
    assert site.front.mute_live() >= 1  # the network dies; neither end notices
    await site.db.products.update_one({"_id": product["_id"]}, {"$set": {"stock": 6}})
    site.front.app_state.engine.nudge("products")
    # Three heartbeats (1 s here) without a word: the page gives up on that socket, and its
    # next one resumes from the last seq it applied.
    await expect(card.locator(".stock-count")).to_have_text("6", timeout=6_000)
    states = await customer.evaluate("window.__states")
    assert states[:1] == ["reconnecting"] and states[-1] == "connected", states
    # A page with nothing to show is not mistaken for a dead one: the server's heartbeats
    # keep it connected through four heartbeat periods of no changes (an observation window).
    await customer.evaluate("window.__states = []")
    await asyncio.sleep(4)
    assert await customer.evaluate("window.__states") == []
    assert await same_document(customer)


async def test_pages_screenshots_phone_width_and_accessible_names(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    shots = Path(SCREENSHOTS_DIR) if SCREENSHOTS_DIR else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    pages = []
    for email, path, name in ((CUSTOMER, "/", "portal"), (ADMIN, "/admin", "admin"),
                              (ADMIN, "/dashboard", "dashboard")):
        desktop = await open_page(browser, site, email, path, viewport=DESKTOP)
        pages.append(desktop)
        await desktop.screenshot(path=str(shots / f"{name}.png"))
        phone = await open_page(browser, site, email, path, viewport=PHONE)
        wide = await phone.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(el => el.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
            .map(el => el.tagName + '#' + el.id + '.' + el.className).slice(0, 5)""")
        assert wide == [], f"{path} is wider than 375 px: {wide}"
        unnamed = await desktop.evaluate("""() => [...document.querySelectorAll(
            'button, input:not([type=hidden]), select, a[href]')].filter(el => {
              const name = (el.getAttribute('aria-label') || el.textContent || '').trim()
              const labelled = el.labels && el.labels.length > 0
              return !(labelled || name || el.getAttribute('placeholder') && el.labels.length)
            }).map(el => el.outerHTML.slice(0, 80))""")
        assert unnamed == [], f"{path}: controls without an accessible name: {unnamed}"
    phone = await open_page(browser, site, CUSTOMER, "/", viewport=PHONE)
    pages.append(phone)
    await phone.screenshot(path=str(shots / "portal-phone.png"))
    for name in ("portal", "admin", "dashboard", "portal-phone"):
        assert (shots / f"{name}.png").stat().st_size > 20_000, name  # a page, not a blank
    for page in pages:  # pages that did nothing wrong log nothing wrong
        assert site.console_errors[page] == [], page.url
    assert site.page_errors == []  # no script error on any page of any test
