"""Group commit for the pipeline's idempotent inserts (audit entries, notifications).

Each of these documents has a deterministic id, so writing one twice changes nothing,
and none has to be written alone. The first insert goes out at once; the ones that
arrive while it is in flight wait and go out together in one ``insert_many`` as soon
as it returns, and so on. So nothing waits for a timer, a quiet pipeline writes each
document by itself, and a busy one sends one command for many: on the embedded server,
which runs one command at a time, that is most of a command's cost saved per document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from streaming import Document

logger = logging.getLogger("changecast.pipeline")

DUPLICATE_KEY = 11000


class InsertBatcher:
    """``await insert(doc)``: True once the document is in the collection (written now, or
    by an earlier write of the same id), False when the database refused it."""

    def __init__(self, collection: AsyncCollection[Document], *, max_batch: int = 256,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]] =
                 asyncio.ensure_future) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.collection = collection
        self.max_batch = max_batch
        self._spawn = spawn
        self._waiting: list[tuple[Document, asyncio.Future[bool]]] = []
        self._writing = False

    async def insert(self, doc: Document) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((doc, future))
        if not self._writing:
            self._writing = True
            self._spawn(self._write_all())
        return await future

    async def _write_all(self) -> None:
        batch: list[tuple[Document, asyncio.Future[bool]]] = []
        try:
            while self._waiting:
                batch = self._waiting[:self.max_batch]
                del self._waiting[:self.max_batch]
                outcomes = await self._write(batch)
                for (_, future), ok in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(ok)
                batch = []
        finally:
            self._writing = False
            # Cancelled (the pipeline stopped): nobody is left waiting for good.
            for _, future in (*batch, *self._waiting):
                if not future.done():
                    future.cancel()
            self._waiting.clear()

    async def _write(self, batch: list[tuple[Document, Any]]) -> list[bool]:
        docs = [doc for doc, _ in batch]
        try:
            await self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            refused = {int(error["index"]) for error in exc.details.get("writeErrors", ())
                       if error.get("code") != DUPLICATE_KEY}
            for index in sorted(refused):
                logger.warning("%s %s not written: %s", self.collection.name,
                               docs[index]["_id"], exc)
            return [index not in refused for index in range(len(docs))]
        except PyMongoError as exc:
            logger.warning("%s: %d documents not written: %s", self.collection.name,
                           len(docs), exc)
            return [False] * len(docs)
        return [True] * len(docs)
