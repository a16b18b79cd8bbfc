"""The ``changecast`` command: serve, seed, loadtest, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from backend.infra.database import Database, DatabaseError, open_database
from backend.infra.logs import configure_logging
from backend.infra.progress import ProgressBar
from backend.infra.settings import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD, Settings, SettingsError
from backend.web.app import create_app, ensure_seeded
from backend.web.server import server_config
from loadtest.scenarios import SCENARIOS, scenario_with
from seed.loader import seed_database

logger = logging.getLogger("changecast.cli")

EXIT_USAGE = 2
# The benchmark suite (``bench/``), in the order ``make bench`` runs it.
BENCHMARKS = ("propagation", "fanout", "pages", "cache", "pipeline", "connections", "sources",
              "idle", "writepath", "clients")


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="changecast", description="Real-time order management on MongoDB change streams."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the web server (and the embedded database)")
    serve.add_argument("--host", help="bind address (default: CHANGECAST_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: CHANGECAST_PORT or 8000)")
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="server processes sharing the port, each with its own engine "
                            "(default 1)")
    # A worker of `serve --workers N`: serve on the listening socket it inherited.
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    seed = sub.add_parser("seed", help="load deterministic demo data")
    seed.add_argument("--reset", action="store_true", help="delete existing data first")
    seed.add_argument("--orders", type=_non_negative, default=300, help="historical orders")
    seed.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
    load = sub.add_parser("loadtest", help="drive a running server and report latencies")
    load.add_argument("--scenario", required=True, choices=sorted(SCENARIOS),
                      help="; ".join(f"{s.name}: {s.description}"
                                     for s in SCENARIOS.values()))
    load.add_argument("--duration", type=_positive_float, help="seconds (default 30)")
    load.add_argument("--rps", type=_positive_float, help="requests per second to offer")
    load.add_argument("--clients", type=_non_negative, help="WebSocket clients watching")
    load.add_argument("--url", help="server (default http://CHANGECAST_HOST:CHANGECAST_PORT)")
    load.add_argument("--report", type=Path,
                      help="JSON report path (default loadtest-<scenario>.json)")
    load.add_argument("--admin-email", default="admin@example.com")
    bench = sub.add_parser(
        "bench", help="run the benchmarks: JSON + PNG in bench/results/, tables in docs updated",
        description="Run benchmarks against a fresh embedded database each. Needs a "
                    "checkout of the repository and the bench extra (make bench installs it).")
    bench.add_argument("names", nargs="*", metavar="NAME",
                       help=f"which ones (default: all): {', '.join(BENCHMARKS)}")
    return parser


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {raw!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {raw}")
    return value


def _positive_int(raw: str) -> int:
    value = _non_negative(raw)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected 1 to 64, got {value}")
    return value


def _non_negative(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def check_port_free(host: str, port: int) -> None:
    """Raise CliError when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {port} on {host} is already in use; stop the other server or set "
                    "CHANGECAST_PORT"
                ) from None
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, saying so once the port accepts (the app has started by then)."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready is not None:
            self._ready()


def human_output(settings: Settings) -> bool:
    """A banner and short log lines for a person at a terminal; JSON lines otherwise."""
    if settings.log_format != "auto":
        return settings.log_format == "text"
    return sys.stdout.isatty() and sys.stderr.isatty()


def announce(settings: Settings, database: Database, *, workers: int = 1) -> None:
    """Where to go and how to sign in: a banner on a terminal, one JSON log line otherwise."""
    url = f"http://{settings.host}:{settings.port}"
    admin = "admin@example.com" + (f" / {DEFAULT_ADMIN_PASSWORD}"
                                   if settings.admin_password == DEFAULT_ADMIN_PASSWORD else "")
    customers = "customer01@example.com … customer25@example.com" + (
        f" / {DEFAULT_DEMO_PASSWORD}" if settings.demo_password == DEFAULT_DEMO_PASSWORD else "")
    where = (f"embedded database (NX-27017) in {settings.data_dir.resolve()}"
             if database.embedded is not None else f"{database.kind} database {settings.db_name}")
    if not human_output(settings):
        logger.info("serving on %s", url, extra={
            "url": url, "workers": workers, "database": where, "loop": loop_name(settings),
            **({"demo_admin": admin, "demo_customers": customers} if settings.demo else {})})
        return
    lines = ["", f"  ChangeCast is running at {url}"
             + (f" ({workers} workers)" if workers > 1 else "")]
    if settings.demo:
        lines += [f"  Admin:     {admin}", f"  Customers: {customers}",
                  "  (in demo mode the sign-in page also signs you in with one click)"]
    lines += [f"  Data:      {where}", "  Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def loop_name(settings: Settings) -> str:
    """The event loop ``serve`` runs on (``CHANGECAST_LOOP``): uvloop where it is installed
    (its C transports write a frame to a socket for less CPU than asyncio's Python ones,
    and a fan-out pass is one such write per member), else asyncio."""
    if settings.loop == "asyncio" or importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


def run_on_loop(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on the loop ``loop_name`` says."""
    if loop_name(settings) == "asyncio":
        asyncio.run(main)
        return
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve(settings: Settings, *, fd: int | None = None) -> None:
    """Open the database, then run uvicorn until SIGINT or SIGTERM (on the inherited
    listening socket ``fd`` when this is one of ``--workers``)."""
    if fd is None:
        check_port_free(settings.host, settings.port)
    async with open_database(settings) as database:
        app = create_app(settings, database=database)
        config = server_config(app, settings, fd=fd)
        ready = None if fd is not None else lambda: announce(settings, database)
        await AnnouncingServer(config, ready).serve()


async def serve_workers(settings: Settings, workers: int) -> None:
    """``workers`` server processes on one listening socket, each with its own engine (one
    change stream per collection per process; the pipeline's claims keep them safe together).
    This process opens the database (starting the embedded one), seeds it, binds the port,
    and restarts a worker that dies, until SIGINT or SIGTERM."""
    check_port_free(settings.host, settings.port)
    listener = socket.create_server((settings.host, settings.port), backlog=4096)
    listener.set_inheritable(True)
    async with open_database(settings) as database:
        await ensure_seeded(database, settings)
        uri = settings.mongodb_uri or (database.embedded.uri if database.embedded else None)
        env = {**os.environ, "MONGODB_URI": str(uri), "CHANGECAST_SECRET_KEY": settings.secret_key,
               "CHANGECAST_DEMO": "on" if settings.demo else "off",
               "CHANGECAST_ADMIN_PASSWORD": settings.admin_password}
        if settings.demo_password:
            env["CHANGECAST_DEMO_PASSWORD"] = settings.demo_password
        command = [sys.executable, "-m", "backend.cli", "serve", "--fd", str(listener.fileno())]

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, env=env, pass_fds=(listener.fileno(),))

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        procs = [start() for _ in range(workers)]
        announce(settings, database, workers=workers)
        try:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):  # wait_for may swallow a cancel (3.11)
                        await stopping.wait()
                for n, proc in enumerate(procs):
                    if proc.poll() is not None and not stopping.is_set():
                        logger.warning("worker %d exited with %s; starting another", proc.pid,
                                       proc.returncode)
                        procs[n] = start()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.to_thread(proc.wait, 15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            listener.close()


async def seed(settings: Settings, *, reset: bool, orders: int, seed_number: int) -> None:
    """Load demo data and say what happened."""
    async with open_database(settings) as database:
        report = await seed_database(
            database.db, admin_password=settings.admin_password,
            demo_password=settings.demo_password, seed=seed_number, orders=orders, reset=reset,
            progress=lambda total, label: ProgressBar(total, label=label),
        )
    if report.skipped:
        print("database already seeded; nothing changed (use --reset to start over)")
    else:
        print(f"seeded {report.products} products, {report.users} users, "
              f"{report.orders} orders")


def run_loadtest(settings: Settings, args: argparse.Namespace) -> None:
    try:
        from loadtest import runner as loadtest
    except ImportError as exc:  # the httpx client is an extra: the server does not need it
        raise CliError(f"changecast loadtest needs the loadtest extra ({exc.name} is missing): "
                       "pip install 'changecast[loadtest]'") from None
    scenario = scenario_with(args.scenario, duration=args.duration, rps=args.rps,
                                      clients=args.clients)
    url = args.url or f"http://{settings.host}:{settings.port}"
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url must start with http:// or https://, got {url!r}")
    report_path = args.report or Path(f"loadtest-{scenario.name}.json")
    try:
        report = asyncio.run(loadtest.run(
            url, scenario, report_path=report_path, admin_email=args.admin_email,
            admin_password=settings.admin_password or DEFAULT_ADMIN_PASSWORD,
            customer_password=settings.demo_password or DEFAULT_DEMO_PASSWORD))
    except loadtest.LoadTestError as exc:
        raise CliError(str(exc)) from None
    print(loadtest.summary(report))
    print(f"report written to {report_path}")


def run_benchmarks(names: Sequence[str]) -> int:
    """Run each benchmark as its own process (a fresh interpreter and database each), then
    render the performance tables from the results; returns how many failed."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise CliError(f"unknown benchmark {unknown[0]!r}; expected one of "
                       f"{', '.join(BENCHMARKS)}")
    # The benchmarks are not installed (the server image has no use for them): they run
    # from the checkout this package is installed from in editable mode.
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__init__.py").exists():
        raise CliError("the benchmarks live in the repository's bench/ directory: run "
                       "`changecast bench` from an editable install of a checkout "
                       "(pip install -e '.[bench]')")
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("the benchmarks need the bench extra for their charts: "
                       "pip install -e '.[bench]' (make bench does it)")
    failed = 0
    for name in names or BENCHMARKS:
        print(f"== bench.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=root).returncode:
            print(f"changecast: bench.{name} failed", file=sys.stderr, flush=True)
            failed += 1
    if (root / "docs" / "performance.md").exists():
        subprocess.run([sys.executable, "-m", "bench.table", "--write"], cwd=root, check=False)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``changecast`` console script."""
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        if getattr(args, "host", None):
            settings = _replace(settings, host=args.host)
        if getattr(args, "port", None) is not None:
            settings = _replace(settings, port=args.port)
        configure_logging(settings.log_level, "text" if human_output(settings) else "json")
        if args.command == "serve" and args.workers > 1 and args.fd is None:
            asyncio.run(serve_workers(settings, args.workers))
        elif args.command == "serve":
            run_on_loop(settings, serve(settings, fd=args.fd))
            if args.fd is None:
                _stopped(settings)
        elif args.command == "seed":
            asyncio.run(seed(settings, reset=args.reset, orders=args.orders,
                             seed_number=args.seed))
        elif args.command == "loadtest":
            run_loadtest(settings, args)
        elif args.command == "bench":
            return 1 if run_benchmarks(args.names) else 0
    except (SettingsError, DatabaseError, CliError) as exc:
        print(f"changecast: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command == "serve":  # Ctrl-C is how a server is stopped: not a failure
            if settings is not None and args.fd is None:
                _stopped(settings)
            return 0
        return 130
    return 0


def _stopped(settings: Settings) -> None:
    if human_output(settings):
        print("ChangeCast stopped.", flush=True)
    else:
        logger.info("ChangeCast stopped")


def _replace(settings: Settings, **changes: object) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
