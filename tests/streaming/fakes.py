"""Scripted change streams and collections for watcher tests (no database)."""

from __future__ import annotations

import asyncio
from typing import Any


def change(n: int, op: str = "insert", coll: str = "orders", nx: bool = False) -> dict[str, Any]:
    token = {"_data": f"nx:{n}"} if nx else {"_data": f"T{n:04d}"}
    doc = {"_id": f"k{n}", "n": n}
    return {"_id": token, "operationType": op, "fullDocument": doc,
            "documentKey": {"_id": doc["_id"]}, "ns": {"db": "t", "coll": coll}}


ENDED = "ended"  # a script item: the server ends the cursor (the driver then returns None)


class FakeStream:
    """Yields scripted items (changes, exceptions to raise, or ``ENDED``), then waits or
    returns None."""

    def __init__(self, items: list[Any], *, poll: bool, head: Any = None) -> None:
        self.items = list(items)
        self.poll = poll
        self.resume_token: Any = head
        self.closed = False
        self.alive = True

    async def try_next(self) -> dict[str, Any] | None:
        if not self.alive:
            return None
        if self.items:
            item = self.items.pop(0)
            if item == ENDED:
                self.alive = False
                return None
            if isinstance(item, BaseException):
                raise item
            self.resume_token = item["_id"]
            return item  # type: ignore[no-any-return]
        if not self.poll:
            await asyncio.Event().wait()  # a server-side await that never ends
        return None

    async def close(self) -> None:
        self.closed = True


class FakeCollection:
    """Each ``watch()`` takes the next script entry: an exception to raise, or a stream."""

    def __init__(self, name: str, scripts: list[Any], *, poll: bool = False,
                 head: Any = None) -> None:
        self.name = name
        self.scripts = list(scripts)
        self.poll = poll
        self.head = head
        self.calls: list[dict[str, Any]] = []

    async def watch(self, *args: Any, **kwargs: Any) -> FakeStream:
        self.calls.append(kwargs)
        if not kwargs:  # a head probe (NX mode)
            return FakeStream([], poll=True, head=self.head)
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, BaseException):
            raise script
        return FakeStream(script, poll=self.poll)
