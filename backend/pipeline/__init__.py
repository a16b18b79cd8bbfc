"""The order pipeline: workers that react to change events on ``orders``.

- ``dispatch``: the queue of orders to drive, claims, reservation and the payment step;
- ``payments``: charging through the gateway, refunds (exactly once);
- ``notices``: notifications, audit entries, low-stock alerts (idempotent ids);
- ``reconciler``: re-drives stuck orders and finishes half-done stock moves and refunds;
- ``gateway``: the bank simulator; ``context``: what the parts share;
- ``workers``: :class:`Pipeline`, the parts wired together for one app instance.
"""

from __future__ import annotations

from backend.pipeline.context import AUTOMATIC, Counters, StageStats
from backend.pipeline.gateway import PaymentGateway, PaymentResult
from backend.pipeline.workers import Pipeline, PipelineStats

__all__ = ["AUTOMATIC", "Counters", "PaymentGateway", "PaymentResult", "Pipeline",
           "PipelineStats", "StageStats"]
