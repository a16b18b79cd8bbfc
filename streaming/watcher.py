"""One change stream per collection: open, consume, checkpoint, resume, back off.

Two modes. ``await``: a real replica set, where the server blocks each getMore
up to ``max_await_ms``. ``poll``: the embedded NX-27017 server, which ignores
``maxAwaitTimeMS`` (a blocking loop would spin a core), so the watcher polls
with ``try_next()`` every ``idle_interval`` and is ``nudge()``d right after
this process's own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from streaming.breaker import CircuitBreaker
from streaming.errors import BreakerOpenError
from streaming.types import Clock, Document

logger = logging.getLogger("streaming.watcher")

WatchMode = Literal["poll", "await"]

# Server error codes after which a stream cannot resume from its token.
HISTORY_LOST_CODES = frozenset({
    136,  # CappedPositionLost
    260,  # InvalidResumeToken
    280,  # ChangeStreamFatalError
    286,  # ChangeStreamHistoryLost
})
# Codes the driver also treats as resumable (pymongo's _RESUMABLE_GETMORE_ERRORS).
RESUMABLE_CODES = frozenset({
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436, 63, 150, 234, 133, 43,
})
# NX-27017 keeps this many change rows per collection when it prunes.
NX_RETENTION_ROWS = 1_000


class WatcherState(enum.Enum):
    """Lifecycle of a collection watcher."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    WATCHING = "watching"
    BACKOFF = "backoff"


class HistoryLost(Exception):
    """The stream cannot continue from where it was: subscribers must resync."""


class ChangeStreamLike(Protocol):
    """What the watcher needs of a change stream (PyMongo's AsyncChangeStream fits)."""

    @property
    def resume_token(self) -> Any: ...

    @property
    def alive(self) -> bool: ...

    async def try_next(self) -> Document | None: ...

    async def close(self) -> None: ...


class CollectionLike(Protocol):
    """What the watcher needs of a collection (PyMongo's AsyncCollection fits)."""

    @property
    def name(self) -> str: ...

    async def watch(self, *args: Any, **kwargs: Any) -> Any: ...


class CheckpointStore(Protocol):
    """Where resume tokens are kept between runs."""

    async def load(self, collection: str) -> Any | None: ...

    async def save(self, collection: str, token: Any) -> None: ...


class MemoryCheckpoints:
    """Checkpoints in a dict: for tests and for processes that need no restart resume."""

    def __init__(self) -> None:
        self.tokens: dict[str, Any] = {}

    async def load(self, collection: str) -> Any | None:
        return self.tokens.get(collection)

    async def save(self, collection: str, token: Any) -> None:
        self.tokens[collection] = token


class MongoCheckpoints:
    """Checkpoints in a ``stream_checkpoints`` collection, tagged with the database instance."""

    def __init__(self, collection: Any, *, instance_id: str, consumer: str = "engine") -> None:
        self.collection = collection
        self.instance_id = instance_id
        self.consumer = consumer

    async def load(self, collection: str) -> Any | None:
        doc = await self.collection.find_one({"_id": f"{self.consumer}:{collection}"})
        if doc is None or doc.get("instance_id") != self.instance_id:
            return None  # a recreated database: the old token means nothing here
        return doc.get("token")

    async def save(self, collection: str, token: Any) -> None:
        await self.collection.update_one(
            {"_id": f"{self.consumer}:{collection}"},
            # Epoch ms, not a datetime: NX-27017 stores a $set datetime as a string.
            {"$set": {"token": token, "instance_id": self.instance_id,
                      "at_ms": time.time_ns() // 1_000_000}},
            upsert=True,
        )


def is_resumable(exc: BaseException) -> bool:
    """True for errors after which reopening the stream from its token can work."""
    if isinstance(exc, BreakerOpenError | ConnectionFailure):
        return True
    if isinstance(exc, OperationFailure):
        if exc.has_error_label("ResumableChangeStreamError"):
            return True
        return exc.code in RESUMABLE_CODES
    return isinstance(exc, PyMongoError)


def is_history_lost(exc: BaseException) -> bool:
    """True for errors that mean the resume point is gone."""
    if isinstance(exc, HistoryLost):
        return True
    return isinstance(exc, OperationFailure) and exc.code in HISTORY_LOST_CODES


def nx_rowid(token: Any) -> int | None:
    """The change-log row id inside an NX-27017 resume token (``{"_data": "nx:N"}``)."""
    data = token.get("_data") if isinstance(token, dict) else None
    if isinstance(data, str) and data.startswith("nx:"):
        with contextlib.suppress(ValueError):
            return int(data[3:])
    return None


ChangeHandler = Callable[[str, Document], None]
LostHandler = Callable[[str, str], None]


class CollectionWatcher:
    """Keeps one change stream open on one collection and hands every change to ``handler``."""

    def __init__(self, collection: CollectionLike, *, handler: ChangeHandler,
                 on_history_lost: LostHandler, mode: WatchMode = "await",
                 breaker: CircuitBreaker | None = None,
                 checkpoints: CheckpointStore | None = None,
                 idle_interval: float = 0.025, max_await_ms: int = 500,
                 backoff_initial: float = 0.05, backoff_max: float = 5.0,
                 checkpoint_interval: float = 0.25, clock: Clock = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None, stall_after: float = 3.0) -> None:
        if idle_interval <= 0 or idle_interval > 1:
            raise ValueError(f"idle_interval must be in (0, 1] seconds, got {idle_interval!r}")
        self.collection = collection
        self.name = collection.name
        self.handler = handler
        self.on_history_lost = on_history_lost
        self.mode: WatchMode = mode
        self.breaker = breaker or CircuitBreaker()
        self.checkpoints = checkpoints
        self.idle_interval = idle_interval
        self.max_await_ms = max_await_ms
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.checkpoint_interval = checkpoint_interval
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.state = WatcherState.STOPPED
        self.token: Any = None
        self.reconnects = 0
        self.history_losses = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_change_at: float | None = None
        self.last_event_ms: int | None = None
        self.last_batch = 0
        self._saved_token: Any = None
        self._saved_at = 0.0
        self._nudged = asyncio.Event()
        # Nudges (our own writes) not yet followed by any change: a stream that stays
        # silent through several of them for stall_after seconds is dead (seen on
        # NX-27017 after a kill -9), and is reopened with a resync.
        self._unanswered = 0
        self._unanswered_since: float | None = None
        self.stall_after = stall_after
        self.stalls = 0
        self.cursor_ends = 0  # streams the server ended without an error (resumed)
        self.foreign_changes = 0  # changes of another namespace (the stream is reopened)
        full_name = getattr(collection, "full_name", None)
        self._db_name = full_name.split(".", 1)[0] if isinstance(full_name, str) else None
        self._watching = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resumed_rowid: int | None = None
        self._replayed = 0
        self._first_rowid: int | None = None
        self._reset_reason: str | None = None
        self._lost_reason: str | None = None

    def reset(self, reason: str) -> None:
        """Distrust the stream's history from here on (say, the server restarted and may have
        rewound or skipped its log): reopen from now, then subscribers resync."""
        self._reset_reason = reason
        self._nudged.set()

    def nudge(self) -> None:
        """Poll now (called right after this process writes)."""
        self._nudged.set()
        if self._unanswered_since is None:
            self._unanswered_since = self._clock()
        self._unanswered += 1

    async def start(self, *, wait: bool = True, timeout: float = 15.0) -> None:
        """Start watching; with ``wait``, return once the stream is open."""
        if self._task is not None:
            raise RuntimeError(f"watcher for {self.name!r} is already running")
        if self.checkpoints is not None:
            self.token = await self.checkpoints.load(self.name)
            self._saved_token = self.token
        self._task = asyncio.create_task(self.run(), name=f"watch-{self.name}")
        if wait:
            waiter = asyncio.create_task(self._watching.wait())
            done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                if self._task in done:
                    self._task.result()
                raise TimeoutError(f"change stream on {self.name!r} did not open in {timeout} s")

    async def stop(self) -> None:
        """Stop watching and save the last token."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(PyMongoError, BreakerOpenError):
            await self._checkpoint(force=True)
        self.state = WatcherState.STOPPED

    def lag_ms(self, now_ms: int | None = None) -> int | None:
        """Now minus the time of the last change seen."""
        if self.last_event_ms is None:
            return None
        now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        return max(0, now_ms - self.last_event_ms)

    async def run(self) -> None:
        """The outer resume loop: open, consume, and on errors back off and reopen."""
        attempt = 0
        while True:
            stream = None
            try:
                self.state = WatcherState.CONNECTING
                stream = await self.breaker.call(self._open)
                attempt = 0
                self.state = WatcherState.WATCHING
                self._watching.set()
                if self._lost_reason is not None:
                    # Announced only now that the fresh stream is open: a snapshot taken from
                    # here on cannot miss a change between itself and the stream.
                    reason, self._lost_reason = self._lost_reason, None
                    self.on_history_lost(self.name, reason)
                await self._consume(stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_history_lost(exc):
                    self._lose_history(str(exc))
                    continue
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not is_resumable(exc):
                    logger.exception("unexpected error watching %s; reopening", self.name)
                self.state = WatcherState.BACKOFF
                delay = min(self.backoff_max, self.backoff_initial * 2 ** attempt)
                delay *= self._rng.uniform(0.5, 1.0)
                attempt += 1
                self.reconnects += 1
                await self._sleep(delay)
            finally:
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await stream.close()

    def _lose_history(self, reason: str, *, reopening: bool = True) -> None:
        logger.warning("change history of %s lost (%s); subscribers resync", self.name, reason)
        self.history_losses += 1
        self.token = None
        self._resumed_rowid = None
        if reopening:
            self._lost_reason = reason  # announced once the fresh stream is open
        else:
            self.on_history_lost(self.name, reason)  # the open stream goes on from here

    async def _open(self) -> Any:
        kwargs: dict[str, Any] = {"full_document": "updateLookup"}
        if self.mode == "await":
            kwargs["max_await_time_ms"] = self.max_await_ms
        token = self.token
        self._resumed_rowid = None
        if token is not None:
            rowid = nx_rowid(token) if self.mode == "poll" else None
            if rowid is not None:
                # NX-27017 accepts any token silently; a token past the head means the
                # database was reset under us.
                head_stream = await self.collection.watch()
                head = nx_rowid(head_stream.resume_token)
                await head_stream.close()
                if head is not None and rowid > head:
                    raise HistoryLost(f"resume token {rowid} is past the head {head}")
                self._resumed_rowid = rowid
                self._replayed = 0
                self._first_rowid = None
            kwargs["resume_after"] = token
        return await self.collection.watch(**kwargs)

    async def _consume(self, stream: ChangeStreamLike) -> None:
        batch = 0
        while True:
            if self._reset_reason is not None:
                reason, self._reset_reason = self._reset_reason, None
                raise HistoryLost(reason)
            self._nudged.clear()
            change = await stream.try_next()
            if change is None:
                if not stream.alive:
                    # The server ended the cursor (NX-27017 does when the connection that
                    # opened it closes, which the driver's pool may do at any time) and the
                    # driver gives up silently: reopen from our token, nothing is lost.
                    self.cursor_ends += 1
                    logger.info("change stream on %s ended by the server; resuming", self.name)
                    return
                self.last_batch, batch = batch, 0
                self._check_replay_complete()
                self._check_progress(stream.resume_token)
                self.token = stream.resume_token or self.token
                await self._checkpoint()
                if self.mode == "poll":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._nudged.wait(), self.idle_interval)
                continue
            batch += 1
            self._unanswered, self._unanswered_since = 0, None
            self._check_namespace(change)
            op = change.get("operationType")
            if op in ("drop", "rename", "dropDatabase"):
                raise HistoryLost(f"collection {self.name} saw {op}")
            if op == "invalidate":
                self.token = None
                return
            self._track_replay(change)
            self.handler(self.name, change)
            # The token moves only after the hand-off: delivery is at-least-once.
            self.token = change.get("_id", stream.resume_token)
            self.last_change_at = self._clock()
            await self._checkpoint()

    def _check_namespace(self, change: Document) -> None:
        """Raise HistoryLost when a change of another collection (or database) arrives.

        NX-27017 numbers its cursors from the same start after a restart, so a driver that
        resumes an old cursor id may be reading somebody else's new stream; what it delivered
        in between is unknown.
        """
        ns = change.get("ns")
        if not isinstance(ns, dict):
            return
        coll, db = ns.get("coll"), ns.get("db")
        same_coll = coll is None or coll == self.name
        same_db = db is None or self._db_name is None or db == self._db_name
        if same_coll and same_db:
            return
        self.foreign_changes += 1
        raise HistoryLost(f"the stream on {self.name} delivered a change of {db}.{coll}; "
                          "its cursor belongs to another stream now")

    def _check_progress(self, server_token: Any) -> None:
        """Raise HistoryLost when the stream went backwards or stays silent after our writes."""
        if self.mode != "poll":
            return
        ours, theirs = nx_rowid(self.token), nx_rowid(server_token)
        if ours is not None and theirs is not None and theirs < ours:
            raise HistoryLost(f"the server's change log went back from {ours} to {theirs}")
        since = self._unanswered_since
        if since is not None and self._unanswered >= 3 and self._clock() - since > self.stall_after:
            self.stalls += 1
            self._unanswered, self._unanswered_since = 0, None
            raise HistoryLost(f"no change arrived for {self.stall_after:.0f} s after "
                              "this process wrote; the stream is reopened")

    def _track_replay(self, change: Document) -> None:
        if self._resumed_rowid is None:
            return
        self._replayed += 1
        if self._first_rowid is None:
            self._first_rowid = nx_rowid(change.get("_id"))

    def _check_replay_complete(self) -> None:
        """After a resume on NX-27017: were rows pruned between our token and the replay?"""
        if self._resumed_rowid is None:
            return
        resumed, first, replayed = self._resumed_rowid, self._first_rowid, self._replayed
        self._resumed_rowid = None
        # NX prunes down to the newest NX_RETENTION_ROWS rows of a collection, so a
        # replay that short cannot have lost anything; one that long after a hole may have.
        if first is not None and first > resumed + 1 and replayed >= NX_RETENTION_ROWS:
            self._lose_history(f"replayed {replayed} changes after a gap from {resumed} to "
                               f"{first}; older ones may have been pruned", reopening=False)

    async def _checkpoint(self, *, force: bool = False) -> None:
        if self.checkpoints is None or self.token is None or self.token == self._saved_token:
            return
        now = self._clock()
        if not force and now - self._saved_at < self.checkpoint_interval:
            return
        token = self.token
        await self.checkpoints.save(self.name, token)
        self._saved_token, self._saved_at = token, now

    def mark_event_time(self, at_ms: int) -> None:
        """Record the time of the change just handled (for lag)."""
        self.last_event_ms = at_ms

    def snapshot(self) -> dict[str, Any]:
        """State, reconnects, history losses, lag and the size of the last batch."""
        return {"state": self.state.value, "reconnects": self.reconnects,
                "history_losses": self.history_losses, "errors": self.errors,
                "stalls": self.stalls,
                "cursor_ends": self.cursor_ends,
                "foreign_changes": self.foreign_changes,
                "last_error": self.last_error, "lag_ms": self.lag_ms(),
                "last_change_at": self.last_event_ms,
                "last_batch": self.last_batch, "mode": self.mode}
