"""``changecast serve`` with a stopwatch on each stage of a write's path (for ``bench.writepath``).

    python -m bench.tracing   # as ``changecast serve``; CHANGECAST_BENCH_TRACE=<file>

The hooks wrap, without changing what they do, the places a write goes through and
append ``(stage, time.perf_counter_ns())`` to a list, written as JSON to the file named
by ``CHANGECAST_BENCH_TRACE`` on ``SIGUSR1`` (uvicorn re-raises the SIGTERM it stopped
on, so nothing runs at exit). ``perf_counter`` is the system's
monotonic clock, the same in every process here, so the stages line up with the load
generator's own stamps. Stages, in the order a stock write meets them:

- ``bytes``: the request's first bytes reach uvicorn's protocol (``data_received``);
- ``app``: uvicorn calls the ASGI app (headers parsed, the request task started);
- ``session``: past ChangeCast's guard (host, origin, body, deadline), into Starlette's
  session middleware;
- ``handler``: the route's endpoint is called (``put_stock``);
- ``driver``: the endpoint calls PyMongo's ``find_one_and_update``;
- ``db.findAndModify.sent`` / ``.replied``: the driver's command events for the write;
- ``db.getMore.sent`` / ``.replied``: the change stream's read that carries the change
  (every poll of ``products`` is recorded; the bench picks the one that brought it);
- ``event``: the engine has normalized, cached and published the change to the hub;
- ``pass`` / ``passed``: the hub's fan-out pass starts and has written every member;
- ``response``: the app sends the HTTP response's start.

``CHANGECAST_BENCH_BEFORE=1``: ChangeCast before the write path's changes (the bench's
"before"): the watcher reads on before the fan-out pass its change scheduled, and starts
its read only once the write's reply is in.

Only the ``products`` collection's commands and ``PUT`` requests are recorded. Each
stamp costs a list append (well under a microsecond).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

STAMPS: list[tuple[str, int]] = []
now = time.perf_counter_ns


def stamp(stage: str) -> None:
    STAMPS.append((stage, now()))


def _dump(path: str) -> None:
    """The stamps so far, into ``path`` at once (written aside, then renamed)."""
    with open(path + ".part", "w") as out:
        json.dump(STAMPS, out)
    os.replace(path + ".part", path)


def _around(owner: Any, name: str, before: Callable[..., None] | None = None,
            after: Callable[..., None] | None = None) -> None:
    original = getattr(owner, name)

    @wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapped)


def _command(event: Any, suffix: str) -> None:
    if event.command_name in ("findAndModify", "getMore"):
        stamp(f"db.{event.command_name}.{suffix}")


def install() -> None:
    """Wrap the stages (see the module's docstring)."""
    from pymongo.asynchronous.collection import AsyncCollection
    from starlette.middleware.sessions import SessionMiddleware

    from backend.infra.database import WriteListener
    from backend.web import server
    from backend.web.http import api, security
    from streaming.engine import ChangeEngine
    from streaming.hub import Hub

    pending: dict[tuple[int, int], str] = {}

    def started(listener: Any, event: Any) -> None:
        collection = event.command.get(event.command_name)
        if collection == "products" or (event.command_name == "getMore"
                                        and event.command.get("collection") == "products"):
            pending[(event.request_id, event.operation_id or 0)] = event.command_name
            _command(event, "sent")

    def succeeded(_result: Any, listener: Any, event: Any) -> None:
        if pending.pop((event.request_id, event.operation_id or 0), None) is not None:
            _command(event, "replied")

    _around(WriteListener, "started", before=started)
    _around(WriteListener, "succeeded", after=succeeded)

    def data_received(protocol: Any, data: bytes) -> None:
        if data.startswith(b"PUT "):
            stamp("bytes")

    _around(server.HeaderDeadlineProtocol, "data_received", before=data_received)

    guard_call = security.GuardMiddleware.__call__

    async def guarded(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "PUT":
            return await guard_call(self, scope, receive, send)
        stamp("app")

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                stamp("response")
            await send(message)

        return await guard_call(self, scope, receive, timed_send)

    security.GuardMiddleware.__call__ = guarded  # type: ignore[method-assign]

    session_call = SessionMiddleware.__call__

    async def session(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "PUT":
            stamp("session")
        await session_call(self, scope, receive, send)

    SessionMiddleware.__call__ = session  # type: ignore[method-assign]
    put_stock = api.put_stock

    async def handler(request: Any) -> Any:
        stamp("handler")
        return await put_stock(request)

    api.put_stock = handler  # the routes are built from it when the app is created
    find_one_and_update = AsyncCollection.find_one_and_update

    async def driver(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name == "products":
            stamp("driver")
        return await find_one_and_update(self, *args, **kwargs)

    AsyncCollection.find_one_and_update = driver  # type: ignore[method-assign]

    def handled(_result: Any, engine: Any, collection: str, raw: Any) -> None:
        if collection == "products":
            stamp("event")

    _around(ChangeEngine, "_handle", after=handled)

    def pass_start(hub: Any, limit: Any) -> None:
        if hub._pass is None:
            stamp("pass")

    def pass_end(_result: Any, hub: Any, limit: Any) -> None:
        if hub._pass is None:
            stamp("passed")

    _around(Hub, "_write", before=pass_start, after=pass_end)

    if os.environ.get("CHANGECAST_BENCH_BEFORE"):
        # As before the watcher yielded to the fan-out (it never knows the driver's buffer)
        # and before a write being sent started the stream's read.
        from streaming import watcher

        watcher.buffered = lambda stream: None
        ChangeEngine.writing = lambda self, collection: None  # type: ignore[method-assign]


def main() -> int:
    path = os.environ.get("CHANGECAST_BENCH_TRACE")
    if not path:
        print("bench.tracing: set CHANGECAST_BENCH_TRACE to the file for the stamps",
              file=sys.stderr)
        return 2
    install()
    signal.signal(signal.SIGUSR1, lambda *_: _dump(path))
    from backend.cli import main as serve

    return serve(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
