"""The pages at 1,000 to 5,000 viewers: signed-in portal sockets against the bare Node broadcast.

    python -m bench.pages [--quick] [--seconds 8] [--out bench/results/pages.json]

The fan-out benchmark (``bench.fanout``) measures the JSON socket; this one measures the
sockets people actually open: ``/ws/live/portal``, the htmx page socket, opened as the
browser opens it (the session cookie of a signed-in customer, the page's ``Origin``, the
``resume_from`` seq read off the rendered page, a tab id). The seeded shop has 25
customers, so 1,000 sockets are 25 customers with 40 tabs each (every customer's own
orders and notifications are their own subscription groups all the same). The writer is
an admin's ``PUT /api/products/{id}/stock``; each socket checks the stock value in the
product card the frame swaps (``data-stock="N"``).

The same Node load generator (``bench/node/loadgen.js``) drives, point by point and back
to back, the bare Node ``ws`` broadcast server relaying an HTML frame of the same size as
ChangeCast's (one real frame, captured first, with its stock value replaced per write).

Then one mixed point on a server with the order pipeline on: 1,000 portal pages, 50
admin consoles and 10 dashboards while stock moves and the "new order" demo control is
pressed; each kind of page reports what it saw (the stock on the portal and the admin's
inventory, the new order's row on the admin's table, frames on the dashboard).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import connect

from bench.fanout import (
    NODE,
    Target,
    _line,
    bare_ratios,
    ensure_node,
    process,
    run_point,
)
from bench.report import chart_bars, point, write
from bench.site import Site, free_port, products_of, site

CURVE = {1000: (10, 30, 50, 100), 5000: (10,)}
QUICK = {1000: (30,)}
SERVERS = ("bare", "changecast")
CUSTOMERS = 25
STOCK = r'data-stock="(\d+)"'
SEQ = re.compile(r'id="cc-seq" data-seq="(\d+)"')
MIXED = {"portal": 1000, "admin": 50, "dashboard": 10, "rate": 10, "orders": 10}


async def signed_in(cc: Site, email: str) -> tuple[str, int]:
    """A browser's session cookie after the demo's one-click sign-in, and the seq its page
    was rendered at (as the page's script reads it from ``#cc-seq``)."""
    async with httpx.AsyncClient(base_url=cc.base, headers={"Origin": cc.base}) as client:
        response = await client.post("/login/demo", data={"email": email})
        if response.status_code != 303:
            raise RuntimeError(f"signing in as {email} failed: {response.status_code}")
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        path = "/admin" if email.startswith("admin") else "/"
        page = await client.get(path)
        found = SEQ.search(page.text)
        if found is None:
            raise RuntimeError(f"{path} carries no seq")
        return cookie, int(found.group(1))


async def page_sockets(cc: Site, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Per socket: its URL (the page's seq, a tab id), the cookie of its user, its kind."""
    ws = cc.base.replace("http://", "ws://")
    admin = await signed_in(cc, "admin@example.com")
    customers = [await signed_in(cc, f"customer{n:02d}@example.com")
                 for n in range(1, CUSTOMERS + 1)]
    sockets: list[dict[str, Any]] = []
    for kind, count in counts.items():
        for n in range(count):
            cookie, seq = customers[n % CUSTOMERS] if kind == "portal" else admin
            tab = quote(f"bench-{kind}-{n}")
            sockets.append({"url": f"{ws}/ws/live/{kind}?resume_from={seq}&tab={tab}",
                            "cookie": cookie, "kind": kind})
    return sockets


async def sample_frame(cc: Site, product: str, cookie: str) -> str:
    """One real frame a portal page gets for a stock write, its value as ``{stock}``."""
    async with connect(cc.base.replace("http://", "ws://") + "/ws/live/portal",
                       origin=cc.base, additional_headers={"Cookie": cookie}) as ws:  # type: ignore[arg-type]
        admin = await cc.admin()
        try:
            value = 987_654_321
            (await admin.put(f"/api/products/{product}/stock",
                             json={"stock": value})).raise_for_status()
            async with asyncio.timeout(10):
                while f'data-stock="{value}"' not in (text := str(await ws.recv())):
                    pass
        finally:
            await admin.aclose()
    return text.replace(str(value), "{stock}")


async def writer(cc: Site) -> tuple[dict[str, Any], str]:
    admin = await cc.admin()
    cookie = "; ".join(f"{k}={v}" for k, v in admin.cookies.items())
    await admin.aclose()
    return ({"url": cc.base + "/api/products/{product}/stock", "method": "PUT",
             "body": "changecast", "cookie": cookie,
             "products": (await products_of(cc))[:200]}, cookie)


async def portal_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    curve = QUICK if args.quick else CURVE
    rows: list[dict[str, Any]] = []
    base = 10_000_000
    port = free_port()
    async with process(["node", str(NODE / "bare.js"), str(port)], port) as bare_proc, \
            site() as cc:
        write_cfg, _ = await writer(cc)
        most = max(curve)
        sockets = await page_sockets(cc, {"portal": most})
        template = await sample_frame(cc, write_cfg["products"][0], sockets[0]["cookie"])
        bare_base = f"http://127.0.0.1:{port}"
        bare = Target("bare", bare_base, f"ws://127.0.0.1:{port}/ws", None,
                      {"url": bare_base + "/write", "method": "POST", "body": "template",
                       "template": template, "products": write_cfg["products"]},
                      [bare_proc.pid])
        changecast = Target("changecast", cc.base, cc.ws, None, write_cfg, [cc.server.pid],
                            cc.database_pid)
        print(f"page frame: {len(template.encode())} bytes", flush=True)
        for clients, rates in curve.items():
            for rate in rates:
                for target in (bare, changecast):
                    base += 1_000_000
                    extra: dict[str, Any] = {"pattern": STOCK}
                    if target is changecast:
                        extra["sockets"] = sockets[:clients]
                    row = await run_point(target, clients, rate, args.seconds, base, args.drain,
                                        extra)
                    row["frame_bytes"] = len(template.encode())
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


async def mixed_point(args: argparse.Namespace) -> dict[str, Any]:
    """Portal, admin and dashboard pages together while orders flow through the pipeline."""
    async with site(pipeline=True) as cc:
        write_cfg, cookie = await writer(cc)
        counts = {k: MIXED[k] for k in ("portal", "admin", "dashboard")}
        sockets = await page_sockets(cc, counts)
        target = Target("changecast", cc.base, cc.ws, None, write_cfg, [cc.server.pid],
                        cc.database_pid)
        extra = {"pattern": STOCK, "sockets": sockets, "stride": 1000,
                 "orders": {"url": cc.base + "/api/simulate/new-order", "cookie": cookie,
                            "rate": MIXED["orders"]}}
        row = await run_point(target, len(sockets), MIXED["rate"], args.seconds, 50_000_000,
                            args.drain, extra)
        row["mixed"] = counts
        print(_line(row), flush=True)
        for kind, seen in row["kinds"].items():
            print(f"    {kind}: {seen}", flush=True)
        return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = bare_ratios(rows)
    cc = point(rows, "changecast", 1000, 30)
    if cc:
        out["applied_share_1000x30"], out["lost_1000x30"] = cc["applied_share"], cc["lost"]
    big = point(rows, "changecast", 5000, 10)
    if big:
        out["lost_5000x10"], out["p99_ms_5000x10"] = big["lost"], big["p99_ms"]
    return out


def chart(path: Path, rows: list[dict[str, Any]]) -> None:
    """p50 and p99 per point, the bare Node broadcast beside ChangeCast's page sockets."""
    labels = [f"{r['clients']:,} \u00d7 {r['rate']}/s" for r in rows if r["server"] == "bare"]
    series: dict[str, list[Any]] = {}
    for server, name in (("bare", "bare Node ws"), ("changecast", "ChangeCast pages")):
        for key in ("p50_ms", "p99_ms"):
            series[f"{name} {key[:3]}"] = [r[key] for r in rows if r["server"] == server]
    chart_bars(path, "Portal pages: write \u2192 stock in the card (ms)", labels, series,
               log=True, unit="ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one point, for a smoke run")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed point")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pages.json"))
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_node()
    rows = asyncio.run(portal_points(args))
    mixed = None if args.no_mixed else asyncio.run(mixed_point(args))
    write(args.out, {"benchmark": "pages", "command": "python -m bench.pages"
                     + (" --quick" if args.quick else ""),
                     "seconds_per_point": args.seconds, "customers": CUSTOMERS,
                     "summary": summary(rows), "portal": rows, "mixed": mixed})
    chart(args.out.with_suffix(".png"), rows)


if __name__ == "__main__":
    main()
