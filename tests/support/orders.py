"""Placing orders in tests: the order document of ``place_order``."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from backend.domain.orders import place_order
from streaming import ChangeEngine, Document


async def placed(db: AsyncDatabase[Document], engine: ChangeEngine, **kwargs: Any) -> Document:
    """Place an order as the API does and return it (whether new or an idempotent replay)."""
    order, _ = await place_order(db, engine, **kwargs)
    return order
