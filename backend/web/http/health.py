"""``/api/health``: is the database reachable (answers while it is down)."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from backend.web.state import app_state


async def health(request: Request) -> JSONResponse:
    """
    summary: Is the database reachable
    responses: {200: {description: ok}, 503: {description: the database is down}}
    """
    state = app_state(request)
    database = state.database
    reachable = await database.ping(timeout=0.75)
    body: dict[str, Any] = {
        "status": "ok" if reachable else "down",
        "database": {"kind": database.kind, "reachable": reachable},
        "uptime_s": round(time.monotonic() - state.started, 3),
    }
    if database.embedded is not None:
        body["database"]["embedded"] = {
            "state": database.embedded.state.value,
            "restarts": database.embedded.restarts,
        }
    return JSONResponse(body, status_code=200 if reachable else 503)
