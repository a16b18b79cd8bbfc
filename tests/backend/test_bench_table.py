"""The README's performance table is exactly what the benchmark result files say."""

from __future__ import annotations

from backend.cli import BENCHMARKS
from bench.table import BEGIN, END, render, rows
from tests.conftest import ROOT


def test_readme_performance_table_matches_bench_results() -> None:
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme
    current = readme[readme.index(BEGIN):readme.index(END) + len(END)]
    assert current == render(), "run `python -m bench.table --write` after `make bench`"


def test_every_benchmark_has_its_result_and_chart() -> None:
    for name in BENCHMARKS:
        assert (ROOT / "bench" / "results" / f"{name}.json").exists(), name
    for name in ("propagation", "fanout", "pages", "cache", "pipeline", "connections",
                 "sources"):
        assert (ROOT / "bench" / "results" / f"{name}.png").exists(), name
    assert len(rows()) >= 10
