"""``/ws/live/{view}``: the pages' socket. It speaks HTML for htmx's WebSocket extension.

Each frame is a run of out-of-band fragments (``backend/fragments.py``) plus
the ``#cc-seq`` marker: the page remembers the last ``seq`` it applied and
reconnects with ``?resume_from=`` so missed changes are replayed; when they
cannot be, the hub says ``resync`` and this socket re-renders the fragments
of that collection from the database instead.

The JSON contract of ``/ws`` is untouched; both ride on the same hub.

Close codes: 1008 for a page the user may not see (the extension does not
retry it), 1012 when the server stops (it retries), 1003 for a bad request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from typing import Any

from starlette.websockets import WebSocket

from backend.web.http.auth import current_user
from backend.web.live.frames import SocketOutlet, Wire, text_frame, wire_of
from backend.web.live.session import Session
from backend.web.pages.fragments import Fragments
from backend.web.pages.templates import make_fragments
from backend.web.pages.views import (
    VIEWS,
    DashboardView,
    Sub,
    View,
    search_params,
    status_filter,
    system_figures,
)
from backend.web.state import app_state
from streaming import Batch, Delivery, Subscriber, Subscription

logger = logging.getLogger("changecast.live")

MAX_CLIENT_MESSAGE = 4 * 1024
SYSTEM_EVERY_S = 1.0
KPI_MIN_INTERVAL_S = 0.2
TREND_EVERY_S = 15.0


def coalesced(deliveries: list[Delivery]) -> list[Delivery]:
    """Only the latest state of each document matters to a page: one delivery per key,
    keeping how the document first appeared in the batch (an insert then updates is still
    an insert, with the latest document)."""
    latest: dict[Any, Delivery] = {}
    for delivery in deliveries:
        event = delivery.event
        if event is None:
            continue
        key = (event.collection, event.key)
        first = latest.pop(key, None)
        if first is not None and first.op in ("insert", "enter") \
                and delivery.op in ("update", "replace"):
            delivery = Delivery("", first.op, event, doc=event.doc)
        latest[key] = delivery
    return list(latest.values())


_NO_KEY = object()


@functools.lru_cache(maxsize=256)
def _frame_key(view: str, sub_id: str) -> tuple[str, str]:
    # One tuple per (page kind, subscription id): members of one kind are told apart from
    # the next by identity in ``deliver_each``.
    return (view, sub_id)


class PageOutlet(SocketOutlet):
    """A page's frames: per group batch, one HTML frame of fragments rendered once for
    every page of the same kind; then the ``cc-seq`` marker. Re-reads (``resync``,
    ``reload``) need the database, so they are queued for the connection's task, and what
    arrives meanwhile waits behind them.

    What is shared, and why that is safe: a batch belongs to one subscription group, whose
    key holds the collection, the ``where`` and the restriction, so a customer's own orders
    and notifications (restricted to their user id) are a group of their own and their
    fragments are rendered for that customer's pages alone. ``View.render`` reads nothing
    but the delivery and the engine's cache (no user, no session, no search: the search is
    the group's ``where``), so a frame is a function of (group's batch, kind of page,
    subscription id, seq) and one rendering serves every member with that key: the product
    cards all portal pages show, the admins' order rows and presence. The cart lives in
    the browser's own form posts and is never in a pushed frame.
    (``tests/backend/test_pages_live.py`` checks two customers' frames.)"""

    def __init__(self, wire: Wire, view: View) -> None:
        super().__init__(wire)
        self.view = view
        self.fragments: Fragments = view.fragments
        self.requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._marker: tuple[int, bytes] = (-1, b"")

    def marker(self, seq: int) -> bytes:
        if self._marker[0] != seq:
            self._marker = (seq, text_frame(self.fragments.seq(seq).encode()))
        return self._marker[1]

    def _key(self, sub: Subscription) -> tuple[str, str]:
        key: tuple[str, str] | None = sub.context
        if key is None:
            key = sub.context = _frame_key(self.view.name, sub.id)
        return key

    def _fragments(self, batch: Batch, key: tuple[str, str]) -> bytes:
        """The batch's fragments for subscription ``key[1]`` on this kind of page, rendered
        once for all of them."""
        html: bytes | None = batch.encoded.get(key)
        if html is None:
            parts = [part for d in coalesced(batch.deliveries)
                     for part in self.view.render(d.for_subscription(key[1]))]
            html = batch.encoded[key] = "".join(parts).encode()
        return html

    def _frame(self, batch: Batch, key: tuple[str, str], seq: int) -> bytes:
        """The fragments and the marker in one frame, built once per key and pass (b"" when
        the batch shows nothing on this kind of page)."""
        frames: dict[tuple[str, str], bytes] | None = batch.encoded.get(seq)
        if frames is None:
            frames = batch.encoded[seq] = {}
        frame = frames.get(key)
        if frame is None:
            html = self._fragments(batch, key)
            frame = frames[key] = \
                text_frame(html + self.fragments.seq(seq).encode()) if html else b""
        return frame

    @staticmethod
    def deliver_each(subs: list[Subscription], batch: Batch, seq: int) -> int:
        """A group's whole batch to each of its page members: the frame is looked up once
        per kind of page and subscription id, and a member whose wire takes it at once
        costs one write (as ``JsonOutlet.deliver_each``)."""
        size = batch.size
        delivered = len(subs)
        key: object = _NO_KEY
        frame = b""
        for sub in subs:
            if not sub.active:
                delivered -= 1
                continue
            outlet: PageOutlet = sub.outlet  # type: ignore[assignment]
            if sub.context is not key:
                key = sub.context or outlet._key(sub)
                frame = outlet._frame(batch, key, seq)
            if frame and (outlet._backlog or not outlet.try_write(frame)):
                outlet.write(frame, size)
        return delivered

    def deliver(self, items: list[tuple[Subscription, Batch]], seq: int) -> None:
        """One frame: the fragments, then the marker (the contract's frame shape)."""
        live = [(sub, batch) for sub, batch in items if sub.active]
        if len(live) == 1:
            sub, batch = live[0]
            self.write(self._frame(batch, self._key(sub), seq), len(batch))
        elif live:
            html = b"".join(self._fragments(batch, self._key(sub)) for sub, batch in live)
            if html:
                self.write(text_frame(html + self.fragments.seq(seq).encode()),
                           sum(len(batch) for _, batch in live))

    def control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "caught_up":
            self.write(self.marker(int(message["seq"])))
        elif kind == "database":
            self.write(text_frame(self.fragments.database(bool(message["reachable"])).encode()))
        elif kind == "toast":
            fragment = self.fragments.toast(str(message["message"]), str(message.get("kind", "info")))
            self.write(text_frame(fragment.encode()))
        elif kind in ("resync", "reload"):
            self.hold()
            self.requests.put_nowait(message)


class LiveConnection(Session):
    """One page's socket: subscriptions from its view, frames of fragments out."""

    def __init__(self, websocket: WebSocket, view: View, subscriber: Subscriber,
                 outlet: PageOutlet | None) -> None:
        super().__init__(websocket, subscriber, view.user)
        self.view = view
        self.fragments = view.fragments
        self.outlet = outlet
        self.subs: dict[str, Sub] = {}
        self.presence: tuple[str, str] | None = None  # (document, connection) on the console

    def subscribe_all(self, resume_from: int | None) -> None:
        for sub in self.view.subscriptions():
            self._subscribe(sub, resume_from)
        self._caught_up()

    def _subscribe(self, sub: Sub, resume_from: int | None) -> None:
        self.subs[sub.id] = sub
        self.subscriber.subscribe(sub.id, sub.collection, where=sub.where,
                                  restriction=sub.restriction, resume_from=resume_from)

    def _caught_up(self) -> None:
        # Everything written before this marker is what the page needs to reach this seq.
        self.subscriber.send_control({"type": "caught_up", "seq": self.engine.settled_seq})

    # ---- client → server -------------------------------------------------------------------

    async def _handle(self, raw: str) -> None:
        """A page's filters arrive here (htmx ``ws-send`` of a filter form): the admin's
        order status, or a product search (``q``, ``category``) on the portal's grid and
        the admin's inventory; and from the console, which order it shows (``viewing``)."""
        try:
            if len(raw) > MAX_CLIENT_MESSAGE:
                raise ValueError(f"messages are limited to {MAX_CLIENT_MESSAGE} bytes")
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
            if "viewing" in message and self.presence is not None:
                viewing = message["viewing"]
                if viewing is not None and (not isinstance(viewing, str) or len(viewing) > 64):
                    raise ValueError("viewing must be an order id or null")
                await self.state.presence.look_at(*self.presence, viewing)
                return
            if "status" in message and self.view.name == "admin":
                self.view.params["status"] = status_filter(str(message["status"])) or ""
                sub_id = "orders"
            elif ("q" in message or "category" in message) and self.view.name != "dashboard":
                self.view.params.update(search_params(message.get("q"), message.get("category")))
                sub_id = "products" if self.view.name == "portal" else "inventory"
            else:
                raise ValueError("this page accepts only its filters")
        except (ValueError, RecursionError) as exc:
            self.subscriber.send_control({"type": "toast", "kind": "error",
                                          "message": f"Not understood: {exc}"})
            return
        self.subscriber.unsubscribe(sub_id)
        replacement = next(s for s in self.view.subscriptions() if s.id == sub_id)
        self._subscribe(replacement, None)
        self.subscriber.send_control({"type": "reload", "id": sub_id})
        self._caught_up()

    # ---- server → client -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """Changes are pushed by the hub; this task does what needs the database."""
        if self.outlet is None:  # the dashboard: no subscriptions, its own loop
            await self._dashboard_loop()
            return
        outlet = self.outlet
        while True:
            # Every re-read asked for so far, in one frame (a page resyncing after a long
            # absence reloads its three collections at once).
            messages = [await outlet.requests.get()]
            while not outlet.requests.empty():
                messages.append(outlet.requests.get_nowait())
            parts: list[str] = []
            for message in messages:
                if message.get("type") == "resync":
                    parts.extend(await self._resync(str(message["id"])))
                else:
                    parts.extend(await self.view.reload(str(message["id"])))
            outlet.release(text_frame("".join(parts).encode()) if parts else b"")
            for _ in messages[1:]:
                outlet.release(b"")

    def _tell_database(self) -> None:
        # In order with the changes: a control message, as the page's other news.
        self.subscriber.send_control({"type": "database",
                                      "reachable": self.state.reachability.reachable})

    async def _watch(self) -> None:
        """The heartbeat, the database's reachability, and the end when the engine stops."""
        reachability = self.state.reachability
        version = reachability.version
        if not reachability.reachable:
            self._tell_database()  # the page was rendered before, from what it had
        if self.outlet is None:  # the dashboard's own loop hears the engine stop
            while True:
                version = await reachability.changed(version)
                self._tell_database()
        closed = asyncio.ensure_future(self.subscriber.get_batch())
        flipped = asyncio.ensure_future(reachability.changed(version))
        heartbeat = self.state.settings.heartbeat_s
        try:
            while True:
                done, _ = await asyncio.wait({closed, flipped}, timeout=heartbeat,
                                             return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    await self._close_for_restart()
                    return
                if flipped in done:
                    self._tell_database()
                    flipped = asyncio.ensure_future(reachability.changed(flipped.result()))
                elif self.outlet.idle:
                    # A quiet page hears that it is current as of a seq every member has
                    # been handed, so that it can tell a quiet socket from a dead network.
                    self.outlet.write(self.outlet.marker(self.engine.settled_seq))
        finally:
            closed.cancel()
            flipped.cancel()

    async def _resync(self, sub_id: str) -> list[str]:
        """The hub could not replay: subscribe afresh, then re-render from the database."""
        sub = self.subs.get(sub_id)
        if sub is None:
            return []
        logger.info("page %s resyncs %s", self.view.name, sub.collection)
        self._subscribe(sub, None)
        self._caught_up()
        return await self.view.reload(sub.id)

    async def _dashboard_loop(self) -> None:
        """KPIs when the analytics change (at most 5/s), the system panel every second."""
        view = self.view
        if not isinstance(view, DashboardView):
            raise TypeError(f"expected the dashboard view, got {view.name!r}")
        analytics = self.state.analytics
        closed = asyncio.ensure_future(self.subscriber.get_batch())
        version = analytics.version
        previous = system_figures(self.state, None)
        next_system = time.monotonic()
        next_trend = time.monotonic() + TREND_EVERY_S
        await self._send([self.fragments.kpis(view.figures(), {"oob": "true"})])
        try:
            while True:
                changed = asyncio.ensure_future(analytics.changed(version))
                timeout = max(0.0, next_system - time.monotonic())
                done, _ = await asyncio.wait({changed, closed}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                parts: list[str] = []
                if closed in done:
                    controls = closed.result()
                    if not controls:  # the engine is stopping
                        await self._close_for_restart()
                        return
                    for d in controls:
                        message = d.message or {}
                        if message.get("type") == "toast":
                            parts.append(self.fragments.toast(str(message["message"]), "error"))
                        elif message.get("type") == "database":
                            parts.append(self.fragments.database(bool(message["reachable"])))
                    closed = asyncio.ensure_future(self.subscriber.get_batch())
                now = time.monotonic()
                if analytics.version != version or now >= next_trend:
                    version = analytics.version
                    next_trend = now + TREND_EVERY_S
                    parts.append(self.fragments.kpis(view.figures(), {"oob": "true"}))
                if now >= next_system:
                    current = system_figures(self.state, previous)
                    previous = current
                    next_system = now + SYSTEM_EVERY_S
                    parts.append(self.fragments.system(current, {"oob": "true"}))
                await self._send(parts)
                # Coalesce bursts: one KPI frame per interval however many orders changed.
                await asyncio.sleep(KPI_MIN_INTERVAL_S)
        finally:
            closed.cancel()

    async def _send(self, parts: list[str]) -> None:
        if parts:
            await self.websocket.send_text("".join(parts))

    async def _close_for_restart(self) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code=1012, reason="server restarting")


def _resume_from(websocket: WebSocket) -> int | None:
    value = websocket.query_params.get("resume_from")
    if value in (None, ""):
        return None
    number = int(value)  # ValueError is handled by the caller
    if number < 0:
        raise ValueError("resume_from must be >= 0")
    return number


async def live_endpoint(websocket: WebSocket) -> None:
    """Accept, check the page and the user, then stream fragments until either side stops."""
    view_cls = VIEWS.get(websocket.path_params["view"])
    user = await current_user(websocket)
    await websocket.accept()
    if view_cls is None:
        await websocket.close(code=1008, reason="no such page")
        return
    if user is None or not view_cls.allows(user):
        reason = "sign in first" if user is None else "admins only"
        await websocket.close(code=1008, reason=reason)
        return
    state = app_state(websocket)
    try:
        resume_from = _resume_from(websocket)
        query = websocket.query_params
        params = {"status": status_filter(query.get("status")) or "",
                  **search_params(query.get("q"), query.get("category"))}
    except ValueError as exc:
        await websocket.close(code=1003, reason=str(exc)[:120])
        return
    view = view_cls(state, user, make_fragments(state), params)
    outlet = None if isinstance(view, DashboardView) else PageOutlet(wire_of(websocket), view)
    subscriber = state.engine.subscriber(outlet=outlet)
    if outlet is not None:
        outlet.attach(subscriber)
    connection = LiveConnection(websocket, view, subscriber, outlet)
    connection.subscribe_all(resume_from)
    state.connections.add(connection)
    if view.name == "admin":  # the console says who else has it open
        connection.presence = await state.presence.join(user, websocket.query_params.get("tab"))
    try:
        await connection.run()
    finally:
        state.connections.discard(connection)
        if connection.presence is not None:
            await state.presence.leave(*connection.presence)
