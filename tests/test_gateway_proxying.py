"""What a proxy must get right on the happy path, seen on the wire: which header fields
cross in each direction, bodies forwarded byte for byte, SSE events relayed the moment
they arrive, large bodies streamed under the limit, keep-alive pooling upstream and the
idle timeout downstream."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from gwutil import GatewayThread
from rawbackend import VERBATIM_ANSWER, RawBackend, body_of, http_request, post, read_response, status_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


@pytest.fixture
def backend(request):
    b = RawBackend(request.param)
    yield b
    b.close()


def _gateway(url: str, **sections) -> GatewayThread:
    raw = {"backends": {"only": {"url": url}}}
    raw.update(sections)
    return GatewayThread(raw).start()


def _head_fields(head: bytes) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        fields.setdefault(k.strip().lower(), []).append(v.strip())
    return fields


@pytest.mark.parametrize("backend", ["headers"], indirect=True)
def test_session_fields_cross_and_hop_by_hop_fields_stop(backend):
    gt = _gateway(backend.url)
    try:
        extra = (
            b"Mcp-Session-Id: sess-1\r\nMCP-Protocol-Version: 2025-06-18\r\nLast-Event-ID: ev-9\r\n"
            b"Authorization: Bearer abc\r\nX-Custom: yes\r\n"
            b"Connection: keep-alive, X-Client-Hop\r\nX-Client-Hop: secret\r\nKeep-Alive: timeout=9\r\n"
            b"TE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n"
        )
        resp = http_request(gt.port, post("/mcp", CALL, extra))
        assert status_of(resp) == 200
        up = _head_fields(backend.requests[0][0])
        assert up[b"mcp-session-id"] == [b"sess-1"]
        assert up[b"mcp-protocol-version"] == [b"2025-06-18"]
        assert up[b"last-event-id"] == [b"ev-9"]
        assert up[b"x-custom"] == [b"yes"]
        # Passthrough has no auth policy configured: the client's credentials are its own
        # business with the backend.
        assert up[b"authorization"] == [b"Bearer abc"]
        for hop in (b"x-client-hop", b"keep-alive", b"te", b"connection"):
            assert hop not in up, hop
        assert up[b"x-forwarded-for"] == [b"10.0.0.1, 127.0.0.1"]
        assert up[b"host"] == [b"127.0.0.1:%d" % backend.port]
        assert up[b"content-length"] == [b"%d" % len(CALL)]

        down = _head_fields(resp.partition(b"\r\n\r\n")[0])
        assert down[b"mcp-session-id"] == [b"sess-1"]
        assert down[b"x-backend-end"] == [b"kept"]
        assert b"x-backend-hop" not in down
        assert b"keep-alive" not in down
        assert down[b"content-length"] == [b"%d" % len(body_of(resp))]
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["verbatim"], indirect=True)
def test_bodies_cross_byte_for_byte(backend):
    gt = _gateway(backend.url)
    try:
        odd = b'{ "params" : {"arguments":{"t":"\\u00e9\\ud83d\\ude00 \\"x\\""},"name":"echo"},\n"method":"tools/call","id" : "a\\u0062", "jsonrpc":"2.0"}'
        assert orjson.loads(odd)["id"] == "ab"  # valid JSON, deliberately not canonical
        resp = http_request(gt.port, post("/mcp", odd))
        assert status_of(resp) == 200
        assert backend.requests[0][1] == odd
        assert body_of(resp) == VERBATIM_ANSWER
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["gated_stream"], indirect=True)
def test_sse_events_are_relayed_as_they_arrive(backend):
    """The backend holds its second event until the test has seen the first one through
    the gateway; a gateway that buffers would make this test time out."""
    gt = _gateway(backend.url)
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as s:
            s.sendall(post("/mcp", CALL))
            got = b""
            while b'data: {"n":1}' not in got:
                d = s.recv(65536)
                assert d, got
                got += d
            assert b"text/event-stream" in got
            assert b'data: {"n":2}' not in got
            backend.release.set()
            while not got.endswith(b"0\r\n\r\n"):
                d = s.recv(65536)
                assert d, got
                got += d
            assert got.index(b'data: {"n":1}') < got.index(b'data: {"n":2}')
            assert b"id: 2\nevent: message\n" in got  # event bytes unchanged
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["ok"], indirect=True)
def test_large_body_streams_through_under_the_limit_and_413_past_it(backend):
    gt = _gateway(backend.url, limits={"max_body_bytes": 8 * 1024 * 1024})
    try:
        filler = b"x" * (6 * 1024 * 1024)
        big = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"blob":"%s"}}}' % filler
        resp = http_request(gt.port, post("/mcp", big), timeout=30)
        assert status_of(resp) == 200
        assert backend.requests[-1][1] == big
        n_seen = len(backend.requests)

        too_big = big + b" " * (3 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", gt.port), timeout=30) as s:
            try:
                s.sendall(post("/mcp", too_big))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway may answer and close before we finish sending
            resp = read_response(s)
        assert status_of(resp) == 413
        assert orjson.loads(body_of(resp))["error"]["code"] < 0
        assert len(backend.requests) == n_seen  # never reached the backend
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["ok"], indirect=True)
def test_upstream_connections_are_pooled(backend):
    gt = _gateway(backend.url)
    try:
        for i in range(20):
            resp = http_request(gt.port, post("/mcp", CALL))  # a new client connection each time
            assert status_of(resp) == 200, i
        assert len(backend.requests) == 20
        assert backend.accepted == 1  # one upstream connection served all of them
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["ok"], indirect=True)
def test_idle_client_connection_is_closed_after_the_idle_timeout(backend):
    gt = _gateway(backend.url, timeouts={"idle": 1.0})
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as s:
            s.sendall(post("/mcp", CALL))
            assert status_of(read_response(s)) == 200
            t0 = time.monotonic()
            assert s.recv(1) == b""  # the gateway closed the idle keep-alive connection
            waited = time.monotonic() - t0
        assert 0.5 <= waited < 5.0, waited
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["ok"], indirect=True)
def test_idle_upstream_connections_are_closed_after_pool_idle_timeout(backend):
    gt = GatewayThread({"backends": {"only": {"url": backend.url, "pool_idle_timeout": 1.0}}}).start()
    try:
        assert status_of(http_request(gt.port, post("/mcp", CALL))) == 200
        pool = gt.gw.pools["only"]
        assert gt.call(lambda: len(pool._idle)) == 1
        deadline = time.monotonic() + 5
        while gt.call(lambda: len(pool._idle)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gt.call(lambda: len(pool._idle)) == 0
        # and a new request opens a fresh one
        assert status_of(http_request(gt.port, post("/mcp", CALL))) == 200
        assert backend.accepted == 2
    finally:
        gt.stop()


@pytest.mark.parametrize("backend", ["ok"], indirect=True)
def test_host_check_on_loopback(backend):
    """On a loopback listener only loopback names are served: a DNS-rebinding page
    (evil.example resolving to 127.0.0.1) sends its own name as Host and gets 421,
    whether or not it sends an Origin."""
    gt = _gateway(backend.url)
    try:
        for host in (b"127.0.0.1", b"localhost:8080", b"[::1]:1", b"LOCALHOST"):
            req = post("/mcp", CALL).replace(b"Host: 127.0.0.1", b"Host: " + host)
            assert status_of(http_request(gt.port, req)) == 200, host
        n = len(backend.requests)
        for host in (b"evil.example", b"evil.example:80", b"127.0.0.1.evil.example"):
            req = post("/mcp", CALL).replace(b"Host: 127.0.0.1", b"Host: " + host)
            resp = http_request(gt.port, req)
            assert status_of(resp) == 421, host
            assert orjson.loads(body_of(resp))["error"]["message"] == "Host not allowed"
        assert len(backend.requests) == n  # none reached the backend
    finally:
        gt.stop()
    # Configured names replace the loopback default.
    gt = _gateway(backend.url, server={"allowed_hosts": ["mcp.example.com", "alt.example:8443"]})
    try:
        ok = post("/mcp", CALL).replace(b"Host: 127.0.0.1", b"Host: mcp.example.com:443")
        assert status_of(http_request(gt.port, ok)) == 200
        ok = post("/mcp", CALL).replace(b"Host: 127.0.0.1", b"Host: alt.example:8443")
        assert status_of(http_request(gt.port, ok)) == 200
        bad = post("/mcp", CALL).replace(b"Host: 127.0.0.1", b"Host: alt.example:9")
        assert status_of(http_request(gt.port, bad)) == 421
        assert status_of(http_request(gt.port, post("/mcp", CALL))) == 421
    finally:
        gt.stop()
