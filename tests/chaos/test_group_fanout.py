"""500 viewers of one group beside restricted ones, under concurrent writes: a slow member,
one that reconnects mid-stream with ``resume_from``, customers on their own orders. Every
client ends equal to the database, with no duplicate, ``seq`` in order, and nobody sees
what its restriction excludes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from tests.support.server import serve_captured

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

VIEWERS = 500
CUSTOMERS = 4
STOCK_WRITES = 240
ORDERS_EACH = 6


@dataclass
class View:
    """One client's view of one subscription, built only from what it received."""

    stock: dict[str, int] = field(default_factory=dict)
    orders: dict[str, str] = field(default_factory=dict)  # id -> owner
    seqs: list[int] = field(default_factory=list)
    resyncs: int = 0
    last_seq: int = 0

    def apply(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "change":
            return
        self.seqs.append(msg["seq"])
        self.last_seq = msg["seq"]
        if msg["collection"] == "orders":
            if msg["op"] in ("insert", "replace", "enter"):
                self.orders[msg["key"]] = msg["doc"]["user_id"]
            return
        if msg["op"] in ("insert", "replace", "enter"):
            self.stock[msg["key"]] = msg["doc"]["stock"]
        elif msg["op"] == "update" and "stock" in msg["changes"]["set"]:
            self.stock[msg["key"]] = msg["changes"]["set"]["stock"]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


async def snapshot(http: httpx.AsyncClient) -> tuple[dict[str, int], int]:
    body = (await http.get("/api/products", params={"limit": 500})).json()
    return {p["_id"]: p["stock"] for p in body["items"]}, body["seq"]


async def products_viewer(base: str, start: dict[str, int], seq: int,
                          sock: socket.socket | None = None) -> tuple[ClientConnection, View]:
    ws = await connect(ws_url(base), origin=base, sock=sock, max_queue=None)  # type: ignore[arg-type]
    await ws.send(json.dumps({"op": "subscribe", "id": "p", "collection": "products",
                              "resume_from": seq}))
    view = View(stock=dict(start), last_seq=seq)
    return ws, view


async def follow(ws: ClientConnection, view: View | dict[str, View],
                 http: httpx.AsyncClient, base: str) -> None:
    """Apply what arrives; on ``resync``, reload the snapshot and subscribe again."""
    views = view if isinstance(view, dict) else None
    with contextlib.suppress(Exception):
        async for raw in ws:
            msg = json.loads(raw)
            target = views[msg.get("id", "")] if views is not None else view
            assert isinstance(target, View)
            if msg.get("type") == "resync":
                target.resyncs += 1
                target.stock, target.last_seq = await snapshot(http)
                target.seqs.append(-1)  # a new subscription starts its own seq order
                await ws.send(json.dumps({"op": "subscribe", "id": msg["id"],
                                          "collection": "products",
                                          "resume_from": target.last_seq}))
            else:
                target.apply(msg)


def in_order_without_duplicates(seqs: list[int]) -> bool:
    runs: list[list[int]] = [[]]
    for seq in seqs:
        if seq == -1:
            runs.append([])
        else:
            runs[-1].append(seq)
    return all(all(a < b for a, b in itertools.pairwise(run)) for run in runs)


async def login(base: str, email: str, password: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, timeout=30, headers={"Origin": base})
    response = await client.post("/api/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return client


async def test_a_group_of_500_with_a_slow_a_resuming_and_restricted_members_converges(
    nx_uri: str, tmp_path: Path
) -> None:
    async with serve_captured(nx_uri, tmp_path, pipeline_enabled=False,
                              max_connections_per_client=10_000) as (base, db, front):
        admin = await login(base, "admin@example.com", DEFAULT_ADMIN_PASSWORD)
        start, seq = await snapshot(admin)
        products = sorted(start)[:30]
        viewers = []
        for n in range(0, VIEWERS, 100):
            viewers.extend(await asyncio.gather(*(products_viewer(base, start, seq)
                                                  for _ in range(n, min(VIEWERS, n + 100)))))
        # The slow member: a tiny receive buffer, 32 subscriptions (all in the group), and
        # nobody reading it until the server has had to hold frames back for it.
        slow_sock = socket.socket()
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        slow_ws = await connect(ws_url(base), origin=base, sock=slow_sock, max_queue=1)  # type: ignore[arg-type]
        slow_views = {f"s{n}": View(stock=dict(start), last_seq=seq) for n in range(32)}
        for sub_id in slow_views:
            await slow_ws.send(json.dumps({"op": "subscribe", "id": sub_id,
                                           "collection": "products", "resume_from": seq}))
        # Customers on their own orders (restricted), beside the group.
        customers = [await login(base, f"customer0{n + 1}@example.com", DEFAULT_DEMO_PASSWORD)
                     for n in range(CUSTOMERS)]
        me = [(await c.get("/api/me")).json()["user"]["id"] for c in customers]
        customer_ws: list[tuple[ClientConnection, View]] = []
        for client in customers:
            ws = await connect(ws_url(base), origin=base,  # type: ignore[arg-type]
                               additional_headers={"Cookie": "; ".join(
                                   f"{k}={v}" for k, v in client.cookies.items())})
            await ws.send(json.dumps({"op": "subscribe", "id": "o", "collection": "orders"}))
            customer_ws.append((ws, View()))
        seeded = {o["_id"] async for o in db.orders.find({}, {"_id": 1})}
        followers = [asyncio.create_task(follow(ws, view, admin, base))
                     for ws, view in (*viewers, *customer_ws)]
        assert front.app_state.engine.stats().largest_group >= VIEWERS

        engine = front.app_state.engine

        async def stock_writer(k: int) -> None:
            n = k
            # At least STOCK_WRITES, and on until the slow member has made the server hold
            # frames back for it (its kernel buffers are full).
            while n < STOCK_WRITES or (engine.stats().metrics.queue_depth_max == 0 and n < 20_000):
                response = await admin.put(f"/api/products/{products[n % len(products)]}/stock",
                                           json={"stock": 1000 + n})
                assert response.status_code == 200, response.text
                n += 4

        async def orders_of(client: httpx.AsyncClient) -> None:
            for _ in range(ORDERS_EACH):
                response = await client.post("/api/orders", json={"items": [
                    {"product_id": products[0], "quantity": 1}]})
                assert response.status_code == 201, response.text

        async def reconnecting() -> None:
            # Mid-stream: one member hangs up and comes back from the last seq it applied.
            ws, view = viewers[7]
            while len(view.seqs) < 40:
                await asyncio.sleep(0.01)
            followers[7].cancel()
            await ws.close()
            again, _ = await products_viewer(base, {}, view.last_seq)
            viewers[7] = (again, view)
            followers[7] = asyncio.create_task(follow(again, view, admin, base))

        await asyncio.gather(*(stock_writer(k) for k in range(4)),
                             *(orders_of(c) for c in customers), reconnecting())
        assert engine.stats().metrics.queue_depth_max > 0  # it was held back
        slow_task = asyncio.create_task(follow(slow_ws, slow_views, admin, base))

        truth = {p["_id"]: p["stock"] async for p in db.products.find({}, {"stock": 1})}
        owners = {o["_id"]: o["user_id"] async for o in db.orders.find({}, {"user_id": 1})
                  if o["_id"] not in seeded}
        everyone = [*(v for _, v in viewers), *slow_views.values()]
        def behind() -> str:
            stale = [n for n, v in enumerate(everyone) if v.stock != truth]
            orders = [n for n, (_, view) in enumerate(customer_ws)
                      if set(view.orders) != {k for k, u in owners.items() if u == me[n]}]
            if not stale and not orders:
                return ""
            first = everyone[stale[0]] if stale else None
            wrong = {k: (first.stock.get(k), v) for k, v in truth.items()
                     if first.stock.get(k) != v} if first else {}
            return (f"{len(stale)} product views behind (first {stale[:3]}: {list(wrong.items())[:3]}, "
                    f"resyncs {first.resyncs if first else None}); order views behind {orders}")

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                while behind():
                    await asyncio.sleep(0.05)
        assert not behind(), behind()
        for view in everyone:
            assert in_order_without_duplicates(view.seqs)
        for n, (_, view) in enumerate(customer_ws):
            assert set(view.orders.values()) == {me[n]}  # nobody else's order, ever
            assert len(view.orders) == ORDERS_EACH
            assert in_order_without_duplicates(view.seqs)
        stats = engine.stats().metrics
        print("slow member: backlog max", stats.queue_depth_max, "cut-offs", stats.cutoffs,
              "resyncs", sum(v.resyncs for v in slow_views.values()))
        assert viewers[7][1].resyncs == 0  # resumed from its seq: replayed, not reloaded
        for task in (*followers, slow_task):
            task.cancel()
        for ws, _ in (*viewers, *customer_ws, (slow_ws, None)):
            with contextlib.suppress(Exception):
                await ws.close()
        for client in (admin, *customers):
            await client.aclose()
