"""Run an ASGI app under uvicorn on a real loopback socket inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from pymongo import AsyncMongoClient
from starlette.types import ASGIApp

from backend.infra.settings import Settings
from backend.web.app import create_app
from backend.web.server import server_config
from tests.conftest import free_port


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
