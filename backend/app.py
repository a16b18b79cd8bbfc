"""The Starlette application factory and its lifespan."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backend.database import Database, open_database
from backend.settings import Settings
from seed.loader import is_seeded, seed_database

logger = logging.getLogger("changecast.app")


async def health(request: Request) -> JSONResponse:
    """``GET /api/health``: is the database reachable, what is it, how long have we run."""
    database: Database = request.state.database
    reachable = await database.ping(timeout=1.0)
    body: dict[str, Any] = {
        "status": "ok" if reachable else "down",
        "database": {"kind": database.kind, "reachable": reachable},
        "uptime_s": round(time.monotonic() - request.state.started, 3),
    }
    if database.embedded is not None:
        body["database"]["embedded"] = {
            "state": database.embedded.state.value,
            "restarts": database.embedded.restarts,
        }
    return JSONResponse(body, status_code=200 if reachable else 503)


def create_app(settings: Settings, *, database: Database | None = None) -> Starlette:
    """Build the app; it opens its own database unless one is handed in."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            db = database or await stack.enter_async_context(open_database(settings))
            if not await is_seeded(db.db):
                report = await seed_database(
                    db.db, admin_password=settings.admin_password,
                    demo_password=settings.demo_password,
                )
                if not report.skipped:
                    logger.info("seeded demo data: %s products, %s users, %s orders",
                                report.products, report.users, report.orders)
            yield {"database": db, "settings": settings, "started": time.monotonic()}

    return Starlette(
        routes=[Route("/api/health", health, methods=["GET"])],
        lifespan=lifespan,
    )
