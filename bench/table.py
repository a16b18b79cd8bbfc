"""The performance tables, rendered from ``bench/results/*.json``: every row in
docs/performance.md, the headline rows in README.md.

    python -m bench.table          # print both
    python -m bench.table --write  # replace them in those files (between the markers)

A test checks that both files hold exactly what this renders, so neither table
can drift from the result files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.report import percents, point

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BEGIN = "<!-- bench-table:begin (python -m bench.table --write) -->"
END = "<!-- bench-table:end -->"
HEAD_BEGIN = "<!-- bench-headline:begin (python -m bench.table --write) -->"
HEAD_END = "<!-- bench-headline:end -->"
PERFORMANCE = ROOT / "docs" / "performance.md"
README = ROOT / "README.md"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def _n(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _cpu(row: dict[str, Any]) -> str:
    """Server CPU per delivery, with its user and kernel parts when they were measured."""
    text = f"{row['server_cpu_us_per_delivery']} µs"
    if row.get("server_user_us_per_delivery") is not None:
        text += (f" ({row['server_user_us_per_delivery']} user, "
                 f"{row['server_system_us_per_delivery']} kernel)")
    return text


def rows() -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    propagation = _load("propagation")
    if propagation:
        results = propagation["results"]
        for clients in sorted({r["clients"] for r in results}):
            same = {r["approach"]: r for r in results if r["clients"] == clients}
            ours = same.get("changecast-websocket")
            if not ours:
                continue
            lat = ours["latency_ms"]
            base = []
            for approach, label in (("rest-polling-1s", "polling every 1 s"),
                                    ("rest-polling-5s", "polling every 5 s"),
                                    ("change-stream-per-client", "a change stream per client")):
                if approach in same:
                    other = same[approach]["latency_ms"]
                    base.append(f"{label}: p50 {_ms(other['p50'])}, p99 {_ms(other['p99'])}")
            out.append((f"write → client, {clients:,} WebSocket clients, "
                        f"{ours['rate']:g} changes/s",
                        f"p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])} "
                        f"({ours['missed']} missed)",
                        "; ".join(base), "`python -m bench.propagation`"))
    fanout = _load("fanout")
    if fanout:
        for row in fanout["in_process"]:
            to_wire = row.get("naive_to_wire")
            wire = (f"; naive, encoded and written per subscriber: "
                    f"{_n(to_wire['deliveries_per_s_median'])}/s "
                    f"({row['ratio_vs_naive_to_wire']}\u00d7)") if to_wire else ""
            burst = row.get("hub_burst")
            bursts = (f"; {_n(burst['deliveries_per_s_median'])}/s "
                      f"({row['burst_ratio_vs_baseline']}\u00d7) when changes come 10 per "
                      "loop turn") if burst else ""
            out.append((f"hub fan-out in-process, {row['scenario']}, "
                        f"{row['subscribers']:,} subscribers",
                        f"{_n(row['hub']['deliveries_per_s_median'])} deliveries/s "
                        f"({row['ratio_vs_baseline']}\u00d7), one change per loop turn{bursts}",
                        f"naive queue per subscriber, nothing encoded: "
                        f"{_n(row['naive_baseline']['deliveries_per_s_median'])}/s"
                        f"{wire}", "`python -m bench.fanout`"))
        points = fanout.get("over_sockets", [])
        for ours in (r for r in points if r.get("server") == "changecast"):
            same = {r["server"]: r for r in points
                    if (r["clients"], r["rate"]) == (ours["clients"], ours["rate"])}
            base = [f"{label}: p50 {_ms(same[name]['p50_ms'])}, p99 {_ms(same[name]['p99_ms'])}, "
                    f"{_cpu(same[name])}/delivery"
                    for name, label in (("bare", "bare Node ws broadcast"),
                                        ("naive", "naive Starlette broadcast")) if name in same]
            out.append((f"write → client, {ours['clients']:,} clients \u00d7 {ours['rate']} changes/s",
                        f"p50 {_ms(ours['p50_ms'])}, p95 {_ms(ours['p95_ms'])}, p99 "
                        f"{_ms(ours['p99_ms'])}; {ours['lost']} lost; "
                        f"{100 * ours['applied_share']:.1f} % of writes applied (p99 "
                        f"{_ms(ours['write_p99_ms'])}); {_cpu(ours)} server CPU/delivery",
                        "; ".join(base) + f" (load generator CPU "
                        f"{100 * ours['loadgen_cpu_share']:.0f} % of a core)",
                        "`python -m bench.fanout`"))
        summary = fanout.get("summary", {})
        caps = summary.get("capacity_1000_clients_p99_250ms")
        if caps:
            out.append(("highest rate with p99 ≤ 250 ms and nothing lost, 1,000 clients",
                        f"{caps.get('changecast')} changes/s",
                        f"bare Node ws: {caps.get('bare')}/s; naive Starlette: "
                        f"{caps.get('naive')}/s", "`python -m bench.fanout`"))
    out.extend(_pages())
    cache = _load("cache")
    if cache:
        ours, ttl = cache["results"][0], cache["results"][1]
        out.append((f"cache, Zipf reads of {cache['products']:,} products + "
                    f"{cache['write_rate']:g} writes/s",
                    f"hit ratio {100 * ours['hit_ratio']:.2f} %, {ours['stale_reads']} stale of "
                    f"{ours['reads']:,} reads",
                    f"TTL cache (1 s): {100 * ttl['hit_ratio']:.2f} %, {ttl['stale_reads']:,} "
                    f"stale of {ttl['reads']:,}", "`python -m bench.cache`"))
    pipeline = _load("pipeline")
    if pipeline:
        results = pipeline["results"]
        bare = _at_concurrency(pipeline, None)
        for row in results:
            if row is bare:
                continue
            ours = f"{row['orders_per_s_median']} orders/s"
            bare_text = (f"bare inserts, no pipeline: {bare['orders_per_s_median']} orders/s"
                         if bare else "")
            if "writes_per_order" in row:
                commands = (f" in {row['write_commands_per_order']} commands"
                            if "write_commands_per_order" in row else "")
                steady = (f" (steady state {row['steady_orders_per_s_median']}/s)"
                          if "steady_orders_per_s_median" in row else "")
                if "share_of_ceiling_all" in row:  # each run against its own ceiling
                    ceilings = [o["ceiling_orders_per_s"] for o in row["outcomes"]]
                    share = (f"{100 * row['share_of_ceiling']:.0f} % of what its database "
                             "allowed (median of the runs: "
                             f"{percents(row['share_of_ceiling_all'])} % of each one's "
                             f"ceiling, {min(ceilings)} to {max(ceilings)} orders/s)")
                else:
                    share = (f"{100 * row['share_of_ceiling']:.0f} % of the "
                             f"{row['ceiling_orders_per_s']} orders/s its database allows")
                ours += (f"{steady}, {row['writes_per_order']} database writes per order"
                         f"{commands}: {share}; "
                         "every order settled once, stock exact, audit complete: "
                         f"{'yes' if row['all_checks_ok'] else 'NO'}")
                bare_text += (f"; the database alone: "
                              f"{pipeline['database_writes_per_s_median']:,} "
                              "single-document inserts/s"
                              + (" (median, measured before each run)"
                                 if "share_of_ceiling_all" in row else ""))
            out.append((f"order pipeline end to end, {row['scenario'].split(', ', 1)[1]}",
                        ours, bare_text, "`python -m bench.pipeline`"))
    connections = _load("connections")
    if connections:
        for clients in sorted({r["clients"] for r in connections["results"]}):
            same = {r["kind"]: r for r in connections["results"] if r["clients"] == clients}
            if "subscribed" in same:
                out.append((f"server memory per idle WebSocket, {clients:,} clients",
                            f"{same['subscribed']['kib_per_connection']} KiB",
                            f"bare WebSocket, no subscription: "
                            f"{same['bare']['kib_per_connection']} KiB" if "bare" in same else "",
                            "`python -m bench.connections`"))
    sources = _load("sources")
    if sources:
        other, ours = sources["results"][0], sources["results"][1]  # NX-27017, MariaDB
        lat, olat = ours["latency"], other["latency"]
        thr, othr = ours["throughput"], other["throughput"]
        out.append((f"one engine, two sources: write → event, one writer at "
                    f"{sources['rate']:g} writes/s",
                    f"MariaDB binlog: p50 {_ms(lat['p50_ms'])}, p99 {_ms(lat['p99_ms'])}",
                    f"NX-27017 change stream: p50 {_ms(olat['p50_ms'])}, p99 {_ms(olat['p99_ms'])}",
                    "`python -m bench.sources`"))
        out.append((f"one engine, two sources: events/s, {thr['writers']} writer processes "
                    "as fast as they can",
                    f"MariaDB binlog: {_n(thr['events_per_s'])} events/s of "
                    f"{_n(thr['writes_per_s'])} writes/s (p99 {_ms(thr['p99_ms'])}; "
                    f"{thr['engine_cpu_us_per_event']} µs engine CPU/event)",
                    f"NX-27017 change stream: {_n(othr['events_per_s'])} events/s of "
                    f"{_n(othr['writes_per_s'])} writes/s (p99 {_ms(othr['p99_ms'])}; "
                    f"{othr['engine_cpu_us_per_event']} µs engine CPU/event)",
                    "`python -m bench.sources`"))
    out.extend(_idle())
    out.extend(_writepath())
    out.extend(_clients())
    return out


def _clients() -> list[tuple[str, str, str, str]]:
    clients = _load("clients")
    if not clients:
        return []
    consume, restart = clients["consume"], clients["restart"]
    ours, bare = (consume["ways"][w]["events_per_s"] for w in
                  ("changecast_client", "bare websockets + json.loads"))
    mine, naive = restart["ways"]["changecast_client"], restart["ways"]["naive"]
    fast = restart["ways"].get("changecast_client, back-off ≤ 0.25 s")

    def exact(way: dict[str, Any]) -> str:
        return (f"exact {_ms(way['exact_after_ms_p50'])} after the server answers again; "
                f"{way['runs_wrong_at_the_end']} of {restart['restarts']} runs still wrong "
                "once the writes stopped")

    return [
        (f"one Python client consuming changes, view kept current ({_n(consume['events'])} "
         "events)", f"`changecast_client`: {_n(ours)} events/s",
         f"bare `websockets` + `json.loads`, no view: {_n(bare)} events/s "
         f"(feed CPU ≤ {consume['feed_cpu_max_pct']:g} %)", "`python -m bench.clients`"),
        (f"server restart under {restart['write_rate']:g} writes/s → client view exact "
         f"({restart['restarts']} restarts)", "`changecast_client` (jittered back-off "
         "0.05 → 2 s, resume, announced reload): " + exact(mine)
         + (f"; with its back-off capped at 0.25 s: {exact(fast)}" if fast else ""),
         f"naive reconnect every {restart['naive_retry_s']:g} s + refetch + subscribe: "
         + exact(naive), "`python -m bench.clients`"),
    ]


def _at_concurrency(pipeline: dict[str, Any], concurrency: int | None) -> dict[str, Any] | None:
    """The pipeline bench's row at this payment concurrency (None: the bare inserts)."""
    return next((r for r in pipeline["results"] if r["payment_concurrency"] == concurrency),
                None)


def _pages() -> list[tuple[str, str, str, str]]:
    pages = _load("pages")
    if not pages:
        return []
    out = []
    points = pages["portal"]
    for ours in (r for r in points if r["server"] == "changecast"):
        bare = point(points, "bare", ours["clients"], ours["rate"])
        base = (f"bare Node ws broadcast of a {ours['frame_bytes']}-byte HTML frame: p50 "
                f"{_ms(bare['p50_ms'])}, p99 {_ms(bare['p99_ms'])}, {_cpu(bare)}/delivery"
                f" (load generator CPU {100 * ours['loadgen_cpu_share']:.0f} % of a core)"
                if bare else "")
        out.append((f"portal pages (`/ws/live/portal`, signed in), write → stock in the "
                     f"card, {ours['clients']:,} sockets \u00d7 {ours['rate']} changes/s",
                     f"p50 {_ms(ours['p50_ms'])}, p95 {_ms(ours['p95_ms'])}, p99 "
                     f"{_ms(ours['p99_ms'])}; {ours['lost']} lost; "
                     f"{100 * ours['applied_share']:.1f} % of writes applied; {_cpu(ours)} "
                     f"server CPU/delivery; {ours['rss_per_connection_kib']} KiB/socket",
                     base, "`python -m bench.pages`"))
    mixed = pages.get("mixed")
    if mixed:
        kinds = mixed["kinds"]
        portal, admin, board = kinds["portal"], kinds["admin"], kinds["dashboard"]
        out.append((f"pages together: {portal['clients']:,} portal + {admin['clients']} admin "
                    f"+ {board['clients']} dashboard, {mixed['rate']} stock changes/s and "
                    f"{mixed['orders_placed']} orders through the pipeline",
                    f"portal stock p50 {_ms(portal['stock_p50_ms'])}, p99 "
                    f"{_ms(portal['stock_p99_ms'])}; admin stock p50 "
                    f"{_ms(admin['stock_p50_ms'])}, the new order's row p50 "
                    f"{_ms(admin['order_row_p50_ms'])}, p99 {_ms(admin['order_row_p99_ms'])} "
                    f"({admin['order_rows_unseen']} unseen); dashboard "
                    f"{board['frames_per_client_per_s']} frames/s; {mixed['lost']} lost",
                    "", "`python -m bench.pages`"))
    return out


def _idle() -> list[tuple[str, str, str, str]]:
    idle = _load("idle")
    if not idle:
        return []
    ours, busy = idle["medians"]["backing-off"], idle["medians"]["busy-polling"]

    def text(way: dict[str, Any]) -> str:
        return (f"server {100 * way['server_cpu_share']:.2f} %, database "
                f"{100 * way['database_cpu_share']:.2f} % of a core; the first change after "
                f"it {_ms(way['first_change_ms'])}")

    return [(f"idle for {idle['quiet_s']:g} s, no client ({idle['repeats']} runs each)",
             text(ours), "polling every 25 ms: " + text(busy), "`python -m bench.idle`")]


def _writepath() -> list[tuple[str, str, str, str]]:
    trace = _load("writepath")
    if not trace:
        return []

    def p50(rows: list[dict[str, Any]], prefix: str) -> float:
        return float(next(r["p50_ms"] for r in rows if r["stage"].startswith(prefix)))

    def text(way: dict[str, Any]) -> str:
        rows = way["stages"]
        runs = way.get("write_to_client_p50_ms_per_run")
        spread = (f" (runs {min(runs):.2f} to {max(runs):.2f} ms)" if runs else "")
        return (f"write → client p50 {_ms(p50(rows, 'write → client'))}{spread}, of which "
                f"ChangeCast's own stages {_ms(p50(rows, 'ours on'))}")

    return [("a write's fixed cost, one client, stage by stage "
             f"({sum(trace['traced'].values()):,} traced writes)", text(trace["ways"]["now"]),
             "before (the stream's read began on the write's reply, the fan-out waited "
             "behind the next read): " + text(trace["ways"]["before"])
             + "; the database alone (findAndModify, then the read that sees it): "
             + _ms(trace["database_alone"]["write, then the read that sees it"]["p50_ms"]),
             "`python -m bench.writepath`")]


def _stage_table() -> list[str]:
    """A write's stages, before and now (``bench.writepath``), as a table of its own."""
    trace = _load("writepath")
    if not trace:
        return []
    before, now = (trace["ways"][way]["stages"] for way in ("before", "now"))
    lines = ["", f"A write's fixed cost, stage by stage: p50 over "
             f"{trace['traced']['now']:,} writes each way, one client "
             "(`python -m bench.writepath`).", "",
             "| stage | before (ms) | now (ms) |", "|---|---|---|"]
    for old, new in zip(before, now, strict=True):
        name = f"**{new['stage']}**" if new.get("total") else new["stage"]
        lines.append(f"| {name} | {old['p50_ms']:.2f} | {new['p50_ms']:.2f} |")
    alone = trace["database_alone"]
    lines.append(f"| the database alone, from the client's side: findAndModify, then the "
                 f"read that sees it | {alone['write, then the read that sees it']['p50_ms']:.2f} |"
                 " (same run) |")
    return lines


def render() -> str:
    lines = [BEGIN, "| measurement | ChangeCast (median) | baseline, same run | command |",
             "|---|---|---|---|"]
    lines.extend(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows())
    lines.extend(_stage_table())
    machine = next((r["machine"] for r in (_load(n) for n in
                    ("propagation", "fanout", "cache", "pipeline", "connections",
                     "sources")) if r), None)
    if machine:
        lines.append("")
        lines.append(f"Machine: {machine['cpus']} CPUs, {machine['platform']}, "
                     f"Python {machine['python']}.")
    lines.append(END)
    return "\n".join(lines)


def _pair(points: list[dict[str, Any]], clients: int, rate: int
          ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """ChangeCast's and the bare Node server's row of one point, when both were measured."""
    ours, bare = point(points, "changecast", clients, rate), point(points, "bare", clients, rate)
    return (ours, bare) if ours and bare else None


def headline_rows() -> list[tuple[str, str, str]]:
    """A few rows a newcomer can read at a glance: (what, ChangeCast, the alternative)."""
    out: list[tuple[str, str, str]] = []

    def socket_row(what: str, pair: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
        if pair:
            ours, bare = pair
            out.append((what, f"p50 {_ms(ours['p50_ms'])}, p99 {_ms(ours['p99_ms'])}, "
                              f"{ours['lost']} lost",
                        f"bare Node `ws` broadcast: p50 {_ms(bare['p50_ms'])}, p99 "
                        f"{_ms(bare['p99_ms'])}"))

    fanout, pages = _load("fanout"), _load("pages")
    if fanout:
        socket_row("write → 1,000 `/ws` clients, 30 changes/s",
                   _pair(fanout.get("over_sockets", []), 1000, 30))
    if pages:
        socket_row("write → 1,000 portal pages, 30 changes/s", _pair(pages["portal"], 1000, 30))
        socket_row("write → 5,000 portal pages, 10 changes/s", _pair(pages["portal"], 5000, 10))
    idle = _load("idle")
    if idle:
        ours, busy = idle["medians"]["backing-off"], idle["medians"]["busy-polling"]
        out.append(("idle, no client: CPU of the server + its database",
                    f"{100 * ours['server_cpu_share']:.2f} % + "
                    f"{100 * ours['database_cpu_share']:.2f} % of a core",
                    f"polling every 25 ms: {100 * busy['server_cpu_share']:.2f} % + "
                    f"{100 * busy['database_cpu_share']:.2f} %"))
    cache = _load("cache")
    if cache:
        ours, ttl = cache["results"][0], cache["results"][1]
        out.append(("cache under 50 writes/s: stale reads",
                    f"{ours['stale_reads']:,} of {ours['reads']:,}",
                    f"a 1 s TTL cache: {ttl['stale_reads']:,} of {ttl['reads']:,}"))
    pipeline = _load("pipeline")
    if pipeline:
        bare, default = _at_concurrency(pipeline, None), _at_concurrency(pipeline, 64)
        if default and bare:
            share = (f" ({100 * default['share_of_ceiling']:.0f} % of what its database "
                     "allows)" if "share_of_ceiling" in default else "")
            out.append(("orders through the whole pipeline",
                        f"{default['orders_per_s_median']} orders/s{share}",
                        f"bare inserts on the same database: {bare['orders_per_s_median']:,}/s"))
    return out


def render_headline() -> str:
    lines = [HEAD_BEGIN, "| measured, median | ChangeCast | the alternative, same run |",
             "|---|---|---|"]
    lines.extend(f"| {a} | {b} | {c} |" for a, b, c in headline_rows())
    lines.append(HEAD_END)
    return "\n".join(lines)


def blocks() -> list[tuple[Path, str, str, str]]:
    """(file, begin marker, end marker, what belongs between them)."""
    return [(PERFORMANCE, BEGIN, END, render()), (README, HEAD_BEGIN, HEAD_END,
                                                  render_headline())]


def between(text: str, begin: str, end: str) -> str:
    return text[text.index(begin):text.index(end) + len(end)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    for path, begin, end, table in blocks():
        if not args.write:
            print(table)
            continue
        text = path.read_text()
        path.write_text(text.replace(between(text, begin, end), table))
        print(f"updated {path}")


if __name__ == "__main__":
    main()
