"""Loading the demo data into a database, once (or again with ``reset``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pymongo.asynchronous.database import AsyncDatabase

from backend.domain import Document
from backend.domain.clock import iso
from backend.domain.passwords import hash_password
from seed.data import generate

SEEDED_COLLECTIONS = ("products", "users", "orders", "notifications", "audit")
BATCH = 100



class Progress(Protocol):
    """Anything that can be told that more of the work is done (a progress bar)."""

    def advance(self, amount: int = 1) -> None: ...


ProgressFactory = Callable[[int, str], Progress | None]


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What a seeding run did."""

    skipped: bool
    products: int = 0
    users: int = 0
    orders: int = 0


async def is_seeded(db: AsyncDatabase[Document]) -> bool:
    """True once demo data has been loaded into ``db``."""
    return await db.meta.find_one({"_id": "seed"}) is not None


async def seed_database(
    db: AsyncDatabase[Document],
    *,
    admin_password: str,
    demo_password: str | None,
    seed: int = 42,
    orders: int = 300,
    customers: int = 25,
    reset: bool = False,
    progress: ProgressFactory | None = None,
) -> SeedReport:
    """Load deterministic demo data; a second call without ``reset`` changes nothing."""
    if orders < 0 or customers < 1:
        raise ValueError(f"expected orders >= 0 and customers >= 1, got {orders}, {customers}")
    if reset:
        for name in SEEDED_COLLECTIONS:
            await db[name].delete_many({})
        await db.meta.delete_one({"_id": "seed"})
    elif await is_seeded(db) or await db.users.count_documents({}, limit=1):
        return SeedReport(skipped=True)
    data = generate(seed=seed, customers=customers, orders=orders, now=datetime.now(UTC))
    bar = (progress or (lambda total, label: None))(
        len(data.products) + len(data.users) + len(data.orders), "seeding"
    )
    await _insert(db, "products", data.products, bar)
    # Without a demo password, customers get one nobody knows.
    passwords = [
        (admin_password if user["role"] == "admin" else demo_password)
        or secrets.token_urlsafe(32)
        for user in data.users
    ]
    # argon2 releases the GIL, so hashing in threads uses every core.
    hashes = await asyncio.gather(*(asyncio.to_thread(hash_password, p) for p in passwords))
    for user, password_hash in zip(data.users, hashes, strict=True):
        user["password_hash"] = password_hash
        user["created_at"] = iso(datetime.now(UTC))
    await _insert(db, "users", data.users, bar)
    await _insert(db, "orders", data.orders, bar)
    await db.meta.insert_one(
        {"_id": "seed", "seed": seed, "orders": orders, "at": iso(datetime.now(UTC))}
    )
    return SeedReport(
        skipped=False, products=len(data.products), users=len(data.users),
        orders=len(data.orders),
    )


async def _insert(db: AsyncDatabase[Document], name: str, docs: list[Document],
                  bar: Progress | None) -> None:
    for start in range(0, len(docs), BATCH):
        chunk = docs[start:start + BATCH]
        await db[name].insert_many(chunk, ordered=True)
        if bar is not None:
            bar.advance(len(chunk))
