"""Who has the admin console open, and which order each one is looking at.

Presence is kept in the database (collection ``presence``), so that every instance of
the app sees every admin, and it reaches the pages by the same change streams as
everything else. One document per browser tab (``{user}:{tab}``): a tab that reconnects
takes its document over instead of leaving a ghost beside it, and a socket that closes
late removes the document only while it is still its own (``conn``). A closed tab is
gone at once (its socket's end deletes it); documents of an instance that died without
a word expire: each instance refreshes ``seen_at`` of its own every ``beat_s`` and
deletes anybody's older than ``expiry_s``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from backend.domain.clock import iso, now_iso
from backend.domain.users import User
from streaming import Document
from streaming.tasks import cancel

logger = logging.getLogger("changecast.presence")

BEAT_S = 5.0
EXPIRY_S = 15.0
WRITE_TIMEOUT_S = 1.0
TAB = re.compile(r"^[A-Za-z0-9_-]{8,40}$")


class Presence:
    """This instance's open admin tabs, written through to ``presence``."""

    def __init__(self, db: AsyncDatabase[Document], *, beat_s: float = BEAT_S,
                 expiry_s: float = EXPIRY_S) -> None:
        self.collection = db.presence
        self.beat_s = beat_s
        self.expiry_s = expiry_s
        self.instance = uuid.uuid4().hex[:12]
        self._mine: dict[str, str] = {}  # document id -> the connection holding it
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._sweep()  # what a dead instance left behind
        self._task = asyncio.create_task(self._run(), name="changecast-presence")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._mine:
            await self._quietly(self.collection.delete_many(
                {"_id": {"$in": list(self._mine)}, "instance": self.instance}))
        self._mine.clear()

    async def join(self, user: User, tab: str | None) -> tuple[str, str]:
        """This tab is on the console; returns its (document id, connection) for ``look_at``
        and ``leave``."""
        conn = uuid.uuid4().hex[:16]
        key = f"{user.id}:{tab if tab and TAB.match(tab) else conn}"
        self._mine[key] = conn
        # The _id in the document too: NX-27017's upsert does not take it from the filter.
        await self._quietly(self.collection.replace_one(
            {"_id": key},
            {"_id": key, "user_id": user.id, "name": user.name, "conn": conn, "instance": self.instance,
             "order_id": None, "seen_at": now_iso()},
            upsert=True))
        return key, conn

    async def look_at(self, key: str, conn: str, order_id: str | None) -> None:
        """The tab shows ``order_id``'s detail now (None: no order)."""
        await self._quietly(self.collection.update_one(
            {"_id": key, "conn": conn},
            {"$set": {"order_id": order_id, "seen_at": now_iso()}}))

    async def leave(self, key: str, conn: str) -> None:
        """The tab's socket ended: gone, unless a reconnect of the tab took it over (here,
        or on another instance: the delete names this connection)."""
        if self._mine.get(key) != conn:
            return  # this tab reconnected here already; the document is the new socket's
        del self._mine[key]
        await self._quietly(self.collection.delete_one({"_id": key, "conn": conn}))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.beat_s)  # the pace of the refresh
            if self._mine:
                await self._quietly(self.collection.update_many(
                    {"_id": {"$in": list(self._mine)}, "instance": self.instance},
                    {"$set": {"seen_at": now_iso()}}))
            await self._sweep()

    async def _sweep(self) -> None:
        stale = iso(datetime.now(UTC) - timedelta(seconds=self.expiry_s))
        await self._quietly(self.collection.delete_many({"seen_at": {"$lt": stale}}))

    @staticmethod
    async def _quietly(write: Any) -> None:
        # Presence is a courtesy: with the database away the pages say so already, and a
        # page's socket must not wait for a database that does not answer.
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await write
        except (PyMongoError, TimeoutError) as exc:
            logger.debug("presence not written: %s", exc)


def online(docs: list[Document]) -> list[Document]:
    """One entry per admin with the console open, by name: ``user_id``, ``name``."""
    people: dict[str, Document] = {}
    for doc in docs:
        people.setdefault(str(doc.get("user_id")), {"user_id": doc.get("user_id"),
                                                     "name": doc.get("name")})
    return sorted(people.values(), key=lambda p: (str(p["name"]), str(p["user_id"])))


def viewers(docs: list[Document], order_id: str) -> list[Document]:
    """The admins whose console shows ``order_id``'s detail."""
    return online([doc for doc in docs if doc.get("order_id") == order_id])
