"""The ``changecast`` command, run as a real child process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from tests.conftest import ROOT, free_port
from tests.support.procs import alive, children_of, kill_quietly, wait_until

pytestmark = [
    pytest.mark.embedded_only(reason="changecast serve without MONGODB_URI starts the embedded server"),
    pytest.mark.timeout(120),
]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Serving:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port

    def health(self) -> tuple[int, dict[str, Any]]:
        return get_json(f"http://127.0.0.1:{self.port}/api/health")

    def nx_pid(self) -> int:
        kids = children_of(self.proc.pid)
        assert len(kids) == 1, f"expected one embedded database child, found {kids}"
        return kids[0]


@pytest.fixture
def serving(clean_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Serving]:
    port = free_port()
    env = {**clean_env, "CHANGECAST_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", *getattr(request, "param", [])],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    serving = Serving(proc, port)

    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            return serving.health()[0] == 200
        except OSError:
            return False

    try:
        wait_until(up, 60, "changecast serve to answer /api/health")
        yield serving
    finally:
        for pid in children_of(proc.pid):
            kill_quietly(pid, signal.SIGKILL)
        kill_quietly(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_serve_health_ok_then_ctrl_c_leaves_no_process(serving: Serving) -> None:
    status, body = serving.health()
    assert status == 200 and body["status"] == "ok"
    assert body["database"]["kind"] == "embedded"
    nx_pid = serving.nx_pid()
    serving.proc.send_signal(signal.SIGINT)
    assert serving.proc.wait(20) == 0  # Ctrl-C is how a server is stopped, not a failure
    assert serving.proc.stdout is not None
    lines = [json.loads(line) for line in serving.proc.stdout.read().splitlines()]
    # Not a terminal: JSON lines, the banner's facts among them, no traceback.
    [ready] = [line for line in lines if line["message"].startswith("serving on http://")]
    assert ready["demo_admin"].startswith("admin@example.com") and "embedded" in ready["database"]
    assert ready["loop"] == "uvloop"  # installed with uvicorn[standard]: the default
    assert lines[-1]["message"] == "ChangeCast stopped"
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access and access[0]["path"] == "/api/health" and access[0]["status"] == 200
    wait_until(lambda: not alive(nx_pid), 10, "the embedded database to exit")


@pytest.mark.parametrize("serving", [["--workers", "2"]], indirect=True)
def test_serve_workers_share_the_port_each_with_its_own_engine(serving: Serving) -> None:
    kids = children_of(serving.proc.pid)
    assert len(kids) == 3, kids  # the embedded database and two workers

    async def watch_and_write() -> tuple[int, set[str]]:
        import httpx
        from websockets.asyncio.client import connect

        base = f"http://127.0.0.1:{serving.port}"
        sockets = [await connect(base.replace("http", "ws") + "/ws", origin=base)
                   for _ in range(12)]
        for ws in sockets:
            await ws.send('{"op":"subscribe","id":"p","collection":"products"}')
            await ws.recv()
        instances = set()
        for _ in range(20):  # a new connection each time: either worker may answer
            async with httpx.AsyncClient(base_url=base) as fresh:
                instances.add((await fresh.get("/api/metrics")).json()["pipeline"]["instance"])
        async with httpx.AsyncClient(base_url=base, headers={"Origin": base}) as admin:
            login = await admin.post("/api/login", json={"email": "admin@example.com",
                                                         "password": DEFAULT_ADMIN_PASSWORD})
            assert login.status_code == 200
            assert (await admin.put("/api/products/SKU-BOO-001/stock",
                                    json={"stock": 4321})).status_code == 200
        async def sees_it(ws: Any) -> bool:
            async with asyncio.timeout(10):
                while True:  # other changes may come first (the demo's own orders)
                    msg = json.loads(await ws.recv())
                    if msg.get("key") == "SKU-BOO-001" and \
                            msg.get("changes", {}).get("set", {}).get("stock") == 4321:
                        await ws.close()
                        return True

        seen = sum(await asyncio.gather(*(sees_it(ws) for ws in sockets)))
        return seen, instances

    seen, instances = asyncio.run(watch_and_write())
    assert seen == 12  # every socket, whichever worker holds it
    assert len(instances) == 2  # two engines and pipelines answer on the one port
    serving.proc.send_signal(signal.SIGINT)
    assert serving.proc.wait(30) in (0, 130)
    wait_until(lambda: not any(alive(pid) for pid in kids), 15, "every worker to exit")


def test_serve_recovers_after_kill_9_of_the_database(serving: Serving) -> None:
    old = serving.nx_pid()
    os.kill(old, signal.SIGKILL)
    wait_until(
        lambda: (
            serving.health()[1]["database"].get("embedded", {}).get("restarts") == 1
            and serving.health()[0] == 200
        ),
        30,
        "health to recover after a restart",
    )
    assert serving.nx_pid() != old


def test_serve_killed_with_9_takes_the_database_with_it(serving: Serving) -> None:
    nx_pid = serving.nx_pid()
    os.kill(serving.proc.pid, signal.SIGKILL)
    serving.proc.wait(10)
    wait_until(lambda: not alive(nx_pid), 10, "the orphaned database to exit")


def test_serve_unreachable_uri_exits_2_quickly_without_traceback(clean_env: dict[str, str]) -> None:
    env = {
        **clean_env,
        "MONGODB_URI": "mongodb://127.0.0.1:1/?directConnection=true",
        "CHANGECAST_ADMIN_PASSWORD": "admin-pass-123",
        "CHANGECAST_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = run_cli(["serve"], env)
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    assert "127.0.0.1:1" in result.stderr and "is the server running" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_port_in_use_exits_2(clean_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["serve"], {**clean_env, "CHANGECAST_PORT": str(port)})
    assert result.returncode == 2
    assert "already in use" in result.stderr and "Traceback" not in result.stderr


def test_serve_corrupt_data_file_is_a_clear_error(clean_env: dict[str, str]) -> None:
    nx_dir = Path(clean_env["CHANGECAST_DATA_DIR"]) / "nx"
    nx_dir.mkdir(parents=True)
    (nx_dir / "changecast.db").write_bytes(b"garbage" * 1000)
    result = run_cli(["serve"], {**clean_env, "CHANGECAST_PORT": str(free_port())})
    assert result.returncode == 2
    assert "could not be prepared" in result.stderr and "Traceback" not in result.stderr


def test_cli_bad_setting_and_unknown_option(clean_env: dict[str, str]) -> None:
    bad = run_cli(["serve"], {**clean_env, "CHANGECAST_PORT": "http"})
    assert bad.returncode == 2 and "CHANGECAST_PORT" in bad.stderr
    unknown = run_cli(["serve", "--frobnicate"], clean_env)
    assert unknown.returncode == 2 and "usage: changecast" in unknown.stderr
    missing = run_cli([], clean_env)
    assert missing.returncode == 2 and "usage: changecast" in missing.stderr


def test_cli_bench_names_its_benchmarks_and_refuses_unknown_ones(clean_env: dict[str, str]) -> None:
    listed = run_cli(["bench", "--help"], clean_env)
    assert listed.returncode == 0
    assert all(
        name in listed.stdout for name in ("propagation", "fanout", "cache", "pipeline", "connections",
                                           "sources")
    )
    unknown = run_cli(["bench", "propagation", "warp-speed"], clean_env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "unknown benchmark 'warp-speed'; expected one of propagation" in unknown.stderr
    assert "== bench." not in unknown.stdout  # refused before anything ran


def test_cli_seed_is_idempotent_and_resettable(nx_uri: str, db_name: str, clean_env: dict[str, str]) -> None:
    env = {**clean_env, "MONGODB_URI": nx_uri, "CHANGECAST_DB": db_name, "CHANGECAST_DEMO": "on"}
    first = run_cli(["seed", "--orders", "40"], env)
    assert first.returncode == 0, first.stderr
    assert "seeded 64 products, 26 users, 40 orders" in first.stdout
    assert "40/" not in first.stdout and "[####" in first.stderr  # progress bar on stderr
    again = run_cli(["seed", "--orders", "40"], env)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    reset = run_cli(["seed", "--reset", "--orders", "10"], env)
    assert reset.returncode == 0 and "10 orders" in reset.stdout
    negative = run_cli(["seed", "--orders", "-1"], env)
    assert negative.returncode == 2 and "expected 0 or more" in negative.stderr


def test_serve_for_a_person_prints_a_short_banner_once_the_port_answers(
    clean_env: dict[str, str],
) -> None:
    port = free_port()
    env = {**clean_env, "CHANGECAST_PORT": str(port), "CHANGECAST_LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    before: list[str] = []
    try:
        for line in proc.stdout:
            if "ChangeCast is running at" in line:
                break
            before.append(line)
        else:
            raise AssertionError(f"no banner: {before}")
        # The banner comes once the port answers, not before.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as reply:
            assert reply.status == 200
        assert f"http://127.0.0.1:{port}" in line
        assert len(before) <= 15, before
        assert not any(line.lstrip().startswith("{") for line in before)  # no JSON for a person
        banner = [next(proc.stdout) for _ in range(5)]
        assert any("Admin:" in b and "admin@example.com" in b for b in banner), banner
        assert any("Data:" in b and "embedded database" in b for b in banner), banner
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(20) == 0
        assert rest.rstrip().endswith("ChangeCast stopped.") and "Traceback" not in rest
    finally:
        for pid in children_of(proc.pid):
            kill_quietly(pid, signal.SIGKILL)
        kill_quietly(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
