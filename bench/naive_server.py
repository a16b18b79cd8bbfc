"""The naive Python broadcast, as a user would write it by hand: Starlette, a set of
sockets, and ``POST /write`` sending the body to each with ``send_text`` (no database).

    uvicorn bench.naive_server:app --port 8100
"""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

clients: set[WebSocket] = set()


async def sockets(websocket: WebSocket) -> None:
    await websocket.accept()
    clients.add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        clients.discard(websocket)


async def write(request: Request) -> JSONResponse:
    body = (await request.body()).decode()
    for websocket in list(clients):
        with contextlib.suppress(Exception):
            await websocket.send_text(body)
    return JSONResponse({})


app = Starlette(routes=[WebSocketRoute("/ws", sockets), Route("/write", write, methods=["POST"])])
