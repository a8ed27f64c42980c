"""Server→client streams of a multiplexed route across backend disconnects.

The merged GET stream has one leg per backend.  A backend may close its leg after an
event with an id (2025-11-25 SSE polling) and expects a ``Last-Event-ID`` reconnection;
a backend that lost our session answers the reconnection 404; a leg may fail for good.
The client's stream must ride all of that out.  And a client that resumes a POST answer
(GET with an ``p!`` event id) gets that backend's stream back.

Real SDK servers with an event store show the polling cases end to end; scripted raw
backends (``StreamBackend``) show what an SDK server cannot be made to do on cue: a
``retry:`` field on a GET stream, a restart in the middle of one, a leg that never
gives anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

import anyio
import httpx
import orjson
import pytest
from gwutil import ROOT, GatewayThread, backend_process
from mcp import Client, types
from rawbackend import RawBackend

from mcpfast.mux.token import new_key_text
from mcpfast.mux.virtual import _LEG_ATTEMPTS

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "mux_server.py")
KEY = new_key_text()
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-11-25"


def _event(text: str | None, eid: str | None = None, retry: int | None = None) -> bytes:
    """One SSE event: a log notification saying ``text`` (None: no data)."""
    out = b"" if retry is None else b"retry: %d\n" % retry
    if eid is not None:
        out += b"id: %s\n" % eid.encode()
    data = b"" if text is None else orjson.dumps(
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": text}}
    )
    return out + b"event: message\ndata: " + data + b"\n\n"


class StreamBackend(RawBackend):
    """The raw ``mux`` backend (POST: sessions, requests) with a scripted GET stream.

    ``script(n, last_event_id)`` decides the n-th GET (counted from 0) that names a known
    session: it returns the SSE events to send and then either None (end the stream, as
    a polling server does) or a ``threading.Event`` to wait for before ending it.  A GET
    in an unknown session gets 404.  ``gets`` records (time, session, Last-Event-ID) of
    every GET."""

    def __init__(self, script) -> None:
        self.script = script
        self.gets: list[tuple[float, bytes | None, bytes | None]] = []
        self.served = 0
        super().__init__("streams")

    def _streams(self, conn, req) -> None:
        head, _ = req
        verb = head.split(b" ", 1)[0]
        if verb == b"POST":
            self._mux(conn, req)
            return
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            fields[k.strip().lower()] = v.strip()
        sid = fields.get(b"mcp-session-id")
        if verb == b"DELETE":
            self.sessions.discard(sid)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        self.gets.append((time.monotonic(), sid, fields.get(b"last-event-id")))
        if sid not in self.sessions:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            return
        events, then = self.script(self.served, fields.get(b"last-event-id"))
        self.served += 1
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for ev in events:
            conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        if then is not None:
            then.wait(20)
        conn.sendall(b"0\r\n\r\n")


def _gateway(urls: dict) -> GatewayThread:
    return GatewayThread({
        "backends": {n: {"url": u, "response_timeout": 5.0} for n, u in urls.items()},
        "routes": [{"path": "/mcp", "backends": list(urls)}],
        "sessions": {"key": KEY},
    })  # fmt: skip


def _init(h: httpx.Client, url: str) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = h.post(url, json=body, headers=HEADERS)
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


def _get_headers(sid: str) -> dict:
    return {"Accept": "text/event-stream", "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}


def _read_until(lines, wanted: set[str]) -> list[str]:
    """Log texts from the client's stream (``lines``: its line iterator) until every one
    of ``wanted`` has come."""
    got = []
    for line in lines:
        if line.startswith("data:") and line[5:].strip():
            msg = json.loads(line[5:])
            if msg.get("method") == "notifications/message":
                got.append(msg["params"]["data"])
                if wanted <= set(got):
                    return got
    raise AssertionError(f"the stream ended after {got}")


@pytest.fixture
def hold():
    """What a scripted stream waits for before it ends: set when the test is over."""
    ev = threading.Event()
    yield ev
    ev.set()


@pytest.fixture
def raw_backends(hold):
    made = []

    def make(script):
        b = StreamBackend(script)
        made.append(b)
        return b

    yield make
    hold.set()
    for b in made:
        b.close()


@contextlib.contextmanager
def _merged_get(alpha: StreamBackend, beta: StreamBackend):
    """A gateway over ``alpha`` and ``beta``, a session, and the line iterator of the
    client's merged GET stream."""
    with _gateway({"alpha": alpha.url, "beta": beta.url}) as gt, httpx.Client(timeout=5) as h:
        sid = _init(h, gt.url())
        with h.stream("GET", gt.url(), headers=_get_headers(sid)) as s:
            assert s.status_code == 200
            yield s.iter_lines()


def test_leg_closed_after_an_event_id_is_resumed_after_its_retry(raw_backends, hold):
    """alpha ends its GET stream after an event with an id and ``retry: 150``: the
    gateway comes back with ``Last-Event-ID`` no sooner than asked, and the client's
    stream -- never closed -- carries what alpha sends next."""

    def alpha_script(n, lei):
        if n == 0:
            return [_event("one", "a1", retry=150)], None
        return [_event("two", "a2")], hold

    alpha = raw_backends(alpha_script)
    with _merged_get(alpha, raw_backends(lambda n, lei: ([], hold))) as lines:
        assert _read_until(lines, {"one", "two"}) == ["one", "two"]
    (t0, sid0, lei0), (t1, sid1, lei1) = alpha.gets[:2]
    assert (lei0, lei1) == (None, b"a1") and sid0 == sid1
    assert t1 - t0 >= 0.14


def test_reconnections_are_bounded_and_the_other_legs_keep_flowing(raw_backends, hold):
    """alpha ends every GET right after an id-only event: a few reconnections, then the
    leg is given up -- and beta's leg still delivers to the open client stream."""
    go = threading.Event()
    alpha = raw_backends(lambda n, lei: ([_event(None, f"x{n}", retry=10)], None))

    def beta_script(n, lei):
        go.wait(20)
        return [_event("from beta")], hold

    try:
        with _merged_get(alpha, raw_backends(beta_script)) as lines:
            deadline = time.monotonic() + 5
            while len(alpha.gets) < 1 + _LEG_ATTEMPTS and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            assert len(alpha.gets) == 1 + _LEG_ATTEMPTS
            assert [g[2] for g in alpha.gets[1:3]] == [b"x0", b"x1"]
            go.set()
            assert _read_until(lines, {"from beta"}) == ["from beta"]
    finally:
        go.set()


def test_leg_of_a_backend_that_lost_our_session_gets_a_new_one(raw_backends, hold):
    """alpha restarts while its leg is open (every session forgotten): the reconnection
    gets 404, the gateway opens a new alpha session, as a POST would, and a fresh leg on
    it -- the client's stream goes on."""
    restart = threading.Event()

    def alpha_script(n, lei):
        if n == 0:
            return [_event("before", "a1")], restart
        return [_event("after")], hold

    alpha = raw_backends(alpha_script)
    try:
        with _merged_get(alpha, raw_backends(lambda n, lei: ([], hold))) as lines:
            assert _read_until(lines, {"before"}) == ["before"]
            old = alpha.gets[0][1]
            alpha.sessions.clear()
            restart.set()
            assert _read_until(lines, {"after"}) == ["after"]
    finally:
        restart.set()
    (_, s0, _), (_, s1, lei1), (_, s2, lei2) = alpha.gets[:3]
    assert s0 == s1 == old and lei1 == b"a1"  # refused with 404
    assert s2 != old and s2 in alpha.sessions and lei2 is None  # the new session, from its start


def test_unknown_post_stream_resumption_is_refused(raw_backends, hold):
    alpha = raw_backends(lambda n, lei: ([], hold))
    with _gateway({"alpha": alpha.url, "beta": alpha.url}) as gt, httpx.Client(timeout=5) as h:
        sid = _init(h, gt.url())
        for lei in ("p!zeta~1", "p!", "q!alpha~1"):
            r = h.get(gt.url(), headers={**_get_headers(sid), "Last-Event-ID": lei})
            assert r.status_code == 400 and r.json()["error"]["code"] == -32600, lei


# --- real SDK servers with an event store ---------------------------------------------------


@pytest.fixture(scope="module")
def polling_gateway():
    with (
        backend_process(
            SERVER, "--name", "alpha", "--tools", "notify,poll_get,poll_call", "--event-store", "--retry-ms", "100"
        ) as (_, a),
        backend_process(SERVER, "--name", "beta") as (_, b),
        _gateway({"alpha": a, "beta": b}) as gt,
    ):
        yield gt


def test_sdk_backend_polling_its_get_stream(polling_gateway):
    """alpha (SDK, event store) closes its standalone stream and then announces a
    change: the client sees it only because the gateway resumed alpha's leg."""

    async def run():
        got = {"prompts": anyio.Event(), "resources": anyio.Event()}

        async def on_message(msg):
            if isinstance(msg, types.PromptListChangedNotification):
                got["prompts"].set()
            elif isinstance(msg, types.ResourceListChangedNotification):
                got["resources"].set()

        with anyio.fail_after(15):
            async with Client(polling_gateway.url(), mode="legacy", message_handler=on_message) as c:
                # First an event on alpha's leg: it gives the leg a position to resume from.
                await c.call_tool("alpha__notify", {})
                await got["prompts"].wait()
                assert (await c.call_tool("alpha__poll_get", {})).content[0].text == "closed"
                await got["resources"].wait()
                assert (await c.call_tool("beta__whoami", {})).content[0].text == "beta"

    anyio.run(run)


def test_sdk_client_resumes_a_polled_post_answer_through_the_gateway(polling_gateway):
    """alpha closes the answer stream of ``poll_call`` after its priming event: the SDK
    client comes back with GET + ``Last-Event-ID: p!alpha~…`` and gets the answer from
    alpha's resumed stream."""

    async def run():
        with anyio.fail_after(15):
            async with Client(polling_gateway.url(), mode="legacy") as c:
                res = await c.call_tool("alpha__poll_call", {})
                assert res.content[0].text == "alpha answered after polling"

    anyio.run(run)
