"""An attacker's review of the newer transports, judged by what backends and other
clients actually got.

* the legacy HTTP+SSE front (``front/legacy_sse.py``): sessions across principals, the
  internal request it builds for each message, policy on that path;
* legacy HTTP+SSE backends (``transport/sse_legacy.py``): what a hostile backend's
  stream, endpoint and errors can make the gateway do or say;
* https backends (``transport/tls.py``): no configuration silently skips verification.

Raw sockets on 127.0.0.1 stand in for hostile peers and record every byte they got;
real MCP SDK servers stand in where a real backend is needed.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx
import orjson
import pytest

from gwutil import GatewayThread, wait_until
from mcpfast.wire.core import RequestParser
from rawbackend import RawBackend
from test_upstream_tls import pki  # noqa: F401 (a fixture: the throwaway PKI)

INIT = orjson.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
})  # fmt: skip
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SECRET = "s3cr3t-query-key-0123456789"


class LegacyServer(RawBackend):
    """A hostile 2024-11-05 backend on a plain (or, with ``tls``, a TLS) socket: ``GET``
    answers ``get_answer`` (bytes written as they are, the connection then held open),
    anything else 202; every request is kept (``requests``), and ``accepted`` counts the
    connections -- with TLS, those whose handshake completed."""

    def __init__(self, get_answer: bytes, tls: tuple[str, str] | None = None) -> None:
        self.get_answer = get_answer
        self.ctx = None
        if tls is not None:
            import ssl

            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*tls)
        self.conns: list[socket.socket] = []
        self.handshakes = 0
        super().__init__("legacy")

    def _serve(self, conn: socket.socket) -> None:
        if self.ctx is not None:
            conn.settimeout(10)
            try:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            except (OSError, ValueError):
                return
            self.handshakes += 1
        self.conns.append(conn)
        super()._serve(conn)

    def _legacy(self, conn: socket.socket, req: tuple[bytes, bytes]) -> None:
        if req[0].startswith(b"GET"):
            conn.sendall(self.get_answer)
            self.stop.wait(30)
        else:
            conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        super().close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


# --- legacy backends: secrets ------------------------------------------------------------


def test_a_legacy_backend_refusing_its_stream_never_shows_the_url_query_to_clients(caplog):
    """The configured URL's query may hold a key (``?api_key=``).  A backend that refuses
    the GET of its stream (any status but a 200 event stream) must not make the gateway
    hand that key to its clients in the error, nor to the log."""
    srv = LegacyServer(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    url = f"http://127.0.0.1:{srv.port}/sse?api_key={SECRET}"
    try:
        with GatewayThread({"backends": {"old": {"url": url, "transport": "sse", "response_timeout": 5.0}}}) as gt:
            seen = []
            with httpx.Client(timeout=10) as c:
                for _ in range(2):  # the first attempt, then one refused while backing off
                    r = c.post(gt.url("/mcp"), content=INIT, headers=HEADERS)
                    seen.append(r.text)
                    assert r.status_code >= 400 or b"error" in r.content
        assert srv.requests and srv.requests[0][0].startswith(b"GET /sse?api_key=")  # it was asked
        for text in seen:
            assert SECRET not in text, text
        assert SECRET not in caplog.text
    finally:
        srv.close()


# --- the legacy front: sessions across principals ----------------------------------------

KEYS = {"alice": "mk_alice_0123456789abcdef0123456789", "bob": "mk_bob_0123456789abcdef0123456789ab"}


def _auth() -> dict:
    import hashlib

    keys = [{"sha256": hashlib.sha256(k.encode()).hexdigest(), "subject": s} for s, k in KEYS.items()]
    return {"auth": {"api_keys": {"keys": keys}}, "audit": {"sink": "off"}}


def _open_stream(port: int, path: str, extra: bytes = b"") -> tuple[socket.socket, bytes]:
    """A raw legacy ``GET`` stream: the socket (left open) and what arrived first."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n" % (path.encode(), extra))
    buf = b""
    while b"\r\n\r\n" not in buf or (buf.startswith(b"HTTP/1.1 200") and b"session_id=" not in buf):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    return s, buf


def test_a_legacy_stream_cannot_spend_another_sessions_stream_quota():
    """``max_streams_per_session`` counts GET streams per ``Mcp-Session-Id``.  A legacy
    stream has no session of the route's (its client sends none, and nothing checks one
    it sends): bob's legacy streams carrying alice's session id must not use up alice's
    streams, and alice's own GET must still reach the backend."""
    backend = RawBackend("mux")
    streams = []
    try:
        raw = {"backends": {"b": {"url": backend.url}}, **_auth(), "sessions": {"key": "cd" * 32}}
        with GatewayThread(raw) as gt:
            alice = {**HEADERS, "X-API-Key": KEYS["alice"]}
            with httpx.Client(timeout=10) as c:
                r = c.post(gt.url("/mcp"), content=INIT, headers=alice)
                sid = r.headers["mcp-session-id"]
                for _ in range(gt.config.limits.max_streams_per_session):
                    s, first = _open_stream(
                        gt.port, "/sse", b"X-API-Key: %s\r\nMcp-Session-Id: %s\r\n" % (KEYS["bob"].encode(), sid.encode())
                    )
                    streams.append(s)
                    # Refused (a legacy client sends no Mcp-Session-Id), or open: never counted.
                    assert first.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), first
                gets = sum(1 for h, _ in backend.requests if h.startswith(b"GET "))
                r = c.get(gt.url("/mcp"), headers={**alice, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"})
                assert r.status_code != 429, r.text
                assert wait_until(lambda: sum(1 for h, _ in backend.requests if h.startswith(b"GET ")) == gets + 1)
    finally:
        for s in streams:
            s.close()
        backend.close()


class RawLegacy:
    """A legacy client on raw sockets: its stream, the endpoint it was given, and the
    ``message`` events read so far."""

    def __init__(self, port: int, path: str = "/sse", extra: bytes = b"") -> None:
        self.port = port
        self.sock, first = _open_stream(port, path, extra)
        assert first.startswith(b"HTTP/1.1 200"), first
        self.buf = first.partition(b"\r\n\r\n")[2]
        line = next(x for x in self.buf.split(b"\n") if x.startswith(b"data: "))
        self.endpoint = line[6:].strip()
        self.buf = self.buf[self.buf.index(b"\n\n", self.buf.index(b"event: endpoint")) + 2 :]

    def post(self, raw_fields: bytes, body: bytes, chunked: bool = False) -> bytes:
        """POST ``body`` to the endpoint with ``raw_fields``; the answer's status line."""
        if chunked:
            framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            head = b"Transfer-Encoding: chunked\r\n"
        else:
            framed, head = body, b"Content-Length: %d\r\n" % len(body)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s\r\n%s" % (self.endpoint, raw_fields, head, framed))
            out = b""
            while b"\r\n\r\n" not in out or out.startswith(b"HTTP/1.1 100"):
                if out.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in out:
                    out = out.partition(b"\r\n\r\n")[2]  # the interim answer to Expect
                    continue
                d = s.recv(65536)
                if not d:
                    break
                out += d
        return out.split(b"\r\n", 1)[0]

    def messages(self, n: int, timeout: float = 10.0) -> list[dict]:
        """The next ``n`` message events (keep-alive comments skipped)."""
        out: list[dict] = []
        self.sock.settimeout(timeout)
        while len(out) < n:
            while b"\n\n" in self.buf and len(out) < n:
                block, _, self.buf = self.buf.partition(b"\n\n")
                data = [x[6:] for x in block.split(b"\n") if x.startswith(b"data: ")]
                if b"event: message" in block and data:
                    out.append(orjson.loads(b"\n".join(data)))
            if len(out) < n:
                d = self.sock.recv(65536)
                assert d, "stream closed"
                self.buf += d
        return out

    def close(self) -> None:
        self.sock.close()


def _received(backend) -> list:
    """Each request the backend got, as the gateway's own strict parser reads it: exactly
    one head per request, and its body exactly Content-Length long."""
    from http_events import HeadList

    out = []
    for head, body in list(backend.requests):
        c = HeadList()
        RequestParser(c).feed(head + b"\r\n\r\n" + body)
        assert len(c.heads) == 1, head
        h = c.heads[0]
        assert h.transfer_encoding is None and not h.chunked
        assert h.content_length in (-1, len(body)), (head, body)
        out.append((h, body))
    return out


HOSTILE_FIELDS = (
    b"Connection: keep-alive, X-Hop\r\nX-Hop: listed-in-connection\r\nKeep-Alive: timeout=99\r\n"
    b"TE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eDp5\r\nExpect: 100-continue\r\n"
    b"Mcp-Session-Id: s999\r\nMCP-Protocol-Version: 1999-01-01\r\nLast-Event-ID: e1\r\n"
    b"Content-Type: text/plain\r\nAccept: */*\r\nX-Kept: yes\r\n"
)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_legacy_posts_reach_the_backend_as_one_clean_request_each(chunked):
    """Hop-by-hop, framing and session fields a legacy client puts on its POST never reach
    the backend: each message arrives as exactly one request with its exact length, the
    route's own session id (not the one the client named) and the client's end-to-end
    fields."""
    backend = RawBackend("mux")
    try:
        with GatewayThread({"backends": {"b": {"url": backend.url}}}) as gt:
            leg = RawLegacy(gt.port)
            try:
                assert leg.post(HOSTILE_FIELDS, INIT, chunked).startswith(b"HTTP/1.1 202")
                assert leg.messages(1)[0]["id"] == 1
                note = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
                assert leg.post(HOSTILE_FIELDS, note, chunked).startswith(b"HTTP/1.1 202")
                call = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"n","arguments":{"size":3}}}'
                assert leg.post(HOSTILE_FIELDS, call, chunked).startswith(b"HTTP/1.1 202")
                assert leg.messages(1)[0]["id"] == 7
            finally:
                leg.close()
        got = _received(backend)
        posts = [(h, b) for h, b in got if h.method == b"POST"]
        assert [b for _, b in posts] == [INIT, note, call]
        for i, (h, _) in enumerate(posts):
            names = [n.lower() for n, _ in h.headers]
            for hop in (b"x-hop", b"keep-alive", b"te", b"upgrade", b"proxy-authorization", b"expect", b"last-event-id"):
                assert hop not in names, (hop, h.headers)
            assert names.count(b"content-type") == names.count(b"accept") == 1
            assert h.content_type == b"application/json"
            assert dict((n.lower(), v) for n, v in h.headers)[b"x-kept"] == b"yes"
            assert h.session_id == (None if i == 0 else b"s1")  # the backend's own, never s999
            assert h.protocol_version != b"1999-01-01"
    finally:
        backend.close()


# --- the legacy front: policy -------------------------------------------------------------

AUTHZ = {"authz": {"default": "deny", "rules": [
    {"id": "alice-everything", "effect": "allow", "subjects": ["alice"]},
    {"id": "bob-n-only", "effect": "allow", "subjects": ["bob"], "tools": ["n"]},
]}}  # fmt: skip


def _call(rid, name: str) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": {"size": 3}}}


def test_a_denied_tool_never_reaches_the_backend_by_any_legacy_shape():
    """bob may call ``n`` only.  Through his legacy session, ``secret`` goes nowhere --
    alone, inside a batch beside an allowed call, or as a notification (no id) -- while
    ``n`` still works; and alice's session id with bob's key is an unknown session."""
    backend = RawBackend("mux")
    try:
        with GatewayThread({"backends": {"b": {"url": backend.url}}, **_auth(), **AUTHZ}) as gt:
            bob_key = b"X-API-Key: %s\r\n" % KEYS["bob"].encode()
            alice_key = b"X-API-Key: %s\r\n" % KEYS["alice"].encode()
            bob = RawLegacy(gt.port, extra=bob_key)
            alice = RawLegacy(gt.port, extra=alice_key)
            try:
                assert bob.post(bob_key, INIT).startswith(b"HTTP/1.1 202")
                assert bob.messages(1)[0]["id"] == 1
                assert bob.post(bob_key, orjson.dumps(_call(2, "secret"))).startswith(b"HTTP/1.1 202")
                assert bob.messages(1)[0]["error"]["code"] != 0  # refused, on the stream
                status = bob.post(bob_key, orjson.dumps([_call(3, "n"), _call(4, "secret")]))
                note = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "secret", "arguments": {}}}
                status_note = bob.post(bob_key, orjson.dumps(note))
                assert bob.post(bob_key, orjson.dumps(_call(5, "n"))).startswith(b"HTTP/1.1 202")
                assert "result" in bob.messages(1)[0]  # id 5: n still works
                # Refused whole, with nothing to say on the stream: the POST says it.
                assert status.startswith(b"HTTP/1.1 403") and status_note.startswith(b"HTTP/1.1 403")
                # bob's key on alice's legacy session: an unknown session, nothing sent.
                before = len(backend.requests)
                assert alice.post(bob_key, orjson.dumps(_call(6, "n"))).startswith(b"HTTP/1.1 404")
                assert alice.post(b"", orjson.dumps(_call(6, "n"))).startswith(b"HTTP/1.1 401")
                time.sleep(0.2)
                assert len(backend.requests) == before
            finally:
                bob.close()
                alice.close()
        bodies = [b for h, b in _received(backend)]
        assert bodies and not any(b"secret" in b for b in bodies), bodies
        assert any(b'"n"' in b for b in bodies)
    finally:
        backend.close()


# --- legacy backends: resources -------------------------------------------------------------


@pytest.fixture(scope="module")
def sse_sdk():
    from gwutil import ROOT, backend_process

    with backend_process(os.path.join(ROOT, "tests", "fixtures", "sse_server.py"), "--name", "legacy") as (_, url):
        yield url


def _initialize(c: httpx.Client, url: str, headers: dict = HEADERS) -> httpx.Response:
    return c.post(url, content=INIT, headers=headers)


def test_abandoned_legacy_backend_sessions_do_not_lock_out_new_clients(sse_sdk):
    """Every client session on a route over a legacy backend holds one of that backend's
    streams (``max_streams``).  A client that opens sessions and walks away, never ending
    them, must not leave the next client without one: the least recently used idle
    backend session gives its stream up (its own client, if it comes back, gets a new
    backend session as after any loss)."""
    raw = {"backends": {"old": {"url": sse_sdk, "transport": "sse", "max_streams": 3, "response_timeout": 10.0}}}
    with GatewayThread(raw) as gt, httpx.Client(timeout=15) as c:
        url = gt.url("/mcp")
        abandoned = []
        for _ in range(3):  # the attacker: sessions it never ends
            r = _initialize(c, url)
            assert r.status_code == 200, r.text
            abandoned.append(r.headers["mcp-session-id"])
        r = _initialize(c, url)  # someone else
        assert r.status_code == 200 and "result" in r.json(), r.text
        sid = r.headers["mcp-session-id"]
        h = {**HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        c.post(url, content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers=h)
        r = c.post(url, content=orjson.dumps(_call(2, "whoami")), headers=h)
        assert r.status_code == 200 and "legacy" in r.text, r.text
        # An evicted session's own client is served again, on a new backend session.
        h0 = {**HEADERS, "Mcp-Session-Id": abandoned[0], "MCP-Protocol-Version": "2025-06-18"}
        r = c.post(url, content=orjson.dumps(_call(3, "whoami")), headers=h0)
        assert r.status_code == 200 and "legacy" in r.text, r.text


# --- legacy backends over https ------------------------------------------------------------


def _endpoint_stream(data: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            b"event: endpoint\ndata: %s\n\n" % data)  # fmt: skip


@pytest.mark.parametrize("case", ["http-endpoint", "wrong-name"])
def test_an_https_legacy_backend_is_never_spoken_to_in_plaintext_or_unverified(pki, case):
    """Over https: an ``endpoint`` that names ``http://`` on the same host and port (a
    downgrade) is refused and nothing is POSTed; a certificate for another name fails the
    handshake, and the backend never gets a request."""
    cert = (pki["server_pem"], pki["server_key"]) if case == "http-endpoint" else (pki["elsewhere_pem"], pki["elsewhere_key"])
    srv = LegacyServer(b"", tls=cert)
    srv.get_answer = _endpoint_stream(b"http://localhost:%d/messages?session_id=1" % srv.port)
    url = f"https://localhost:{srv.port}/sse"
    raw = {"backends": {"old": {"url": url, "transport": "sse", "ca_file": pki["ca_pem"], "response_timeout": 5.0}}}
    try:
        with GatewayThread(raw) as gt, httpx.Client(timeout=15) as c:
            r = _initialize(c, gt.url("/mcp"))
            assert r.status_code >= 500 or "error" in r.json(), r.text
            text = r.text
            time.sleep(0.2)
        if case == "http-endpoint":
            assert "refused" in text and "scheme" in text
            assert [h.split(b" ", 1)[0] for h, _ in srv.requests] == [b"GET"]  # no POST, in any form
        else:
            assert "host name mismatch" in text
            assert srv.requests == [] and srv.handshakes == 0
    finally:
        srv.close()


# --- secrets in configuration errors and check-config --------------------------------------


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("tail", ["\n", " ", "\t", "\x00"])
def test_a_url_with_a_bad_character_is_refused_without_showing_its_query(transport, tail):
    """The usual mistake -- a key pasted into the URL with a line break or space after it --
    is refused, naming the character at fault, and the key is not in the message (which
    goes to the terminal, CI logs, tickets)."""
    from mcpfast.config import ConfigError, build_config

    url = f"http://127.0.0.1:1/sse?api_key={SECRET}{tail}"
    with pytest.raises(ConfigError) as ei:
        build_config({"backends": {"a": {"url": url, "transport": transport}}})
    msg = str(ei.value)
    assert msg.startswith("backends.a.url: ") and "visible ASCII" in msg and repr(tail) in msg
    assert SECRET not in msg


def test_check_config_hides_secrets_of_the_new_backend_keys(tmp_path, pki):
    """check-config of legacy SSE, https and stdio backends: the URL's query values,
    headers, bearer token and a child's environment values are not shown; TLS file paths
    and the stdio program are."""
    import json

    from click.testing import CliRunner

    from mcpfast.cli import main

    f = tmp_path / "gw.toml"
    f.write_text(
        f'[backends.old]\ntransport = "sse"\nurl = "http://127.0.0.1:1/sse?key={SECRET}"\nbearer_token = "{SECRET}b"\n'
        f'[backends.tls]\nurl = "https://localhost:2/mcp?key={SECRET}"\nca_file = "{pki["ca_pem"]}"\n'
        f'[backends.tls.headers]\nX-K = "{SECRET}h"\n'
        f'[backends.kid]\ntransport = "stdio"\ncommand = "{os.sys.executable}"\n[backends.kid.env]\nTOKEN = "{SECRET}e"\n'
    )
    r = CliRunner().invoke(main, ["check-config", str(f)])
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    shown = json.loads(r.output[r.output.index("{"):])["backends"]
    assert shown["old"]["url"] == "http://127.0.0.1:1/sse?key=<redacted>"
    assert shown["tls"]["ca_file"] == pki["ca_pem"] and shown["kid"]["env"] == {"TOKEN": "<redacted>"}


def test_hostile_session_id_and_version_never_reach_a_head_of_the_internal_connection():
    """What a backend says about the session -- its ``Mcp-Session-Id`` (here with spaces
    and a would-be field in it) and the ``protocolVersion`` of its initialize answer
    (echoed from the client's, with a line break) -- decides fields of every later
    request the front makes for the legacy client.  Neither may put anything but a
    clean value there; and once the stream is closed its session id is gone for good."""
    backend = RawBackend("mux")
    backend.sid_prefix = b"s X-Evil: 1 ;"
    init = orjson.loads(INIT)
    init["params"]["protocolVersion"] = "2025-06-18\r\nX-Evil: 2"
    try:
        with GatewayThread({"backends": {"b": {"url": backend.url}}}) as gt:
            leg = RawLegacy(gt.port)
            try:
                assert leg.post(b"", orjson.dumps(init)).startswith(b"HTTP/1.1 202")
                assert leg.messages(1)[0]["id"] == 1
                assert leg.post(b"", orjson.dumps(_call(2, "n"))).startswith(b"HTTP/1.1 202")
                assert leg.messages(1)[0]["id"] == 2  # an error (the backend lost its session): fine
            finally:
                leg.close()
            n = len(backend.requests)
            assert wait_until(lambda: gt.call(lambda: dict(gt.gw.fronts[b"/messages"].sessions)) == {})
            assert leg.post(b"", orjson.dumps(_call(3, "n"))).startswith(b"HTTP/1.1 404")  # replayed after close
            time.sleep(0.2)
            assert len(backend.requests) == n
        got = _received(backend)
        assert len(got) >= 2
        for h, _ in got:
            assert b"x-evil" not in [k.lower() for k, _ in h.headers], h.headers
            assert h.session_id is None  # the backend's id was not a clean value: never sent
            assert h.protocol_version in (None, b"2025-06-18", b"2025-03-26")
    finally:
        backend.close()


def test_a_full_stream_budget_is_not_a_backend_failure(sse_sdk):
    """When every stream of a legacy backend is in use by sessions that are busy (their
    clients listen), a new session is refused (503) -- but that is the gateway's own
    budget, not the backend failing: it must not put the backend into back-off, which
    would refuse everyone else's new sessions after a stream is free again."""
    raw = {"backends": {"old": {"url": sse_sdk, "transport": "sse", "max_streams": 2, "response_timeout": 10.0}}}
    with GatewayThread(raw) as gt, httpx.Client(timeout=15) as c:
        url = gt.url("/mcp")
        listening = []
        try:
            for _ in range(2):
                r = _initialize(c, url)
                assert r.status_code == 200, r.text
                h = {**HEADERS, "Accept": "text/event-stream", "Mcp-Session-Id": r.headers["mcp-session-id"],
                     "MCP-Protocol-Version": "2025-06-18"}  # fmt: skip
                cm = c.stream("GET", url, headers=h)
                resp = cm.__enter__()
                assert resp.status_code == 200
                listening.append(cm)
            sessions = lambda: gt.call(lambda: [s.listener is not None for s in gt.gw.backends["old"].sessions.values()])  # noqa: E731
            assert wait_until(lambda: sessions() == [True, True])
            for pause in (0.3, 0.6, 0.0):  # refused again and again: all busy
                r = _initialize(c, url)
                assert r.status_code >= 500 or "error" in r.json(), r.text
                time.sleep(pause)
            listening.pop(0).__exit__(None, None, None)  # a stream is free again
            assert wait_until(lambda: sessions().count(True) == 1)
            r = _initialize(c, url)
            assert r.status_code == 200 and "result" in r.json(), r.text
        finally:
            for cm in listening:
                cm.__exit__(None, None, None)


def test_legacy_and_streamable_session_ids_do_not_cross():
    """A legacy ``session_id`` presented as ``Mcp-Session-Id`` on the route, and a
    route's session id presented as ``session_id``, are unknown sessions: nothing reaches
    the backend."""
    backend = RawBackend("mux")
    try:
        with GatewayThread({"backends": {"b": {"url": backend.url}}, **_auth(), "sessions": {"key": "cd" * 32}}) as gt:
            bob_key = b"X-API-Key: %s\r\n" % KEYS["bob"].encode()
            leg = RawLegacy(gt.port, extra=bob_key)
            try:
                assert leg.post(bob_key, INIT).startswith(b"HTTP/1.1 202")
                leg.messages(1)
                legacy_id = leg.endpoint.rpartition(b"=")[2].decode()
                h = {**HEADERS, "X-API-Key": KEYS["bob"], "MCP-Protocol-Version": "2025-06-18"}
                with httpx.Client(timeout=10) as c:
                    r = c.post(gt.url("/mcp"), content=INIT, headers=h)
                    sealed = r.headers["mcp-session-id"]
                    n = len(backend.requests)
                    r = c.post(gt.url("/mcp"), content=orjson.dumps(_call(2, "n")), headers={**h, "Mcp-Session-Id": legacy_id})
                    assert r.status_code == 404, r.text
                    for sid in (sealed, sealed.partition(".")[0], "s1"):
                        r = c.post(f"{gt.url('/messages')}?session_id={sid}", content=orjson.dumps(_call(3, "n")), headers=h)
                        assert r.status_code in (400, 404), r.text
                    time.sleep(0.2)
                    assert len(backend.requests) == n
            finally:
                leg.close()
    finally:
        backend.close()


class Poller(RawBackend):
    """A hostile route backend for the legacy front: every answer to ``tools/call`` and
    every GET that resumes one (``Last-Event-ID``) is one event with an id and ``retry:
    0``, then the end of the stream -- come back at once, for ever."""

    def __init__(self) -> None:
        super().__init__("poller")
        self.resumed = 0

    def _poller(self, conn: socket.socket, req: tuple[bytes, bytes]) -> None:
        head, body = req
        if head.startswith(b"DELETE"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if head.startswith(b"GET"):
            if b"\r\nlast-event-id:" not in head.lower():
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.resumed += 1
        else:
            msg = orjson.loads(body)
            if msg.get("method") == "initialize":
                out = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "p", "version": "1"}}})  # fmt: skip
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: p1\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(out), out))  # fmt: skip
                return
            if "id" not in msg:
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                return
        note = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"again"}}'
        ev = b"retry: 0\nid: e%d\nevent: message\ndata: %s\n\n" % (self.resumed, note)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + ev)
        conn.shutdown(socket.SHUT_WR)


def test_a_route_that_asks_to_be_polled_at_once_for_ever_is_not_polled_in_a_tight_loop():
    """An SSE answer that ends after every event with ``retry: 0`` makes the front come
    back for the rest on the legacy client's behalf.  A backend doing that for ever must
    not turn the gateway into a loop of requests as fast as the two can go."""
    backend = Poller()
    try:
        with GatewayThread({"backends": {"b": {"url": backend.url}}}) as gt:
            leg = RawLegacy(gt.port)
            try:
                assert leg.post(b"", INIT).startswith(b"HTTP/1.1 202")
                leg.messages(1)
                leg.post(b"", b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
                assert leg.post(b"", orjson.dumps(_call(2, "n"))).startswith(b"HTTP/1.1 202")
                assert wait_until(lambda: backend.resumed >= 1)
                start = backend.resumed
                time.sleep(1.0)
                assert backend.resumed - start <= 20, backend.resumed - start
            finally:
                leg.close()
    finally:
        backend.close()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"server": {"mcp_path": "/m\x01"}}, "server.mcp_path"),
        ({"routes": [{"path": "/m cp", "backend": "a"}]}, "routes[0].path"),
        ({"routes": [{"path": "/m\tcp", "backend": "a"}]}, "routes[0].path"),
        ({"routes": [{"path": "/x", "backend": "a", "sse_path": "/s se", "messages_path": "/m"}]}, "routes[0].sse_path"),
        ({"routes": [{"path": "/x", "backend": "a", "sse_path": "/s", "messages_path": "/m\x7f"}]}, "routes[0].messages_path"),
    ],
)
def test_paths_that_reach_heads_and_endpoint_events_are_visible_ascii(raw, key):
    """Route paths go into the head of every request the legacy front makes and the
    message path into the ``endpoint`` event: a space or control character is refused at
    load, naming the key."""
    from mcpfast.config import ConfigError, build_config

    with pytest.raises(ConfigError) as ei:
        build_config({"backends": {"a": {"url": "http://127.0.0.1:1/mcp"}}, **raw})
    assert str(ei.value).startswith(key + ":")


# --- client values towards a legacy backend ------------------------------------------------


class RecordingLegacy(RawBackend):
    """A 2024-11-05 backend that answers properly and records every request: ``GET`` opens
    the stream with an ``endpoint`` event, each ``POST`` is recorded and answered 202, and
    its JSON-RPC answer goes out on the stream (``tools/call`` echoes its params)."""

    def __init__(self) -> None:
        self.stream: socket.socket | None = None
        self.lock = threading.Lock()
        super().__init__("recording")

    def _recording(self, conn: socket.socket, req: tuple[bytes, bytes]) -> None:
        if req[0].startswith(b"GET"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                         b"event: endpoint\ndata: /messages?session_id=abc\n\n")  # fmt: skip
            self.stream = conn
            self.stop.wait(30)
            return
        conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        msg = orjson.loads(req[1])
        if "id" not in msg or "method" not in msg:
            return
        m = msg["method"]
        if m == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "r", "version": "1"}}
        elif m == "tools/list":
            result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
        else:
            result = {"content": [{"type": "text", "text": orjson.dumps(msg.get("params")).decode()}]}
        with self.lock:
            self.stream.sendall(b"event: message\ndata: %s\n\n" % orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}))


def test_nothing_a_client_sends_becomes_a_field_of_a_legacy_backends_post():
    """Hostile values in every place a client controls -- its own header fields, a forged
    Mcp-Session-Id and Last-Event-ID, a tool name and arguments full of escaped line
    breaks and would-be fields -- never reach the head of a POST to a legacy backend:
    each POST the backend gets carries exactly the gateway's own fields, and the client's
    message arrives as one JSON body with its values intact."""
    be = RecordingLegacy()
    try:
        with GatewayThread({"backends": {"old": {"transport": "sse", "url": f"http://127.0.0.1:{be.port}/sse"}}}) as gt, \
                httpx.Client(timeout=20) as h:  # fmt: skip
            hostile = {
                **HEADERS,
                "X-Injected": "one",
                "Authorization": "Bearer client-token",
                "Last-Event-ID": "p!old~1\\r\\nX-Evil: 1",
                "Cookie": "a=b",
                "Forwarded": "for=1.2.3.4",
            }
            r = h.post(gt.url(), content=INIT, headers=hostile)
            assert r.status_code == 200, r.text
            sid = r.headers["mcp-session-id"]
            hdrs = {**hostile, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
            args = {"text": "line\r\nX-Evil: 2\r\n\r\nPOST /x HTTP/1.1", "n": "\u2028\u0085"}
            call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": args}}
            r = h.post(gt.url(), content=orjson.dumps(call).replace(b",", b",\r\n"), headers=hdrs)
            assert r.status_code == 200, r.text
            echoed = orjson.loads(r.json()["result"]["content"][0]["text"])
            assert echoed == {"name": "echo", "arguments": args}
        posts = [(head, body) for head, body in be.requests if head.startswith(b"POST")]
        assert len(posts) >= 3  # initialize, initialized, the call
        for head, body in posts:
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /messages?session_id=abc HTTP/1.1", lines[0]
            names = sorted(line.split(b":", 1)[0].lower() for line in lines[1:])
            assert names == [b"content-length", b"content-type", b"host"], names  # the gateway's own, no more
            assert b"evil" not in head.lower() and b"injected" not in head.lower() and b"client-token" not in head
            orjson.loads(body)  # one JSON text
    finally:
        be.close()
