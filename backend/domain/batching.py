"""Group commit: one database command for what many callers ask at the same moment.

The first request goes out at once; the ones that arrive while it is in flight wait
and go out together as soon as it returns, and so on. So nothing waits for a timer,
a quiet process sends each request by itself, and a busy one sends one command for
many: on the embedded server, which runs one command at a time, that is most of a
command's cost saved per request. Every request is sent after it was made, so a read
sees every write acknowledged before it was asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WriteError

from streaming import Document

Request = TypeVar("Request")
Answer = TypeVar("Answer")
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[Any]"]


class GroupCommit(Generic[Request, Answer]):
    """``await submit(request)``: the answer :meth:`send` gave it, sent with whatever else
    was waiting (at most ``max_batch`` at once); what ``send`` raises, every request of
    that batch raises."""

    def __init__(self, *, max_batch: int = 256, spawn: Spawn | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self._spawn = spawn
        self._waiting: list[tuple[Request, asyncio.Future[Answer]]] = []
        self._sender: asyncio.Task[Any] | None = None  # held: the loop keeps only weak refs

    async def send(self, requests: list[Request]) -> list[Answer]:
        """One command for ``requests``; an answer for each, in order."""
        raise NotImplementedError

    async def submit(self, request: Request) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._sender is None:
            sending = self._send_all()
            self._sender = self._spawn(sending) if self._spawn else asyncio.ensure_future(sending)
        return await future

    async def _send_all(self) -> None:
        batch: list[tuple[Request, asyncio.Future[Answer]]] = []
        try:
            while self._waiting:
                batch = self._waiting[:self.max_batch]
                del self._waiting[:self.max_batch]
                try:
                    answers = await self.send([request for request, _ in batch])
                except Exception as exc:  # handed to each caller, who decides
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), answer in zip(batch, answers, strict=True):
                        if not future.done():
                            future.set_result(answer)
                batch = []
        finally:
            self._sender = None
            # Cancelled (the process is stopping): nobody is left waiting for good.
            for _, future in (*batch, *self._waiting):
                if not future.done():
                    future.cancel()
            self._waiting.clear()


class ByIdReader(GroupCommit[tuple[Any, ...], dict[Any, Document]]):
    """``await read(ids)``: the documents of ``collection`` with those ids (absent ones
    left out), read with ``projection`` in one ``find`` together with every other read
    waiting meanwhile."""

    def __init__(self, collection: AsyncCollection[Document], projection: Document, *,
                 max_batch: int = 256, spawn: Spawn | None = None) -> None:
        super().__init__(max_batch=max_batch, spawn=spawn)
        self.collection = collection
        self.projection = projection

    async def read(self, ids: list[Any]) -> dict[Any, Document]:
        return await self.submit(tuple(ids))

    async def send(self, requests: list[tuple[Any, ...]]) -> list[dict[Any, Document]]:
        wanted = list(dict.fromkeys(key for ids in requests for key in ids))
        found = {doc["_id"]: doc async for doc in self.collection.find(
            {"_id": {"$in": wanted}}, self.projection)}
        return [{key: found[key] for key in ids if key in found} for ids in requests]


DUPLICATE_KEY = 11000


class DocumentInserter(GroupCommit[Document, PyMongoError | None]):
    """``await insert(doc)``: as ``insert_one(doc)``, sent in one unordered ``insert_many``
    with every insert waiting meanwhile. A write error of this document is raised to its
    caller alone (a duplicate id as ``DuplicateKeyError``, as ``insert_one`` raises it);
    an error of the whole command, to every caller of that batch."""

    def __init__(self, collection: AsyncCollection[Document], *, max_batch: int = 256,
                 spawn: Spawn | None = None) -> None:
        super().__init__(max_batch=max_batch, spawn=spawn)
        self.collection = collection

    async def insert(self, doc: Document) -> None:
        if (error := await self.submit(doc)) is not None:
            raise error

    async def send(self, docs: list[Document]) -> list[PyMongoError | None]:
        return await insert_each(self.collection, docs)


async def insert_each(collection: AsyncCollection[Document], docs: list[Document], *,
                      despite_write_concern: bool = False) -> list[PyMongoError | None]:
    """One unordered ``insert_many`` of ``docs``: for each, None when written, else its own
    write error (a duplicate id as ``DuplicateKeyError``). An error of the whole command
    is raised, and so is a write-concern error unless ``despite_write_concern`` (then the
    documents without a write error of their own count as written)."""
    answers: list[PyMongoError | None] = [None] * len(docs)
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors") and not despite_write_concern:
            raise
        for error in exc.details.get("writeErrors", ()):
            kind = DuplicateKeyError if error.get("code") == DUPLICATE_KEY else WriteError
            answers[int(error["index"])] = kind(error.get("errmsg", "write error"),
                                                error.get("code"), error)
    return answers
