"""The write listener: every write this process makes that changes something wakes its
collection's (polled) change stream; one that changes nothing wakes nobody."""

from __future__ import annotations

import uuid

import pytest

from backend.infra.database import WriteListener, make_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_acknowledged_writes_name_their_collection_and_no_ops_do_not(nx_uri: str) -> None:
    listener = WriteListener()
    woken: list[str] = []
    listener.on_write = woken.append
    client = make_client(nx_uri, writes=listener)
    try:
        db = client["w" + uuid.uuid4().hex[:10]]
        await db.products.insert_one({"_id": "p1", "stock": 1})
        await db.products.update_one({"_id": "nobody"}, {"$set": {"stock": 2}})
        await db.orders.update_one({"_id": "o1"}, {"$set": {"status": "paid"}}, upsert=True)
        await db.products.find_one_and_update({"_id": "p1"}, {"$inc": {"stock": 1}})
        await db.products.delete_many({"_id": "nobody"})
        await db.products.find_one({"_id": "p1"})  # a read wakes nobody
        await db.products.delete_one({"_id": "p1"})
        assert woken == ["products", "orders", "products", "products"]
        listener.on_write = None  # detached (the engine stopped): nothing is kept
        await db.products.insert_one({"_id": "p2"})
        assert woken == ["products", "orders", "products", "products"]
    finally:
        await client.close()


async def test_every_write_says_so_as_it_is_sent_before_its_reply(nx_uri: str) -> None:
    """``on_send`` (the stream's read overlaps the write) comes for every write command,
    one that will change nothing too, and before that write's ``on_write``."""
    listener = WriteListener()
    log: list[tuple[str, str]] = []
    listener.on_write = lambda name: log.append(("acknowledged", name))
    listener.on_send = lambda name: log.append(("sent", name))
    client = make_client(nx_uri, writes=listener)
    try:
        db = client["w" + uuid.uuid4().hex[:10]]
        await db.products.insert_one({"_id": "p1", "stock": 1})
        await db.products.update_one({"_id": "nobody"}, {"$set": {"stock": 2}})
        await db.products.find_one({"_id": "p1"})  # a read: neither
        await db.orders.find_one_and_update({"_id": "o1"}, {"$set": {"status": "paid"}},
                                            upsert=True)
        assert log == [("sent", "products"), ("acknowledged", "products"),
                       ("sent", "products"),
                       ("sent", "orders"), ("acknowledged", "orders")]
    finally:
        await client.close()


async def test_a_client_without_a_listener_works_too(nx_uri: str) -> None:
    client = make_client(nx_uri)  # what bench.sources and bench.cache make (they crashed)
    try:
        db = client["w" + uuid.uuid4().hex[:10]]
        await db.products.insert_one({"_id": "p1", "stock": 1})
        assert await db.products.find_one({"_id": "p1"}) == {"_id": "p1", "stock": 1}
    finally:
        await client.close()
