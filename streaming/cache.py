"""An LRU document cache kept coherent by the change stream, read-through on a miss."""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from streaming.breaker import CircuitBreaker
from streaming.types import Document

Loader = Callable[[str, Any], Awaitable[Document | None]]
_ABSENT: Any = object()


class _Counting(LRUCache[tuple[str, Any], tuple[Document | None, bool]]):
    evictions = 0
    complete: set[str]

    def popitem(self) -> tuple[tuple[str, Any], tuple[Document | None, bool]]:
        item = super().popitem()
        self.evictions += 1
        self.complete.discard(item[0][0])
        return item


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Hits, misses, evictions, size and hit ratio."""

    hits: int
    misses: int
    evictions: int
    size: int
    maxsize: int
    hit_ratio: float


class DocumentCache:
    """Documents by (collection, id). Stream changes overwrite; loads never overwrite newer data.

    Each entry remembers whether it came from the stream: only stream versions
    may serve as the "before" image when diffing the next change, because a
    version loaded from the database may already include changes the stream
    has not delivered yet.
    """

    def __init__(self, *, maxsize: int = 10_000, loader: Loader | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
        self._data = _Counting(maxsize=maxsize)
        # Collections held whole (primed, nothing evicted since): lists can be served here.
        self._data.complete = set()
        self._loader = loader
        self._breaker = breaker
        # Bumped whenever the stream touches a key: a load that started earlier is stale.
        self._generation: dict[tuple[str, Any], int] = {}
        self._epoch = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def evictions(self) -> int:
        """Entries pushed out by the LRU policy."""
        return self._data.evictions

    def stats(self) -> CacheStats:
        """Hits, misses, evictions, size and hit ratio."""
        total = self.hits + self.misses
        return CacheStats(hits=self.hits, misses=self.misses, evictions=self.evictions,
                          size=len(self._data), maxsize=int(self._data.maxsize),
                          hit_ratio=round(self.hits / total, 4) if total else 0.0)

    def store(self, collection: str, key: Any, doc: Document | None) -> None:
        """The stream delivered ``doc`` as the new version of ``key`` (None: it was deleted)."""
        slot = (collection, key)
        self._generation[slot] = self._generation.get(slot, 0) + 1
        if len(self._generation) > 4 * self._data.maxsize:
            # Bounded memory; the epoch makes every load that started before this one stale.
            self._generation.clear()
            self._epoch += 1
        self._data[slot] = (doc, True)

    def stream_version(self, collection: str, key: Any) -> Document | Any | None:
        """The last version the stream delivered, None if deleted, or ABSENT when unknown."""
        entry = self._data.get((collection, key))
        if entry is None or not entry[1]:
            return _ABSENT
        return entry[0]

    def peek(self, collection: str, key: Any) -> Document | None:
        """The cached version of a document, if any: no load, no hit or miss counted."""
        entry = self._data.get((collection, key))
        return entry[0] if entry is not None else None

    def prime(self, collection: str, docs: list[Document], *,
              key: Callable[[Document], Any] = operator.itemgetter("_id")) -> None:
        """Seed stream versions from a snapshot read after the stream was opened."""
        if len(docs) > self._data.maxsize:
            return
        for doc in docs:
            self._data[(collection, key(doc))] = (doc, True)
        self._data.complete.add(collection)

    def documents(self, collection: str) -> list[Document] | None:
        """Every document of a collection held whole, or None when it is not."""
        if collection not in self._data.complete:
            return None
        return [entry[0] for key, entry in self._data.items()
                if key[0] == collection and entry[0] is not None]

    def invalidate(self, collection: str | None = None) -> None:
        """Forget one collection's documents, or everything."""
        if collection is None:
            self._data.clear()
            self._generation.clear()
            self._epoch += 1
            self._data.complete.clear()
            return
        self._data.complete.discard(collection)
        for key in [k for k in self._data if k[0] == collection]:
            del self._data[key]
            self._generation[key] = self._generation.get(key, 0) + 1

    async def get(self, collection: str, key: Any) -> Document | None:
        """The document, from memory or (on a miss) from the loader through the breaker."""
        entry = self._data.get((collection, key))
        if entry is not None:
            self.hits += 1
            return entry[0]
        self.misses += 1
        if self._loader is None:
            return None
        generation = (self._epoch, self._generation.get((collection, key), 0))
        loader = self._loader
        if self._breaker is not None:
            doc = await self._breaker.call(lambda: loader(collection, key))
        else:
            doc = await loader(collection, key)
        if (self._epoch, self._generation.get((collection, key), 0)) == generation:
            self._data[(collection, key)] = (doc, False)
        else:
            # The stream applied a change while we were loading: its version wins.
            newer = self._data.get((collection, key))
            if newer is not None:
                return newer[0]
        return doc


ABSENT = _ABSENT
