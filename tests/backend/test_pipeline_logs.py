"""Every log line of an order's processing carries its correlation id."""

from __future__ import annotations

import io
import json
import logging
import random
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.infra.logs import JsonFormatter
from backend.pipeline import PaymentGateway, Pipeline
from streaming import ChangeEngine
from tests.integration.test_pipeline import settled, setup
from tests.support.mode import watch_mode
from tests.support.orders import placed


@pytest.mark.timeout(60)
async def test_pipeline_logs_are_json_with_the_correlation_id(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("changecast.pipeline")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.DEBUG)
    db = mongo[db_name]
    await setup(db, {"P": 50})
    engine = ChangeEngine(db, collections=["orders", "products"], mode=await watch_mode(db))
    await engine.start()
    pipeline = Pipeline(db, engine, gateway=PaymentGateway(latency_ms=(1, 5),
                                                           rng=random.Random(2)))
    try:
        await pipeline.start()
        order = await placed(db, engine, user_id="c01", items=[("P", 2)],
                                   correlation="trace-77", actor="customer")
        await settled(db, 1)
    finally:
        await pipeline.stop()
        await engine.stop()
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line.get("order_id") == order["_id"]]
    assert len(mine) >= 4  # reserving, reserved, payment, paid/failed (, processing)
    assert {line["correlation_id"] for line in mine} == {"trace-77"}
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in mine)
