"""Fan-out at 100 to 5,000 viewers: ChangeCast against the best a user could pick instead.

    python -m bench.fanout [--quick] [--seconds 8] [--workers 1] [--out bench/results/fanout.json]

One lean load generator (``bench/node/loadgen.js``: Node and ``ws``, one process, the
clients and the open-loop writer on one clock) drives, point by point and back to back,
three servers started side by side on this machine:

- **bare**: a bare Node ``ws`` broadcast server (``bench/node/bare.js``): each write is
  relayed as it is to every socket, no database. The floor of this machine.
- **naive**: a Starlette broadcast as a user would write it (``bench/naive_server.py``):
  one ``send_text`` per client per write, no database.
- **changecast**: ``changecast serve`` on the embedded database; the clients subscribe to
  ``products`` on ``/ws``; the writer is an admin's ``PUT /api/products/{id}/stock``.

For every point (clients x writes/s): p50/p95/p99 write→client latency over every
(applied write, client) pair, pairs never seen (lost), the share of writes applied and
their p99, server CPU µs per delivery (ChangeCast's database process reported apart),
and the load generator's own CPU share, so that it is seen not to be the bottleneck.
Memory per connection is the server's RSS growth with the most clients connected.
The in-process part (``bench.engine``) runs first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import engine
from bench.report import point, write
from bench.site import (
    ROOT,
    SUBSCRIBE_PRODUCTS,
    Site,
    cpu_seconds,
    cpu_times,
    free_port,
    products_of,
    rss_kib,
    site,
    stop_process,
)

NODE = ROOT / "bench" / "node"
SERVERS = ("bare", "naive", "changecast")
CURVE = {100: (10, 30, 100), 1000: (10, 30, 50, 70, 100), 5000: (10, 30, 100)}
QUICK = {100: (10,), 1000: (30,)}


@dataclass
class Target:
    """A server under test and how the load generator talks to it."""

    name: str
    base: str
    ws: str
    subscribe: str | None
    write: dict[str, Any]
    pids: list[int]  # whose CPU and memory count as the server's (and their children)
    database_pid: int | None = None


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@asynccontextmanager
async def process(args: list[str], port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _wait_port(port, proc)
        yield proc
    finally:
        stop_process(proc)


@asynccontextmanager
async def targets(workers: int) -> AsyncIterator[dict[str, Target]]:
    async with AsyncExitStack() as stack:
        found: dict[str, Target] = {}
        port = free_port()
        bare = await stack.enter_async_context(process(["node", str(NODE / "bare.js"), str(port)],
                                                       port))
        base = f"http://127.0.0.1:{port}"
        found["bare"] = Target("bare", base, f"ws://127.0.0.1:{port}/ws", None,
                               {"url": base + "/write", "method": "POST", "body": "relay"},
                               [bare.pid])
        port = free_port()
        naive = await stack.enter_async_context(process(
            [sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--port", str(port),
             "--log-level", "warning", "--no-access-log"], port))
        base = f"http://127.0.0.1:{port}"
        found["naive"] = Target("naive", base, f"ws://127.0.0.1:{port}/ws", None,
                                {"url": base + "/write", "method": "POST", "body": "relay"},
                                [naive.pid])
        args = ("--workers", str(workers)) if workers > 1 else ()
        found["changecast"] = await changecast(await stack.enter_async_context(site(args=args)))
        for target in found.values():
            target.write["products"] = found["changecast"].write["products"]
        yield found


async def changecast(cc: Site) -> Target:
    """ChangeCast as a target: anonymous clients on ``products``, an admin writing stock."""
    admin = await cc.admin()
    cookie = "; ".join(f"{k}={v}" for k, v in admin.cookies.items())
    await admin.aclose()
    return Target("changecast", cc.base, cc.ws, SUBSCRIBE_PRODUCTS,
                  {"url": cc.base + "/api/products/{product}/stock", "method": "PUT",
                   "body": "changecast", "cookie": cookie,
                   "products": (await products_of(cc))[:200]},
                  [cc.server.pid], cc.database_pid)


async def run_point(target: Target, clients: int, rate: int, seconds: float, base: int,
                    drain: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One point; ``extra`` adds to the generator's config (see ``loadgen.js``)."""
    config = {"ws": target.ws, "origin": target.base, "subscribe": target.subscribe,
              "clients": clients, "rate": rate, "seconds": seconds, "drain": drain,
              "base": base, "write": target.write, **(extra or {})}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="loadgen-") as handle:
        json.dump(config, handle)  # thousands of sockets' URLs do not fit a command line
        handle.flush()
        return await _run_point(target, clients, seconds, drain, "@" + handle.name)


async def _run_point(target: Target, clients: int, seconds: float, drain: float,
                     config: str) -> dict[str, Any]:
    pids = target.pids
    rss_before = rss_kib(pids)
    gen = await asyncio.create_subprocess_exec(
        "node", str(NODE / "loadgen.js"), config, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert gen.stdin is not None and gen.stdout is not None
    ready = await asyncio.wait_for(gen.stdout.readline(), 300)
    if ready.strip() != b"READY":
        raise RuntimeError(f"the load generator did not connect: {ready!r}")
    await asyncio.sleep(1.0)  # let the connection burst settle before measuring
    rss_connected = rss_kib(pids)
    user0, system0 = cpu_times(pids)
    db0 = cpu_seconds([target.database_pid]) if target.database_pid else 0.0
    wall0 = time.perf_counter()
    gen.stdin.write(b"go\n")
    await gen.stdin.drain()
    line = await asyncio.wait_for(gen.stdout.readline(), seconds + drain + 120)
    wall = time.perf_counter() - wall0
    user, system = cpu_times(pids)
    user, system = user - user0, system - system0
    cpu = user + system
    db = (cpu_seconds([target.database_pid]) - db0) if target.database_pid else None
    await gen.wait()
    result: dict[str, Any] = json.loads(line)
    deliveries = max(1, result["deliveries"])
    result.update(
        server=target.name, server_cpu_share=round(cpu / wall, 3),
        server_cpu_us_per_delivery=round(cpu * 1e6 / deliveries, 2),
        # Apart: the kernel's part is mostly the send of each frame, which any server pays.
        server_user_us_per_delivery=round(user * 1e6 / deliveries, 2),
        server_system_us_per_delivery=round(system * 1e6 / deliveries, 2),
        database_cpu_share=round(db / wall, 3) if db is not None else None,
        rss_per_connection_kib=round((rss_connected - rss_before) / clients, 1))
    return result


def _line(r: dict[str, Any]) -> str:
    return (f"{r['server']:>10} {r['clients']:>5} x {r['rate']:>3}/s: p50 {r['p50_ms']} p95 "
            f"{r['p95_ms']} p99 {r['p99_ms']} ms, lost {r['lost']}, applied "
            f"{r['applied_share']:.1%} (write p99 {r['write_p99_ms']} ms), "
            f"{r['server_cpu_us_per_delivery']} µs/delivery (user "
            f"{r['server_user_us_per_delivery']}, system {r['server_system_us_per_delivery']}), server cpu "
            f"{r['server_cpu_share']:.0%}, loadgen cpu {r['loadgen_cpu_share']:.0%}, "
            f"{r['rss_per_connection_kib']} KiB/conn")


async def sockets_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    curve = QUICK if args.quick else CURVE
    rows: list[dict[str, Any]] = []
    base = 10_000_000
    async with targets(args.workers) as found:
        for clients, rates in curve.items():
            for rate in rates:
                for name in SERVERS:
                    base += 1_000_000
                    row = await run_point(found[name], clients, rate, args.seconds, base,
                                          args.drain)
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def ensure_node() -> None:
    """The load generator's one dependency (``ws``, pinned in package-lock.json)."""
    if not (NODE / "node_modules" / "ws").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE, check=True)


def capacity(rows: list[dict[str, Any]], server: str, clients: int = 1000,
             p99_ms: float = 250.0) -> int | None:
    """The highest rate measured at which ``clients`` clients still saw p99 <= ``p99_ms``."""
    ok = [r["rate"] for r in rows if r["server"] == server and r["clients"] == clients
          and r["p99_ms"] is not None and r["p99_ms"] <= p99_ms and r["lost"] == 0]
    return max(ok) if ok else None


def bare_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """ChangeCast's p50 and p99 over the bare Node server's at 1,000 x 30/s (the goal)."""
    cc, bare = point(rows, "changecast", 1000, 30), point(rows, "bare", 1000, 30)
    if not (cc and bare and bare["p50_ms"] and bare["p99_ms"]):
        return {}
    return {"p50_ratio_vs_bare_1000x30": round(cc["p50_ms"] / bare["p50_ms"], 2),
            "p99_ratio_vs_bare_1000x30": round(cc["p99_ms"] / bare["p99_ms"], 2)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = bare_ratios(rows)
    caps = {s: capacity(rows, s) for s in SERVERS}
    out["capacity_1000_clients_p99_250ms"] = caps
    if caps["changecast"] and caps["bare"]:
        out["capacity_ratio_vs_bare"] = round(caps["changecast"] / caps["bare"], 2)
    return out


def chart(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 4.2), dpi=110,
                             squeeze=False)
    for ax, clients in zip(axes[0], counts, strict=True):
        for server in SERVERS:
            points = sorted((r["rate"], r["p50_ms"], r["p99_ms"]) for r in rows
                            if r["server"] == server and r["clients"] == clients)
            if not points:
                continue
            xs = [p[0] for p in points]
            line = ax.plot(xs, [p[2] for p in points], marker="o", label=f"{server} p99")[0]
            ax.plot(xs, [p[1] for p in points], marker=".", linestyle="--",
                    color=line.get_color(), label=f"{server} p50")
        ax.set_yscale("log")
        ax.set_title(f"{clients:,} clients")
        ax.set_xlabel("changes per second")
        ax.set_ylabel("write → client latency, ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Fan-out latency against load (same load generator, same machine)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two points, for a smoke run")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="of the in-process part")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fanout.json"))
    args = parser.parse_args()
    ensure_node()
    engine.main(["--repeats", str(args.repeats), "--out", str(args.out.with_name("engine.json"))])
    in_process = json.loads(args.out.with_name("engine.json").read_text())
    rows = asyncio.run(sockets_main(args))
    write(args.out, {"benchmark": "fanout", "command": "python -m bench.fanout"
                     + (" --quick" if args.quick else ""),
                     "seconds_per_point": args.seconds, "workers": args.workers,
                     "summary": summary(rows), "in_process": in_process["results"],
                     "over_sockets": rows})
    chart(args.out.with_suffix(".png"), rows)


if __name__ == "__main__":
    main()
