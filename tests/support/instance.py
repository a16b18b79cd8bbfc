"""A real ``changecast serve`` process for fault-injection tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD
from tests.conftest import ROOT, free_port
from tests.support.procs import kill_quietly, wait_until


def app_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus any ChangeCast or MongoDB settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANGECAST_", "MONGODB_"))}
    env.update({"CHANGECAST_DEMO": "on", "CHANGECAST_LOG_LEVEL": "WARNING", **extra})
    return env


class AppProcess:
    """``changecast serve`` on a port of its own (kept across restarts)."""

    def __init__(self, env: dict[str, str], tmp: Path, *, port: int | None = None,
                 data_dir: Path | None = None) -> None:
        self.env = env
        self.tmp = tmp
        self.port = port or free_port()
        self.data_dir = data_dir or tmp / f"app-{self.port}"
        self.base = f"http://127.0.0.1:{self.port}"
        self.cookie = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = None
        self.start()

    def start(self) -> None:
        self.log = (self.tmp / f"serve-{self.port}.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve"], cwd=ROOT, stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**self.env, "CHANGECAST_PORT": str(self.port),
                 "CHANGECAST_DATA_DIR": str(self.data_dir)})
        wait_until(self.healthy, 60, f"changecast serve on {self.port}")
        self.cookie = self.login()

    def healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(self.base + "/api/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def login(self) -> str:
        body = json.dumps({"email": "admin@example.com", "password": DEFAULT_ADMIN_PASSWORD})
        request = urllib.request.Request(self.base + "/api/login", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return str(r.headers["Set-Cookie"].split(";")[0])

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One JSON request as the signed-in admin: (status, decoded body); (0, None) when
        nothing answers (the server is down)."""
        request = urllib.request.Request(
            self.base + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Cookie": self.cookie})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None

    def order(self, user: str, product: str, quantity: int = 1) -> None:
        status, _ = self.request("POST", "/api/orders", {
            "user_id": user, "items": [{"product_id": product, "quantity": quantity}]})
        assert status == 201

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            kill_quietly(self.proc.pid, sig)
            self.proc.wait(20)
        if self.log is not None:
            self.log.close()
