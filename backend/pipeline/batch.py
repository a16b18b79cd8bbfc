"""Group commit (``backend.domain.batching``) for the pipeline's idempotent inserts (audit
entries, notifications): each of these documents has a deterministic id, so writing one
twice changes nothing, and none has to be written alone. Those that arrive while one
``insert_many`` is in flight go out together in the next.
"""

from __future__ import annotations

import logging

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from backend.domain.batching import GroupCommit, Spawn
from streaming import Document

logger = logging.getLogger("changecast.pipeline")

DUPLICATE_KEY = 11000


class InsertBatcher(GroupCommit[Document, bool]):
    """``await insert(doc)``: True once the document is in the collection (written now, or
    by an earlier write of the same id), False when the database refused it."""

    def __init__(self, collection: AsyncCollection[Document], *, max_batch: int = 256,
                 spawn: Spawn | None = None) -> None:
        super().__init__(max_batch=max_batch, spawn=spawn)
        self.collection = collection

    async def insert(self, doc: Document) -> bool:
        return await self.submit(doc)

    async def send(self, docs: list[Document]) -> list[bool]:
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
