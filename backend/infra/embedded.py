"""The embedded NX-27017 server: started as a child process and supervised."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pymongo import AsyncMongoClient

from backend.infra.settings import private_dir
from streaming import Backoff

logger = logging.getLogger("changecast.embedded")


class EmbeddedError(RuntimeError):
    """The embedded database could not be started."""


class EmbeddedState(enum.Enum):
    """Lifecycle of the embedded server."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


Transport = Literal["unix", "tcp"]


class EmbeddedServer:
    """Runs NX-27017 with a file database, restarting it if it dies.

    It listens on a Unix socket in a private directory (mode 700) by default: NX-27017 has
    no authentication, and a loopback port would let every local account read and write
    the database. ``transport="tcp"`` listens on ``host:port`` instead (for tools that
    need a port).
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        transport: Transport = "unix",
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_timeout: float = 15.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.transport: Transport = transport
        self.host = host
        self.port = port
        self.socket_path: Path | None = None
        self.ready_timeout = ready_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.state = EmbeddedState.STOPPED
        self.restarts = 0
        self._restart_hooks: list[Callable[[], None]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def uri(self) -> str:
        """Connection string for the running server."""
        if self.socket_path is not None:
            return f"mongodb://{quote(str(self.socket_path), safe='')}/?directConnection=true"
        if self.port is None:
            raise EmbeddedError("the embedded server has not been started")
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def address(self) -> str:
        """Where it listens, for messages."""
        return str(self.socket_path) if self.socket_path else f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the current child, if any."""
        return self._proc.pid if self._proc is not None else None

    @property
    def db_dir(self) -> Path:
        """Where NX-27017 keeps one SQLite file per logical database."""
        return self.data_dir / "nx"

    async def start(self) -> None:
        """Start the child and wait until it answers ``ping``."""
        if self.state is not EmbeddedState.STOPPED:
            raise EmbeddedError(f"expected a stopped server, it is {self.state.value}")
        self._check_data_dir()
        if self.transport == "unix":
            if self.socket_path is None:
                # Short (a socket path has at most 107 bytes) and private (mkdtemp: mode 700).
                self.socket_path = Path(tempfile.mkdtemp(prefix="changecast-nx-")) / "nx.sock"
        elif self.port is None:
            self.port = free_port(self.host)
        self.state = EmbeddedState.STARTING
        self._stopping = False
        try:
            await self._spawn_and_wait()
        except BaseException:
            await self._terminate()
            self.state = EmbeddedState.STOPPED
            raise
        self.state = EmbeddedState.RUNNING
        self._supervisor = asyncio.create_task(self._supervise(), name="nx-27017-supervisor")

    async def stop(self) -> None:
        """Stop supervising and terminate the child; idempotent."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._terminate()
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)
            self.socket_path = None
        self.state = EmbeddedState.STOPPED

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _check_data_dir(self) -> None:
        try:
            private_dir(self.data_dir)
            private_dir(self.db_dir)
            for existing in self.db_dir.iterdir():  # files written before this was enforced
                if existing.is_file() and existing.stat().st_mode & 0o077:
                    existing.chmod(0o600)
            probe = self.db_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise EmbeddedError(
                f"data directory {str(self.data_dir)!r} is not writable: {exc.strerror or exc}"
            ) from None

    async def _spawn_and_wait(self) -> None:
        stderr_path = self.data_dir / "nx-27017.stderr.log"
        with stderr_path.open("ab") as stderr:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "backend.infra.nxserver",
                "--data-dir",
                str(self.db_dir.resolve()),
                *self._listen_args(),
                "--log-file",
                str((self.data_dir / "nx-27017.log").resolve()),
                "--pid-file",
                str((self.data_dir / "nx-27017.pid").resolve()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "CHANGECAST_PARENT_PID": str(os.getpid())},
                # Own process group: a terminal's Ctrl-C reaches us, and we stop the child.
                start_new_session=True,
            )
        await self._wait_ready(stderr_path)

    def _listen_args(self) -> list[str]:
        if self.socket_path is not None:
            return ["--unix-socket", str(self.socket_path)]
        return ["--host", self.host, "--port", str(self.port)]

    async def _wait_ready(self, stderr_path: Path) -> None:
        deadline = time.monotonic() + self.ready_timeout
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        try:
            while True:
                proc = self._proc
                if proc is not None and proc.returncode is not None:
                    raise EmbeddedError(
                        f"the embedded database exited with code {proc.returncode} while "
                        f"starting: {_tail(stderr_path)}"
                    )
                try:
                    await client.admin.command("ping")
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise EmbeddedError(
                            f"the embedded database did not answer ping on {self.address} "
                            f"within {self.ready_timeout:.0f} s"
                        ) from None
                    await asyncio.sleep(0.05)
        finally:
            await client.close()

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5.0):  # wait_for may swallow a cancel (3.11)
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _supervise(self) -> None:
        backoff = Backoff(initial=self.backoff_initial, maximum=self.backoff_max)
        while not self._stopping:
            started = time.monotonic()
            proc = self._proc
            code = await proc.wait() if proc is not None else None
            if self._stopping:
                return
            if time.monotonic() - started > 30:  # it ran a while: not a crash loop
                backoff.reset()
            self.state = EmbeddedState.RESTARTING
            delay = backoff.next_delay()  # with jitter: no thundering restarts
            logger.warning(
                "embedded database exited with code %s; restarting in %.2f s", code, delay
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn_and_wait()
            except EmbeddedError as exc:
                logger.error("embedded database restart failed: %s", exc)
                await self._terminate()
                continue
            self.restarts += 1
            self.state = EmbeddedState.RUNNING
            logger.info("embedded database restarted (pid %s)", self.pid)
            for hook in self._restart_hooks:
                try:
                    hook()
                except Exception:
                    logger.exception("restart hook failed")

    def on_restart(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` each time the supervisor has brought the database back."""
        self._restart_hooks.append(hook)


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no output)"
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "(no output)")[-limit:]
