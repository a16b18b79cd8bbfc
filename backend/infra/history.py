"""How much change history the server keeps, against how old the resume checkpoints are.

A stream resumes from its stored token only while the server still has the history after
it: on a replica set, the oplog window (time from its first to its last entry); on the
embedded server, the last ``NX_RETENTION_ROWS`` changes of each collection. A checkpoint
older than half the window is at risk: a restart then may end in history lost (code 286)
and a resync for everybody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from streaming import Document
from streaming.nx import NX_RETENTION_ROWS
from streaming.tasks import cancel

logger = logging.getLogger("changecast.history")

REFRESH_S = 30.0


@dataclass(frozen=True, slots=True)
class CheckpointRisk:
    """One stream's checkpoint against the history the server keeps."""

    age_s: float | None
    headroom_s: float | None  # the window minus the age
    at_risk: bool  # older than half the window


@dataclass(frozen=True, slots=True)
class HistoryStats:
    """``kind``: "oplog" (a replica set: ``window_s``) or "bounded" (the embedded server:
    ``retained_changes`` per collection); ``checkpoints`` per watched collection."""

    kind: str
    window_s: float | None
    retained_changes: int | None
    checkpoints: dict[str, CheckpointRisk]

    @property
    def at_risk(self) -> list[str]:
        return sorted(name for name, risk in self.checkpoints.items() if risk.at_risk)


def assess(window_s: float | None, ages: Mapping[str, float | None], *, kind: str = "oplog",
           retained_changes: int | None = None) -> HistoryStats:
    """Each checkpoint's headroom, and a warning past half the window."""
    checkpoints = {}
    for name, age in ages.items():
        if window_s is None or age is None:
            checkpoints[name] = CheckpointRisk(age, None, False)
        else:
            checkpoints[name] = CheckpointRisk(round(age, 3), round(window_s - age, 3),
                                               age > window_s / 2)
    return HistoryStats(kind, window_s, retained_changes, checkpoints)


async def oplog_window_s(client: AsyncMongoClient[Document]) -> float | None:
    """Seconds between the oplog's first and last entries (None when it cannot be read)."""
    oplog = client.local["oplog.rs"]
    first = await oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)])
    last = await oplog.find_one({}, {"ts": 1}, sort=[("$natural", -1)])
    if first is None or last is None:
        return None
    a, b = first.get("ts"), last.get("ts")
    if not isinstance(a, Timestamp) or not isinstance(b, Timestamp):
        return None
    return float(b.time - a.time)


class HistoryMonitor:
    """Keeps the oplog window fresh (every ``REFRESH_S`` on a replica set) and reports it
    against the engine's checkpoint ages; logs a warning when one is at risk."""

    def __init__(self, client: AsyncMongoClient[Document], *, replica_set: bool,
                 checkpoint_ages: Callable[[], Mapping[str, float | None]],
                 refresh_s: float = REFRESH_S) -> None:
        self.client = client
        self.replica_set = replica_set
        self.checkpoint_ages = checkpoint_ages
        self.refresh_s = refresh_s
        self.window_s: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()

    async def start(self) -> None:
        if self.replica_set:
            await self.refresh()
            self._task = asyncio.create_task(self._loop(), name="oplog-window")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def refresh(self) -> None:
        try:
            self.window_s = await oplog_window_s(self.client)
        except PyMongoError as exc:  # no access to local, or the server is away
            logger.warning("oplog window not measured: %s", exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()
            self._warn(self.stats())

    def stats(self) -> HistoryStats:
        ages = self.checkpoint_ages()
        if not self.replica_set:
            return assess(None, ages, kind="bounded", retained_changes=NX_RETENTION_ROWS)
        return assess(self.window_s, ages)

    def _warn(self, stats: HistoryStats) -> None:
        for name in stats.at_risk:
            if name not in self._warned:
                risk = stats.checkpoints[name]
                logger.warning("checkpoint of %s is %.0f s old, past half the oplog window "
                               "(%.0f s): a restart now may lose history", name, risk.age_s,
                               stats.window_s)
        self._warned = set(stats.at_risk)
