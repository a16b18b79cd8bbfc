"""Run an ASGI app under uvicorn on a real loopback socket inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import uvicorn
from pymongo import AsyncMongoClient
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.infra.settings import Settings
from backend.web.app import create_app
from backend.web.server import server_config
from backend.web.state import STATE_KEY, AppState
from tests.conftest import free_port


class Captured:
    """In front of the app: keeps the lifespan state (the dict every request sees), so a
    test can reach the app's engine and database as the app does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}

    @property
    def app_state(self) -> AppState:
        """The app's shared state, as its lifespan built it."""
        return cast(AppState, self.state[STATE_KEY])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope["state"]
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def serve_captured(nx_uri: str, data_dir: Path, **overrides: Any
                         ) -> AsyncIterator[tuple[str, Any, Captured]]:
    """``serve_site`` with the app behind a ``Captured``: (base URL, database, capture)."""
    captured: list[Captured] = []

    def wrap(app: ASGIApp) -> ASGIApp:
        captured.append(Captured(app))
        return captured[0]

    async with serve_site(nx_uri, data_dir, wrap=wrap, **overrides) as (base, db):
        yield base, db, captured[0]


@contextlib.asynccontextmanager
async def running(app: ASGIApp, settings: Settings | None = None) -> AsyncIterator[str]:
    """Serve ``app`` as ``changecast serve`` does (``server_config``) until the block ends;
    yields its base URL."""
    port = free_port()
    config = server_config(app, settings or Settings(), host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serve_site(nx_uri: str, data_dir: Path, *,
                     wrap: Callable[[ASGIApp], ASGIApp] | None = None,
                     **overrides: Any) -> AsyncIterator[tuple[str, Any]]:
    """The whole app (demo mode, its own database) on a real socket: (base URL, database)."""
    settings = Settings(**{"mongodb_uri": nx_uri, "db_name": "t" + uuid.uuid4().hex[:10],
                           "data_dir": data_dir, "demo": True, "secret_key": "s" * 48,
                           **overrides})
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(nx_uri, tz_aware=True)
    app = create_app(settings)
    try:
        async with running(wrap(app) if wrap else app, settings) as base:
            yield base, mongo[settings.db_name]
    finally:
        await mongo.close()
