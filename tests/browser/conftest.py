"""A live site (app + pipeline on the embedded server) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.web.live.frames import WIRE_EXTENSION, BasicWire
from backend.web.pages.fragments import dom_id
from tests.support.server import Captured, serve_site

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ADMIN = "admin@example.com"
DESKTOP = {"width": 1440, "height": 1000}
PHONE = {"width": 375, "height": 812}


@dataclass
class Site:
    base: str
    db: Any
    front: Front
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions, any page
    # Per page, keyed by the page itself: an id() would be reused once a closed page is freed,
    # handing a new page the errors of an old one.
    console_errors: dict[Page, list[str]] = field(default_factory=dict)
    contexts: list[BrowserContext] = field(default_factory=list)

    def live_connections(self, view: str, email: str) -> list[Any]:
        return [c for c in self.front.app_state.connections
                if getattr(c, "view", None) is not None and c.view.name == view
                and c.view.user.email == email]


class MutableWire(BasicWire):
    """The protocol's frame writer, passing frames on until its socket is muted."""

    def __init__(self, wire: Any, muted: set[object], token: object) -> None:
        self._wire, self._muted, self._token = wire, muted, token

    @property
    def on_drain(self) -> Any:
        return self._wire.on_drain

    @on_drain.setter
    def on_drain(self, callback: Any) -> None:
        self._wire.on_drain = callback

    def frames_open(self) -> bool:
        return bool(self._wire.frames_open())

    def paused(self) -> bool:
        return bool(self._wire.paused())

    def abort(self) -> None:
        self._wire.abort()

    def write_frames(self, data: bytes) -> None:
        if self._token not in self._muted:  # else: lost on the way
            self._wire.write_frames(data)


class Front(Captured):
    """In front of the app: keeps the lifespan state (the dict every request sees), can
    refuse the pages' socket handshakes for a while, like a proxy that lost the backend, and
    can cut the pages' open sockets silently, like a network that died without a word."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.refuse_live = False
        self.refused = 0
        self._open: set[object] = set()
        self._muted: set[object] = set()

    def mute_live(self) -> int:
        """From now on nothing the server sends on the pages' open sockets arrives (the
        sockets stay open on both ends); sockets opened later are not affected."""
        self._muted |= self._open
        return len(self._open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope["state"]
        elif scope["type"] == "websocket" and scope["path"].startswith("/ws/live/"):
            if self.refuse_live:
                self.refused += 1
                await send({"type": "websocket.close", "code": 1013})  # before accept: 403
                return
            token = object()
            wires = scope.get("extensions", {}).get(WIRE_EXTENSION)
            if wires is not None:  # the frames the app writes straight to the socket
                wires["wire"] = MutableWire(wires["wire"], self._muted, token)

            async def maybe_send(message: Message) -> None:
                if token in self._muted and message["type"] == "websocket.send":
                    return  # lost on the way
                await send(message)

            self._open.add(token)
            try:
                await self.app(scope, receive, maybe_send)
            finally:
                self._open.discard(token)
                self._muted.discard(token)
            return
        await self.app(scope, receive, send)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(nx_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    front: Front | None = None

    def wrap(app: ASGIApp) -> ASGIApp:
        nonlocal front
        front = Front(app)
        return front

    # The tests write through their own client (``site.db``), which to the app is another
    # process: a quiet stream sees such a write within ``idle_poll_max_s`` (1 s by default, the
    # whole LIVE budget; the CI on 250232d caught a stock change still unshown after 1 s).
    # At 0.1 s the budget measures the delivery, as a write through the app itself would.
    async with serve_site(nx_uri, tmp_path_factory.mktemp("web"), wrap=wrap,
                          pipeline_enabled=True, payment_success_rate=1.0,
                          payment_latency_ms=(20, 60), heartbeat_s=1.0,
                          idle_poll_max_s=0.1) as (base, db):
        assert front is not None
        yield Site(base, db, front)


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def close_contexts(site: Site) -> AsyncIterator[None]:
    """Each test's browser contexts are closed after it."""
    yield
    for context in site.contexts:
        await context.close()
    site.contexts.clear()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


async def open_page(browser: Browser, site: Site, email: str, path: str, *,
                    viewport: dict[str, int] = DESKTOP, reduced_motion: bool = False) -> Page:
    """A new browser context signed in (one click, demo mode) and showing ``path`` live."""
    context = await browser.new_context(  # type: ignore[arg-type]
        viewport=viewport, reduced_motion="reduce" if reduced_motion else "no-preference")
    site.contexts.append(context)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    errors = site.console_errors.setdefault(page, [])
    page.on("console", lambda m: errors.append(f"{m.text} ({m.location.get('url')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: site.page_errors.append(f"{path}: {e}"))
    await page.goto(site.base + "/login")
    await page.locator(f"form[action='/login/demo']:has(input[value='{email}']) button").click()
    await page.wait_for_url(re.compile(r".*/(admin)?$"))
    if not page.url.endswith(path):
        await page.goto(site.base + path)
    await page.locator("#conn[data-state=connected]").wait_for()
    await page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
    return page


async def same_document(page: Page) -> bool:
    return bool(await page.evaluate("window.__sameDocument === true"))


async def in_stock_product(site: Site, minimum: int = 30) -> dict[str, Any]:
    product = await site.db.products.find_one({"stock": {"$gte": minimum}},
                                              sort=[("stock", -1), ("_id", 1)])
    assert product is not None
    return product  # type: ignore[no-any-return]


async def place_order(page: Page, product: dict[str, Any], quantity: int = 1) -> str:
    """Through the portal: add to cart, place the order; returns the new order's id."""
    card = page.locator("#" + dom_id("product", product["_id"]))
    await card.locator("input[name=quantity]").fill(str(quantity))
    await card.get_by_role("button", name=f"Add {product['name']} to cart").click()
    await expect(page.locator("#cart")).to_contain_text(f"{quantity} \u00d7 {product['name']}")
    await page.get_by_role("button", name="Place order").click()
    flash = page.locator("#cart .flash-ok")
    await expect(flash).to_contain_text("placed")
    match = re.search(r"ORD-[A-Z0-9]{8}", await flash.inner_text())
    assert match, await flash.inner_text()
    return match.group()
