"""A real ChangeCast for the benchmarks: NX-27017 started here, ``changecast serve`` as a child
process against it (so the server has its own interpreter and core), helpers to drive it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from backend.infra.embedded import EmbeddedServer
from backend.infra.settings import DEFAULT_ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBE_PRODUCTS = '{"op":"subscribe","id":"p","collection":"products"}'
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Site:
    base: str
    nx_uri: str
    db_name: str
    server: subprocess.Popen[bytes]
    database_pid: int | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] | None = None

    async def restart(self) -> float:
        """Stop the server (SIGTERM, as a deploy does) and start it again on the same port
        and database; returns the ``perf_counter`` at which it answered ``/api/health``
        again."""
        stop_process(self.server, 15)
        self.server = subprocess.Popen(list(self.command), env=self.env, cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await _wait_healthy(self.base, self.server, poll_s=0.01)
        return time.perf_counter()

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"

    async def admin_cookie(self) -> str:
        """The Cookie header of a signed-in admin."""
        admin = await self.admin()
        await admin.aclose()
        return "; ".join(f"{k}={v}" for k, v in admin.cookies.items())

    async def admin(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.base, timeout=30, headers={"Origin": self.base},
                                   limits=httpx.Limits(max_connections=200))
        response = await client.post("/api/login", json={"email": "admin@example.com",
                                                         "password": DEFAULT_ADMIN_PASSWORD})
        response.raise_for_status()
        return client

    def rss_kib(self) -> int:
        """The server's resident memory (its workers' too)."""
        return rss_kib([self.server.pid])


class RawHttp:
    """One keep-alive HTTP/1.1 connection written and read by hand, so that the client's
    own cost (an HTTP library builds and parses in Python) is not in the server's stages:
    a request is one ``write`` of ready bytes, its answer a status line, headers and
    ``Content-Length`` bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str, cookie: str) -> None:
        self.reader, self.writer = reader, writer
        self.head = (f"Host: {host}\r\nOrigin: http://{host}\r\n"
                     + (f"Cookie: {cookie}\r\n" if cookie else "")
                     + "Content-Type: application/json\r\n")

    @classmethod
    async def open(cls, base: str, cookie: str) -> RawHttp:
        host = base.removeprefix("http://")
        name, port = host.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(name, int(port))
        return cls(reader, writer, host, cookie)

    def request(self, method: str, path: str, body: bytes) -> bytes:
        return (f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
                .encode() + body)

    async def send(self, request: bytes) -> int:
        """Send ``request``; its status once the whole answer has been read."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def site(*, pipeline: bool = False, extra_env: dict[str, str] | None = None,
               args: tuple[str, ...] = (), module: str = "backend.cli") -> AsyncIterator[Site]:
    """NX-27017 in a temporary directory plus one app server process (seeded on start):
    ``python -m {module} serve {args}`` (``bench.tracing`` takes no ``serve``)."""
    with tempfile.TemporaryDirectory(prefix="changecast-bench-") as tmp:
        nx = EmbeddedServer(data_dir=Path(tmp) / "nx")
        await nx.start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANGECAST_", "MONGODB"))}
        env.update({"MONGODB_URI": nx.uri, "CHANGECAST_DEMO": "on", "CHANGECAST_PORT": str(port),
                    "CHANGECAST_DATA_DIR": str(Path(tmp) / "app"), "CHANGECAST_DB": "bench",
                    "CHANGECAST_PIPELINE": "on" if pipeline else "off",
                    "CHANGECAST_LOG_LEVEL": "WARNING",
                    # Thousands of clients from this one address, some never subscribing:
                    # the per-client cap and the idle-socket close are not what is measured.
                    "CHANGECAST_MAX_CONNECTIONS": "1000000",
                    "CHANGECAST_MAX_CONNECTIONS_PER_CLIENT": "1000000",
                    "CHANGECAST_IDLE_SOCKET_S": "86400", **(extra_env or {})})
        command = [sys.executable, "-m", module, *(["serve"] if module == "backend.cli" else []),
                   *args]
        server = subprocess.Popen(command, env=env,
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        served = Site(base, nx.uri, "bench", server, nx.pid, tuple(command), env)
        try:
            await _wait_healthy(base, server)
            yield served
        finally:
            stop_process(served.server, 15)
            await nx.stop()


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def family(pids: list[int]) -> list[int]:
    """These processes and all their descendants (``--workers`` children included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes and their descendants."""
    stats = [f for pid in family(pids) if (f := _stat(pid)) is not None]
    return sum(int(f[11]) for f in stats) / TICK, sum(int(f[12]) for f in stats) / TICK


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their descendants."""
    return sum(cpu_times(pids))


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes and their descendants."""
    total = 0
    for pid in family(pids):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _wait_healthy(base: str, server: subprocess.Popen[bytes], timeout: float = 60,
                        poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/api/health")).status_code == 200:
                    return
            await asyncio.sleep(poll_s)
    raise RuntimeError("the server did not become healthy")


async def products_of(bench: Site) -> list[str]:
    async with httpx.AsyncClient(base_url=bench.base) as http:
        return [p["_id"] for p in (await http.get("/api/products?limit=500")).json()["items"]]


async def watchers(bench: Site, count: int, *, subscribe: bool = True,
                   max_queue: int | None = None) -> list[ClientConnection]:
    """``count`` anonymous WebSocket clients on ``/ws`` (connected 100 at a time), each
    subscribed to ``products`` and past its ``subscribed`` reply when ``subscribe``."""
    sockets: list[ClientConnection] = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(*(
            connect(bench.ws, origin=bench.base, max_queue=max_queue)  # type: ignore[arg-type]
            for _ in range(start, min(count, start + 100))))
        if subscribe:
            for ws in batch:
                await ws.send(SUBSCRIBE_PRODUCTS)
            for ws in batch:
                await ws.recv()
        sockets.extend(batch)
    return sockets
