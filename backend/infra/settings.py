"""Settings: one frozen object built once from the environment and passed down."""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

DemoLogin = Literal["auto", "on", "off"]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_ADMIN_PASSWORD = "changecast-admin"
DEFAULT_DEMO_PASSWORD = "changecast-demo"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """An environment variable holds a value ChangeCast cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about one ChangeCast process."""

    mongodb_uri: str | None = None
    db_name: str = "changecast"
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    demo: bool = True
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    demo_password: str | None = DEFAULT_DEMO_PASSWORD
    secret_key: str = ""
    log_level: str = "INFO"
    # "auto": human lines and a banner on a terminal, JSON lines otherwise.
    log_format: str = "auto"
    cache_size: int = 10_000
    pipeline_enabled: bool = True
    payment_success_rate: float = 0.9
    payment_latency_ms: tuple[int, int] = (100, 800)
    payment_concurrency: int = 64
    reconcile_after_s: float = 30.0
    secure_cookies: bool = False
    heartbeat_s: float = 15.0
    # Host headers this server answers to (a name, "*.example.com", or "*"); () means the
    # bound host and the loopback names (see ``hosts``).
    allowed_hosts: tuple[str, ...] = ()
    demo_login: DemoLogin = "auto"
    forwarded_allow_ips: str | None = None
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    max_connections: int = 10_000
    max_connections_per_client: int = 500
    idle_socket_s: float = 60.0
    # The event loop ``serve`` runs on: "auto" is uvloop where it is installed, else asyncio.
    loop: str = "auto"
    # The embedded database (polled): how long a quiet change stream may wait between polls.
    # This process's own writes wake it at once; another process's (a sibling of
    # ``--workers``, a script) are seen within this after a quiet spell.
    idle_poll_max_s: float = 1.0

    @property
    def hosts(self) -> tuple[str, ...]:
        """The Host names allowed: ``allowed_hosts``, or the bound host and loopback."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return tuple(dict.fromkeys((self.host.lower(), *LOOPBACK_NAMES)))

    @property
    def embedded(self) -> bool:
        """True when ChangeCast runs its own NX-27017 server."""
        return self.mongodb_uri is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); raise SettingsError."""
        env = os.environ if env is None else env
        uri = _text(env, "MONGODB_URI") or None
        if uri is not None and not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise SettingsError(
                f"MONGODB_URI must start with mongodb:// or mongodb+srv://, got {uri!r}"
            )
        demo = _flag(env, "CHANGECAST_DEMO", default=uri is None)
        admin_password = _text(env, "CHANGECAST_ADMIN_PASSWORD")
        if not admin_password:
            if not demo:
                raise SettingsError(
                    "CHANGECAST_ADMIN_PASSWORD is required when CHANGECAST_DEMO is off"
                )
            admin_password = DEFAULT_ADMIN_PASSWORD
        demo_password = _text(env, "CHANGECAST_DEMO_PASSWORD") or (
            DEFAULT_DEMO_PASSWORD if demo else None
        )
        data_dir = Path(_text(env, "CHANGECAST_DATA_DIR") or "data")
        db_name = _text(env, "CHANGECAST_DB") or "changecast"
        if not db_name.replace("_", "").replace("-", "").isalnum() or len(db_name) > 60:
            raise SettingsError(
                f"CHANGECAST_DB must be letters, digits, '-' or '_' (at most 60), got {db_name!r}"
            )
        low, high = _range(env, "CHANGECAST_PAYMENT_LATENCY_MS", (100, 800))
        return cls(
            mongodb_uri=uri,
            db_name=db_name,
            data_dir=data_dir,
            host=_text(env, "CHANGECAST_HOST") or "127.0.0.1",
            port=_int(env, "CHANGECAST_PORT", 8000, low=1, high=65535),
            demo=demo,
            admin_password=admin_password,
            demo_password=demo_password,
            secret_key=_text(env, "CHANGECAST_SECRET_KEY") or _stored_secret(data_dir),
            log_level=_choice(env, "CHANGECAST_LOG_LEVEL", "INFO", _LEVELS),
            log_format=_choice(env, "CHANGECAST_LOG_FORMAT", "AUTO",
                               ("AUTO", "JSON", "TEXT")).lower(),
            cache_size=_int(env, "CHANGECAST_CACHE_SIZE", 10_000, low=1, high=10_000_000),
            pipeline_enabled=_flag(env, "CHANGECAST_PIPELINE", default=True),
            payment_success_rate=_float(env, "CHANGECAST_PAYMENT_SUCCESS_RATE", 0.9, 0.0, 1.0),
            payment_latency_ms=(low, high),
            payment_concurrency=_int(env, "CHANGECAST_PAYMENT_CONCURRENCY", 64, low=1, high=10_000),
            reconcile_after_s=_float(env, "CHANGECAST_RECONCILE_AFTER_S", 30.0, 0.1, 86_400.0),
            secure_cookies=_flag(env, "CHANGECAST_SECURE_COOKIES", default=False),
            heartbeat_s=_float(env, "CHANGECAST_HEARTBEAT_S", 15.0, 0.2, 3_600.0),
            allowed_hosts=_hosts(env, "CHANGECAST_ALLOWED_HOSTS"),
            demo_login=cast(DemoLogin, _choice(env, "CHANGECAST_DEMO_LOGIN", "AUTO",
                                               ("AUTO", "ON", "OFF")).lower()),
            forwarded_allow_ips=_text(env, "CHANGECAST_FORWARDED_ALLOW_IPS") or None,
            body_timeout_s=_float(env, "CHANGECAST_BODY_TIMEOUT_S", 10.0, 0.1, 600.0),
            header_timeout_s=_float(env, "CHANGECAST_HEADER_TIMEOUT_S", 10.0, 0.1, 600.0),
            max_connections=_int(env, "CHANGECAST_MAX_CONNECTIONS", 10_000, low=1,
                                 high=1_000_000),
            max_connections_per_client=_int(env, "CHANGECAST_MAX_CONNECTIONS_PER_CLIENT", 500,
                                            low=1, high=1_000_000),
            idle_socket_s=_float(env, "CHANGECAST_IDLE_SOCKET_S", 60.0, 0.1, 86_400.0),
            loop=_loop(env),
            idle_poll_max_s=_float(env, "CHANGECAST_IDLE_POLL_MAX_S", 1.0, 0.025, 10.0),
        )


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _text(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = _text(env, name).lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name} must be one of 1/0, true/false, yes/no, on/off, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = _text(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = _text(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _range(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = _text(env, name)
    if not raw:
        return default
    parts = raw.split("-")
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise SettingsError(f"{name} must look like 100-800 (milliseconds), got {raw!r}") from None
    if not 0 <= low <= high <= 60_000:
        raise SettingsError(f"{name} must satisfy 0 <= low <= high <= 60000, got {raw!r}")
    return low, high


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _text(env, name)
    if not raw:
        return ()
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        if host != "*" and not _HOST.match(host.removeprefix("*.")):
            raise SettingsError(f"{name} must list host names (a.example, *.example or *), "
                                f"got {host!r}")
    return hosts


_HOST = re.compile(r"^(\[[0-9a-f:]+\]|[0-9a-f:]*:[0-9a-f:]+|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)$")


def _choice(env: Mapping[str, str], name: str, default: str, options: tuple[str, ...]) -> str:
    raw = _text(env, name).upper() or default
    if raw not in options:
        raise SettingsError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
    return raw


def _loop(env: Mapping[str, str]) -> str:
    loop = _choice(env, "CHANGECAST_LOOP", "AUTO", ("AUTO", "UVLOOP", "ASYNCIO")).lower()
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise SettingsError("CHANGECAST_LOOP=uvloop, but uvloop is not installed "
                            "(pip install uvloop, or use auto or asyncio)")
    return loop


def _stored_secret(data_dir: Path) -> str:
    """Read the session secret from the data dir, creating it on first use (mode 600 from
    the start, in a data dir of mode 700: no other local user may read either)."""
    path = data_dir / "secret_key"
    try:
        private_dir(data_dir)
        if path.exists():
            key = path.read_text().strip()
            if len(key) >= 32:
                path.chmod(0o600)
                return key
            path.unlink()
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        return key
    except OSError as exc:
        raise SettingsError(
            f"CHANGECAST_DATA_DIR {str(data_dir)!r} is not usable for the session secret: "
            f"{exc.strerror or exc}"
        ) from None


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) as mode 700, or tighten it to 700 if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
