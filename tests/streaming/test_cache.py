from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streaming.cache import ABSENT, DocumentCache


async def test_cache_read_through_counts_hits_and_misses() -> None:
    loads: list[Any] = []

    async def loader(collection: str, key: Any) -> dict[str, Any]:
        loads.append(key)
        return {"_id": key, "stock": 5}

    cache = DocumentCache(maxsize=10, loader=loader)
    assert await cache.get("products", "a") == {"_id": "a", "stock": 5}
    assert await cache.get("products", "a") == {"_id": "a", "stock": 5}
    assert loads == ["a"]
    assert cache.stats().hits == 1 and cache.stats().misses == 1
    assert cache.stats().hit_ratio == 0.5


async def test_cache_stream_changes_overwrite_and_delete_evicts() -> None:
    cache = DocumentCache(maxsize=10)
    cache.store("products", "a", {"_id": "a", "stock": 1})
    cache.store("products", "a", {"_id": "a", "stock": 2})
    assert await cache.get("products", "a") == {"_id": "a", "stock": 2}
    cache.store("products", "a", None)
    assert await cache.get("products", "a") is None


async def test_cache_lru_evicts_least_recently_used() -> None:
    cache = DocumentCache(maxsize=2)
    for key in "abc":
        cache.store("products", key, {"_id": key})
    assert cache.evictions == 1
    assert cache.stream_version("products", "a") is ABSENT
    assert cache.stream_version("products", "c") == {"_id": "c"}


async def test_cache_load_racing_a_change_never_stores_the_older_version() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_loader(collection: str, key: Any) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"_id": key, "stock": 1}  # read before the change below

    cache = DocumentCache(maxsize=10, loader=slow_loader)
    reader = asyncio.create_task(cache.get("products", "a"))
    await started.wait()
    cache.store("products", "a", {"_id": "a", "stock": 2})
    release.set()
    assert await reader == {"_id": "a", "stock": 2}
    assert await cache.get("products", "a") == {"_id": "a", "stock": 2}


async def test_cache_loaded_versions_are_not_used_as_diff_base() -> None:
    async def loader(collection: str, key: Any) -> dict[str, Any]:
        return {"_id": key}

    cache = DocumentCache(maxsize=10, loader=loader)
    await cache.get("products", "a")
    assert cache.stream_version("products", "a") is ABSENT
    cache.invalidate("products")
    assert len(cache) == 0


def test_cache_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        DocumentCache(maxsize=0)


async def test_cache_peek_never_loads_nor_counts() -> None:
    async def loader(collection: str, key: Any) -> dict[str, Any]:
        raise AssertionError("peek must not load")

    cache = DocumentCache(maxsize=10, loader=loader)
    assert cache.peek("users", "u1") is None
    cache.store("products", "u1", {"_id": "u1", "name": "Ada"})
    assert cache.peek("products", "u1") == {"_id": "u1", "name": "Ada"}
    cache.store("products", "u1", None)
    assert cache.peek("products", "u1") is None
    assert cache.stats().hits == 0 and cache.stats().misses == 0
