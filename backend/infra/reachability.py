"""Is the database answering? One ping every ``interval_s``, so that every open page can be
told when it stops (and when it is back) without anyone having to click first."""

from __future__ import annotations

import asyncio
import logging

from backend.infra.database import Database
from streaming.tasks import cancel

logger = logging.getLogger("changecast.database")


class Reachability:
    """The database's reachability as last measured; ``changed`` wakes on each flip.

    Down after ``misses`` failed pings in a row (one slow answer under load is not an
    outage), up again at the first answer."""

    def __init__(self, database: Database, *, interval_s: float = 0.5, timeout_s: float = 0.75,
                 misses: int = 2) -> None:
        self.database = database
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.misses = misses
        self.reachable = True
        self.version = 0
        self._failed = 0
        self._flipped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="changecast-reachability")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def changed(self, version: int) -> int:
        """Wait until the state is no longer the one of ``version``; the new version."""
        while self.version == version:
            await self._flipped.wait()
        return self.version

    def observe(self, answered: bool) -> None:
        """One ping's outcome."""
        self._failed = 0 if answered else self._failed + 1
        if answered and not self.reachable:
            self._flip(True)
        elif not answered and self.reachable and self._failed >= self.misses:
            self._flip(False)

    def _flip(self, reachable: bool) -> None:
        self.reachable = reachable
        self.version += 1
        if reachable:
            logger.info("the database answers again")
        else:
            logger.warning("the database does not answer; pages show their last known data")
        flipped, self._flipped = self._flipped, asyncio.Event()
        flipped.set()

    async def _run(self) -> None:
        while True:
            self.observe(await self.database.ping(timeout=self.timeout_s))
            await asyncio.sleep(self.interval_s)  # the pace of the pings
