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
import json
import logging
import time

from starlette.websockets import WebSocket

from backend.web.http.auth import current_user
from backend.web.live.session import Session
from backend.web.pages.templates import make_fragments
from backend.web.pages.views import VIEWS, DashboardView, Sub, View, status_filter, system_figures
from backend.web.state import app_state
from streaming import Subscriber

logger = logging.getLogger("changecast.live")

MAX_CLIENT_MESSAGE = 4 * 1024
SYSTEM_EVERY_S = 1.0
KPI_MIN_INTERVAL_S = 0.2
TREND_EVERY_S = 15.0


class LiveConnection(Session):
    """One page's socket: subscriptions from its view, frames of fragments out."""

    def __init__(self, websocket: WebSocket, view: View, subscriber: Subscriber) -> None:
        super().__init__(websocket, subscriber, view.user)
        self.view = view
        self.fragments = view.fragments
        self.renders = self.state.renders
        self.subs: dict[str, Sub] = {}

    def subscribe_all(self, resume_from: int | None) -> None:
        for sub in self.view.subscriptions():
            self._subscribe(sub, resume_from)
        self._caught_up()

    def _subscribe(self, sub: Sub, resume_from: int | None) -> None:
        self.subs[sub.id] = sub
        self.subscriber.subscribe(sub.id, sub.collection, where=sub.where,
                                  restriction=sub.restriction, resume_from=resume_from)

    def _caught_up(self) -> None:
        # Everything queued before this marker is what the page needs to reach this seq.
        self.subscriber.send_control({"type": "caught_up", "seq": self.engine.seq})

    # ---- client → server -------------------------------------------------------------------

    async def _handle(self, raw: str) -> None:
        """The admin's status filter arrives here (htmx ``ws-send`` of the filter form)."""
        try:
            if len(raw) > MAX_CLIENT_MESSAGE:
                raise ValueError(f"messages are limited to {MAX_CLIENT_MESSAGE} bytes")
            message = json.loads(raw)
            if not isinstance(message, dict) or "status" not in message \
                    or "orders" not in self.subs or self.view.name != "admin":
                raise ValueError("this page accepts only a status filter")
            status = status_filter(str(message["status"]))
        except (ValueError, RecursionError) as exc:
            self.subscriber.send_control({"type": "toast", "kind": "error",
                                          "message": f"Not understood: {exc}"})
            return
        self.view.params["status"] = status or ""
        self.subscriber.unsubscribe("orders")
        replacement = next(s for s in self.view.subscriptions() if s.id == "orders")
        self._subscribe(replacement, None)
        self.subscriber.send_control({"type": "reload", "collection": "orders"})
        self._caught_up()

    # ---- server → client -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        if isinstance(self.view, DashboardView):
            await self._dashboard_loop()
            return
        heartbeat = self.state.settings.heartbeat_s
        while True:
            try:
                batch = await asyncio.wait_for(self.subscriber.get_batch(), heartbeat)
            except TimeoutError:
                # Nothing for this page for a while: say so, so that it can tell a quiet
                # socket from a dead network. The page is current as of the engine's seq
                # only while nothing is queued for it (a change may have arrived meanwhile:
                # then the loop sends it, with its own marker, first).
                if not len(self.subscriber):
                    await self.websocket.send_text(self.fragments.seq(self.engine.seq))
                continue
            if not batch:
                await self._close_for_restart()
                return
            parts: list[str] = []
            seq: int | None = None
            now = time.time() * 1000
            for delivery in batch:
                message = delivery.message
                if message is None:
                    parts.extend(self.renders.render(self.view, delivery))
                    if delivery.event is not None:
                        seq = delivery.event.seq
                        self.engine.observe_delivery(delivery.event.at, now)
                    continue
                kind = message.get("type")
                if kind == "caught_up":
                    seq = max(seq or 0, int(message["seq"]))
                elif kind == "resync":
                    parts.extend(await self._resync(str(message["id"])))
                elif kind == "reload":
                    parts.extend(await self.view.reload(str(message["collection"])))
                elif kind == "toast":
                    parts.append(self.fragments.toast(str(message["message"]),
                                                      str(message.get("kind", "info"))))
            if seq is not None:
                parts.append(self.fragments.seq(seq))
            if parts:
                await self.websocket.send_text("".join(parts))

    async def _resync(self, sub_id: str) -> list[str]:
        """The hub could not replay: subscribe afresh, then re-render from the database."""
        sub = self.subs.get(sub_id)
        if sub is None:
            return []
        logger.info("page %s resyncs %s", self.view.name, sub.collection)
        self._subscribe(sub, None)
        self._caught_up()
        return await self.view.reload(sub.collection)

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
                    parts.extend(self.fragments.toast(str(d.message["message"]), "error")
                                 for d in controls if d.message and d.message.get("type") == "toast")
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
        params = {"status": status_filter(websocket.query_params.get("status")) or ""}
    except ValueError as exc:
        await websocket.close(code=1003, reason=str(exc)[:120])
        return
    view = view_cls(state, user, make_fragments(state), params)
    subscriber = state.engine.subscriber()
    connection = LiveConnection(websocket, view, subscriber)
    connection.subscribe_all(resume_from)
    state.connections.add(connection)
    try:
        await connection.run()
    finally:
        state.connections.discard(connection)
