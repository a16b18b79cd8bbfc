"""The connection: sign-in, one WebSocket to ``/ws``, reconnect with jittered back-off, and
re-attaching every subscription from the last ``seq`` it applied."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from changecast_client.errors import (
    AccessDenied,
    AuthError,
    ChangeCastError,
    ConnectError,
    FilterError,
    ProtocolError,
    SessionClosed,
)
from changecast_client.events import Status
from changecast_client.subscription import Subscription

Auth = tuple[str, str] | str | None
SESSION_ENDED = 1008
PAGE = 500  # documents per snapshot page (the server's limit)


def server_error(status: int, body: Any, where: str | None = None) -> ChangeCastError:
    """The error for a refused HTTP request or subscription (``status`` 0: a socket error
    message, whose ``code`` is the server's)."""
    error = body.get("error", body) if isinstance(body, dict) else {}
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else str(body)[:200]
    if code == "bad_where" or (status == 400 and where is not None):
        return FilterError(f"bad where {where!r}: {message}")
    if code in ("unauthorized", "forbidden") or status in (401, 403):
        kind = code if code in ("unauthorized", "forbidden") else (
            "unauthorized" if status == 401 else "forbidden")
        return AccessDenied(message or kind, kind)
    return ProtocolError(f"{status or 'server'}: {message}" if status else message, code or str(status))


class Client:
    """One connection to a ChangeCast server. Make it with ``await connect(url, auth)``;
    ``subscribe`` as often as needed (at most 32 per connection); ``close`` when done
    (or use ``async with``)."""

    def __init__(self, url: str, auth: Auth = None, *, heartbeat_s: float = 15.0,
                 timeout_s: float = 10.0, backoff_s: tuple[float, float] = (0.1, 10.0),
                 max_pending: int = 10_000) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be the server's http:// or https:// address, got {url!r}")
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self.ws_url = ("wss" if parts.scheme == "https" else "ws") + self.base[len(parts.scheme):] + "/ws"
        self.auth = auth
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_pending = max_pending
        self.cookie = auth if isinstance(auth, str) else ""
        self.state: str = "connecting"
        self.reconnects = 0
        self.subscriptions: dict[str, Subscription] = {}  # by the id the server knows
        self._all: list[Subscription] = []
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        self._error: ChangeCastError | None = None
        self._ids = 0
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Sign in (when ``auth`` is an email and password) and open the socket; errors
        here are raised (a refused sign-in, an unreachable server); later losses are
        reconnected."""
        if isinstance(self.auth, tuple):
            await self._sign_in(*self.auth)
        self._ws = await self._open()
        self.state = "live"
        self._live.set()
        self._task = asyncio.create_task(self._run(), name="changecast-client")

    async def close(self) -> None:
        """Close the socket; every subscription's iterator ends."""
        self.state = "closed"
        for task in list(self._background):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        for sub in self._all:
            sub._end(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- subscriptions --------------------------------------------------------------------

    async def subscribe(self, collection: str, where: str | None = None, *, snapshot: bool = True,
                        events: bool = True) -> Subscription:
        """A live subscription. With ``snapshot`` (products and orders, which have a list
        endpoint) the view starts with every matching document; without it, with changes from
        now on. With ``events=False`` nothing queues up for iteration: read ``view`` only.
        Raises ``FilterError`` for a bad ``where``, ``AccessDenied`` when not allowed."""
        if self.state == "closed":
            raise ChangeCastError("the client is closed")
        if self._error is not None:
            raise self._error
        sub = Subscription(self, collection, where, snapshot=snapshot, events=events,
                           max_pending=self.max_pending)
        try:
            await sub._attach(first=True)
        except ProtocolError as exc:
            if exc.code == "no_snapshot":  # the socket's verdict first: forbidden, unknown...
                sub_id = self._next_id()
                await self._request_subscribe(sub, sub_id, None)
                await self._unsubscribe(sub)
            raise
        self._all.append(sub)
        return sub

    def _next_id(self) -> str:
        self._ids += 1
        return f"s{self._ids}"

    async def _request_subscribe(self, sub: Subscription, sub_id: str,
                                 resume_from: int | None) -> dict[str, Any]:
        """Send a subscribe and wait for its answer (``subscribed``; an error is raised)."""
        await self._live.wait()
        ws = self._ws
        assert ws is not None
        message: dict[str, Any] = {"op": "subscribe", "id": sub_id, "collection": sub.collection}
        if sub.where is not None:
            message["where"] = sub.where
        if resume_from is not None:
            message["resume_from"] = resume_from
        reply = asyncio.get_running_loop().create_future()
        self._replies[sub_id] = reply
        self.subscriptions[sub_id] = sub
        try:
            await ws.send(json.dumps(message))
            async with asyncio.timeout(self.timeout_s):  # wait_for may swallow a cancel
                answer = await reply
        except BaseException:
            self.subscriptions.pop(sub_id, None)
            raise
        finally:
            self._replies.pop(sub_id, None)
        if answer.get("type") == "error":
            self.subscriptions.pop(sub_id, None)
            raise server_error(0, answer, sub.where)
        return dict(answer)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._all:
            self._all.remove(sub)
        for sub_id in [k for k, v in self.subscriptions.items() if v is sub]:
            del self.subscriptions[sub_id]
            if self._ws is not None and self._live.is_set():
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(json.dumps({"op": "unsubscribe", "id": sub_id}))

    # ---- HTTP -----------------------------------------------------------------------------

    async def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        """One request to the server's REST API: (status, decoded body, headers)."""
        def call() -> tuple[int, Any, dict[str, str]]:
            headers = {"Accept": "application/json", "Origin": self.base}
            if self.cookie:
                headers["Cookie"] = self.cookie
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            request = urllib.request.Request(self.base + path, data=data, method=method,
                                             headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw, status, got = response.read(), response.status, response.headers
            except urllib.error.HTTPError as exc:
                raw, status, got = exc.read(), exc.code, exc.headers
            except (OSError, ValueError) as exc:
                raise ConnectError(f"cannot reach {self.base}: {exc}") from None
            try:
                decoded = json.loads(raw) if raw else None
            except ValueError:
                decoded = raw.decode(errors="replace")
            return status, decoded, {k.lower(): v for k, v in got.items()}
        return await asyncio.to_thread(call)

    async def _sign_in(self, email: str, password: str) -> None:
        status, body, headers = await self.http("POST", "/api/login",
                                                {"email": email, "password": password})
        if status == 401:
            raise AuthError(f"the server refused the credentials of {email}")
        if status != 200 or "set-cookie" not in headers:
            raise server_error(status, body)
        self.cookie = headers["set-cookie"].split(";", 1)[0]

    async def load(self, collection: str, where: str | None) -> tuple[dict[str, Any], int]:
        """Every matching document, page by page (keyset: a change between two pages cannot
        shift one), and the ``seq`` of the first page: replaying from it covers every change
        any page may have missed."""
        docs: dict[str, Any] = {}
        seq: int | None = None
        after: str | None = None
        while True:
            query = {"limit": str(PAGE), "sort": "_id"}
            if where is not None:
                query["where"] = where
            if after is not None:
                query["after"] = after
            path = f"/api/{urllib.parse.quote(collection)}?" + urllib.parse.urlencode(query)
            status, body, _ = await self.http("GET", path)
            if status == 404:
                raise ProtocolError(f"{collection} has no list endpoint to load a snapshot from; "
                                    "subscribe with snapshot=False", "no_snapshot")
            if status != 200 or not isinstance(body, dict):
                raise server_error(status, body, where)
            seq = body["seq"] if seq is None else seq
            items = body["items"]
            for doc in items:
                docs[str(doc["_id"])] = doc
            if body.get("next_cursor") is None or not items:
                assert seq is not None
                return docs, seq
            after = str(items[-1]["_id"])

    # ---- the socket -----------------------------------------------------------------------

    async def _open(self) -> ClientConnection:
        headers = {"Cookie": self.cookie} if self.cookie else None
        try:
            return await ws_connect(self.ws_url, origin=self.base,  # type: ignore[arg-type]
                                    additional_headers=headers, max_queue=None,
                                    ping_interval=self.heartbeat_s, ping_timeout=self.timeout_s,
                                    open_timeout=self.timeout_s, close_timeout=1)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ConnectError(f"the server refused the WebSocket handshake with HTTP {status}: "
                               f"{exc.response.body.decode(errors='replace')[:200]}", status) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ConnectError(f"cannot open {self.ws_url}: {exc or type(exc).__name__}") from None

    async def _run(self) -> None:
        attempt = 0
        while True:
            ws = self._ws
            assert ws is not None
            try:
                if attempt:
                    attempt = 0
                    self.spawn(self._reattach)  # its replies come through this loop
                async for raw in ws:
                    await self._dispatch(json.loads(raw))
                detail = f"closed by the server ({ws.close_code})"
                code = ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                detail = f"connection lost ({code or 'no close frame'})"
            except (OSError, ChangeCastError, TimeoutError) as exc:
                code, detail = None, f"connection lost ({exc or type(exc).__name__})"
            if code == SESSION_ENDED:
                return self._fail(SessionClosed(
                    f"the session ended ({ws.close_reason or 'signed out'}); sign in again"))
            if self.state == "closed":
                return
            self._live.clear()
            self.state = "reconnecting"
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_exception(ConnectError(detail))
            self.subscriptions.clear()
            while True:
                attempt += 1
                self.reconnects += 1
                for sub in self._all:
                    await sub._emit(Status("reconnecting", detail, attempt))
                low, high = self.backoff_s
                await asyncio.sleep(random.uniform(0, min(high, low * 2 ** min(attempt, 16))))
                try:
                    self._ws = await self._open()
                except ConnectError as exc:
                    detail = str(exc)
                    if exc.status == 403 and self.cookie and await self._session_gone():
                        return self._fail(SessionClosed("the session ended; sign in again"))
                    continue
                break
            self.state = "live"
            self._live.set()

    async def _session_gone(self) -> bool:
        """After a refused handshake: is it our session (not a cap or a Host rule)?"""
        with contextlib.suppress(ChangeCastError):
            status, body, _ = await self.http("GET", "/api/me")
            return status == 200 and isinstance(body, dict) and not body.get("user")
        return False

    async def _reattach(self) -> None:
        for sub in list(self._all):
            await sub._emit(Status("live", "reconnected"))
        for sub in list(self._all):
            try:
                await sub._attach(first=False)
            except (AccessDenied, FilterError, ProtocolError) as exc:
                sub._end(exc)  # the server no longer allows it: tell the application
                self._all.remove(sub)
            except (ConnectError, TimeoutError):
                return  # lost again: the next connection re-attaches every subscription

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        sub_id = msg.get("id")
        if kind == "change":
            sub = self.subscriptions.get(sub_id)  # type: ignore[arg-type]
            if sub is not None:
                await sub._change(msg)
        elif kind in ("subscribed", "error") and sub_id in self._replies:
            if kind == "subscribed" and (sub := self.subscriptions.get(str(sub_id))) is not None:
                await sub._subscribed(msg)
            reply = self._replies[sub_id]
            if not reply.done():
                reply.set_result(msg)
        elif kind == "resync":
            sub = self.subscriptions.pop(sub_id, None)  # type: ignore[arg-type]
            if sub is not None:
                await sub._resync(str(msg.get("reason", "")))

    def _fail(self, error: ChangeCastError) -> None:
        self._error = error
        self.state = "closed"
        self._live.clear()
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(error)
        for sub in self._all:
            sub._end(error)

    def spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` beside the reader (a resync's reload must not stop other changes)."""
        task = asyncio.create_task(work())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def connect(url: str, auth: Auth = None, **options: Any) -> Client:
    """Connect to a ChangeCast server at ``url`` (``http://host:port``). ``auth`` is
    ``(email, password)``, a session cookie (``"changecast_session=..."``), or ``None``
    (anonymous: products only). Options: ``heartbeat_s`` (15), ``timeout_s`` (10),
    ``backoff_s`` ((0.1, 10): first and largest reconnect delay, jittered),
    ``max_pending`` (10,000 events a subscription queues before the socket waits)."""
    client = Client(url, auth, **options)
    await client.start()
    return client
