"""Routed answers on a multiplexed route stream through as they arrive.

The backend is ``rawbackend``'s ``mux`` behaviour, so each test controls exactly when
the backend sends what: a gated answer shows whether the client gets the first bytes
before the backend has sent the last, a never-read answer whether a slow client pauses
the backend, a closed client socket whether the backend call is closed with it.
"""

from __future__ import annotations

import socket
import time

import orjson
import pytest
from gwutil import GatewayThread
from rawbackend import (
    RawBackend,
    big_answer,
    http_request,
    post,
    read_response,
    status_of,
)

from mcpfast.mux.token import new_key_text

KEY = new_key_text()
VERSION = b"2025-06-18"


@pytest.fixture
def mux():
    """A multiplexed route ``/mcp`` over the raw backend ``raw`` and a plain one."""
    raw, other = RawBackend("mux"), RawBackend("ok")
    gt = GatewayThread(
        {
            "backends": {"raw": {"url": raw.url, "response_timeout": 30.0}, "other": {"url": other.url}},
            "routes": [{"path": "/mcp", "backends": ["raw", "other"]}],
            "sessions": {"key": KEY},
        }
    ).start()
    try:
        yield gt, raw
    finally:
        raw.release.set()
        gt.stop()
        raw.close()
        other.close()


def _session(gt: GatewayThread) -> bytes:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": VERSION.decode(), "capabilities": {"sampling": {}}}}  # fmt: skip
    resp = http_request(gt.port, post("/mcp", orjson.dumps(init)))
    assert status_of(resp) == 200, resp
    for line in resp.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.lower() == b"mcp-session-id":
            return v.strip()
    raise AssertionError(resp)


def _call(sid: bytes, name: str, args: dict, rid: int = 7) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args}})
    return post("/mcp", body, b"Mcp-Session-Id: %s\r\nMCP-Protocol-Version: %s\r\n" % (sid, VERSION))


def _recv_until(s: socket.socket, buf: bytes, done) -> bytes:
    buf = bytearray(buf)
    while not done(buf):
        d = s.recv(1 << 20)
        if not d:
            raise AssertionError(f"connection closed after {len(buf)} bytes")
        buf += d
    return bytes(buf)


def test_large_json_answer_reaches_the_client_before_the_backend_finishes(mux):
    """The backend sends the head and half of a 1 MB answer, then waits until the
    client has seen body bytes: a gateway that collects answers never gets there."""
    gt, raw = mux
    sid = _session(gt)
    size = 1 << 20
    with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
        s.sendall(_call(sid, "raw__big", {"size": size, "gate": True}))
        got = _recv_until(s, b"", lambda b: b"\r\n\r\n" in b and len(b.partition(b"\r\n\r\n")[2]) >= 65536)
        assert not raw.release.is_set()
        head, _, body = got.partition(b"\r\n\r\n")
        want = big_answer(7, size)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: %d\r\n" % len(want) in head + b"\r\n"
        assert b"mcp-session-id" not in head.lower()  # the backend's session stays ours
        assert want.startswith(body)
        raw.release.set()
        body = _recv_until(s, body, lambda b: len(b) >= len(want))
        assert body == want
        # The connection is still usable: the next routed call on it is answered.
        s.sendall(_call(sid, "raw__big", {"size": 10}, rid=8))
        resp = read_response(s)
        assert status_of(resp) == 200 and orjson.loads(resp.partition(b"\r\n\r\n")[2])["id"] == 8


def test_sse_events_relay_one_by_one_with_server_request_ids_rewritten(mux):
    """The server→client request reaches the client -- its id, progress token and event
    id encoded with the backend's name -- while the backend still holds the response."""
    gt, raw = mux
    sid = _session(gt)
    with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
        s.sendall(_call(sid, "raw__events", {}))
        got = _recv_until(s, b"", lambda b: b"sampling/createMessage" in b and b.rstrip().endswith(b"}"))
        assert not raw.release.is_set()
        head, _, rest = got.partition(b"\r\n\r\n")
        assert b"Content-Type: text/event-stream" in head and b"Transfer-Encoding: chunked" in head
        assert b"mcp-session-id" not in head.lower()
        assert b'"id":"raw~n5"' in rest and b'"progressToken":"raw~n9"' in rest
        assert b"id: p!raw~e1\n" in rest
        raw.release.set()
        rest = _recv_until(s, rest, lambda b: b.endswith(b"0\r\n\r\n"))
        data = [ln[6:] for ln in rest.split(b"\n") if ln.startswith(b"data: ")]
        assert orjson.loads(data[-1]) == {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
        assert b"id: p!raw~e2\n" in rest


def test_slow_client_pauses_the_backend_and_gateway_buffering_stays_bounded(mux):
    """A 64 MB answer (four times the collected-answer limit) to a client that stops
    reading: the backend is held back by the gateway, and what the gateway holds for
    the client stays small.  Reading again lets the whole answer through."""
    gt, raw = mux
    sid = _session(gt)
    size = 64 << 20
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.connect(("127.0.0.1", gt.port))
    try:
        s.sendall(_call(sid, "raw__big", {"size": size}))
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)
        sent_a = raw.bytes_sent
        time.sleep(1.0)
        sent_b = raw.bytes_sent
        assert sent_b - sent_a < 1_000_000, (sent_a, sent_b)
        assert sent_b < 16 << 20, sent_b

        def buffered():
            return [c.transport.get_write_buffer_size() for c in gt.gw.connections if c.active is not None]

        sizes = gt.call(buffered)
        assert sizes and max(sizes) < 4 << 20, sizes
        s.settimeout(10)
        want = big_answer(7, size)
        got = _recv_until(s, first, lambda b: b"\r\n\r\n" in b[:4096])
        total = len(got) - got.index(b"\r\n\r\n") - 4
        body = _recv_until(s, b"", lambda b: len(b) >= len(want) - total)
        assert got.partition(b"\r\n\r\n")[2] + body == want
        assert raw.bytes_sent == len(want)
    finally:
        s.close()


def test_client_leaving_mid_answer_closes_the_backend_call(mux):
    gt, raw = mux
    sid = _session(gt)
    s = socket.create_connection(("127.0.0.1", gt.port), timeout=5)
    s.sendall(_call(sid, "raw__big", {"size": 64 << 20}))
    _recv_until(s, b"", lambda b: len(b) > 100_000)
    s.close()
    t_close = time.monotonic()
    while raw.closed_at is None and time.monotonic() < t_close + 5:
        time.sleep(0.02)
    assert raw.closed_at is not None, "backend call still open after the client left"
    assert raw.closed_at - t_close < 2.0
    assert raw.bytes_sent < 32 << 20


def test_backend_that_lost_the_session_is_reopened_and_the_answer_still_streams(mux):
    gt, raw = mux
    sid = _session(gt)
    inits = sum(1 for _, b in raw.requests if b'"initialize"' in b)
    raw.sessions.clear()  # the backend restarted
    resp = http_request(gt.port, _call(sid, "raw__big", {"size": 300_000}))
    assert status_of(resp) == 200, resp[:300]
    assert resp.partition(b"\r\n\r\n")[2] == big_answer(7, 300_000)
    assert sum(1 for _, b in raw.requests if b'"initialize"' in b) == inits + 1
    # A backend that refuses the new session too: the client's session is gone.
    raw.amnesia = True
    resp = http_request(gt.port, _call(sid, "raw__big", {"size": 10}, rid=9))
    assert status_of(resp) == 404
    assert orjson.loads(resp.partition(b"\r\n\r\n")[2])["error"]["code"] == -32001


def _read_to_close(s: socket.socket) -> bytes:
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            return buf
        buf += d


@pytest.mark.parametrize(
    "version, extra, chunked, closes",
    [
        (b"HTTP/1.1", b"", True, False),  # the usual case: chunked, kept alive
        (b"HTTP/1.1", b"Connection: close\r\n", True, True),
        (b"HTTP/1.0", b"", False, True),  # no chunked coding for 1.0: the close ends the body
    ],
)
def test_routed_sse_answer_is_framed_for_the_client_connection(mux, version, extra, chunked, closes):
    """The head of a routed SSE answer follows the client's HTTP version and its
    Connection field (RFC 9112 §6.1, §9.3), whichever way the head is built."""
    gt, raw = mux
    sid = _session(gt)
    raw.release.set()  # the backend sends both events at once
    req = _call(sid, "raw__events", {}).replace(b"HTTP/1.1", version, 1)
    req = req.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\n" + extra, 1)
    with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
        s.sendall(req)
        if closes:
            got = _read_to_close(s)
        else:
            got = _recv_until(s, b"", lambda b: b.endswith(b"0\r\n\r\n"))
        head, _, body = got.partition(b"\r\n\r\n")
        fields = head.lower().split(b"\r\n")[1:]
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-type: text/event-stream" in fields
        assert (b"transfer-encoding: chunked" in fields) is chunked
        assert (b"connection: close" in fields) is closes
        assert not any(f.startswith(b"content-length") for f in fields)
        if chunked:
            assert body.endswith(b"\r\n0\r\n\r\n")
        else:
            # the events themselves, no chunk-size lines
            assert body.startswith(b"event: message\n") and b"id: p!raw~e1\n" in body and body.endswith(b"\n\n")
        data = [ln[6:].rstrip(b"\r") for ln in body.split(b"\n") if ln.startswith(b"data: ")]
        assert orjson.loads(data[-1]) == {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
        if not closes:  # the connection carries the next request
            s.sendall(_call(sid, "raw__big", {"size": 10}, rid=8))
            resp = read_response(s)
            assert status_of(resp) == 200 and orjson.loads(resp.partition(b"\r\n\r\n")[2])["id"] == 8


def test_routed_sse_reads_pass_unparsed_until_one_needs_rewriting(mux):
    """A read of whole events with nothing to rewrite is relayed as it came; the first
    read that holds a server→client request is parsed and rewritten, and so is the rest
    of the stream.  The BOM in the middle of the stream stays part of a field name
    (WHATWG HTML §9.2.6: only the stream's first byte may be a BOM), so that block has
    no event id for the gateway to encode."""
    gt, raw = mux
    sid = _session(gt)
    with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
        s.sendall(_call(sid, "raw__mixed", {}))
        got = _recv_until(s, b"", lambda b: b.endswith(b"0\r\n\r\n"))
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    # Undo the chunked coding (the gateway frames each relayed piece as one chunk).
    pieces, pos = [], 0
    while True:
        eol = body.index(b"\r\n", pos)
        n = int(body[pos:eol], 16)
        if n == 0:
            break
        pieces.append(body[eol + 2 : eol + 2 + n])
        pos = eol + 2 + n + 2
    stream = b"".join(pieces)
    assert stream.startswith(b": ready\n\n")  # the comment, byte for byte
    assert b"\xef\xbb\xbf" not in stream and b"e1" not in stream
    data = [orjson.loads(ln[6:]) for ln in stream.split(b"\n") if ln.startswith(b"data: ")]
    assert data == [
        {"jsonrpc": "2.0", "id": "raw~n5", "method": "roots/list"},
        {"jsonrpc": "2.0", "id": 7, "result": {"content": []}},
    ]
