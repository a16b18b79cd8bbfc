"""One database deadline per API request, which only database work runs against.

The clock starts once the request body has arrived (a slow upload gets its own read
timeout, see ``security``), and work that is not the database's, such as checking a
password, runs off the clock (:func:`off_the_clock`): neither can make the database
look slow, so neither can open the circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from typing import TypeVar

import pymongo

T = TypeVar("T")

# PyMongo's own deadline for an API request's database calls, and a hard cap on top:
# its server selection re-checks only every 0.5 s, so alone it can overrun to ~1 s.
API_DEADLINE_S = 0.5
API_HARD_CAP_S = 0.8

_CURRENT: ContextVar[asyncio.Timeout | None] = ContextVar("changecast_deadline", default=None)


@contextlib.asynccontextmanager
async def database_deadline(*, deadline_s: float = API_DEADLINE_S,
                            hard_cap_s: float = API_HARD_CAP_S) -> AsyncIterator[None]:
    """Bound the database time of the block: PyMongo's deadline, and a hard cap above it
    (TimeoutError when the cap is reached)."""
    async with asyncio.timeout(hard_cap_s) as cap:
        token = _CURRENT.set(cap)
        try:
            with pymongo.timeout(deadline_s):
                yield
        finally:
            _CURRENT.reset(token)


async def off_the_clock(work: Awaitable[T]) -> T:
    """Await ``work`` with the request's hard cap stopped (CPU work, a queue for a thread
    pool): its time does not count towards the cap. PyMongo's own deadline keeps running,
    so do the database calls of a request before such work, not after it."""
    cap = _CURRENT.get()
    when = cap.when() if cap is not None else None
    if cap is None or when is None:
        return await work
    loop = asyncio.get_running_loop()
    remaining = when - loop.time()
    cap.reschedule(None)
    try:
        return await work
    finally:
        cap.reschedule(loop.time() + max(remaining, 0.0))
