"""Both clients (Python in-process, JavaScript under Node) watch products through a real
``changecast serve`` while the test restarts it, kills it -9, stops its database, and cuts
or stalls the client's network (a proxy). After each: the view is exactly what the server
lists, no change reached the application twice, and where the server still had the history
(network faults) every single write reached it, in order, with no reload."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from tests.clients.drivers import DRIVERS, Driver
from tests.conftest import free_port, start_nx
from tests.support.instance import AppProcess, app_env
from tests.support.proxy import Proxy

pytestmark = [
    pytest.mark.embedded_only(reason="it stops and restarts its own database server"),
    pytest.mark.integration,
    pytest.mark.timeout(150),
]

ADMIN = ("admin@example.com", DEFAULT_ADMIN_PASSWORD)
PRODUCT = "SKU-BOO-001"


async def set_stock(app: AppProcess, values: range, written: list[int]) -> None:
    """Set the product's stock to each value in turn (again after a 503: the database may be
    coming back); ``written`` gets each value the server acknowledged."""
    for value in values:
        for _ in range(200):
            status, _ = await asyncio.to_thread(app.request, "PUT",
                                                f"/api/products/{PRODUCT}/stock", {"stock": value})
            if status == 200:
                written.append(value)
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the server never took stock={value}")


def stocks_seen(log: list[list[Any]]) -> list[int]:
    return [e[4] for e in log if e[0] == "change" and e[2] == PRODUCT and e[4] is not None]


async def until(driver: Driver, done: Callable[[list[list[Any]]], bool],
                timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            state = await driver.state()
            if done(state["log"]):
                return state
            await asyncio.sleep(0.05)


async def until_seen(driver: Driver, count: int) -> dict[str, Any]:
    return await until(driver, lambda log: len(stocks_seen(log)) >= count)


async def listing(app: AppProcess) -> dict[str, Any]:
    status, body = await asyncio.to_thread(app.request, "GET", "/api/products?limit=500")
    assert status == 200 and body["next_cursor"] is None
    return {doc["_id"]: doc for doc in body["items"]}


async def converged(driver: Driver, app: AppProcess, timeout: float = 30) -> dict[str, Any]:
    """Wait until the client's view is exactly what the server lists now."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state, truth = await driver.state(), await listing(app)
        if state["view"] == truth or loop.time() > deadline:
            wrong = {k for k in set(state["view"]) | set(truth)
                     if state["view"].get(k) != truth.get(k)}
            assert not wrong, (sorted(wrong)[:3], state["log"][-10:])
            return state
        await asyncio.sleep(0.1)


def assert_no_repeats(log: list[list[Any]]) -> None:
    """Each change's seq is above the one before it (a snapshot starts afresh)."""
    last = None
    for kind, seq, *_ in log:
        if kind == "snapshot":
            last = seq
        elif kind == "change":
            assert last is None or seq > last, f"change {seq} after {last}: delivered twice"
            last = seq


def kinds(log: list[list[Any]]) -> list[str]:
    return [e[0] if e[0] != "status" else f"status:{e[3]}" for e in log]


@pytest.mark.parametrize("fault", ["restart", "kill9", "database", "cut", "stall"])
@pytest.mark.parametrize("client", ["python", "js"])
async def test_the_view_stays_exact_and_nothing_repeats_or_goes_missing(
    client: str, fault: str, tmp_path: Path
) -> None:
    nx_port = free_port()
    nx = start_nx(tmp_path / "nx", nx_port)
    env = app_env(MONGODB_URI=f"mongodb://127.0.0.1:{nx_port}/?directConnection=true",
                  CHANGECAST_DB="clients", CHANGECAST_PIPELINE="off")
    app = await asyncio.to_thread(AppProcess, env, tmp_path)
    proxy = await Proxy(app.port).start()
    driver: Driver = DRIVERS[client]()
    written: list[int] = []
    try:
        ready = await driver.start(proxy.base, "products", ADMIN, heartbeat_s=0.5)
        assert ready == {"ready": True}, ready
        await set_stock(app, range(1001, 1011), written)
        await until_seen(driver, len(written))
        if fault == "cut":
            assert proxy.cut() >= 1
            await set_stock(app, range(1011, 1021), written)  # while the client is away
        elif fault == "stall":
            assert proxy.stall() >= 1
            await set_stock(app, range(1011, 1021), written)  # the client hears nothing
        elif fault in ("restart", "kill9"):
            await asyncio.to_thread(app.stop, signal.SIGTERM if fault == "restart" else signal.SIGKILL)
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["MONGODB_URI"])
            await mongo["clients"].products.update_one({"_id": PRODUCT}, {"$set": {"stock": 5555}})
            await mongo.close()
            await asyncio.to_thread(app.start)
            await until(driver, lambda log: "resync-end" in kinds(log))  # live again
        else:
            nx.send_signal(signal.SIGKILL)
            nx.wait()
            await asyncio.sleep(1.0)  # the server notices the database is gone
            nx = start_nx(tmp_path / "nx", nx_port)
        await set_stock(app, range(1021, 1031), written)
        state = await converged(driver, app)
        if fault in ("cut", "stall"):
            await until_seen(driver, len(written))
            state = await driver.state()
    finally:
        await driver.stop()
        await proxy.close()
        await asyncio.to_thread(app.stop)
        nx.kill()
        nx.wait()
    log = state["log"]
    assert state["failure"] is None, state["failure"]
    assert_no_repeats(log)
    assert state["reconnects"] >= (1 if fault != "database" else 0)
    if fault in ("cut", "stall") or (fault == "database" and state["resyncs"] == 0):
        # The server still had every change: resumed, not reloaded, and each write seen once.
        assert state["resyncs"] == 0
        assert stocks_seen(log) == written
    else:
        # A new server process cannot replay the old one's seq (nor can a database that lost
        # its history): one reload, announced, then every later write once, in order.
        assert state["resyncs"] >= 1
        sequence = kinds(log)
        begin = sequence.index("resync-begin")
        assert sequence[begin:begin + 3] == ["resync-begin", "snapshot", "resync-end"]
        if fault != "database":  # (a lost history is said on the open socket)
            assert "status:reconnecting" in sequence[:begin] and "status:live" in sequence[:begin]
        end = len(log) - sequence[::-1].index("resync-end")
        after = stocks_seen(log[end:])
        assert after and after == written[len(written) - len(after):], (after, written)
    if fault != "database":
        assert "status:reconnecting" in kinds(log)
