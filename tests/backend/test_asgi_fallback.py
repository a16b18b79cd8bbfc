"""Under an ASGI server other than ChangeCast's uvicorn configuration there is no frame
writer in the scope: the sockets then send the same frames through the ASGI interface."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import uvicorn
from websockets.asyncio.client import connect

from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, Settings
from backend.web.app import create_app
from tests.conftest import free_port


async def test_ws_works_through_plain_asgi_sends_when_the_server_offers_no_frame_writer(
    nx_uri: str, tmp_path: Path
) -> None:
    settings = Settings(mongodb_uri=nx_uri, db_name="t" + uuid.uuid4().hex[:10],
                        data_dir=tmp_path, demo=True, secret_key="s" * 48,
                        pipeline_enabled=False)
    port = free_port()
    # uvicorn's own WebSocket protocol, not ChangeCast's FrameProtocol.
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           ws="websockets-sansio", log_config=None))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=base, headers={"Origin": base}) as admin:
            assert (await admin.post("/api/login", json={
                "email": "admin@example.com", "password": DEFAULT_ADMIN_PASSWORD})).status_code == 200
            async with connect(base.replace("http", "ws") + "/ws", origin=base) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"op": "subscribe", "id": "p", "collection": "products"}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                response = await admin.put("/api/products/SKU-BOO-001/stock", json={"stock": 77})
                assert response.status_code == 200
                async with asyncio.timeout(10):
                    while (msg := json.loads(await ws.recv())).get("key") != "SKU-BOO-001":
                        pass  # other changes may come first
                assert msg["type"] == "change" and msg["id"] == "p"
                assert msg["changes"]["set"]["stock"] == 77
    finally:
        server.should_exit = True
        await task
