"""What a shop operator and a customer notice, in Chromium against a live server: styled
error pages, one toast per order, a stale "Set stock" refused instead of silently lost,
changed values flashing, the browser's own offline signal, the keyboard path to "Place
order", and axe-core on every page."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from backend.domain.clock import iso
from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from backend.web.pages.fragments import dom_id
from tests.browser.conftest import ADMIN, PHONE, Site, in_stock_product, open_page, place_order

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.browser, pytest.mark.integration]

CUSTOMER = "customer03@example.com"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
LIVE = 1_000  # ms



async def test_browsers_get_styled_error_pages_and_the_api_keeps_json(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    missing = await customer.goto(site.base + "/no/such/page")
    assert missing is not None and missing.status == 404
    assert missing.headers["content-type"].startswith("text/html")
    await expect(customer.get_by_role("heading", level=1)).to_have_text("There is no such page")
    await expect(customer.get_by_role("link", name="Back to the shop")).to_be_visible()
    # Styled: the page's stylesheet applies (the card on the grey page).
    background = await customer.evaluate(
        "getComputedStyle(document.querySelector('main')).backgroundColor")
    assert background == "rgb(255, 255, 255)"
    denied = await customer.goto(site.base + "/admin")
    assert denied is not None and denied.status == 403
    await expect(customer.locator("main")).to_contain_text("for administrators")
    async with httpx.AsyncClient(base_url=site.base) as http:
        api = await http.get("/api/orders/ORD-NOTHERE", headers={"Accept": "text/html"})
        assert api.status_code == 401 and api.json()["error"]["code"] == "unauthorized"
        plain = await http.get("/no/such/page")
        assert plain.status_code == 404 and plain.json()["error"]["code"] == "not_found"


async def test_one_toast_per_order_updated_in_place_and_none_over_the_phone_cart(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    product = await in_stock_product(site)
    order_id = await place_order(customer, product)
    toast = customer.locator("#" + dom_id("toast", order_id))
    # The pipeline moves the order on (reserved, paid, processing): one toast says each in
    # turn, where three used to pile up.
    await expect(toast).to_contain_text("being prepared", timeout=10_000)
    notes = await site.db.notifications.count_documents({"order_id": order_id})
    assert notes >= 3, notes
    await expect(customer.locator("#toasts .toast")).to_have_count(1)
    for _ in range(4):  # more orders than toasts allowed on screen
        await place_order(customer, product)
    assert await customer.locator("#toasts .toast").count() <= 3

    phone = await open_page(browser, site, CUSTOMER, "/", viewport=PHONE)
    await phone.locator("#cart").scroll_into_view_if_needed()
    latest = await place_order(phone, product)
    await expect(phone.locator("#notifications")).to_contain_text(
        f"Items reserved for order {latest}.", timeout=10_000)
    overlap = await phone.evaluate("""() => {
        const cart = document.getElementById('cart').getBoundingClientRect()
        return [...document.querySelectorAll('#toasts .toast')].some(t => {
            const r = t.getBoundingClientRect()
            return r.width > 0 && r.bottom > cart.top && r.top < cart.bottom
        })
    }""")
    assert overlap is False


async def test_a_stale_set_stock_is_refused_with_409_and_asked_again(
    site: Site, browser: Browser
) -> None:
    admin = await open_page(browser, site, ADMIN, "/admin")
    product = await site.db.products.find_one({"stock": {"$gte": 5}}, sort=[("_id", -1)])
    assert product is not None
    row = admin.locator("#" + dom_id("inv", product["_id"]))
    cell = row.locator(".stock-cell")
    await expect(cell).to_have_attribute("data-stock", str(product["stock"]))
    field = row.get_by_label(f"New stock of {product['name']}")
    await field.focus()  # the admin saw this stock when beginning to type
    # Meanwhile another admin sets it to something else; this page shows it live.
    async with httpx.AsyncClient(base_url=site.base, headers={"Origin": site.base}) as other:
        assert (await other.post("/api/login", json={"email": ADMIN, "password":
                                                     DEFAULT_ADMIN_PASSWORD})).status_code == 200
        theirs = product["stock"] + 3
        changed = await other.put(f"/api/products/{product['_id']}/stock", json={"stock": theirs})
        assert changed.status_code == 200
        await expect(cell).to_have_attribute("data-stock", str(theirs), timeout=LIVE)
        await expect(cell).to_have_class(re.compile(r"\bcc-flash\b"), timeout=LIVE)  # flashed

        await field.fill("42")
        await row.get_by_role("button", name=f"Set stock of {product['name']}").click()
        await expect(admin.locator("#toasts")).to_contain_text(
            f"The stock of {product['name']} changed to {theirs} while you were editing it")
        assert (await site.db.products.find_one({"_id": product["_id"]}))["stock"] == theirs
        await expect(field).to_be_focused()
        await expect(field).to_have_value("42")  # kept, to confirm with one more click

        await row.get_by_role("button", name=f"Set stock of {product['name']}").click()
        await expect(cell).to_have_attribute("data-stock", "42", timeout=LIVE)
        assert (await site.db.products.find_one({"_id": product["_id"]}))["stock"] == 42

        # The API: the same rule, with a machine-readable code and the current value.
        stale = await other.put(f"/api/products/{product['_id']}/stock",
                                json={"stock": 5, "expected": 41})
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "stock_changed"
        assert stale.json()["error"]["current"] == 42
        fresh = await other.put(f"/api/products/{product['_id']}/stock",
                                json={"stock": 5, "expected": 42})
        assert fresh.status_code == 200 and fresh.json()["stock"] == 5
        odd = await other.put(f"/api/products/{product['_id']}/stock",
                              json={"delta": 1, "expected": 5})
        assert odd.status_code == 422 and "expected" in odd.json()["error"]["message"]
        short = await other.put(f"/api/products/{product['_id']}/stock", json={"delta": -500})
        assert short.status_code == 409
        assert short.json()["error"]["message"] == (
            f"Only 5 of {product['name']} in stock: removing 500 would take it below 0.")


async def test_offline_is_shown_at_once_and_live_again_when_back(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    conn = customer.locator("#conn")
    started = time.monotonic()
    await customer.context.set_offline(True)
    await expect(conn).to_have_attribute("data-state", "offline", timeout=500)
    assert time.monotonic() - started < 1.0  # not three heartbeats later
    await expect(conn).to_contain_text("Offline")
    await customer.context.set_offline(False)
    await expect(conn).to_have_attribute("data-state", "connected", timeout=10_000)
    await expect(conn).to_contain_text("Live")


async def test_keyboard_reaches_place_order_in_a_few_tabs_and_focus_follows_the_result(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    product = await in_stock_product(site)
    card = customer.locator("#" + dom_id("product", product["_id"]))
    await card.get_by_role("button", name=f"Add {product['name']} to cart").click()
    await expect(customer.locator("#cart")).to_contain_text(product["name"])
    await customer.reload()  # the cart is kept; keyboard navigation starts at the top
    await customer.locator("#conn[data-state=connected]").wait_for()
    tabs = 0

    async def focused() -> str:
        return str(await customer.evaluate(
            "(document.activeElement.getAttribute('aria-label') || "
            "document.activeElement.textContent || '').trim()"))

    while await focused() != "Skip to cart":
        await customer.keyboard.press("Tab")
        tabs += 1
        assert tabs <= 5, await focused()
    await customer.keyboard.press("Enter")
    while await focused() != "Place order":
        await customer.keyboard.press("Tab")
        tabs += 1
        assert tabs <= 10, await focused()
    await customer.keyboard.press("Enter")
    result = customer.locator("#cart .flash")
    await expect(result).to_contain_text("placed")
    await expect(result).to_be_focused()  # not dropped to <body>


@pytest.mark.parametrize("path", ["/", "/admin", "/dashboard"])
async def test_axe_core_finds_no_serious_violation(site: Site, browser: Browser, path: str) -> None:
    page = await open_page(browser, site, CUSTOMER if path == "/" else ADMIN, path)
    await page.evaluate(AXE.read_text())  # evaluated by the driver: the page's CSP allows it
    results = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"][:3]])
               for v in results["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], serious


async def test_portal_demo_controls_move_what_the_customer_watches(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    demo = customer.get_by_role("region", name="Demo controls")
    await demo.get_by_role("button", name="Another shopper buys").click()
    toast = customer.locator("#toasts")
    await expect(toast).to_contain_text("Another shopper placed order")
    order_id = re.search(r"ORD-[A-Z0-9]{8}", await toast.inner_text()).group()  # type: ignore[union-attr]
    order = await site.db.orders.find_one({"_id": order_id})
    # Its reservation shows on this customer's cards, live.
    product_id = order["items"][0]["product_id"]
    live = customer.locator("#" + dom_id("product", product_id) + " .stock-count")
    async with asyncio.timeout(10):  # until the pipeline has reserved it
        while (await site.db.orders.find_one({"_id": order_id}))["status"] == "pending":
            await asyncio.sleep(0.05)
    stock = (await site.db.products.find_one({"_id": product_id}))["stock"]
    await expect(live).to_have_text(str(stock), timeout=LIVE)
    # Advance my order: the customer's own order, once the shop has it, moves on.
    mine = await place_order(customer, await in_stock_product(site))
    row = customer.locator("#" + dom_id("my-order", mine))
    await expect(row.locator(".pill")).to_have_text("Processing", timeout=10_000)
    await demo.get_by_role("button", name="Advance my order").click()
    await expect(row.locator(".pill")).to_have_text("Shipped", timeout=LIVE)
    await expect(row.locator(".step-current")).to_contain_text("Shipped")
    await demo.get_by_role("button", name="Restock").click()
    await expect(toast).to_contain_text("is now")


async def test_admin_orders_say_how_many_load_more_and_keep_live_rows_at_the_top(
    site: Site, browser: Browser
) -> None:
    admin = await open_page(browser, site, ADMIN, "/admin")
    total = await site.db.orders.count_documents({})
    assert total > 100  # the seeded history
    count, rows = admin.locator("#orders-count"), admin.locator("#orders-body > [role=row]")
    await expect(count).to_have_text(f"Showing 50 of {total}")
    await admin.get_by_role("button", name="Load 50 more").click()
    await expect(rows).to_have_count(100)
    await expect(count).to_have_text(f"Showing 100 of {total}")
    ids = await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    newest = await site.db.orders.find({}, {"_id": 1}).sort([("created_at", -1), ("_id", 1)]) \
        .limit(100).to_list()
    assert ids == [o["_id"] for o in newest]  # in order, none twice, none skipped
    # A new order arrives at the top while the older rows stay loaded.
    await admin.get_by_role("region", name="Demo controls").get_by_role(
        "button", name="Simulate new order").click()
    await expect(count).to_have_text(f"Showing 101 of {total + 1}", timeout=LIVE)
    fresh = await rows.first.get_attribute("data-id")
    assert fresh not in ids
    async with asyncio.timeout(10):  # until the pipeline is done with it (it may count below)
        while (await site.db.orders.find_one({"_id": fresh}))["status"] in ("pending", "reserved",
                                                                            "paid"):
            await asyncio.sleep(0.05)
    # Filtered: the count is the filter's, and an order leaving the filter takes one off.
    await admin.get_by_label("Status", exact=True).select_option("processing")
    processing = await site.db.orders.count_documents({"status": "processing"})
    shown = min(50, processing)
    await expect(count).to_have_text(f"Showing {shown} of {processing}", timeout=LIVE)
    first = rows.first
    order_id = await first.get_attribute("data-id")
    await first.get_by_role("button", name=f"Mark shipped: {order_id}").click()
    await expect(count).to_have_text(f"Showing {shown - 1} of {processing - 1}", timeout=LIVE)


async def test_search_and_category_filter_cards_entering_and_leaving_live(
    site: Site, browser: Browser
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    admin = await open_page(browser, site, ADMIN, "/admin")
    products = await site.db.products.find({}).sort("_id", 1).to_list()
    target, other = products[0], next(p for p in products if p["category"] != products[0]["category"])
    cards = customer.locator("#product-grid .card")
    await expect(cards).to_have_count(len(products))

    word = target["name"].split()[-1]
    await customer.get_by_label("Search products").fill(word.lower())  # any case
    expected = [p for p in products if word.lower() in
                f"{p['name']} {p['_id']} {p['category']}".lower()]
    await expect(cards).to_have_count(len(expected))
    # A product renamed to match enters the grid; renamed away, it leaves: live.
    await site.db.products.update_one({"_id": other["_id"]},
                                      {"$set": {"name": f"{other['name']} {word}"}})
    entered = customer.locator("#" + dom_id("product", other["_id"]))
    await expect(entered).to_be_visible(timeout=LIVE)
    await site.db.products.update_one({"_id": other["_id"]}, {"$set": {"name": other["name"]}})
    await expect(entered).to_have_count(0, timeout=LIVE)

    # The category filter, on the admin's inventory: rows enter and leave as categories do.
    await customer.get_by_label("Search products").fill("")
    await expect(cards).to_have_count(len(products))
    inventory = admin.locator("#inventory-body > [role=row]")
    await admin.locator("#inventory-search-category").select_option(target["category"])
    same = [p for p in products if p["category"] == target["category"]]
    await expect(inventory).to_have_count(len(same))
    await site.db.products.update_one({"_id": other["_id"]},
                                      {"$set": {"category": target["category"]}})
    await expect(inventory).to_have_count(len(same) + 1, timeout=LIVE)
    await site.db.products.update_one({"_id": other["_id"]},
                                      {"$set": {"category": other["category"]}})
    await expect(inventory).to_have_count(len(same), timeout=LIVE)
    # The alerts still watch every product, whatever the inventory shows.
    await site.db.products.update_one({"_id": other["_id"]}, {"$set": {"stock": 0}})
    await expect(admin.locator("#" + dom_id("alert", other["_id"]))).to_be_visible(timeout=LIVE)
    # Nothing matching says so.
    await customer.get_by_label("Search products").fill("zzzz-nothing")
    await expect(cards).to_have_count(0)
    assert "No product matches" in await customer.evaluate(
        "getComputedStyle(document.getElementById('product-grid'), '::after').content")


async def test_dashboard_charts_orders_per_hour_over_fourteen_days(
    site: Site, browser: Browser
) -> None:
    dashboard = await open_page(browser, site, ADMIN, "/dashboard")
    chart = dashboard.locator("#trend-hours-chart canvas")
    await expect(chart).to_have_count(1)
    points = await dashboard.evaluate(
        "JSON.parse(document.getElementById('trend-hours-data').dataset.points)")
    assert len(points[0]) == 14 * 24 and len(points[1]) == 14 * 24
    since = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=14 * 24 - 1)
    recent = await site.db.orders.count_documents({"created_at": {"$gte": iso(since)}})
    assert sum(points[1]) == recent > 0  # the seeded history shows, not a flat zero line


async def test_changed_values_flash_and_only_outline_with_reduced_motion(
    site: Site, browser: Browser
) -> None:
    moving = await open_page(browser, site, CUSTOMER, "/")
    still = await open_page(browser, site, "customer06@example.com", "/", reduced_motion=True)
    product = await in_stock_product(site, minimum=12)
    live = "#" + dom_id("product", product["_id"]) + " .live"
    for page in (moving, still):  # note the flashes as they happen (they last 1.7 s)
        await page.evaluate("""(selector) => {
            window.__flashes = []
            window.__flashed = new Set()  // every element that flashed, by id
            new MutationObserver(() => {
                document.querySelectorAll('.cc-flash').forEach(el => window.__flashed.add(el.id))
                const el = document.querySelector(selector)
                if (el && el.classList.contains('cc-flash')) {
                    const style = getComputedStyle(el)
                    window.__flashes.push({animation: style.animationName,
                                           outline: style.outlineStyle})
                }
            }).observe(document.body, {subtree: true, childList: true, attributes: true,
                                       attributeFilter: ['class']})
        }""", live)
    await site.db.products.update_one({"_id": product["_id"]}, {"$inc": {"stock": -2}})
    for page in (moving, still):
        await expect(page.locator(live + " .stock-count")).to_have_text(
            str(product["stock"] - 2), timeout=LIVE)
        await page.wait_for_function("window.__flashes.length > 0")
    assert (await moving.evaluate("window.__flashes[0]"))["animation"] == "cc-flash"
    # Only what changed: not the page around it, nor anything the frame did not touch.
    assert await moving.evaluate("[...window.__flashed]") == [dom_id("product", product["_id"])
                                                              + "-live"]
    assert await still.evaluate("window.__flashes[0]") == {"animation": "none",
                                                           "outline": "solid"}
