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
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from streaming.backoff import Backoff
from streaming.breaker import CircuitBreaker
from streaming.errors import BreakerOpenError, HistoryLost
from streaming.nx import NxStreamChecks
from streaming.tasks import cancel
from streaming.types import Clock, Document

logger = logging.getLogger("streaming.watcher")

WatchMode = Literal["poll", "await"]
FullDocument = Literal["updateLookup", "whenAvailable"]

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


class WatcherState(enum.Enum):
    """Lifecycle of a collection watcher."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    WATCHING = "watching"
    BACKOFF = "backoff"


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
    """True for errors after which reopening the stream from its token can work; after any
    other error the token is not trusted (the same failure would repeat on every resume)."""
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


async def wait_open(task: asyncio.Task[None], opened: asyncio.Event, timeout: float,
                    what: str) -> None:
    """Return once ``opened`` is set. If ``task`` (the one opening it) ended first, raise what
    it raised; after ``timeout`` seconds, TimeoutError naming ``what``."""
    waiter = asyncio.create_task(opened.wait())
    done, _ = await asyncio.wait({waiter, task}, timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return
    waiter.cancel()
    if task in done:
        task.result()
    raise TimeoutError(f"{what} did not open in {timeout} s")


def buffered(stream: object) -> int | None:
    """How many changes the driver holds for ``stream`` that need no read from the server
    (PyMongo's cursor buffer); None when the stream does not say."""
    data = getattr(getattr(stream, "_cursor", None), "_data", None)
    return len(data) if data is not None else None


# Hands one raw change on; returns the change's time (epoch ms) when it became an event.
ChangeHandler = Callable[[str, Document], int | None]
LostHandler = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """How a watcher reads its stream, backs off and checkpoints."""

    mode: WatchMode = "await"
    idle_interval: float = 0.025  # poll mode: how long to wait for a nudge between polls
    # Poll mode, once quiet: after ``quiet_polls`` empty polls in a row the wait doubles per
    # empty poll up to this; a change or a nudge (this process wrote) brings it back at once.
    idle_max_interval: float = 1.0
    quiet_polls: int = 40
    max_await_ms: int = 500  # await mode: the server blocks each getMore this long
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    checkpoint_interval: float = 0.25  # at most one token write per this many seconds
    stall_after: float = 3.0  # poll mode: silence after our own writes means a dead stream
    # "whenAvailable" reads each update's post-image (MongoDB >= 6 with
    # changeStreamPreAndPostImages on): the version of that very change.
    full_document: FullDocument = "updateLookup"
    # An idle stream's resume token still advances (postBatchResumeToken): saved at most
    # this often, so a quiet collection's checkpoint never falls behind the oplog.
    idle_checkpoint_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.idle_interval <= 0 or self.idle_interval > 1:
            raise ValueError(f"idle_interval must be in (0, 1] seconds, got {self.idle_interval!r}")
        if not self.idle_interval <= self.idle_max_interval <= 10:
            raise ValueError("idle_max_interval must be from idle_interval to 10 seconds, got "
                             f"{self.idle_max_interval!r}")
        if self.quiet_polls < 0:
            raise ValueError(f"quiet_polls must be >= 0, got {self.quiet_polls!r}")


@dataclass(frozen=True, slots=True)
class WatcherStats:
    """What a watcher reports; ``last_change_at`` is the last change's time in epoch ms."""

    state: str
    mode: str  # "poll" | "await" (MongoDB change streams), "binlog" (MySQL / MariaDB)
    reconnects: int
    history_losses: int
    errors: int
    stalls: int
    cursor_ends: int
    foreign_changes: int
    last_error: str | None
    lag_ms: int | None
    last_change_at: int | None
    last_batch: int
    checkpoint_age_s: float | None  # since the resume token was last saved


class CollectionWatcher:
    """Keeps one change stream open on one collection and hands every change to ``handler``."""

    def __init__(self, collection: CollectionLike, *, handler: ChangeHandler,
                 on_history_lost: LostHandler, options: WatchOptions | None = None,
                 breaker: CircuitBreaker | None = None,
                 checkpoints: CheckpointStore | None = None, clock: Clock = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.collection = collection
        self.name = collection.name
        self.handler = handler
        self.on_history_lost = on_history_lost
        self.options = options or WatchOptions()
        self.mode: WatchMode = self.options.mode
        self.breaker = breaker or CircuitBreaker()
        self.checkpoints = checkpoints
        self._clock = clock
        self._sleep = sleep
        self._backoff = Backoff(initial=self.options.backoff_initial,
                                maximum=self.options.backoff_max, rng=rng)
        # The embedded server's extra checks (see streaming.nx); none on a replica set.
        self._nx = (NxStreamChecks(clock=clock, stall_after=self.options.stall_after)
                    if self.mode == "poll" else None)
        self.state = WatcherState.STOPPED
        self.token: Any = None
        self.reconnects = 0
        self.history_losses = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_event_ms: int | None = None  # epoch ms of the last change handed on
        self.last_batch = 0
        self.cursor_ends = 0  # streams the server ended without an error (resumed)
        self.foreign_changes = 0  # changes of another namespace (the stream is reopened)
        self._saved_token: Any = None
        self._saved_at = 0.0
        self._unsaved_change = False
        self._nudged = asyncio.Event()
        self._empty_polls = 0  # poll mode: in a row, since the last change or nudge
        full_name = getattr(collection, "full_name", None)
        self._db_name = full_name.split(".", 1)[0] if isinstance(full_name, str) else None
        self._watching = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Set by stop(): the loops end at their next turn even if the cancel is lost on
        # the way (a library that catches CancelledError, or asyncio.wait_for on 3.11).
        self._stopping = False
        self._reset_reason: str | None = None
        self._lost_reason: str | None = None

    @property
    def stalls(self) -> int:
        """Streams reopened because they stayed silent after our writes (poll mode)."""
        return self._nx.stalls if self._nx is not None else 0

    def reset(self, reason: str) -> None:
        """Distrust the stream's history from here on (say, the server restarted and may have
        rewound or skipped its log): reopen from now, then subscribers resync."""
        self._reset_reason = reason
        self._nudged.set()

    def nudge(self) -> None:
        """Poll now (called right after this process writes a change), and keep polling at
        the busy pace for a while: more changes usually follow."""
        self.wake()
        if self._nx is not None:
            self._nx.nudged()

    def wake(self) -> None:
        """As ``nudge``, without promising a change (a write that may have changed nothing:
        silence after it is no sign of a dead stream)."""
        self._empty_polls = 0
        self._nudged.set()

    def writing(self) -> None:
        """Poll now, neither promising a change nor leaving the quiet pace: a write of this
        process is on its way (the read it starts may pass it; ``wake`` follows its reply)."""
        self._nudged.set()

    async def start(self, *, wait: bool = True, timeout: float = 15.0) -> None:
        """Start watching; with ``wait``, return once the stream is open."""
        if self._task is not None:
            raise RuntimeError(f"watcher for {self.name!r} is already running")
        if self.checkpoints is not None:
            self.token = await self.checkpoints.load(self.name)
            self._saved_token = self.token
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=f"watch-{self.name}")
        if wait:
            await wait_open(self._task, self._watching, timeout, f"change stream on {self.name!r}")

    async def stop(self) -> None:
        """Stop watching and save the last token."""
        task, self._task = self._task, None
        self._stopping = True
        self._nudged.set()
        await cancel(task)
        with contextlib.suppress(PyMongoError, BreakerOpenError):
            await self._checkpoint(force=True)
        self.state = WatcherState.STOPPED

    def poll_wait(self) -> float:
        """Poll mode: how long the next empty poll waits for a nudge. ``idle_interval``
        while changes come; once ``quiet_polls`` polls found nothing, twice as long per
        empty poll up to ``idle_max_interval``, so a quiet server costs next to nothing."""
        options = self.options
        quiet = self._empty_polls - options.quiet_polls
        if quiet <= 0:
            return options.idle_interval
        return min(options.idle_max_interval, options.idle_interval * 2.0 ** min(quiet, 30))

    def lag_ms(self, now_ms: int | None = None) -> int | None:
        """Now minus the time of the last change seen."""
        if self.last_event_ms is None:
            return None
        now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        return max(0, now_ms - self.last_event_ms)

    async def run(self) -> None:
        """The outer resume loop: open, consume, and on errors back off and reopen."""
        while not self._stopping:
            stream = None
            try:
                self.state = WatcherState.CONNECTING
                stream = await self.breaker.call(self._open)
                self._backoff.reset()
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
                    # Resuming from the token would meet the same error again (a change the
                    # handler cannot take, a token the server refuses): reopen from now.
                    logger.exception("unexpected error watching %s; reopening from now",
                                     self.name)
                    self._lose_history(f"{type(exc).__name__}: {exc}")
                self.state = WatcherState.BACKOFF
                self.reconnects += 1
                await self._sleep(self._backoff.next_delay())
            finally:
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await stream.close()

    def _lose_history(self, reason: str, *, reopening: bool = True) -> None:
        logger.warning("change history of %s lost (%s); subscribers resync", self.name, reason)
        self.history_losses += 1
        self.token = None
        if self._nx is not None:
            self._nx.forget_resume()
        if reopening:
            self._lost_reason = reason  # announced once the fresh stream is open
        else:
            self.on_history_lost(self.name, reason)  # the open stream goes on from here

    async def _open(self) -> Any:
        kwargs: dict[str, Any] = {"full_document": self.options.full_document}
        if self.mode == "await":
            kwargs["max_await_time_ms"] = self.options.max_await_ms
        token = self.token
        if self._nx is not None:
            await self._nx.check_resume(self.collection, token)
        if token is not None:
            kwargs["resume_after"] = token
        return await self.collection.watch(**kwargs)

    async def _consume(self, stream: ChangeStreamLike) -> None:
        batch = 0
        while True:
            if self._stopping:
                logger.warning("the watcher of %s was stopped but its cancel was lost; "
                               "it ends now", self.name)
                return
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
                    logger.debug("change stream on %s ended by the server; resuming", self.name)
                    return
                self.last_batch, batch = batch, 0
                if self._nx is not None:
                    gap = self._nx.check_idle(self.token, stream.resume_token)
                    if gap is not None:
                        self._lose_history(gap, reopening=False)
                self.token = stream.resume_token or self.token
                await self._checkpoint(idle=True)
                if self.mode == "poll":
                    # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes
                    # as the nudge ends the wait, and stop() then waited for good.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_wait()):
                            await self._nudged.wait()
                    self._empty_polls += 1
                continue
            batch += 1
            self._empty_polls = 0
            if self._nx is not None:
                self._nx.changed(change)
            self._check_namespace(change)
            op = change.get("operationType")
            if op in ("drop", "rename", "dropDatabase"):
                raise HistoryLost(f"collection {self.name} saw {op}")
            if op == "invalidate":
                self.token = None
                return
            at = self.handler(self.name, change)
            if at is not None:
                self.last_event_ms = at
            if buffered(stream) == 0:
                # The read's last change: let the fan-out pass the handler scheduled go out
                # before the checkpoint and the next read are built and sent (they would
                # hold it back by 0.1-0.3 ms, see bench.writepath). Changes the driver
                # still holds go on at once, into the same pass.
                await asyncio.sleep(0)
            # The token moves only after the hand-off: delivery is at-least-once.
            self.token = change.get("_id", stream.resume_token)
            self._unsaved_change = True
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

    async def _checkpoint(self, *, force: bool = False, idle: bool = False) -> None:
        if self.checkpoints is None or self.token is None or self.token == self._saved_token:
            return
        now = self._clock()
        interval = self.options.idle_checkpoint_interval if idle and not self._unsaved_change \
            else self.options.checkpoint_interval
        if not force and now - self._saved_at < interval:
            return
        token = self.token
        await self.checkpoints.save(self.name, token)
        self._saved_token, self._saved_at = token, now
        self._unsaved_change = False

    def stats(self) -> WatcherStats:
        """State, reconnects, history losses, lag and the size of the last batch."""
        return WatcherStats(
            state=self.state.value, mode=self.mode, reconnects=self.reconnects,
            history_losses=self.history_losses, errors=self.errors, stalls=self.stalls,
            cursor_ends=self.cursor_ends, foreign_changes=self.foreign_changes,
            last_error=self.last_error, lag_ms=self.lag_ms(), last_change_at=self.last_event_ms,
            last_batch=self.last_batch,
            checkpoint_age_s=self.checkpoint_age_s())

    def checkpoint_age_s(self) -> float | None:
        """Seconds since the resume token was last saved (None before the first save)."""
        return round(self._clock() - self._saved_at, 3) if self._saved_at else None
