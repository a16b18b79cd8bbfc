"""Type aliases shared by the engine's modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

Document = dict[str, Any]
Clock = Callable[[], float]
Op = Literal["insert", "update", "replace", "delete"]
DeliveryOp = Literal["insert", "update", "replace", "delete", "enter", "leave"]
OverflowPolicy = Literal["coalesce", "resync"]
