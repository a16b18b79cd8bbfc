"""The load generator's named scenarios (plain data: no HTTP client needed to list them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    rps: float
    clients: int
    duration: float
    order_share: float  # of writes; the rest change stock
    read_share: float  # extra GETs, as a share of all requests
    invalid_share: float  # requests made wrong on purpose
    description: str


SCENARIOS = {
    "baseline": Scenario("baseline", 10, 10, 30, 0.7, 0.0, 0.0,
                         "a quiet shop: 10 writes/s, 10 watchers"),
    "high-load": Scenario("high-load", 100, 100, 30, 0.7, 0.0, 0.0,
                          "a busy shop: 100 writes/s, 100 watchers"),
    "errors": Scenario("errors", 20, 10, 30, 0.6, 0.0, 0.4,
                       "40 % invalid bodies, unknown products, bad quantities, stock below 0"),
    "mixed": Scenario("mixed", 40, 50, 30, 0.6, 0.3, 0.1,
                      "orders, stock changes, list reads and 10 % invalid requests"),
}


def scenario_with(name: str, *, duration: float | None, rps: float | None,
                  clients: int | None) -> Scenario:
    scenario = SCENARIOS[name]
    changes: dict[str, Any] = {}
    if duration is not None:
        changes["duration"] = duration
    if rps is not None:
        changes["rps"] = rps
    if clients is not None:
        changes["clients"] = clients
    return replace(scenario, **changes)
