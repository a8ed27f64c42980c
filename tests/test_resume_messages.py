"""Resumable answers from message-level backends (stdio children, legacy HTTP+SSE
servers), end to end through a real gateway.

A client of 2025-11-25 that accepts event streams gets a routed request's answer as an
event stream that begins with a priming event (an id, ``retry:``, no data); every later
event has an id.  The gateway records the answer, so a client whose stream ends before
the response -- cut by ``poll_after``, or its connection lost -- gets the rest with
``GET`` and ``Last-Event-ID``.  Checked for each kind (a per-session child, a shared
child, a legacy SSE server): what the client gets across the streams is every message
the backend sent, once, in order, and the response; what it may not resume (another
session's answer, an id never given, an answer dropped for room) is refused with 400
and reveals nothing; an old client, or a backend with ``resume_buffer = 0``, gets the
JSON answers it always got."""

from __future__ import annotations

import os
import socket
import sys

import httpx
import orjson
import pytest

from gwutil import ROOT, GatewayThread, backend_process, wait_until

pytestmark = pytest.mark.e2e

RAW = os.path.join(ROOT, "tests", "fixtures", "stdio_raw.py")
NEW, OLD = "2025-11-25", "2025-06-18"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
KINDS = ["stdio", "stdio-shared", "sse"]


def _stdio(mode: str, **kw) -> dict:
    return {"transport": "stdio", "command": sys.executable, "args": ["-I", "-S", RAW], "mode": mode, **kw}


@pytest.fixture(scope="module")
def legacy_url():
    with backend_process("tests/fixtures/sse_server.py", "--name", "legacy") as (_, url):
        yield url


@pytest.fixture(scope="module", params=KINDS)
def gw(request, legacy_url):
    """A gateway with three routes over one backend kind: ``/poll`` (poll_after 0.1 s),
    ``/mcp`` (no polling), ``/tiny`` (a resume buffer of 16 KiB: 2 KiB a session) and ``/off`` (none)."""
    kind = request.param

    def backend(**kw) -> dict:
        if kind == "sse":
            return {"transport": "sse", "url": legacy_url, **kw}
        return _stdio("shared" if kind == "stdio-shared" else "per_session", **kw)

    cfg = {
        "backends": {
            "poll": backend(poll_after=0.1),
            "plain": backend(),
            "tiny": backend(resume_buffer=16384),
            "off": backend(resume_buffer=0),
        },
        "routes": [
            {"path": "/poll", "backends": ["poll"]},
            {"path": "/mcp", "backends": ["plain"]},
            {"path": "/tiny", "backends": ["tiny"]},
            {"path": "/off", "backends": ["off"]},
        ],
    }
    with GatewayThread(cfg) as gt:
        yield kind, gt


def _open(h: httpx.Client, url: str, version: str = NEW) -> dict:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {"sampling": {}}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    r = h.post(url, json=init, headers=ACCEPT)
    assert r.status_code == 200, r.text
    hdrs = {**ACCEPT, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": version}
    assert h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs).status_code == 202
    return hdrs


def _events(text: str) -> list[dict]:
    """The events of an event stream body: {"id", "retry", "data"} each."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        ev: dict = {"id": None, "retry": None, "data": None}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                ev["data"] = value if ev["data"] is None else ev["data"] + "\n" + value
            elif name in ("id", "retry"):
                ev[name] = value
        out.append(ev)
    return out


def _steps_call(kind: str, rid, n: int) -> dict:
    """A call that sends ``n`` messages, some time apart, before its response."""
    if kind == "sse":
        params = {"name": "steps", "arguments": {"n": n}, "_meta": {"progressToken": f"tok-{rid}"}}
    else:
        params = {"name": "steps", "arguments": {"n": n, "gap": 0.06}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def _messages(events: list[dict]) -> list[dict]:
    return [orjson.loads(e["data"]) for e in events if e["data"]]


def _expected_count(kind: str, n: int) -> int:
    # The SDK server sends a log message and a progress notification per step.
    return (2 * n if kind == "sse" else n) + 1


STEPS = 16  # 0.3 s and more of messages (legacy: 20 ms apart; stdio: 60 ms): well past poll_after


def test_poll_after_closes_the_stream_and_the_client_resumes_the_rest(gw):
    kind, gt = gw
    url = gt.url("/poll")
    with httpx.Client(timeout=20) as h:
        hdrs = _open(h, url)
        r = h.post(url, json=_steps_call(kind, 7, STEPS), headers=hdrs)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        first = _events(r.text)
        # The priming event comes first: an id, a retry, empty data.
        assert first[0]["id"] and first[0]["retry"] == "1000" and first[0]["data"] == ""
        got = _messages(first)
        assert not any(m.get("id") == 7 for m in got), "poll_after should have closed the stream before the response"
        last = [e["id"] for e in first if e["id"]][-1]
        seen_ids = [e["id"] for e in first if e["id"]]
        for _ in range(5):  # the client resumes until it has the response
            r = h.get(url, headers={**hdrs, "Last-Event-ID": last})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
            evs = _events(r.text)
            assert all(e["id"] for e in evs if e["data"]), "every resumed event carries an id"
            got += _messages(evs)
            seen_ids += [e["id"] for e in evs if e["id"]]
            if evs and evs[-1]["id"]:
                last = evs[-1]["id"]
            if any(m.get("id") == 7 for m in got):
                break
    assert len(seen_ids) == len(set(seen_ids)), f"an event came twice: {seen_ids}"
    assert got[-1] == {"jsonrpc": "2.0", "id": 7, "result": got[-1]["result"]} and "result" in got[-1]
    assert len(got) == _expected_count(kind, STEPS), got
    if kind != "sse":
        assert [m["params"]["data"] for m in got[:-1]] == [f"step {i}" for i in range(STEPS)]


def _raw_post(port: int, path: str, hdrs: dict, body: dict) -> socket.socket:
    payload = orjson.dumps(body)
    fields = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if k.lower() != "content-length")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return s


def test_a_client_that_loses_its_connection_resumes_without_losing_a_message(gw):
    kind, gt = gw
    url = gt.url("/mcp")
    with httpx.Client(timeout=20) as h:
        hdrs = _open(h, url)
        s = _raw_post(gt.port, "/mcp", hdrs, _steps_call(kind, "lost-1", 5))
        buf = b""
        while b"data: {" not in buf:  # the priming event and at least one message
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
        s.close()  # the client vanishes mid-answer
        head, _, body = buf.partition(b"\r\n\r\n")
        assert b"text/event-stream" in head
        # Chunked framing aside, the ids in what arrived: resume from the newest.
        ids = [line[4:].decode() for line in body.split(b"\n") if line.startswith(b"id: ")]
        before = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
        r = h.get(url, headers={**hdrs, "Last-Event-ID": ids[-1]})
        assert r.status_code == 200, r.text
        after = _messages(_events(r.text))
    got = before + after
    # The call was not cancelled by the lost connection: its response came, after every message.
    assert got[-1]["id"] == "lost-1" and "result" in got[-1], got
    assert len(got) == _expected_count(kind, 5), got


def test_another_session_cannot_resume_an_answer(gw):
    kind, gt = gw
    url = gt.url("/poll")
    with httpx.Client(timeout=20) as h:
        alice = _open(h, url)
        r = h.post(url, json=_steps_call(kind, 1, 4), headers=alice)
        pos = _events(r.text)[0]["id"]  # the priming event's: everything after it
        bob = _open(h, url)
        r = h.get(url, headers={**bob, "Last-Event-ID": pos})
        assert r.status_code == 400, r.text
        assert "step" not in r.text and "result" not in r.text
        # A made-up position of the right shape, or of none: refused as well.
        for fake in (pos.rsplit(".", 1)[0] + ".99", pos.rsplit("~", 1)[0] + "~nothing.1.1"):
            r = h.get(url, headers={**alice, "Last-Event-ID": fake})
            assert r.status_code == 400, (fake, r.text)
        # Alice herself still can.
        r = h.get(url, headers={**alice, "Last-Event-ID": pos})
        assert r.status_code == 200
        assert any(m.get("id") == 1 for m in _messages(_events(r.text)))


def test_old_clients_and_a_backend_without_a_buffer_get_json(gw):
    kind, gt = gw
    with httpx.Client(timeout=20) as h:
        for path, version in (("/mcp", OLD), ("/off", NEW)):
            url = gt.url(path)
            hdrs = _open(h, url, version)
            body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami" if kind == "sse" else "echo", "arguments": {}}}
            r = h.post(url, json=body, headers=hdrs)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json", (path, r.headers, r.text)
            assert r.json()["id"] == 3
        # Nothing to resume there: a position is refused, not turned into a plain stream.
        r = h.get(url, headers={**hdrs, "Last-Event-ID": "p!off~x.1.1"})
        assert r.status_code == 400, r.text


def test_an_answer_dropped_for_room_cannot_be_resumed(gw):
    kind, gt = gw
    url = gt.url("/tiny")
    with httpx.Client(timeout=20) as h:
        hdrs = _open(h, url)
        positions = []
        for i in range(24):  # each answer takes a few hundred bytes of the session's 2 KiB
            r = h.post(url, json=_steps_call(kind, i, 1), headers=hdrs)
            assert r.status_code == 200
            positions.append([e["id"] for e in _events(r.text) if e["id"]][0])  # the priming event's
        r = h.get(url, headers={**hdrs, "Last-Event-ID": positions[0]})
        assert r.status_code == 400, r.text
        r = h.get(url, headers={**hdrs, "Last-Event-ID": positions[-1]})
        assert r.status_code == 200
        assert _messages(_events(r.text))[-1]["id"] == 23


def test_one_session_cannot_push_another_sessions_answers_out(gw):
    """The buffer is shared by all sessions of a backend, but a session's answers take
    at most an eighth of it: a flood of answers in one session drops its own."""
    kind, gt = gw
    url = gt.url("/tiny")
    with httpx.Client(timeout=20) as h:
        victim = _open(h, url)
        r = h.post(url, json=_steps_call(kind, "keep-me", 1), headers=victim)
        pos = _events(r.text)[0]["id"]
        flooder = _open(h, url)
        for i in range(60):  # about 36 KiB of answers: twice the whole buffer
            assert h.post(url, json=_steps_call(kind, i, 1), headers=flooder).status_code == 200
        r = h.get(url, headers={**victim, "Last-Event-ID": pos})
        assert r.status_code == 200, r.text
        assert _messages(_events(r.text))[-1]["id"] == "keep-me"


@pytest.mark.parametrize("mode", ["per_session", "shared"])
def test_a_child_that_dies_mid_answer_ends_it_with_an_error_for_the_request(mode):
    cfg = {"backends": {"b": _stdio(mode, poll_after=0.1)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url)
        call = {"jsonrpc": "2.0", "id": "d-1", "method": "tools/call", "params": {"name": "die", "arguments": {"after": 0.4}}}
        r = h.post(url, json=call, headers=hdrs)
        evs = _events(r.text)
        assert evs[0]["data"] == "" and evs[0]["id"]
        r = h.get(url, headers={**hdrs, "Last-Event-ID": [e["id"] for e in evs if e["id"]][-1]})
        assert r.status_code == 200, r.text
        got = _messages(evs) + _messages(_events(r.text))
        assert got[0]["params"]["data"] == "dying"
        err = got[-1]
        assert err["id"] == "d-1" and err["error"]["code"] == -32603 and "backend b" in err["error"]["message"], err
        # Counted as an upstream failure, though the route only relayed an error event.
        assert gt.gw.metrics.errors.labels("upstream_unavailable")._value.get() >= 1
        # A later request gets a new child, once the crash backoff (a child that died
        # young) has passed; cut by poll_after while it starts, so resumed to the end.
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"x": 1}}}

        def echo_answered() -> bool:
            r = h.post(url, json=body, headers=hdrs)
            if r.headers["content-type"] == "application/json":
                assert "keeps exiting at start" in r.text, r.text  # the backoff, nothing else
                return False
            got = _messages(evs := _events(r.text))
            for _ in range(5):
                if got and got[-1].get("id") == 2:
                    break
                r = h.get(url, headers={**hdrs, "Last-Event-ID": [e["id"] for e in evs if e["id"]][-1]})
                got += _messages(evs := _events(r.text))
            assert got[-1]["result"] == {"echo": {"x": 1}}, got
            return True

        assert wait_until(echo_answered, 15)
