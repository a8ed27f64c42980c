"""Every failure the gateway must survive: garbage, dead, silent and dying backends,
slow and vanishing clients, timeouts, limits and malformed input.  Each test asserts the
gateway's answer *and* that the gateway keeps serving a healthy route afterwards."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from gwutil import GatewayThread
from rawbackend import RawBackend, body_of, http_request, post, read_response, status_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


@pytest.fixture
def backends():
    made: dict[str, RawBackend] = {}

    def make(behaviour: str) -> RawBackend:
        b = made[behaviour] = RawBackend(behaviour)
        return b

    yield make
    for b in made.values():
        b.close()


def _gateway(backends: dict[str, str], **sections) -> GatewayThread:
    raw = {"backends": {name: {"url": url} for name, url in backends.items()}}
    raw.update(sections)
    return GatewayThread(raw).start()


def assert_still_serving(gt: GatewayThread, path: str = "/mcp/good") -> None:
    resp = http_request(gt.port, post(path, CALL))
    assert status_of(resp) == 200, resp
    assert orjson.loads(body_of(resp))["result"] == {"ok": True}


def _error(resp: bytes) -> dict:
    doc = orjson.loads(body_of(resp))
    assert doc["jsonrpc"] == "2.0"
    return doc


def test_garbage_upstream_gives_502_with_jsonrpc_error(backends):
    good, bad = backends("ok"), backends("garbage")
    gt = _gateway({"good": good.url, "bad": bad.url})
    try:
        resp = http_request(gt.port, post("/mcp/bad", CALL))
        assert status_of(resp) == 502
        doc = _error(resp)
        assert doc["id"] == 7 and doc["error"]["code"] == -32000
        assert "invalid HTTP" in doc["error"]["message"]
        assert_still_serving(gt)
    finally:
        gt.stop()


def test_dead_upstream_gives_502(backends):
    good = backends("ok")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gt = _gateway({"good": good.url, "dead": f"http://127.0.0.1:{dead_port}/mcp"})
    try:
        resp = http_request(gt.port, post("/mcp/dead", CALL))
        assert status_of(resp) == 502
        assert "unreachable" in _error(resp)["error"]["message"]
        assert_still_serving(gt)
    finally:
        gt.stop()


def test_silent_upstream_times_out_with_504(backends):
    good, silent = backends("ok"), backends("silent")
    gt = _gateway({"good": good.url, "silent": silent.url}, timeouts={"upstream_response": 1.0})
    try:
        t0 = time.monotonic()
        resp = http_request(gt.port, post("/mcp/silent", CALL))
        waited = time.monotonic() - t0
        assert status_of(resp) == 504
        assert _error(resp)["id"] == 7
        assert 0.9 <= waited < 4.0
        assert_still_serving(gt)
    finally:
        gt.stop()


def test_upstream_dying_mid_stream_cuts_the_client_stream(backends):
    good, dying = backends("ok"), backends("die_mid_stream")
    gt = _gateway({"good": good.url, "dying": dying.url})
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            s.sendall(post("/mcp/dying", CALL))
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        assert data.startswith(b"HTTP/1.1 200")
        assert b"Transfer-Encoding: chunked" in data
        assert b'data: {"a":1}' in data  # the event that did arrive was relayed
        assert not data.endswith(b"0\r\n\r\n")  # no fake clean end: the stream was cut
        assert_still_serving(gt)
    finally:
        gt.stop()


def test_client_vanishing_mid_stream_closes_upstream(backends):
    good, streaming = backends("ok"), backends("stream_until_closed")
    gt = _gateway({"good": good.url, "stream": streaming.url})
    try:
        s = socket.create_connection(("127.0.0.1", gt.port), timeout=5)
        s.sendall(b"GET /mcp/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        got = b""
        while got.count(b"event: message") < 2:
            got += s.recv(65536)
        s.close()
        t_close = time.monotonic()
        deadline = t_close + 5
        while streaming.closed_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert streaming.closed_at is not None, "backend stream still open after the client left"
        assert streaming.closed_at - t_close < 2.0
        assert_still_serving(gt)
    finally:
        gt.stop()


def test_slow_client_pauses_upstream_and_memory_stays_bounded(backends):
    good, firehose = backends("ok"), backends("stream_forever")
    gt = _gateway({"good": good.url, "hose": firehose.url})
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", gt.port))
        s.sendall(b"GET /mcp/hose HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        s.recv(4096)  # the head and a little data, then we stop reading
        time.sleep(1.5)
        sent_a = firehose.bytes_sent
        time.sleep(1.0)
        sent_b = firehose.bytes_sent
        # The backend is blocked: the gateway stopped reading from it.
        assert sent_b - sent_a < 1_000_000, (sent_a, sent_b)
        assert sent_b < 32 * 1024 * 1024

        def buffered():
            return [c.transport.get_write_buffer_size() for c in gt.gw.connections if c.active is not None]

        sizes = gt.call(buffered)
        assert sizes and max(sizes) < 4 * 1024 * 1024, sizes
        # Reading again resumes the flow.
        s.settimeout(2)
        for _ in range(200):
            s.recv(1 << 20)
        assert firehose.bytes_sent > sent_b
        s.close()
        assert_still_serving(gt)
    finally:
        gt.stop()


def test_header_read_timeout_gives_408(backends):
    good = backends("ok")
    gt = _gateway({"good": good.url}, timeouts={"header_read": 1.0})
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never finish the head
            t0 = time.monotonic()
            resp = read_response(s)
            assert status_of(resp) == 408
            assert time.monotonic() - t0 < 3.5
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            # Connected and silent: closed without an answer.
            assert s.recv(100) == b""
        assert_still_serving(gt, "/mcp")
    finally:
        gt.stop()


def test_body_too_large_413_and_head_too_large_431(backends):
    good = backends("ok")
    gt = _gateway({"good": good.url}, limits={"max_body_bytes": 1000, "max_header_bytes": 2048})
    try:
        big = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"p":"' + b"a" * 2000 + b'"}}'
        assert status_of(http_request(gt.port, post("/mcp", big))) == 413
        resp = http_request(gt.port, post("/mcp", CALL, b"X-Big: " + b"b" * 4000 + b"\r\n"))
        assert status_of(resp) == 431
        assert good.requests == []  # neither reached the backend
        assert_still_serving(gt, "/mcp")
    finally:
        gt.stop()


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /mcp HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
        (b"POST /mcp HTTP/1.1\r\nHost : gw\r\n\r\n", 400),
    ],
    ids=["cl+te", "unknown-coding", "chunked-not-last", "garbage", "http2", "space-before-colon"],
)
def test_malformed_requests_get_their_status(backends, raw, status):
    good = backends("ok")
    gt = _gateway({"good": good.url})
    try:
        assert status_of(http_request(gt.port, raw)) == status
        assert good.requests == []
        assert_still_serving(gt, "/mcp")
    finally:
        gt.stop()


def test_invalid_json_gets_parse_error_without_reaching_backend(backends):
    good = backends("ok")
    gt = _gateway({"good": good.url})
    try:
        resp = http_request(gt.port, post("/mcp", b'{"jsonrpc":"2.0","id":1,"method":'))
        assert status_of(resp) == 400
        assert _error(resp)["error"]["code"] == -32700
        resp = http_request(gt.port, post("/mcp", b'{"jsonrpc":"1.0","id":1,"method":"x"}'))
        assert status_of(resp) == 400
        assert _error(resp)["error"]["code"] == -32600
        assert good.requests == []
        assert_still_serving(gt, "/mcp")
    finally:
        gt.stop()


def test_origin_check(backends):
    good = backends("ok")
    gt = _gateway({"good": good.url}, server={"allowed_origins": ["https://app.example", "http://localhost:*"]})
    try:
        bad = http_request(gt.port, post("/mcp", CALL, b"Origin: https://evil.example\r\n"))
        assert status_of(bad) == 403
        assert good.requests == []
        ok1 = http_request(gt.port, post("/mcp", CALL, b"Origin: https://app.example\r\n"))
        ok2 = http_request(gt.port, post("/mcp", CALL, b"Origin: http://localhost:3000\r\n"))
        assert status_of(ok1) == 200 and status_of(ok2) == 200
        bad2 = http_request(gt.port, post("/mcp", CALL, b"Origin: http://localhost.evil.example\r\n"))
        assert status_of(bad2) == 403
    finally:
        gt.stop()


def test_unknown_path_and_method(backends):
    good = backends("ok")
    gt = _gateway({"good": good.url})
    try:
        assert status_of(http_request(gt.port, post("/nope", CALL))) == 404
        resp = http_request(gt.port, b"PUT /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        assert status_of(resp) == 405
        assert b"Allow: " in resp
        assert good.requests == []
    finally:
        gt.stop()


def test_keep_alive_pipelining_and_expect_continue(backends):
    good = backends("ok")
    gt = _gateway({"good": good.url})
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            # Two pipelined requests in one write: two answers, in order.
            b1 = CALL
            b2 = CALL.replace(b'"id":7', b'"id":8')
            s.sendall(post("/mcp", b1) + post("/mcp", b2))
            r1 = read_response(s)
            r2 = read_response(s)
            assert orjson.loads(body_of(r1))["id"] == 7
            assert orjson.loads(body_of(r2))["id"] == 8
            # Expect: 100-continue gets the interim answer before the body is sent.
            s.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(b1)
            )
            assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b1)
            assert status_of(read_response(s)) == 200
        # The backend saw what the client sent: same body bytes, hop-by-hop removed.
        head, body = good.requests[0]
        assert body == b1
        assert b"\r\nHost: 127.0.0.1:" in head
        assert b"X-Forwarded-For: 127.0.0.1" in head
    finally:
        gt.stop()
