"""What a stream on the embedded NX-27017 server needs beyond a MongoDB change stream.

NX-27017 is not MongoDB (see docs/embedded-database.md), and a watcher in
``poll`` mode checks what a replica set guarantees by itself:

- it accepts any resume token silently: a token past the head of the change
  log means the database was reset under us;
- it prunes its change log to the newest ``NX_RETENTION_ROWS`` rows of a
  collection, so a long replay after a gap may have lost rows;
- after a ``kill -9`` its log was seen to go backwards, or a stream to stay
  silent while this process kept writing.

Each check raises :class:`HistoryLost` (or returns a reason), and the watcher
resyncs its subscribers; none of them runs against a replica set.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from streaming.errors import HistoryLost
from streaming.types import Clock, Document

# NX-27017 keeps this many change rows per collection when it prunes.
NX_RETENTION_ROWS = 1_000


class _Watchable(Protocol):
    async def watch(self, *args: Any, **kwargs: Any) -> Any: ...


def nx_rowid(token: Any) -> int | None:
    """The change-log row id inside an NX-27017 resume token (``{"_data": "nx:N"}``)."""
    data = token.get("_data") if isinstance(token, dict) else None
    if isinstance(data, str) and data.startswith("nx:"):
        with contextlib.suppress(ValueError):
            return int(data[3:])
    return None


class NxStreamChecks:
    """The embedded server's extra checks for one collection's stream."""

    def __init__(self, *, clock: Clock, stall_after: float) -> None:
        self._clock = clock
        self.stall_after = stall_after
        self.stalls = 0
        # Nudges (our own writes) not yet followed by any change: a stream that stays
        # silent through several of them for stall_after seconds is dead.
        self._unanswered = 0
        self._unanswered_since: float | None = None
        self._resumed_rowid: int | None = None
        self._first_rowid: int | None = None
        self._replayed = 0

    async def check_resume(self, collection: _Watchable, token: Any) -> None:
        """Before resuming from ``token``: refuse a token past the head of the log."""
        self._resumed_rowid = None
        rowid = nx_rowid(token)
        if rowid is None:
            return
        head_stream = await collection.watch()
        head = nx_rowid(head_stream.resume_token)
        await head_stream.close()
        if head is not None and rowid > head:
            raise HistoryLost(f"resume token {rowid} is past the head {head}")
        self._resumed_rowid, self._first_rowid, self._replayed = rowid, None, 0

    def nudged(self) -> None:
        """This process just wrote: a change should follow."""
        if self._unanswered_since is None:
            self._unanswered_since = self._clock()
        self._unanswered += 1

    def changed(self, change: Document) -> None:
        """A change arrived: the stream is alive; count it towards a replay."""
        self._unanswered, self._unanswered_since = 0, None
        if self._resumed_rowid is not None:
            self._replayed += 1
            if self._first_rowid is None:
                self._first_rowid = nx_rowid(change.get("_id"))

    def check_idle(self, ours: Any, server_token: Any) -> str | None:
        """At the end of a batch: raise HistoryLost when the log went backwards or the stream
        stays silent after our writes; return a reason when a replay may have lost rows."""
        mine, theirs = nx_rowid(ours), nx_rowid(server_token)
        if mine is not None and theirs is not None and theirs < mine:
            raise HistoryLost(f"the server's change log went back from {mine} to {theirs}")
        since = self._unanswered_since
        if since is not None and self._unanswered >= 3 and self._clock() - since > self.stall_after:
            self.stalls += 1
            self._unanswered, self._unanswered_since = 0, None
            raise HistoryLost(f"no change arrived for {self.stall_after:.0f} s after "
                              "this process wrote; the stream is reopened")
        return self._replay_gap()

    def forget_resume(self) -> None:
        """The history is lost anyway: no replay to check."""
        self._resumed_rowid = None

    def _replay_gap(self) -> str | None:
        if self._resumed_rowid is None:
            return None
        resumed, first, replayed = self._resumed_rowid, self._first_rowid, self._replayed
        self._resumed_rowid = None
        # NX prunes down to the newest NX_RETENTION_ROWS rows of a collection, so a
        # replay that short cannot have lost anything; one that long after a hole may have.
        if first is not None and first > resumed + 1 and replayed >= NX_RETENTION_ROWS:
            return (f"replayed {replayed} changes after a gap from {resumed} to {first}; "
                    "older ones may have been pruned")
        return None
