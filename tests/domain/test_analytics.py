from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backend.domain.analytics import Analytics
from backend.domain.clock import iso

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def order(order_id: str, status: str, total: int, user: str, minutes_ago: int = 0) -> dict:  # type: ignore[type-arg]
    return {"_id": order_id, "status": status, "total_cents": total, "user_id": user,
            "items": [{"product_id": "P1", "quantity": 2}],
            "created_at": iso(NOW - timedelta(minutes=minutes_ago))}


def test_analytics_revenue_counts_only_paid_statuses_and_ranks_customers() -> None:
    figures = Analytics()
    figures.rebuild([order("o1", "paid", 1_000, "u1"), order("o2", "delivered", 3_000, "u2"),
                     order("o3", "pending", 9_999, "u1"), order("o4", "cancelled", 500, "u3")])
    snap = figures.snapshot(now=NOW)
    assert snap["revenue_cents"] == 4_000 and snap["average_order_value_cents"] == 2_000
    assert snap["per_status"] == {"cancelled": 1, "delivered": 1, "paid": 1, "pending": 1}
    assert [c["user_id"] for c in snap["top_customers"]] == ["u2", "u1"]
    assert snap["top_products"] == [{"product_id": "P1", "quantity": 4}]


def test_analytics_a_status_change_replaces_the_order_and_old_orders_leave_the_trend() -> None:
    figures = Analytics()
    figures.observe(order("o1", "pending", 1_000, "u1", minutes_ago=45))
    figures.observe(order("o1", "paid", 1_000, "u1", minutes_ago=45))
    figures.observe(order("o2", "paid", 2_000, "u2", minutes_ago=1))
    snap = figures.snapshot(now=NOW)
    assert snap["orders"] == 2 and snap["revenue_cents"] == 3_000
    assert [row["orders"] for row in snap["orders_per_minute"]] == [1]  # o1 is older than 30 min
    figures.forget("o2")
    assert figures.snapshot(now=NOW)["orders"] == 1


def test_analytics_counts_per_status_and_orders_per_hour_over_two_weeks() -> None:
    figures = Analytics()
    figures.rebuild([order("o1", "paid", 1_000, "u1"), order("o2", "paid", 2_000, "u2", 90),
                     order("o3", "shipped", 500, "u3", 15 * 24 * 60)])  # o3: 15 days ago
    assert (figures.count(), figures.count("paid"), figures.count("pending")) == (3, 2, 0)
    figures.observe(order("o1", "shipped", 1_000, "u1"))  # a status change moves the count
    assert (figures.count("paid"), figures.count("shipped")) == (1, 2)
    hours = figures.snapshot(now=NOW)["orders_per_hour"]
    assert hours == [{"hour": "2026-12-01T10", "orders": 1}, {"hour": "2026-12-01T12", "orders": 1}]
