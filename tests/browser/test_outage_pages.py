"""The database stops answering (its process is frozen, SIGSTOP) while pages are open: they
say so and pause their actions, a fresh page load answers within a second with a styled
page, and all comes back when the database does (SIGCONT)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.browser.conftest import ADMIN, Site, open_page
from tests.conftest import free_port, start_nx, stop_nx

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120),
              pytest.mark.browser, pytest.mark.integration,
              pytest.mark.embedded_only(reason="it freezes its own database server")]

CUSTOMER = "customer04@example.com"


@pytest.fixture(scope="module")
def own_nx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_nx(tmp_path_factory.mktemp("nx-outage"), port := free_port())
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    os.kill(proc.pid, signal.SIGCONT)
    stop_nx(proc)


@pytest.fixture(scope="module")
def nx_uri(own_nx: subprocess.Popen[bytes]) -> str:
    """This module's site runs on a database server of its own (``site`` asks for it)."""
    return f"mongodb://127.0.0.1:{own_nx.port}/?directConnection=true"  # type: ignore[attr-defined]



async def test_pages_say_degraded_pause_actions_and_recover(
    site: Site, browser: Browser, own_nx: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    customer = await open_page(browser, site, CUSTOMER, "/")
    admin = await open_page(browser, site, ADMIN, "/admin")
    dashboard = await open_page(browser, site, ADMIN, "/dashboard")
    add = customer.locator("#product-grid .add-row button").first
    await expect(add).to_be_enabled()
    stock_before = await admin.locator("#inventory-body .stock-cell").first.inner_text()

    os.kill(own_nx.pid, signal.SIGSTOP)
    try:
        for page in (customer, admin, dashboard):
            conn = page.locator("#conn")
            await expect(conn).to_have_attribute("data-state", "degraded", timeout=6_000)
            await expect(conn).to_contain_text("Degraded: showing last known data")
            await expect(page.locator("#degraded")).to_be_visible()
        await expect(add).to_be_disabled()
        assert await add.get_attribute("title") == "Paused: the database is unreachable"
        minus = admin.locator("#inventory-body button", has_text="\u221210").first
        await expect(minus).to_be_disabled()
        # The last known data stays on screen.
        assert await admin.locator("#inventory-body .stock-cell").first.inner_text() == stock_before
        # A fresh page load while the database does not answer: a styled 503 within 1 s.
        fresh = await customer.context.new_page()
        started = time.monotonic()
        response = await fresh.goto(site.base + "/")
        elapsed = time.monotonic() - started
        assert response is not None and response.status == 503, await fresh.content()
        assert elapsed < 1.0, elapsed
        await expect(fresh.get_by_role("heading", level=1)).to_have_text(
            "The shop's database is unreachable right now")
        await fresh.close()
    finally:
        os.kill(own_nx.pid, signal.SIGCONT)

    for page in (customer, admin, dashboard):
        conn = page.locator("#conn")
        await expect(conn).to_have_attribute("data-state", "connected", timeout=10_000)
        await expect(page.locator("#degraded")).to_be_hidden()
    await expect(add).to_be_enabled()
    assert await add.get_attribute("title") is None
    # Actions work again, end to end: the admin's cut reaches the customer's card.
    await minus.click()
    await expect(admin.locator("#toasts .toast-error")).to_have_count(0)
    for page in (customer, admin, dashboard):
        assert site.console_errors[page] == [], page.url
