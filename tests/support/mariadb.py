"""A private MariaDB server for the tests: its own data directory, a free loopback port,
the binary log on (row events, full images and metadata), stopped after. No system
service is used or assumed; ``make test`` installs Debian's ``mariadb-server`` if missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def available() -> bool:
    return os.access(MARIADBD, os.X_OK) and os.access(INSTALL_DB, os.X_OK)


class MariaDB:
    """One mariadbd process on ``port`` over ``data_dir`` (created on first start)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.data_dir = root / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": "root", "password": ""}

    def connect(self, database: str | None = None, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                               database=database, autocommit=True, connect_timeout=5,
                               init_command="SET time_zone = '+00:00'", **kwargs)

    def install(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.data_dir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *user],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self, *, timeout: float = 60.0) -> None:
        if not self.data_dir.exists():
            self.install()
        user = ["--user=root"] if os.geteuid() == 0 else []
        log = open(self.root / "mariadbd.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={self.data_dir}", *user,
             f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.root / 'mariadbd.sock'}", f"--pid-file={self.root / 'mariadbd.pid'}",
             "--skip-name-resolve", "--character-set-server=utf8mb4",
             "--collation-server=utf8mb4_unicode_ci",
             "--log-bin=binlog", "--server-id=1", "--binlog-format=ROW",
             "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
             # A killed process keeps what the OS holds: durable enough for kill -9 tests,
             # and the commits do not wait for a disk flush.
             "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M",
             "--max-connections=200",
             f"--log-error={self.root / 'mariadbd.err'}"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = (self.root / "mariadbd.err")
                    tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
                    self.stop()
                    raise RuntimeError(f"mariadbd did not start on port {self.port}:\n{tail}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def wipe(self) -> None:
        """A server rebuilt from nothing (it never had any of the old positions)."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def execute(self, database: str | None, *statements: str) -> None:
        with contextlib.closing(self.connect(database)) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def rows(self, database: str, sql: str) -> list[dict[str, Any]]:
        with contextlib.closing(self.connect(database, cursorclass=pymysql.cursors.DictCursor)) \
                as conn, conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

