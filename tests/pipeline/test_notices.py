from __future__ import annotations

from typing import Any

from backend.pipeline.notices import stock_alert
from streaming import ChangeEvent


def product_change(old: int, new: int, threshold: int = 10) -> ChangeEvent:
    doc: dict[str, Any] = {"_id": "P1", "name": "Lamp", "stock": new,
                           "low_stock_threshold": threshold}
    return ChangeEvent(1, "update", "products", "P1", doc, {**doc, "stock": old}, None, 0)


def test_notices_alert_when_stock_crosses_below_the_threshold_once() -> None:
    assert stock_alert(product_change(12, 9)) == ("low_stock", "Lamp (P1) is low: 9 left.")
    assert stock_alert(product_change(9, 8)) is None  # already low: no second alert
    assert stock_alert(product_change(3, 0)) == ("sold_out", "Lamp (P1) is sold out.")
    assert stock_alert(product_change(5, 9)) is None  # a restock is not an alert
