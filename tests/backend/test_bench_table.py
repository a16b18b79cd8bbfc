"""The performance tables (docs/performance.md, the README's headline rows) are exactly what
the benchmark result files say."""

from __future__ import annotations

from backend.cli import BENCHMARKS
from bench.table import between, blocks, headline_rows, rows
from tests.conftest import ROOT


def test_performance_tables_match_bench_results() -> None:
    for path, begin, end, table in blocks():
        text = path.read_text()
        assert begin in text and end in text, path
        assert between(text, begin, end) == table, (
            f"{path.name}: run `python -m bench.table --write` after `make bench`")
    assert len(headline_rows()) >= 6


def test_every_benchmark_has_its_result_and_chart() -> None:
    for name in BENCHMARKS:
        assert (ROOT / "bench" / "results" / f"{name}.json").exists(), name
    for name in ("propagation", "fanout", "pages", "cache", "pipeline", "connections",
                 "sources"):
        assert (ROOT / "bench" / "results" / f"{name}.png").exists(), name
    assert len(rows()) >= 10
