"""Group commit (``backend.domain.batching``) for the pipeline's writes.

Its idempotent inserts (audit entries, notifications): each of these documents has a
deterministic id, so writing one twice changes nothing, and none has to be written
alone. Those that arrive while one ``insert_many`` is in flight go out together in the
next. Its transitions: conditional updates of one order each, sent many per
``bulk_write``, each knowing by its token whether it was applied.
"""

from __future__ import annotations

import logging

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from backend.domain.batching import GroupCommit, Spawn, insert_each
from streaming import Document

logger = logging.getLogger("changecast.pipeline")


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
            # A write-concern error: what has no error of its own was written.
            errors = await insert_each(self.collection, docs, despite_write_concern=True)
        except PyMongoError as exc:
            logger.warning("%s: %d documents not written: %s", self.collection.name,
                           len(docs), exc)
            return [False] * len(docs)
        there = [error is None or isinstance(error, DuplicateKeyError) for error in errors]
        for doc, error, ok in zip(docs, errors, there, strict=True):
            if not ok:
                logger.warning("%s %s not written: %s", self.collection.name, doc["_id"], error)
        return there


class UpdateBatcher(GroupCommit[tuple[Document, Document, str], bool]):
    """``await update(query, change, proof)``: True when this conditional update of one
    document applied. Those waiting meanwhile go in one unordered ``bulk_write``; when
    fewer matched than were sent, one read of the documents' ``proof_field`` says which
    were these (each update writes its own ``proof`` there: a transition's token).
    A database error is raised to each caller of that batch, as its own update would."""

    def __init__(self, collection: AsyncCollection[Document], *, proof_field: str,
                 max_batch: int = 256, spawn: Spawn | None = None) -> None:
        super().__init__(max_batch=max_batch, spawn=spawn)
        self.collection = collection
        self.proof_field = proof_field

    async def update(self, query: Document, change: Document, proof: str) -> bool:
        return await self.submit((query, change, proof))

    async def send(self, requests: list[tuple[Document, Document, str]]) -> list[bool]:
        try:
            result = await self.collection.bulk_write(
                [UpdateOne(query, change) for query, change, _ in requests], ordered=False)
            if result.matched_count == len(requests):
                return [True] * len(requests)
        except BulkWriteError as exc:  # some refused: which were applied is read below
            logger.warning("%s: %d of %d updates refused: %s", self.collection.name,
                           len(exc.details.get("writeErrors", ())), len(requests), exc)
        proofs = {doc["_id"]: doc.get(self.proof_field) async for doc in self.collection.find(
            {"_id": {"$in": [query["_id"] for query, _, _ in requests]}},
            {self.proof_field: 1})}
        return [proofs.get(query["_id"]) == proof for query, _, proof in requests]
