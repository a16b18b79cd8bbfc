"""``changecast loadtest``: real HTTP writers and WebSocket watchers against a running server.

Writers place orders (as demo customers) and change stock (as the admin) at a
target rate; ``--clients`` WebSocket clients (``changecast_client``, one socket
each) subscribe to products and orders and timestamp every change they receive.
Write→client latency is the time from the moment a write was sent to the moment
each client saw it; it is matched after the run (a client may see a change
before the write's response is back).
Per-stage pipeline durations come from the orders' audit trails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from backend.infra.progress import ProgressBar
from changecast_client import Change, ChangeCastError, Client, ResyncBegin, Subscription, connect
from changecast_client.events import new_stock
from loadtest.scenarios import Scenario
from streaming import percentile as nearest_rank

HEALTHY_MS = 500
CRITICAL_MS = 1_000


@dataclass
class Write:
    kind: str  # "order" | "stock"
    sent: float  # perf_counter seconds
    key: str | None = None  # order id, or "product_id=stock" once the response is back


@dataclass
class Tally:
    requests: int = 0
    ok: int = 0
    expected_errors: int = 0  # an invalid request answered with the 4xx it deserved
    unexpected: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, status: int | None, elapsed_ms: float, *, invalid: bool) -> None:
        self.requests += 1
        self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1
        self.latencies_ms.append(elapsed_ms)
        if status is not None and 200 <= status < 300 and not invalid:
            self.ok += 1
        elif invalid and status is not None and 400 <= status < 500:
            self.expected_errors += 1
        else:
            self.unexpected += 1


def percentile(values: list[float], point: float) -> float | None:
    value = nearest_rank(sorted(values), point)
    return round(value, 2) if value is not None else None


def spread(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": round(max(values), 2) if values else None}


class Watcher:
    """One WebSocket client (``changecast_client``): first time it saw each order id / product
    stock value."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.messages = 0
        self.resyncs = 0

    async def consume(self, sub: Subscription) -> None:
        async for event in sub:
            now = time.perf_counter()
            if isinstance(event, ResyncBegin):
                self.resyncs += 1
            elif isinstance(event, Change):
                self.messages += 1
                for key in change_keys(event):
                    self.seen.setdefault(key, now)


def stock_key(message: dict[str, Any]) -> str | None:
    """``product=stock`` of a products change message: what a stock write is matched on."""
    if message.get("type") != "change" or message.get("collection") != "products":
        return None
    stock = new_stock((message.get("changes") or {}).get("set"), message.get("doc"))
    return None if stock is None else f"{message['key']}={stock}"


def change_keys(change: Change) -> list[str]:
    """The keys a change can be matched on: an order id, a product's new stock value."""
    if change.collection == "orders" and change.op in ("insert", "enter"):
        return [f"order:{change.key}"]
    if change.collection != "products":
        return []
    stock = new_stock(change.diff.set if change.diff is not None else None, change.doc)
    return [] if stock is None else [f"stock:{change.key}={stock}"]


def latencies(sent: dict[str, float], clients: list[dict[str, float]]) -> tuple[list[float], int]:
    """Milliseconds from each write's sending to each client first seeing it, and how many
    (write, client) pairs never saw it."""
    values, missed = [], 0
    for key, at in sent.items():
        for seen in clients:
            arrival = seen.get(key)
            if arrival is None:
                missed += 1
            else:
                values.append(max(0.0, (arrival - at) * 1000))
    return values, missed


class LoadTest:
    def __init__(self, url: str, scenario: Scenario, *, admin_email: str, admin_password: str,
                 customer_password: str, seed: int = 7, stream: TextIO | None = None) -> None:
        self.url = url.rstrip("/")
        self.scenario = scenario
        self.admin_email = admin_email
        self.admin_password = admin_password
        self.customer_password = customer_password
        self.rng = random.Random(seed)
        self.stream = stream if stream is not None else sys.stderr
        self.tally = Tally()
        self.writes: list[Write] = []
        self.orders: list[str] = []
        self.watchers: list[Watcher] = []
        self.products: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    # ---- setup ---------------------------------------------------------------------------

    async def _signed_in(self, email: str, password: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.url, timeout=10,
                                   headers={"Origin": self.url},
                                   limits=httpx.Limits(max_connections=64))
        response = await client.post("/api/login", json={"email": email, "password": password})
        if response.status_code != 200:
            await client.aclose()
            raise LoadTestError(f"cannot sign in as {email}: {response.status_code} "
                                f"{response.text[:200]}")
        return client

    async def _watch(self, cookie: str) -> tuple[Client, list[asyncio.Task[None]], Watcher]:
        """One watcher: a client of its own (one socket) with products and orders from now
        on (no snapshot: the run matches changes, not documents)."""
        client = await connect(self.url, cookie)
        watcher = Watcher()
        subs = [await client.subscribe(collection, snapshot=False)
                for collection in ("products", "orders")]
        return client, [asyncio.create_task(watcher.consume(sub)) for sub in subs], watcher

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        scenario = self.scenario
        try:
            admin = await self._signed_in(self.admin_email, self.admin_password)
        except httpx.HTTPError as exc:
            raise LoadTestError(f"cannot reach {self.url}: {exc}") from None
        customers = [await self._signed_in(f"customer{n:02d}@example.com", self.customer_password)
                     for n in range(1, 6)]
        clients = [admin, *customers]
        sockets: list[Client] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            before = (await admin.get("/api/metrics")).json()
            listing = await admin.get("/api/products", params={"limit": 500})
            self.products = listing.json()["items"]
            if not self.products:
                raise LoadTestError("the server has no products; seed it first")
            cookie = "; ".join(f"{k}={v}" for k, v in admin.cookies.items())
            for _ in range(scenario.clients):
                try:
                    socket, consumers, watcher = await self._watch(cookie)
                except ChangeCastError as exc:
                    raise LoadTestError(f"cannot watch {self.url}: {exc}") from None
                sockets.append(socket)
                self.watchers.append(watcher)
                tasks.extend(consumers)
            started = time.perf_counter()
            await self._drive(admin, customers, started)
            elapsed = time.perf_counter() - started
            await self._delivered(timeout=5)
            if before.get("pipeline"):  # orders move on only where the pipeline runs
                await self._drain(admin)
            after = (await admin.get("/api/metrics")).json()
            stages = await self._stages(admin)
        finally:
            for socket in sockets:
                with contextlib.suppress(Exception):
                    await socket.close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for client in clients:
                await client.aclose()
        return self._report(elapsed, before, after, stages)

    async def _drive(self, admin: httpx.AsyncClient, customers: list[httpx.AsyncClient],
                     started: float) -> None:
        """Open-loop arrivals at ``rps``: a slow server does not slow the offered load."""
        scenario = self.scenario
        interval = 1 / scenario.rps
        in_flight: set[asyncio.Task[None]] = set()
        bar = ProgressBar(scenario.duration, label="loadtest", unit=" s", stream=self.stream,
                          redraw_s=0.25)
        sampler = asyncio.create_task(self._sample(admin, started))
        n = 0
        while True:
            now = time.perf_counter() - started
            if now >= scenario.duration:
                break
            due = n * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            n += 1
            task = asyncio.create_task(self._one(admin, customers))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            bar.update(round(now), note=f"{self.tally.requests} requests")
        if in_flight:
            await asyncio.wait(in_flight, timeout=15)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        bar.update(scenario.duration, note=f"{self.tally.requests} requests")

    async def _sample(self, admin: httpx.AsyncClient, started: float) -> None:
        """Once a second: the server's pipeline backlog and payments in flight."""
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                pipeline = (await admin.get("/api/metrics")).json().get("pipeline") or {}
                self.samples.append({"t": round(time.perf_counter() - started, 2),
                                     "backlog": pipeline.get("backlog", 0),
                                     "payments_in_flight": pipeline.get("payments_in_flight", 0),
                                     "payment_concurrency": pipeline.get("payment_concurrency")})
            await asyncio.sleep(1)

    async def _one(self, admin: httpx.AsyncClient, customers: list[httpx.AsyncClient]) -> None:
        scenario, rng = self.scenario, self.rng
        roll = rng.random()
        if roll < scenario.invalid_share:
            await self._invalid(admin, rng.choice(customers))
        elif roll < scenario.invalid_share + scenario.read_share:
            await self._request(rng.choice([admin, *customers]), "GET",
                                rng.choice(["/api/products?limit=50", "/api/orders?limit=20"]))
        elif rng.random() < scenario.order_share:
            await self._order(rng.choice(customers))
        else:
            await self._stock(admin)

    async def _request(self, client: httpx.AsyncClient, method: str, path: str, *,
                       invalid: bool = False, **kwargs: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.HTTPError:
            self.tally.record(None, (time.perf_counter() - started) * 1000, invalid=invalid)
            return None
        self.tally.record(response.status_code, (time.perf_counter() - started) * 1000,
                          invalid=invalid)
        return response

    async def _order(self, customer: httpx.AsyncClient) -> None:
        picks = self.rng.sample(self.products, k=min(len(self.products), self.rng.randint(1, 3)))
        body = {"items": [{"product_id": p["_id"], "quantity": 1} for p in picks]}
        write = Write("order", time.perf_counter())
        response = await self._request(customer, "POST", "/api/orders", json=body)
        if response is not None and response.status_code == 201:
            write.key = f"order:{response.json()['_id']}"
            self.orders.append(response.json()["_id"])
            self.writes.append(write)

    async def _stock(self, admin: httpx.AsyncClient) -> None:
        product = self.rng.choice(self.products)
        write = Write("stock", time.perf_counter())
        response = await self._request(admin, "PUT", f"/api/products/{product['_id']}/stock",
                                       json={"delta": self.rng.choice([5, 10, 20])})
        if response is not None and response.status_code == 200:
            doc = response.json()
            write.key = f"stock:{doc['_id']}={doc['stock']}"
            self.writes.append(write)

    async def _invalid(self, admin: httpx.AsyncClient, customer: httpx.AsyncClient) -> None:
        product = self.rng.choice(self.products)
        case = self.rng.randrange(5)
        if case == 0:
            await self._request(customer, "POST", "/api/orders", invalid=True,
                                content=b'{"items": [', headers={"Content-Type": "application/json"})
        elif case == 1:
            await self._request(customer, "POST", "/api/orders", invalid=True,
                                json={"items": [{"product_id": "NO-SUCH-SKU", "quantity": 1}]})
        elif case == 2:
            await self._request(customer, "POST", "/api/orders", invalid=True,
                                json={"items": [{"product_id": product["_id"], "quantity": 0}]})
        elif case == 3:  # out of stock: more than there can be
            await self._request(admin, "PUT", f"/api/products/{product['_id']}/stock",
                                invalid=True, json={"delta": -10_000_000})
        else:
            await self._request(customer, "PUT", f"/api/products/{product['_id']}/stock",
                                invalid=True, json={"stock": 1})  # customers may not

    async def _delivered(self, timeout: float) -> None:
        """Give the last writes' changes (bounded) time to reach every client."""
        deadline = time.perf_counter() + timeout
        keys = [w.key for w in self.writes if w.key]
        while time.perf_counter() < deadline and any(
                key not in watcher.seen for watcher in self.watchers for key in keys[-50:]):
            await asyncio.sleep(0.05)

    async def _drain(self, admin: httpx.AsyncClient, timeout: float = 15) -> None:
        """Wait (bounded) until the orders placed have left the automatic statuses."""
        deadline = time.perf_counter() + timeout
        pending = list(self.orders)
        while pending and time.perf_counter() < deadline:
            sample = pending[:50]
            still = []
            for order_id in sample:
                response = await admin.get(f"/api/orders/{order_id}")
                if response.status_code == 200 and response.json()["status"] in (
                        "pending", "reserved", "paid"):
                    still.append(order_id)
            pending = still + pending[50:]
            if still:
                await asyncio.sleep(0.2)

    async def _stages(self, admin: httpx.AsyncClient, limit: int = 200) -> dict[str, Any]:
        durations: dict[str, list[float]] = {}
        for order_id in self.orders[:limit]:
            response = await admin.get(f"/api/orders/{order_id}/audit")
            if response.status_code != 200:
                continue
            for entry in response.json()["items"]:
                if entry.get("duration_ms") is not None and entry["stage"] != "pending":
                    durations.setdefault(entry["stage"], []).append(float(entry["duration_ms"]))
        stages = {}
        for stage, values in sorted(durations.items()):
            average = sum(values) / len(values)
            stages[stage] = {"count": len(values), "avg_ms": round(average, 1),
                             "p95_ms": percentile(values, 95), "health": health(average)}
        return stages

    # ---- the report ----------------------------------------------------------------------

    def _report(self, elapsed: float, before: dict[str, Any], after: dict[str, Any],
                stages: dict[str, Any]) -> dict[str, Any]:
        pushed, missed = latencies({w.key: w.sent for w in self.writes if w.key},
                                   [watcher.seen for watcher in self.watchers])
        tally = self.tally
        report = {
            "scenario": asdict(self.scenario), "url": self.url,
            "duration_s": round(elapsed, 2),
            "requests": tally.requests, "by_status": tally.by_status,
            "success_rate": round((tally.ok + tally.expected_errors) / tally.requests, 4)
            if tally.requests else None,
            "ok": tally.ok, "expected_errors": tally.expected_errors,
            "unexpected_errors": tally.unexpected,
            "throughput_rps": round(tally.requests / elapsed, 2) if elapsed else None,
            "api_latency_ms": spread(tally.latencies_ms),
            "write_to_client_ms": spread(pushed),
            "writes": len(self.writes), "clients": len(self.watchers),
            "deliveries_expected": len(self.writes) * len(self.watchers),
            "deliveries_missed": missed,
            "client_resyncs": sum(w.resyncs for w in self.watchers),
            "server": {key: after.get(key, 0) - before.get(key, 0)
                       for key in ("dropped", "resyncs", "coalesced", "cutoffs")},
            "stages": stages,
            "pipeline": {"backlog_max": max((x["backlog"] for x in self.samples), default=0),
                         "payments_in_flight_max": max(
                             (x["payments_in_flight"] for x in self.samples), default=0),
                         "payments_saturated": any(
                             x["payment_concurrency"] and
                             x["payments_in_flight"] >= x["payment_concurrency"]
                             for x in self.samples),
                         "samples": self.samples},
        }
        report["recommendations"] = recommendations(report)
        return report


def health(average_ms: float) -> str:
    if average_ms < HEALTHY_MS:
        return "healthy"
    return "warning" if average_ms <= CRITICAL_MS else "critical"


def recommendations(report: dict[str, Any]) -> list[str]:
    advice = []
    for stage, figures in report["stages"].items():
        if figures["health"] == "healthy":
            continue
        if stage in ("paid", "payment_failed"):
            if report["pipeline"]["payments_saturated"]:
                advice.append(f"payment ({stage}) averages {figures['avg_ms']} ms and every "
                              "payment slot was busy: raise CHANGECAST_PAYMENT_CONCURRENCY")
            else:
                advice.append(f"payment ({stage}) averages {figures['avg_ms']} ms with no queue: "
                              "that is the gateway's own latency (CHANGECAST_PAYMENT_LATENCY_MS "
                              "in demo mode), not ChangeCast")
        elif stage in ("reserved", "rejected"):
            advice.append(f"reservation ({stage}) averages {figures['avg_ms']} ms: the database "
                          "is the bottleneck; check its CPU and the products collection's writes")
        else:
            advice.append(f"stage {stage} averages {figures['avg_ms']} ms ({figures['health']})")
    latency = report["write_to_client_ms"]
    if latency["p99"] is not None and latency["p99"] > 250:
        advice.append(f"write→client p99 is {latency['p99']} ms: the server's CPU is saturated "
                      "or clients read too slowly; spread clients over more instances")
    if report["deliveries_missed"]:
        advice.append(f"{report['deliveries_missed']} expected deliveries never arrived: "
                      "check drops and resyncs (slow clients are cut off and resync)")
    if report["unexpected_errors"]:
        advice.append(f"{report['unexpected_errors']} requests failed unexpectedly: see by_status "
                      "and the server log")
    if report["server"]["dropped"] or report["server"]["resyncs"]:
        advice.append("the server dropped deliveries or sent resyncs during the run: some "
                      "clients could not keep up")
    if report["throughput_rps"] and report["throughput_rps"] < 0.9 * report["scenario"]["rps"]:
        advice.append("the offered rate was not reached: the load generator or the server is "
                      "saturated")
    return advice or ["no bottleneck found at this load"]


def summary(report: dict[str, Any]) -> str:
    api, push = report["api_latency_ms"], report["write_to_client_ms"]
    lines = [
        f"scenario {report['scenario']['name']} against {report['url']}: "
        f"{report['duration_s']} s, {report['clients']} WebSocket clients",
        f"requests        {report['requests']} ({report['throughput_rps']}/s), success "
        f"{100 * (report['success_rate'] or 0):.1f} % "
        f"({report['expected_errors']} invalid requests refused as they should be, "
        f"{report['unexpected_errors']} unexpected errors)",
        f"API latency     p50 {api['p50']} ms  p95 {api['p95']} ms  p99 {api['p99']} ms",
        f"write → client  p50 {push['p50']} ms  p95 {push['p95']} ms  p99 {push['p99']} ms "
        f"({push['count']} deliveries, {report['deliveries_missed']} missed)",
    ]
    if report["stages"]:
        lines.append("pipeline stages (from the audit trail):")
        for stage, figures in report["stages"].items():
            lines.append(f"  {stage:<15} avg {figures['avg_ms']:>8} ms  p95 {figures['p95_ms']:>8} "
                         f"ms  {figures['health']}")
    lines.append("recommendations:")
    lines.extend(f"  - {line}" for line in report["recommendations"])
    return "\n".join(lines)


class LoadTestError(Exception):
    """Something the user can fix (the server is unreachable, the credentials are wrong)."""


async def run(url: str, scenario: Scenario, *, report_path: Path, admin_email: str,
              admin_password: str, customer_password: str) -> dict[str, Any]:
    test = LoadTest(url, scenario, admin_email=admin_email, admin_password=admin_password,
                    customer_password=customer_password)
    report = await test.run()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
