"""Group commit of reads: the products of orders placed at the same moment, in one find."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from backend.domain.batching import ByIdReader

pytestmark = pytest.mark.timeout(10)


class Products:
    """A collection's ``find`` by ``_id $in``, one yield per call as a round trip."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.finds: list[list[str]] = []
        self.fail_next = False

    def find(self, query: dict[str, Any], projection: dict[str, Any]) -> Any:
        wanted = query["_id"]["$in"]
        self.finds.append(list(wanted))

        async def cursor() -> Any:
            await asyncio.sleep(0)
            if self.fail_next:
                self.fail_next = False
                raise AutoReconnect("connection reset")
            for key in wanted:
                if key in self.docs:
                    yield {"_id": key, **{f: self.docs[key][f] for f in projection
                                          if f in self.docs[key]}}

        return cursor()


async def out(products: Products, finds: int) -> None:
    """Until the reader has sent its ``finds``-th find (it is in flight now)."""
    while len(products.finds) < finds:
        await asyncio.sleep(0)


async def test_reads_waiting_together_go_out_in_one_find_each_getting_its_own() -> None:
    products = Products({f"P{i}": {"name": f"p{i}", "price_cents": 100 * i, "stock": 5}
                         for i in range(5)})
    reader = ByIdReader(products, {"name": 1, "price_cents": 1})  # type: ignore[arg-type]
    answers = await asyncio.gather(reader.read(["P1", "P2"]), reader.read(["P2", "P3"]),
                                   reader.read(["P4", "gone"]), reader.read(["P0"]))
    assert answers == [
        {"P1": {"_id": "P1", "name": "p1", "price_cents": 100},
         "P2": {"_id": "P2", "name": "p2", "price_cents": 200}},
        {"P2": {"_id": "P2", "name": "p2", "price_cents": 200},
         "P3": {"_id": "P3", "name": "p3", "price_cents": 300}},
        {"P4": {"_id": "P4", "name": "p4", "price_cents": 400}},  # an unknown id is left out
        {"P0": {"_id": "P0", "name": "p0", "price_cents": 0}}]
    assert products.finds == [["P1", "P2", "P3", "P4", "gone", "P0"]]  # once, each id once
    # One out already: the reads that come meanwhile wait for it and go out together.
    first = asyncio.ensure_future(reader.read(["P1"]))
    await out(products, 2)
    assert products.finds[-1] == ["P1"]
    await asyncio.gather(first, reader.read(["P2"]), reader.read(["P3", "P2"]))
    assert products.finds[-2:] == [["P1"], ["P2", "P3"]]


async def test_a_read_that_fails_fails_for_each_of_its_batch_and_the_next_reads_again() -> None:
    products = Products({"P1": {"name": "p1", "price_cents": 100}})
    reader = ByIdReader(products, {"name": 1, "price_cents": 1})  # type: ignore[arg-type]
    products.fail_next = True
    outcomes = await asyncio.gather(reader.read(["P1"]), reader.read(["P1"]),
                                    return_exceptions=True)
    assert [type(o) for o in outcomes] == [AutoReconnect, AutoReconnect]  # one find, failed
    products.fail_next = True
    first = asyncio.ensure_future(reader.read(["P1"]))
    await out(products, 2)
    second, third = reader.read(["P1"]), reader.read(["P1"])  # waiting while the first is out
    outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
    assert [type(o) for o in outcomes] == [AutoReconnect, dict, dict]
    assert await reader.read(["P1"]) == {"P1": {"_id": "P1", "name": "p1", "price_cents": 100}}
