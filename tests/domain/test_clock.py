from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from backend.domain import clock


def test_clock_iso_is_utc_with_milliseconds_and_sorts_as_text() -> None:
    moment = datetime(2026, 11, 22, 5, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=1)))
    assert clock.iso(moment) == "2026-11-22T04:30:00.123Z"
    earlier, later = clock.iso_seconds_ago(60), clock.now_iso()
    assert earlier < later


def test_clock_ms_between_iso_times_and_unreadable_ones() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(milliseconds=1_250)
    assert clock.ms_between(clock.iso(start), clock.iso(end)) == 1250.0
    assert clock.ms_between("not a time", clock.iso(end)) == 0.0
