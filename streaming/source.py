"""The seam between a database and the engine: a ``Source`` of raw changes.

A source opens at a stored position (or at "now"), hands every change to the engine's
``ChangeHandler`` in commit order, moves its position only after that hand-off, and says
so through ``LostHandler`` when the history it was asked to continue from is gone. The
hub, cache, filters, diffs, breaker and metrics never learn which database fed them.

A raw change has the shape of a MongoDB change event, the one format both sources can
speak without loss::

    {"operationType": "insert" | "update" | "replace" | "delete",
     "documentKey": {"_id": key},
     "fullDocument": {...},                  # the version after the change (not for deletes)
     "fullDocumentBeforeChange": {...},      # optional: the version before it (pre-image)
     "updateDescription": {...},             # optional: what an update set and unset
     "wallTime": datetime,                   # when it happened
     "_id": position}                        # where to resume after this change

``MongoSource`` (one change stream per collection, ``streaming.watcher``) and
``streaming.mysql.MySQLSource`` (one binlog connection for every watched table) implement it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from streaming.breaker import CircuitBreaker
from streaming.events import decode
from streaming.types import Document
from streaming.watcher import (
    ChangeHandler,
    CheckpointStore,
    CollectionWatcher,
    LostHandler,
    WatcherStats,
    WatchOptions,
)


class Source(Protocol):
    """Where an engine's changes come from (see the module docstring for the contract)."""

    @property
    def kind(self) -> str:
        """The database family: ``"mongodb"`` or ``"mysql"``."""
        ...

    @property
    def collections(self) -> tuple[str, ...]:
        """The collections (tables) this source watches, by the names the engine uses."""
        ...

    def attach(self, *, handler: ChangeHandler, on_history_lost: LostHandler,
               breaker: CircuitBreaker) -> None:
        """Called once by the engine, before ``start``: where changes and losses go."""

    async def start(self, *, timeout: float) -> None:
        """Open at the stored position (or now); return once changes are being watched."""

    async def stop(self) -> None:
        """Stop watching and save the position reached."""

    def nudge(self, collection: str | None = None) -> None:
        """Look for changes now (this process just wrote); a no-op for pushed streams."""

    def wake(self, collection: str) -> None:
        """Look for changes now, without promising one (a write that may have changed
        nothing); a no-op for pushed streams."""

    def writing(self, collection: str) -> None:
        """A write to ``collection`` is on its way to the server: look now, so that the read
        overlaps the write's round trip (its reply still wakes the stream); a no-op for
        pushed streams."""

    def reset(self, reason: str) -> None:
        """Distrust the history from here on: reopen from now, then subscribers resync."""

    def stats(self) -> dict[str, WatcherStats]:
        """Per collection: state, reconnects, history losses, lag, checkpoint age."""
        ...

    def is_unavailable(self, exc: BaseException) -> bool:
        """True when ``exc`` means the database is unreachable (it trips the breaker)."""
        ...

    def key_of(self, collection: str, doc: Document) -> Any:
        """The key of a document of ``collection`` (``_id``, a primary key)."""
        ...

    async def load(self, collection: str, key: Any) -> Document | None:
        """One document by key, read from the database (the cache's read-through)."""
        ...

    async def scan(self, collection: str) -> list[Document]:
        """Every document of ``collection`` (to prime the cache or load a snapshot)."""
        ...


def mongo_unavailable(exc: BaseException) -> bool:
    """Only an unreachable MongoDB trips the breaker, not a bad query."""
    return isinstance(exc, ConnectionFailure | TimeoutError) or (
        isinstance(exc, PyMongoError) and not isinstance(exc, OperationFailure)
    )


class MongoSource:
    """MongoDB (or NX-27017): one ``CollectionWatcher`` change stream per collection."""

    kind = "mongodb"

    def __init__(self, database: Any, *, collections: Iterable[str],
                 options: WatchOptions | None = None,
                 checkpoints: CheckpointStore | None = None) -> None:
        self.database = database
        self.collections = tuple(collections)
        self.options = options or WatchOptions()
        self.checkpoints = checkpoints
        self.watchers: dict[str, CollectionWatcher] = {}

    def attach(self, *, handler: ChangeHandler, on_history_lost: LostHandler,
               breaker: CircuitBreaker) -> None:
        self.watchers = {
            name: CollectionWatcher(
                self.database[name], handler=handler, on_history_lost=on_history_lost,
                options=self.options, breaker=breaker, checkpoints=self.checkpoints)
            for name in self.collections
        }

    async def start(self, *, timeout: float) -> None:
        if self.options.mode == "poll":
            # NX-27017 tracks changes with triggers on the collection's table: create the
            # collections first, so no stream is opened on a table that is not there yet.
            existing = set(await self.database.list_collection_names())
            for name in self.collections:
                if name not in existing:
                    with contextlib.suppress(PyMongoError):
                        await self.database.create_collection(name)
        await asyncio.gather(*(w.start(timeout=timeout) for w in self.watchers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.watchers.values()))

    def nudge(self, collection: str | None = None) -> None:
        if collection is None:
            for watcher in self.watchers.values():
                watcher.nudge()
        elif collection in self.watchers:
            self.watchers[collection].nudge()

    def wake(self, collection: str) -> None:
        watcher = self.watchers.get(collection)
        if watcher is not None:
            watcher.wake()

    def writing(self, collection: str) -> None:
        watcher = self.watchers.get(collection)
        if watcher is not None:
            watcher.writing()

    def reset(self, reason: str) -> None:
        for watcher in self.watchers.values():
            watcher.reset(reason)

    def stats(self) -> dict[str, WatcherStats]:
        return {name: w.stats() for name, w in self.watchers.items()}

    def is_unavailable(self, exc: BaseException) -> bool:
        return mongo_unavailable(exc)

    def key_of(self, collection: str, doc: Document) -> Any:
        return doc["_id"]

    async def load(self, collection: str, key: Any) -> Document | None:
        doc = await self.database[collection].find_one({"_id": key})
        return decode(doc) if doc is not None else None

    async def scan(self, collection: str) -> list[Document]:
        return [decode(d) async for d in self.database[collection].find({})]
