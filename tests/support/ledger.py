"""What the tests count units with: orders still moving, and units sold."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

AUTOMATIC = ["pending", "reserved", "paid"]
# Orders the pipeline has not finished with: still moving on their own, or with units
# still to put back on the shelf.
UNFINISHED = {"$or": [{"status": {"$in": AUTOMATIC}}, {"restock": "due"}]}


def sold(orders: Iterable[dict[str, Any]]) -> Counter[str]:
    """Units per product that left the shelf for good (orders that reached processing)."""
    units = Counter[str]()
    for order in orders:
        if order["status"] == "processing":
            for item in order["items"]:
                units[item["product_id"]] += item["quantity"]
    return units


def shelf(products: Iterable[dict[str, Any]]) -> dict[str, tuple[int, list[str]]]:
    """Stock and open stock markers per product."""
    return {p["_id"]: (p["stock"], p.get("holds") or []) for p in products}
