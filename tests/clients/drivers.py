"""The two clients behind one interface, so the same fault tests run against each: the
Python client in this process, the JavaScript client in a Node process (``driver.mjs``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Protocol

from changecast_client import Change, Client, ResyncBegin, ResyncEnd, Snapshot, Status, connect
from changecast_client.events import new_stock

HERE = Path(__file__).parent


class Driver(Protocol):
    async def start(self, base: str, collection: str, auth: tuple[str, str] | None,
                    heartbeat_s: float, where: str | None = None) -> dict[str, Any]: ...
    async def state(self) -> dict[str, Any]: ...
    async def stop(self) -> None: ...


def entry(event: Any) -> list[Any]:
    """One log line: [type, seq, key, op or state, stock or size] (as driver.mjs writes)."""
    if isinstance(event, Change):
        stock = new_stock(event.diff.set if event.diff else None, event.doc)
        return ["change", event.seq, event.key, event.op, stock]
    if isinstance(event, Snapshot):
        return ["snapshot", event.seq, None, None, len(event.docs)]
    if isinstance(event, ResyncEnd):
        return ["resync-end", event.seq, None, None, None]
    if isinstance(event, ResyncBegin):
        return ["resync-begin", None, None, event.reason, None]
    assert isinstance(event, Status)
    return ["status", None, None, event.state, None]


class PythonDriver:
    name = "python"

    def __init__(self) -> None:
        self.client: Client | None = None
        self.log: list[list[Any]] = []
        self.failure: dict[str, str] | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, base: str, collection: str, auth: tuple[str, str] | None,
                    heartbeat_s: float, where: str | None = None) -> dict[str, Any]:
        try:
            self.client = await connect(base, auth, heartbeat_s=heartbeat_s, timeout_s=1.0,
                                        backoff_s=(0.05, 0.5))
            self.sub = await self.client.subscribe(collection, where)
        except Exception as exc:
            return {"ready": False, "error": type(exc).__name__,
                    "code": getattr(exc, "code", None), "message": str(exc)}
        self.task = asyncio.create_task(self._consume())
        return {"ready": True}

    async def _consume(self) -> None:
        try:
            async for event in self.sub:
                self.log.append(entry(event))
        except Exception as exc:
            self.failure = {"error": type(exc).__name__, "message": str(exc)}

    async def state(self) -> dict[str, Any]:
        # The reader applies a change to the view and queues its event in one step: once the
        # consumer has emptied the queue, the log holds every change the view does.
        # (An ended subscription keeps its end marker queued: stop once the consumer is done.)
        while self.sub._queue is not None and not self.sub._queue.empty() \
                and self.task is not None and not self.task.done():
            await asyncio.sleep(0)
        assert self.client is not None
        return {"view": json.loads(json.dumps(self.sub.view)), "log": list(self.log),
                "resyncs": self.sub.resyncs, "duplicates": self.sub.duplicates,
                "reconnects": self.client.reconnects, "state": self.client.state,
                "failure": self.failure}

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def node_command() -> list[str]:
    """Node with a WebSocket global: built in from 22, behind a flag in 20 and 21."""
    node = shutil.which("node")
    assert node, "Node.js is needed for the JavaScript client's tests"
    return [node, "--no-warnings", "--experimental-websocket"]


class NodeDriver:
    name = "js"

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, base: str, collection: str, auth: tuple[str, str] | None,
                    heartbeat_s: float, where: str | None = None) -> dict[str, Any]:
        email, password = auth or ("", "")
        self.proc = await asyncio.create_subprocess_exec(
            *node_command(), str(HERE / "driver.mjs"), base, collection, email, password,
            str(int(heartbeat_s * 1000)), where or "",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return await self._line()

    async def _line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert raw, "the Node driver exited"
        return dict(json.loads(raw))

    async def state(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"state\n")
        await self.proc.stdin.drain()
        return await self._line()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


DRIVERS = {"python": PythonDriver, "js": NodeDriver}
