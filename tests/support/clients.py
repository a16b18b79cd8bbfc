"""Signed-in HTTP clients and WebSockets against a served site, one per user."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.support.server import serve_site

C = TypeVar("C", bound="Clients")


class Clients:
    """``client(who)`` is signed in as ``who`` (``"anon"``: not signed in) and kept;
    ``socket(who, path)`` opens a WebSocket that carries that client's session cookie."""

    def __init__(self, base: str, db: Any) -> None:
        self.base = base
        self.db = db
        self.clients: dict[str, httpx.AsyncClient] = {}

    def options(self) -> dict[str, Any]:
        return {}

    async def sign_in(self, client: httpx.AsyncClient, who: str) -> None:
        raise NotImplementedError

    async def client(self, who: str) -> httpx.AsyncClient:
        if who not in self.clients:
            client = httpx.AsyncClient(base_url=self.base, timeout=10, **self.options())
            if who != "anon":
                await self.sign_in(client, who)
            self.clients[who] = client
        return self.clients[who]

    async def socket(self, who: str, path: str) -> ClientConnection:
        client = await self.client(who)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        url = self.base.replace("http://", "ws://") + path
        return await connect(url, origin=self.base,  # type: ignore[arg-type]
                             additional_headers={"Cookie": cookie} if cookie else None)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


@contextlib.asynccontextmanager
async def harness(kind: type[C], nx_uri: str, data_dir: Path,
                  **overrides: Any) -> AsyncIterator[C]:
    """The app served on a real socket, with ``kind``'s clients; all closed afterwards."""
    async with serve_site(nx_uri, data_dir, **overrides) as (base, db):
        clients = kind(base, db)
        try:
            yield clients
        finally:
            await clients.aclose()
