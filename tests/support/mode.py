"""How a test's engine watches its database, as the app decides it."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from streaming.watcher import WatchMode


async def watch_mode(db: AsyncDatabase[Any]) -> WatchMode:
    """"poll" on NX-27017 (it cannot block a getMore), "await" on MongoDB."""
    build = await db.client.admin.command("buildInfo")
    return "poll" if build.get("process") == "nx_27017" else "await"
