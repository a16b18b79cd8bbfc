"""Shared fixtures: one database server per test session, a fresh database per test.

The server is an embedded NX-27017 started here, or, with ``CHANGECAST_TEST_MONGODB_URI``,
any MongoDB replica set (``make test-mongodb``): then the tests marked ``embedded_only``
(they start, kill or restart the server, or exercise one of its quirks) are skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

ROOT = Path(__file__).resolve().parent.parent
TEST_MONGODB_URI = os.environ.get("CHANGECAST_TEST_MONGODB_URI") or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against a given replica set, skip what needs the embedded server, saying why."""
    if TEST_MONGODB_URI is None:
        return
    for item in items:
        marker = item.get_closest_marker("embedded_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"needs the embedded server: {reason}"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nx(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start NX-27017 the way the launcher does and wait for ``ping``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.infra.nxserver", "--data-dir", str(data_dir), "--port",
         str(port), "--log-file", str(data_dir / "nx.log"), "--pid-file",
         str(data_dir / "nx.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    client: MongoClient[dict[str, Any]] = MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=200
    )
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                client.admin.command("ping")
                return proc
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise RuntimeError("NX-27017 did not start for the tests") from None
                time.sleep(0.05)
    finally:
        client.close()


def stop_nx(proc: subprocess.Popen[bytes]) -> None:
    """Stop it as ``EmbeddedServer`` does: SIGTERM asks NX-27017 for a clean stop, which it
    does not always finish (a session's server, after the pipeline tests, was still there
    10 s later); then SIGKILL, which SQLite's journal makes safe."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def nx_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of the session's database server (tests use their own database names): the one
    ``CHANGECAST_TEST_MONGODB_URI`` names, else an embedded server started here."""
    if TEST_MONGODB_URI is not None:
        yield TEST_MONGODB_URI
        return
    port = free_port()
    proc = start_nx(tmp_path_factory.mktemp("nx"), port)
    yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    stop_nx(proc)


@pytest.fixture
def db_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def mongo(nx_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(nx_uri, tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment for a ``changecast`` child process, with its own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANGECAST_", "MONGODB_"))}
    env["CHANGECAST_DATA_DIR"] = str(tmp_path / "data")
    return env


# ---- every response and WebSocket message of the whole run is scanned for secrets ----------

# A password hash, or the order ids a product holds units for (other customers' orders).
SECRET_MARKERS = ("password_hash", "$argon2", "\"holds\"")
SECRETS_SEEN: list[str] = []


def _scan(where: str, payload: Any) -> None:
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
    for marker in SECRET_MARKERS:
        if marker in text:
            SECRETS_SEEN.append(f"{where}: {text[:200]}")


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaves_the_server() -> Iterator[None]:
    """Wraps httpx (every HTTP response) and websockets (every message received) for the run,
    then fails the session if any payload carried a password hash."""
    import httpx
    from websockets.asyncio.client import ClientConnection

    send, recv = httpx.AsyncClient.send, ClientConnection.recv

    async def scanned_send(self: httpx.AsyncClient, request: httpx.Request,
                           **kwargs: Any) -> httpx.Response:
        response = await send(self, request, **kwargs)
        if not kwargs.get("stream"):
            await response.aread()
            _scan(f"{request.method} {request.url.path}", response.content)
        return response

    async def scanned_recv(self: ClientConnection, *args: Any, **kwargs: Any) -> Any:
        message = await recv(self, *args, **kwargs)
        _scan("websocket", message)
        return message

    httpx.AsyncClient.send = scanned_send  # type: ignore[method-assign]
    ClientConnection.recv = scanned_recv  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.AsyncClient.send = send  # type: ignore[method-assign]
        ClientConnection.recv = recv  # type: ignore[method-assign]
    assert SECRETS_SEEN == [], SECRETS_SEEN[:5]
