"""The change history a server keeps against the checkpoints' ages (fakes: no replica set
can run here)."""

from __future__ import annotations

from typing import Any

from bson import Timestamp

from backend.infra.history import HistoryMonitor, assess


def test_history_a_checkpoint_past_half_the_window_is_at_risk() -> None:
    stats = assess(3_600.0, {"orders": 2_000.0, "products": 60.0, "users": None})
    assert stats.at_risk == ["orders"]
    assert stats.checkpoints["orders"].headroom_s == 1_600.0
    assert stats.checkpoints["products"].at_risk is False
    assert stats.checkpoints["users"].headroom_s is None  # never saved yet


class FakeOplog:
    def __init__(self, first: int, last: int) -> None:
        self.entries = [{"ts": Timestamp(first, 1)}, {"ts": Timestamp(last, 7)}]

    async def find_one(self, query: dict[str, Any], projection: dict[str, Any], *,
                       sort: list[tuple[str, int]]) -> dict[str, Any]:
        return self.entries[0] if sort[0][1] == 1 else self.entries[-1]


class FakeClient:
    def __init__(self, oplog: FakeOplog) -> None:
        self.local = {"oplog.rs": oplog}


async def test_history_monitor_measures_the_oplog_window_and_warns(caplog: Any) -> None:
    ages = {"orders": 100.0, "products": 10.0}
    monitor = HistoryMonitor(FakeClient(FakeOplog(1_000, 1_180)),  # type: ignore[arg-type]
                             replica_set=True, checkpoint_ages=lambda: ages)
    await monitor.refresh()
    stats = monitor.stats()
    assert stats.kind == "oplog" and stats.window_s == 180.0
    assert stats.at_risk == ["orders"]  # 100 s old, the window 180 s
    monitor._warn(stats)
    assert "checkpoint of orders is 100 s old" in caplog.text
    ages["orders"] = 5.0
    assert monitor.stats().at_risk == []


def test_history_on_the_embedded_server_reports_its_retained_changes() -> None:
    monitor = HistoryMonitor(None, replica_set=False,  # type: ignore[arg-type]
                             checkpoint_ages=lambda: {"orders": 3.0})
    stats = monitor.stats()
    assert (stats.kind, stats.retained_changes, stats.at_risk) == ("bounded", 1_000, [])
