"""A client that stops reading: its queue stays bounded, it is cut off with a resync reason,
and everybody else's latency does not suffer for it."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from loadtest.runner import percentile, stock_key
from tests.support.server import serve_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WATCHERS = 10
RATE = 60  # stock writes per second while latency is measured
SECONDS = 4
PAIRS = 5


def p99(values: list[float]) -> float:
    value = percentile(values, 99)
    assert value is not None, "no delivery was measured"
    return value


async def watcher(base: str) -> tuple[ClientConnection, dict[str, float]]:
    ws = await connect(base.replace("http://", "ws://") + "/ws", origin=base)  # type: ignore[arg-type]
    await ws.send(json.dumps({"op": "subscribe", "id": "p", "collection": "products"}))
    await ws.recv()
    return ws, {}


async def listen(ws: ClientConnection, seen: dict[str, float]) -> None:
    async for raw in ws:
        key = stock_key(json.loads(raw))
        if key is not None:
            seen.setdefault(key, time.perf_counter())


async def slow_reader(base: str) -> ClientConnection:
    """32 subscriptions to products on one socket with a tiny receive buffer, never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    ws = await connect(base.replace("http://", "ws://") + "/ws", origin=base,  # type: ignore[arg-type]
                       sock=sock, max_queue=1)
    for n in range(32):
        await ws.send(json.dumps({"op": "subscribe", "id": f"s{n}", "collection": "products"}))
    return ws


async def one_run(base: str, admin: httpx.AsyncClient, products: list[str], offset: int,
                  *, with_slow: bool) -> tuple[list[float], ClientConnection | None]:
    slow = None
    if with_slow:
        # First fill the kernel's buffers on both sides until the server has to queue for
        # it: from then on it is a client that does not read.
        slow = await slow_reader(base)
        async with asyncio.timeout(60):
            n = 0
            while (await admin.get("/api/metrics")).json()["queued"] < 100:
                await asyncio.gather(*(admin.put(f"/api/products/{p}/stock",
                                                 json={"stock": offset + n + k})
                                       for k, p in enumerate(products[:16])))
                n += 16
        # The fill's changes may still be on their way (the stream's read, the fan-out):
        # measuring now would time them, not the slow client. One more write, seen by a
        # fresh watcher, comes after all of them (changes reach a socket in seq order).
        probe, probe_seen = await watcher(base)
        listening = asyncio.create_task(listen(probe, probe_seen))
        marker = offset + 99_999
        assert (await admin.put(f"/api/products/{products[0]}/stock",
                                json={"stock": marker})).status_code == 200
        async with asyncio.timeout(30):
            while f"{products[0]}={marker}" not in probe_seen:
                await asyncio.sleep(0.01)
        listening.cancel()
        await probe.close()
        offset += 100_000
    clients = [await watcher(base) for _ in range(WATCHERS)]
    tasks = [asyncio.create_task(listen(ws, seen)) for ws, seen in clients]
    sent: dict[str, float] = {}

    async def write(n: int) -> None:
        product = products[n % len(products)]
        at = time.perf_counter()
        response = await admin.put(f"/api/products/{product}/stock",
                                   json={"stock": offset + n})
        if response.status_code == 200:
            sent[f"{product}={offset + n}"] = at

    writes = []
    started = time.perf_counter()
    for n in range(RATE * SECONDS):
        await asyncio.sleep(max(0.0, started + n / RATE - time.perf_counter()))
        writes.append(asyncio.create_task(write(n)))
    await asyncio.gather(*writes)
    async with asyncio.timeout(10):
        while any(len([k for k in sent if k in seen]) < len(sent) for _, seen in clients):
            await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    for ws, _ in clients:
        await ws.close()
    latencies = [(seen[key] - at) * 1000 for key, at in sent.items() for _, seen in clients]
    return latencies, slow


async def test_a_client_that_stops_reading_is_cut_off_and_slows_nobody(
    nx_uri: str, tmp_path: Path
) -> None:
    async with serve_site(nx_uri, tmp_path, pipeline_enabled=False) as (base, _), \
            httpx.AsyncClient(base_url=base, timeout=10) as admin:
        login = await admin.post("/api/login", json={"email": "admin@example.com",
                                                     "password": DEFAULT_ADMIN_PASSWORD})
        assert login.status_code == 200
        products = [p["_id"] for p in
                    (await admin.get("/api/products", params={"limit": 500})).json()["items"]]
        # Alternating pairs on a shared, noisy machine: the medians of the p99s are compared.
        # (Three pairs were once not enough: CI saw the machine stall for seconds, once in
        # an alone run (p99 215 ms) and twice in crowded ones, 113 and 64 ms against 14.)
        alone_p99, crowded_p99, reasons = [], [], []
        for pair in range(PAIRS):
            alone, _ = await one_run(base, admin, products, 1_000_000 * pair + 1_000,
                                     with_slow=False)
            crowded, slow = await one_run(base, admin, products, 1_000_000 * pair + 5_000,
                                          with_slow=True)
            assert slow is not None
            alone_p99.append(p99(alone))
            crowded_p99.append(p99(crowded))
            # Now the slow client reads what it was sent: a resync per subscription, saying why.
            said = []
            async with asyncio.timeout(15):
                async for raw in slow:
                    msg = json.loads(raw)
                    if msg.get("type") == "resync":
                        said.append(msg["reason"])
                        if len(said) == 32:
                            break
            reasons.extend(said)
            await slow.close()
        metrics: dict[str, Any] = (await admin.get("/api/metrics")).json()
    assert metrics["cutoffs"] == PAIRS and metrics["dropped"] > 0  # each slow client, once
    assert metrics["queue_depth_max"] <= 1_000  # the queue bound held
    assert len(reasons) == PAIRS * 32 and all("slow consumer" in reason for reason in reasons)
    p99_alone, p99_crowded = statistics.median(alone_p99), statistics.median(crowded_p99)
    print(f"p99 without the slow client {alone_p99} ms, with it {crowded_p99} ms; medians "
          f"{p99_alone:.1f} / {p99_crowded:.1f} ms, ratio {p99_crowded / p99_alone:.2f}")
    assert p99_crowded <= 2 * max(p99_alone, 5.0), (alone_p99, crowded_p99)
