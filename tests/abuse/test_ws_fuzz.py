"""Hypothesis throws arbitrary messages at ``/ws`` of a real server: every one gets a
well-formed answer, the connection stays open, the server stays up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.support.instance import AppProcess, app_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPLIES = {"error", "subscribed", "unsubscribed", "pong", "change", "resync"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "publish", ""])},
    optional={
        "id": st.one_of(st.text(max_size=80), st.integers(), st.none()),
        "collection": st.one_of(st.sampled_from(["orders", "products", "users",
                                                 "notifications", "audit", "$cmd"]),
                                st.text(max_size=20)),
        "where": st.one_of(st.text(max_size=120), json_values,
                           st.sampled_from(["status = 'paid'", "total_cents >= 1e999",
                                            "a IN ()", "NOT NOT x", "x = ''''"])),
        "resume_from": st.one_of(st.integers(), st.text(max_size=5), st.floats(),
                                 st.booleans()),
    })
messages = st.one_of(requests.map(json.dumps), json_values.map(json.dumps),
                     st.text(max_size=300))


@pytest.fixture(scope="module")
def socket(nx_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientConnection]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    app = AppProcess(app_env(MONGODB_URI=nx_uri, CHANGECAST_DB="fuzz",
                             CHANGECAST_PIPELINE="off"), tmp)
    try:
        with connect(app.base.replace("http://", "ws://") + "/ws", origin=app.base,
                     additional_headers={"Cookie": app.cookie}) as ws:
            yield ws
        assert app.healthy()
    finally:
        app.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages)
def test_ws_fuzz_every_message_gets_a_well_formed_answer(socket: ClientConnection,
                                                        message: str) -> None:
    socket.send(message)
    socket.send('{"op": "ping"}')
    subscribed = []
    while True:  # everything up to our pong: the fuzz message's answers, and live changes
        reply: Any = json.loads(socket.recv(timeout=5))
        assert isinstance(reply, dict) and reply.get("type") in REPLIES, reply
        if reply["type"] == "error":
            assert reply["code"] and reply["message"]
        if reply["type"] == "subscribed":
            subscribed.append(reply["id"])
        if reply["type"] == "pong":
            break
    for sub_id in subscribed:  # stay below the subscription limit across examples
        socket.send(json.dumps({"op": "unsubscribe", "id": sub_id}))
