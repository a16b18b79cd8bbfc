"""Connecting to MongoDB (or the embedded server), telling what it is, bootstrapping it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReadPreference, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from backend.infra.embedded import EmbeddedError, EmbeddedServer
from backend.infra.settings import Settings
from streaming import DEFAULT_COLLECTIONS, Document

logger = logging.getLogger("changecast.database")

BackendKind = Literal["replicaset", "sharded", "embedded", "standalone"]

# Each watched collection holds one change stream; keep pool headroom above them.
POOL_SIZE = 64


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says why and what to do."""


WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify"})


class WriteListener(CommandListener):
    """Says which collection this process just wrote to, once the server acknowledged it.

    On the embedded server a quiet change stream polls less and less often; every write
    that goes through this client wakes its collection's watcher at once, whichever code
    made it, so the first change after a quiet spell is not late (``engine.wake``). And
    as a write command is sent, the watcher reads at once (``engine.writing``), so that its
    read overlaps the write's round trip instead of following it.
    The driver calls a listener on the event loop's thread, in the command's own path:
    this only looks at two fields and calls ``on_send`` and ``on_write``."""

    def __init__(self) -> None:
        self.on_write: Callable[[str], None] | None = None
        self.on_send: Callable[[str], None] | None = None
        self._pending: dict[tuple[int, int], str] = {}

    def started(self, event: CommandStartedEvent) -> None:
        if self.on_write is not None and event.command_name in WRITE_COMMANDS:
            collection = event.command.get(event.command_name)
            if isinstance(collection, str):
                self._pending[(event.request_id, event.operation_id or 0)] = collection
                if self.on_send is not None:
                    self.on_send(collection)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        collection = self._pending.pop((event.request_id, event.operation_id or 0), None)
        if collection is not None and self.on_write is not None and _wrote(event.reply):
            self.on_write(collection)

    def failed(self, event: CommandFailedEvent) -> None:
        self._pending.pop((event.request_id, event.operation_id or 0), None)


def _wrote(reply: Mapping[str, Any]) -> bool:
    """Whether a write command's reply says it changed a document (a refresh that matched
    nothing, as presence's heartbeat with no admin online, wakes nobody). Unknown: yes."""
    counted = reply.get("lastErrorObject", reply)  # findAndModify's, or the command's own
    if not isinstance(counted, Mapping) or counted.get("upserted"):
        return True
    n = counted.get("nModified", counted.get("n"))
    return not isinstance(n, int) or n > 0


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """What the server offers that ChangeCast uses when it can."""

    version: tuple[int, ...]
    # Change-stream post-images (MongoDB >= 6 on a replica set): each update event carries
    # the version of that change, not one looked up later.
    post_images: bool

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) or "unknown"


@dataclass(slots=True)
class Database:
    """The client, the application database and facts about the server."""

    client: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]
    kind: BackendKind
    instance_id: str
    embedded: EmbeddedServer | None = None
    features: ServerFeatures = ServerFeatures((), post_images=False)
    writes: WriteListener = field(default_factory=WriteListener)

    async def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers ``ping`` within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):  # wait_for may swallow a cancel (3.11)
                await self.client.admin.command("ping")
        except (TimeoutError, PyMongoError):
            return False
        return True


def hosts_of(uri: str) -> str:
    """The host list of a connection string, without credentials."""
    rest = uri.split("://", 1)[-1]
    rest = rest.rsplit("@", 1)[-1]
    for stop in "/?":
        rest = rest.split(stop, 1)[0]
    return unquote(rest) or uri  # a socket path reads as a path


def make_client(uri: str, *, selection_timeout_ms: int = 5_000,
                writes: WriteListener | None = None) -> AsyncMongoClient[Document]:
    """An async client with ChangeCast's pool and retry settings (and ``writes`` told of
    every acknowledged write)."""
    return AsyncMongoClient(
        uri,
        event_listeners=[writes] if writes is not None else [],
        maxPoolSize=POOL_SIZE,
        retryWrites=True,
        retryReads=True,
        tz_aware=True,
        serverSelectionTimeoutMS=selection_timeout_ms,
        connectTimeoutMS=2_000,
        appname="changecast",
    )


async def detect_kind(client: AsyncMongoClient[Document]) -> BackendKind:
    """Tell a replica set, a sharded cluster, the embedded server and a standalone apart."""
    hello = await client.admin.command("hello")
    if hello.get("setName"):
        return "replicaset"
    if hello.get("msg") == "isdbgrid":
        return "sharded"
    build = await client.admin.command("buildInfo")
    if build.get("process") == "nx_27017":
        return "embedded"
    return "standalone"


async def detect_features(client: AsyncMongoClient[Document], kind: BackendKind
                          ) -> ServerFeatures:
    """The server's version and the features ChangeCast turns on for it."""
    build = await client.admin.command("buildInfo")
    version = tuple(int(p) for p in str(build.get("version", "")).split(".")[:3] if p.isdigit())
    post_images = kind in ("replicaset", "sharded") and version >= (6,)
    return ServerFeatures(version, post_images)


async def enable_post_images(db: AsyncDatabase[Document], collections: tuple[str, ...]) -> None:
    """Turn on ``changeStreamPreAndPostImages`` for the watched collections (MongoDB >= 6)."""
    existing = set(await db.list_collection_names())
    for name in collections:
        if name not in existing:
            with contextlib.suppress(PyMongoError):
                await db.create_collection(name)
        await db.command({"collMod": name, "changeStreamPreAndPostImages": {"enabled": True}})


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    """Create the indexes the API and the pipeline query by."""
    await db.users.create_index("email", unique=True)
    await db.orders.create_index([("user_id", ASCENDING), ("created_at", DESCENDING)])
    await db.orders.create_index("status")
    await db.notifications.create_index([("user_id", ASCENDING), ("created_at", DESCENDING)])
    await db.audit.create_index("correlation_id")
    await db.products.create_index("category")


async def ensure_instance_id(db: AsyncDatabase[Document]) -> str:
    """An id for this database instance; a recreated database gets a new one."""
    candidate = uuid.uuid4().hex
    with contextlib.suppress(DuplicateKeyError):
        await db.meta.insert_one({"_id": "instance", "id": candidate})
    doc = await db.meta.find_one({"_id": "instance"})
    if doc is None:
        raise DatabaseError("the database lost its instance marker right after writing it")
    return str(doc["id"])


def _first_line(exc: Exception) -> str:
    return str(exc).split(", full error:", 1)[0].splitlines()[0]


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """Start the embedded server if needed, connect, check the kind, bootstrap."""
    server: EmbeddedServer | None = None
    if settings.embedded:
        server = EmbeddedServer(data_dir=settings.data_dir)
        try:
            await server.start()
        except EmbeddedError as exc:
            raise DatabaseError(str(exc)) from None
        uri = server.uri
    else:
        uri = str(settings.mongodb_uri)
    writes = WriteListener()
    client = make_client(uri, writes=writes)
    try:
        try:
            kind = await detect_kind(client)
        except PyMongoError:
            raise DatabaseError(
                f"cannot reach MongoDB at {hosts_of(uri)}: is the server running?"
            ) from None
        if kind == "standalone":
            raise DatabaseError(
                f"MongoDB at {hosts_of(uri)} is a standalone server, but change streams need a "
                "replica set. Start one with `docker compose up` (mongo:8 as replica set rs0), "
                "or restart mongod with --replSet rs0 and run rs.initiate()."
            )
        features = await detect_features(client, kind)
        if kind in ("replicaset", "sharded"):
            # Durability said out loud: an acknowledged order, stock move or transition is on
            # a majority of the members (it survives a failover), and every read that decides
            # a transition is the primary's.
            db = client.get_database(settings.db_name, write_concern=WriteConcern("majority"),
                                     read_preference=ReadPreference.PRIMARY)
        else:
            db = client[settings.db_name]
        try:
            await ensure_indexes(db)
            instance_id = await ensure_instance_id(db)
            if features.post_images:
                await enable_post_images(db, DEFAULT_COLLECTIONS)
        except PyMongoError as exc:
            hint = (f"; if the data file is corrupt, move {str(settings.data_dir / 'nx')!r} "
                    "aside and start again" if server is not None else "")
            raise DatabaseError(
                f"database {settings.db_name!r} at {hosts_of(uri)} could not be prepared: "
                f"{_first_line(exc)}{hint}"
            ) from None
        logger.info("connected to %s database at %s (version %s; change-stream post-images %s)",
                    kind, hosts_of(uri), features.version_text,
                    "on" if features.post_images else "off")
        yield Database(client=client, db=db, kind=kind, instance_id=instance_id, embedded=server,
                       features=features, writes=writes)
    finally:
        await client.close()
        if server is not None:
            await server.stop()
