"""What the pages look like, measured in Chromium at a laptop's and a phone's width: no
blank space below the content, no word broken mid-token, table columns that line up."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Page

from tests.browser.conftest import ADMIN, PHONE, Site, open_page

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.browser, pytest.mark.integration]

CUSTOMER = "customer02@example.com"
LAPTOP = {"width": 1280, "height": 800}
PAGES = ((CUSTOMER, "/"), (ADMIN, "/admin"), (ADMIN, "/dashboard"))
# Text that must never be split inside a word, whatever the width.
UNBROKEN = ".sku, .order-id, .pill, .num, .step-name, .kpi-label, .state, [role=columnheader]"



async def blank_space(page: Page) -> dict[str, float]:
    """The document's height against the bottom of what is laid out in the page's flow."""
    return await page.evaluate("""() => {
        const flow = [...document.body.children].filter(el =>
            !['absolute', 'fixed'].includes(getComputedStyle(el).position)
            && el.getBoundingClientRect().height > 0)
        const bottom = Math.max(...flow.map(el => el.getBoundingClientRect().bottom + scrollY))
        return {document: document.documentElement.scrollHeight, content: bottom,
                viewport: innerHeight}
    }""")  # type: ignore[no-any-return]


async def broken_words(page: Page) -> list[str]:
    """Words of ``UNBROKEN`` elements laid out over more than one line box."""
    return await page.evaluate("""(selector) => {
        const broken = []
        for (const el of document.querySelectorAll(selector)) {
            if (el.getClientRects().length === 0) continue  // not shown
            const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT)
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (const match of node.data.matchAll(/\\S+/g)) {
                    const range = document.createRange()
                    range.setStart(node, match.index)
                    range.setEnd(node, match.index + match[0].length)
                    const lines = new Set([...range.getClientRects()]
                        .filter(r => r.width > 0).map(r => Math.round(r.top)))
                    if (lines.size > 1) broken.push(match[0])
                }
            }
        }
        return [...new Set(broken)].slice(0, 10)
    }""", UNBROKEN)  # type: ignore[no-any-return]


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1280px", "375px"])
async def test_no_blank_space_and_no_word_broken_on_any_page(
    site: Site, browser: Browser, viewport: dict[str, int]
) -> None:
    for email, path in PAGES:
        page = await open_page(browser, site, email, path, viewport=viewport)
        sizes = await blank_space(page)
        assert sizes["document"] <= max(sizes["content"], sizes["viewport"]) + 32, \
            f"{path} at {viewport['width']} px scrolls past its content: {sizes}"
        assert await broken_words(page) == [], f"{path} at {viewport['width']} px"


async def test_admin_table_columns_line_up_whatever_the_buttons(site: Site, browser: Browser) -> None:
    page = await open_page(browser, site, ADMIN, "/admin", viewport=LAPTOP)
    for table in ("#orders-body", "#inventory-body"):
        # Per column, where its cells start, over every row of the table (header included).
        starts = await page.evaluate("""(table) => {
            const rows = [...document.querySelector(table).closest('[role=table]')
                                  .querySelectorAll('[role=row]')]
            const columns = []
            for (const row of rows) {
                [...row.children].forEach((cell, n) => {
                    (columns[n] = columns[n] || new Set()).add(Math.round(cell.getBoundingClientRect().left))
                })
            }
            return {rows: rows.length, starts: columns.map(c => [...c])}
        }""", table)
        assert starts["rows"] > 3, starts
        drifting = [n for n, lefts in enumerate(starts["starts"]) if len(lefts) > 1]
        assert drifting == [], f"{table}: columns {drifting} start at {starts['starts']}"


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1280px", "375px"])
async def test_my_orders_keep_total_beside_status_and_mark_the_current_step(
    site: Site, browser: Browser, viewport: dict[str, int]
) -> None:
    customer = await site.db.users.find_one({"email": CUSTOMER})
    assert customer is not None
    seeded = await site.db.orders.find({"user_id": customer["_id"]}).to_list()
    assert any(len(order.get("history") or []) > 1 for order in seeded), seeded
    page = await open_page(browser, site, CUSTOMER, "/", viewport=viewport)
    # The total stays on the order's first line, never under the status pill.
    heads = await page.evaluate("""() => [...document.querySelectorAll('#my-orders .order-head')]
        .map(head => {
            const id = head.querySelector('.order-id').getBoundingClientRect()
            const pill = head.querySelector('.pill').getBoundingClientRect()
            const total = head.querySelector('.num').getBoundingClientRect()
            return total.top < pill.bottom && total.top < id.bottom && total.bottom > id.top
        })""")
    assert heads and all(heads), heads
    dots = await page.evaluate("""() => [...document.querySelectorAll('#my-orders .timeline')]
        .filter(t => t.children.length > 1).map(t => {
            const colour = li => getComputedStyle(li, '::before').backgroundColor
            const steps = [...t.children]
            return {current: steps.at(-1).getAttribute('aria-current'),
                    last: colour(steps.at(-1)), others: steps.slice(0, -1).map(colour)}
        })""")
    assert dots, "no order with a timeline of two steps"
    for dot in dots:
        assert dot["current"] == "step"
        assert dot["last"] not in dot["others"], dot
