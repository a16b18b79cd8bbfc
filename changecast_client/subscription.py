"""One subscription: its view, its last applied ``seq``, and the events it yields."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from changecast_client.errors import ChangeCastError, ConnectError
from changecast_client.events import (
    Change,
    Diff,
    Document,
    Event,
    ResyncBegin,
    ResyncEnd,
    Snapshot,
    apply,
)

_END = object()


class Connection(Protocol):
    """What a subscription needs of its client (``Client``)."""

    def _next_id(self) -> str: ...
    async def _request_subscribe(self, sub: Subscription, sub_id: str,
                                 resume_from: int | None) -> dict[str, Any]: ...
    async def _unsubscribe(self, sub: Subscription) -> None: ...
    async def load(self, collection: str, where: str | None) -> tuple[dict[str, Any], int]: ...
    def spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None: ...


class Subscription:
    """Iterate it (``async for event in sub``) for the events; read ``view`` for the documents
    as of the last event applied (a ``dict`` by key, kept current whether or not anyone
    iterates); ``seq`` is the last change applied."""

    def __init__(self, client: Connection, collection: str, where: str | None, *, snapshot: bool,
                 events: bool, max_pending: int) -> None:
        self.client = client
        self.collection = collection
        self.where = where
        self.snapshot = snapshot
        self.view: dict[str, Document] = {}
        self.seq: int | None = None
        self.changes = 0  # changes applied
        self.duplicates = 0  # changes the server sent again (a replay) and were dropped
        self.resyncs = 0
        self._queue: asyncio.Queue[Any] | None = asyncio.Queue(max_pending) if events else None
        self._need_snapshot = snapshot
        self._resyncing = False
        self._resync_epoch = 0  # resyncs so far: an attach ends the one it was started for
        self._attach_epoch = 0  # the resyncs so far when the last attach started
        self._attaching = asyncio.Lock()
        self._ended = False
        self._error: ChangeCastError | None = None

    # ---- what the application sees ------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._queue is None:
            raise TypeError("subscribed with events=False: read .view instead")
        if self._ended and self._queue.empty():
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later call ends too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def unsubscribe(self) -> None:
        """Stop this subscription; its iterator ends."""
        await self.client._unsubscribe(self)
        self._end(None)

    # ---- what the client drives ---------------------------------------------------------

    async def _emit(self, event: Event) -> None:
        if self._queue is not None and not self._ended:
            await self._queue.put(event)  # a full queue holds the socket: the server copes

    def _end(self, error: ChangeCastError | None) -> None:
        if self._ended:
            return
        self._ended, self._error = True, error
        if self._queue is not None:
            try:
                self._queue.put_nowait(_END)
            except asyncio.QueueFull:  # the application is behind: make room for the end
                self._queue.get_nowait()
                self._queue.put_nowait(_END)

    async def _attach(self, *, first: bool) -> None:
        """(Re)subscribe: load the snapshot when one is due, then subscribe from the last
        applied ``seq`` (the server replays what was missed, or says resync)."""
        async with self._attaching:
            if self._ended:
                return
            epoch = self._resync_epoch
            if self._need_snapshot:
                docs, seq = await self._load(first)
                self.view.clear()
                self.view.update(docs)
                self.seq = seq
                self._need_snapshot = False
                await self._emit(Snapshot(dict(docs), seq))
            client = self.client
            self._attach_epoch = epoch
            await client._request_subscribe(self, client._next_id(), self.seq)

    async def _subscribed(self, reply: dict[str, Any]) -> None:
        """The server's ``subscribed`` for this attach, handled by the reader as it comes:
        before any change behind it on the socket (in the attach, after its wait, a change
        read in the same moment came first, and a resync's end after that change)."""
        if self.seq is None:
            self.seq = int(reply.get("seq", 0))  # changes after this one are ours
        if self._resyncing and self._attach_epoch == self._resync_epoch:
            # (A resync that came right behind this ``subscribed`` is the next attach's.)
            self._resyncing = False
            await self._emit(ResyncEnd(self.seq))

    async def _load(self, first: bool) -> tuple[dict[str, Document], int]:
        """The snapshot; after the first, retried while the server cannot serve it (say the
        database is down), as long as the connection is up."""
        attempt = 0
        while True:
            try:
                return await self.client.load(self.collection, self.where)
            except ConnectError:
                if first:
                    raise
            except ChangeCastError as exc:
                if first or exc.code not in ("503", "unavailable", "500", "error"):
                    raise
            attempt += 1
            await asyncio.sleep(min(5.0, 0.1 * 2 ** attempt))

    async def _change(self, msg: dict[str, Any]) -> None:
        seq = msg["seq"]
        if self.seq is not None and seq <= self.seq:
            self.duplicates += 1
            return
        changes = msg.get("changes")
        change = Change(op=msg["op"], key=str(msg["key"]), seq=seq,
                        collection=msg.get("collection", self.collection), at=msg.get("at"),
                        doc=msg.get("doc"),
                        diff=Diff(dict(changes.get("set") or {}), list(changes.get("unset") or []))
                        if changes else None)
        apply(self.view, change)
        self.seq = seq
        self.changes += 1
        await self._emit(change)

    async def _resync(self, reason: str) -> None:
        """The server closed this subscription (it cannot replay the gap): reload and
        subscribe again beside the reader."""
        self.resyncs += 1
        self._resync_epoch += 1
        self._resyncing = True
        self._need_snapshot = self.snapshot
        if not self.snapshot:
            self.seq = None  # no snapshot to resume from: live from now on
        await self._emit(ResyncBegin(reason))

        async def again() -> None:
            with contextlib.suppress(ConnectError, asyncio.TimeoutError):
                await self._attach(first=False)  # a lost connection re-attaches on its own
        self.client.spawn(again)
