"""Hostile client input never shapes a request the gateway sends to a backend.

Every test here is judged by what the backends actually received: each backend records
every byte of every connection and parses it with the gateway's own strict request
parser, and it *acts* on what that parser yields -- so a request smuggled inside a
header would be executed, counted and seen.  The checks are that each byte stream
parses cleanly into exactly the requests the gateway meant to send, that a tool policy
denies never runs, and that every client receives answers to its own requests only.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import socket
import threading
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwutil import GatewayThread
from mcpfast.wire import heads
from mcpfast.config import ConfigError, build_config
from mcpfast.wire.core import ProtocolError, RequestParser, ResponseParser
from mcpfast.mux.ids import encode_event_id
from mcpfast.mux.token import new_key_text

KEY = new_key_text()
API_KEY = "k-" + "7" * 40
VERSION = "2025-06-18"


# ---------------------------------------------------------------------------------
# A backend that records every byte and acts on what the strict parser makes of it


class _Requests:
    def __init__(self) -> None:
        self.done: collections.deque = collections.deque()
        self.head = None
        self.body: list = []

    def on_request(self, head) -> None:
        self.head = head
        self.body = []

    def on_body(self, chunk) -> None:
        self.body.append(bytes(chunk))

    def on_request_end(self, trailers) -> None:
        self.done.append((self.head, b"".join(self.body)))


def _field(head, name: bytes) -> bytes | None:
    for k, v in head.headers:
        if k.lower() == name:
            return v
    return None


class RecordingBackend:
    """A session-era MCP backend on a raw socket.  ``streams``: every connection's bytes;
    ``requests``: (head, body) as the strict parser read them; ``errors``: what it
    refused; ``calls``: tools run, by name.  Sessions are not enforced, so anything that
    reaches it as a request is executed.  ``init_session`` / ``init_version`` replace
    what ``initialize`` answers with (for hostile-backend tests)."""

    def __init__(self, name: str, init_session: bytes | None = None, init_version: str | None = None) -> None:
        self.name = name
        self.init_session = init_session
        self.init_version = init_version
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
        self.streams: list[bytearray] = []
        self.requests: list = []
        self.errors: list = []
        self.calls: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        with self.lock:
            self.streams.append(buf)
        reqs = _Requests()
        parser = RequestParser(reqs, max_body_bytes=1 << 24)
        try:
            with conn:
                while not self.stop.is_set():
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    try:
                        parser.feed(data)
                    except ProtocolError as exc:
                        self.errors.append(exc)
                        return
                    while reqs.done:
                        head, body = reqs.done.popleft()
                        with self.lock:
                            self.requests.append((head, body))
                        conn.sendall(self._answer(head, body))
        except OSError:
            pass

    def _answer(self, head, body: bytes) -> bytes:
        if head.method == b"GET":
            return b"HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: 0\r\n\r\n"
        if head.method == b"DELETE":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(400, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}')
        if "id" not in msg:
            return b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        method = msg.get("method")
        params = msg.get("params") or {}
        extra = b""
        if method == "initialize":
            version = self.init_version if self.init_version is not None else params.get("protocolVersion", VERSION)
            result = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": {"name": self.name, "version": "1"}}
            extra = b"Mcp-Session-Id: " + (self.init_session or b"sess-" + self.name.encode()) + b"\r\n"
        elif method == "tools/list":
            result = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "secret")]}
        elif method == "tools/call":
            name = params.get("name")
            with self.lock:
                self.calls[name] += 1
            result = {"content": [{"type": "text", "text": "ran"}], "name": name, "arguments": params.get("arguments"),
                      "backend": self.name}  # fmt: skip
        else:
            result = {}
        return _json(200, orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), extra)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return len(self.requests), sum(len(s) for s in self.streams)

    def strict_parse(self) -> list:
        """Every recorded stream through a fresh strict parser: the requests in it, and
        nothing left over (no error, no partial message)."""
        out = []
        with self.lock:
            streams = [bytes(s) for s in self.streams]
        for s in streams:
            reqs = _Requests()
            p = RequestParser(reqs, max_body_bytes=1 << 24)
            p.feed(s)  # raises on anything that is not a clean sequence of requests
            assert not p.in_message, f"partial request left in a backend stream: {s[-200:]!r}"
            out += list(reqs.done)
        return out

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def _json(status: int, body: bytes, extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 400: b"Bad Request"}[status]
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status, reason, extra, len(body), body)  # fmt: skip


# ---------------------------------------------------------------------------------
# Client side: raw sockets, answers read with the strict response parser


class _Answers:
    def __init__(self) -> None:
        self.done: list = []
        self.head = None
        self.body: list = []

    def on_interim(self, head) -> None:
        pass

    def on_response(self, head) -> None:
        self.head = head
        self.body = []

    def on_body(self, chunk) -> None:
        self.body.append(bytes(chunk))

    def on_response_end(self, trailers) -> None:
        self.done.append((self.head.status, self.head, b"".join(self.body)))


def read_answers(s: socket.socket, n: int, timeout: float = 10.0) -> list:
    """Up to ``n`` answers (fewer if the gateway closes first)."""
    got = _Answers()
    p = ResponseParser(got)
    s.settimeout(timeout)
    while len(got.done) < n:
        try:
            data = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            try:
                p.feed_eof()
            except ProtocolError:
                pass
            break
        p.feed(data)
    return got.done


def request(method: str, path: str, body: bytes = b"", headers: list | None = None, key: str | None = API_KEY) -> bytes:
    """A raw request with ``headers`` (name, value) after the usual ones; ``key``: the
    API key it carries, None for none."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if key is not None:
        lines.append(b"X-API-Key: " + key.encode())
    if method == "POST":
        lines += [b"Content-Type: application/json", b"Accept: application/json, text/event-stream"]
    for k, v in headers or ():
        lines.append((k.encode() if isinstance(k, str) else k) + b": " + (v.encode() if isinstance(v, str) else v))
    if body or method == "POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def roundtrip(port: int, raw: bytes, n: int = 1) -> list:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        return read_answers(s, n)


def call_body(rid, name: str, marker: str, args: dict | None = None) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                         "params": {"name": name, "arguments": {"m": marker, **(args or {})}}})  # fmt: skip


def _config(alpha: RecordingBackend, beta: RecordingBackend, gamma: RecordingBackend) -> dict:
    return {
        "backends": {b.name: {"url": b.url, "response_timeout": 5.0} for b in (alpha, beta, gamma)},
        "routes": [{"path": "/mcp", "backends": ["alpha", "beta"]}, {"path": "/pt", "backends": ["gamma"]}],
        "sessions": {"key": KEY},
        "auth": {"mode": "required", "api_keys": {"keys": [
            {"sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "subject": "mallory"}]}},
        "authz": {"default": "allow", "rules": [{"id": "no-secret", "effect": "deny", "tools": ["secret"]}]},
        "audit": {"sink": "off"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def env():
    alpha, beta, gamma = RecordingBackend("alpha"), RecordingBackend("beta"), RecordingBackend("gamma")
    try:
        with GatewayThread(_config(alpha, beta, gamma)) as gt:
            init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
            (status, head, _), = roundtrip(gt.port, request("POST", "/mcp", init))
            assert status == 200, status
            token = head.session_id.decode()
            listing = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            (status, _, _), = roundtrip(gt.port, request("POST", "/mcp", listing, [("Mcp-Session-Id", token)]))
            assert status == 200
            yield gt, token, {"alpha": alpha, "beta": beta, "gamma": gamma}
    finally:
        for b in (alpha, beta, gamma):
            b.close()


def settle(backends, quiet: float = 0.15, limit: float = 3.0) -> None:
    """Wait until no backend has received anything for ``quiet`` seconds."""
    end = time.monotonic() + limit
    last = [b.snapshot() for b in backends]
    calm = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.03)
        now = [b.snapshot() for b in backends]
        if now != last:
            last, calm = now, time.monotonic()
        elif time.monotonic() - calm >= quiet:
            return


def error_code(body: bytes) -> int:
    return orjson.loads(body)["error"]["code"]


# ---------------------------------------------------------------------------------
# The smuggling attack


_SMUGGLED = (
    b"1\r\nX-Injected: yes\r\n\r\n"
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nMcp-Session-Id: sess-alpha\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


def _smuggling_id(kind: str, backend: str = "alpha") -> bytes:
    body = call_body(666, "secret", "smuggled")
    raw = _SMUGGLED % (len(body), body)
    return kind.encode() + b"!" + backend.encode() + b"*" + base64.urlsafe_b64encode(raw).rstrip(b"=")


@pytest.mark.parametrize("kind", ["g", "p"])
def test_last_event_id_cannot_smuggle_a_denied_call(env, kind):
    gt, token, backends = env
    alpha = backends["alpha"]
    session = [("Mcp-Session-Id", token)]
    # The policy holds when the tool is called normally ...
    (status, _, _), = roundtrip(gt.port, request("POST", "/mcp", call_body(1, "alpha__secret", "direct"), session))
    assert status == 403
    (status, _, body), = roundtrip(gt.port, request("POST", "/mcp", call_body(2, "alpha__echo", "fine"), session))
    assert status == 200 and orjson.loads(body)["result"]["backend"] == "alpha"
    settle(backends.values())
    before = {n: b.snapshot() for n, b in backends.items()}
    calls_before = {n: dict(b.calls) for n, b in backends.items()}
    # ... and a Last-Event-ID whose decoded value carries CRLF and a whole request is
    # refused before anything is written to a backend.
    (status, _, body), = roundtrip(gt.port, request("GET", "/mcp", headers=session + [("Last-Event-ID", _smuggling_id(kind))]))
    assert status == 400 and error_code(body) == -32600
    settle(backends.values())
    for n, b in backends.items():
        assert b.snapshot() == before[n], f"backend {n} received bytes for a refused request"
        assert dict(b.calls) == calls_before[n]
        assert b.calls["secret"] == 0
        assert not b.errors
        for head, _ in b.strict_parse():
            assert _field(head, b"x-injected") is None
    # The gateway keeps serving this client.
    (status, _, body), = roundtrip(gt.port, request("POST", "/mcp", call_body(3, "alpha__echo", "after"), session))
    assert status == 200 and orjson.loads(body)["result"]["arguments"]["m"] == "after"


@pytest.mark.parametrize(
    "position",
    [b"1\r\n", b"1\nX: y", b"1\rX", b"a\x00b", b"a\x01b", b"a\x7fb", b"a\tb\x1b", b" lead", b"trail\t"],
)
def test_hostile_event_id_positions_refused(env, position):
    gt, token, backends = env
    settle(backends.values())
    before = {n: b.snapshot() for n, b in backends.items()}
    lei = encode_event_id("g", {"alpha": position})
    (status, _, body), = roundtrip(gt.port, request("GET", "/mcp", headers=[("Mcp-Session-Id", token), ("Last-Event-ID", lei)]))
    assert status == 400 and error_code(body) == -32600
    settle(backends.values())
    assert {n: b.snapshot() for n, b in backends.items()} == before


def test_valid_event_id_reaches_its_backend_as_sent(env):
    """The door lets legitimate values through unchanged: a position with spaces and
    obs-text inside goes back to its backend byte for byte."""
    gt, token, backends = env
    alpha = backends["alpha"]
    n0 = len(alpha.requests)
    position = b"stream 7\xe9:\t42"
    lei = encode_event_id("p", {"alpha": position})
    (status, _, _), = roundtrip(gt.port, request("GET", "/mcp", headers=[("Mcp-Session-Id", token), ("Last-Event-ID", lei)]))
    assert status == 400  # the backend refuses to resume (405): the client learns it cannot
    settle(backends.values())
    gets = [h for h, _ in alpha.requests[n0:] if h.method == b"GET"]
    assert len(gets) == 1 and gets[0].last_event_id == position
    assert _field(gets[0], b"mcp-session-id") == b"sess-alpha"


_HOSTILE_FIELDS = [
    ("Mcp-Session-Id", b"abc\x00def"),
    ("Mcp-Session-Id", b"abc\rPOST /mcp HTTP/1.1"),
    ("Mcp-Session-Id", b"abc\x0bdef"),
    ("X-Custom", b"v\x01"),
    ("X-Custom", b"v\x7f"),
    ("X-Custom", b"a\r\n b"),  # obsolete line folding
    ("Bad Name", b"v"),
    ("Bad\x00Name", b"v"),
    ("Last-Event-ID", b"1\x00"),
    ("MCP-Protocol-Version", b"2025-06-18\x0c"),
]


@pytest.mark.parametrize("path", ["/pt", "/mcp"])
@pytest.mark.parametrize("name,value", _HOSTILE_FIELDS)
def test_hostile_fields_never_reach_a_backend(env, path, name, value):
    """Session ids and headers with control characters (passthrough and multiplexed):
    refused with 400, and the request pipelined behind them never runs."""
    gt, token, backends = env
    settle(backends.values())
    before = {n: b.snapshot() for n, b in backends.items()}
    tool = "secret" if path == "/pt" else "alpha__secret"
    extra = [] if name == "Mcp-Session-Id" or path == "/pt" else [("Mcp-Session-Id", token)]
    bad = request("POST", path, call_body(1, "echo" if path == "/pt" else "alpha__echo", "hostile"), extra + [(name, value)])
    behind = request("POST", path, call_body(2, tool, "behind"))
    answers = roundtrip(gt.port, bad + behind, 2)
    assert answers and answers[0][0] == 400
    assert len(answers) == 1, "the connection ends after a malformed request"
    settle(backends.values())
    assert {n: b.snapshot() for n, b in backends.items()} == before
    assert all(b.calls["secret"] == 0 for b in backends.values())


def test_passthrough_forwards_exactly_what_was_sent(env):
    """On the passthrough route the denied tool is refused too, and the head the backend
    gets carries the client's fields, values unchanged, and nothing else of theirs."""
    gt, token, backends = env
    gamma = backends["gamma"]
    n0 = len(gamma.requests)
    hdrs = [("X-Opaque", "opaque-\x80\xff-id".encode("latin-1")), ("X-Trace", b"a  b\tc")]
    answers = roundtrip(
        gt.port,
        request("POST", "/pt", call_body(1, "echo", "one"), hdrs) + request("POST", "/pt", call_body(2, "secret", "two")),
        2,
    )
    assert [a[0] for a in answers] == [200, 403]
    settle(backends.values())
    got = gamma.requests[n0:]
    assert len(got) == 1
    head, body = got[0]
    assert _field(head, b"x-opaque") == "opaque-\x80\xff-id".encode("latin-1")
    assert _field(head, b"x-trace") == b"a  b\tc"
    assert _field(head, b"x-api-key") is None  # credentials for the gateway stay here
    assert orjson.loads(body)["params"]["arguments"]["m"] == "one"
    assert gamma.calls["secret"] == 0


# ---------------------------------------------------------------------------------
# Values a backend supplies are checked when received


@pytest.mark.parametrize(
    "session,version",
    [(None, "2025-06-18\r\nX-Injected: yes"), (None, "2025-06-18\x00"), (b"sess id", None), (b"sess\x80", None)],
)
def test_backend_values_checked_at_initialize(session, version):
    """A backend's session id and protocol version go into every later head to it: one
    that could not is refused at initialize, and the backend is left out."""
    evil = RecordingBackend("alpha", init_session=session, init_version=version)
    good, gamma = RecordingBackend("beta"), RecordingBackend("gamma")
    try:
        with GatewayThread(_config(evil, good, gamma)) as gt:
            init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
            (status, head, _), = roundtrip(gt.port, request("POST", "/mcp", init))
            assert status == 200  # fail-open: served by the backend that answered well
            token = head.session_id.decode()
            sess = [("Mcp-Session-Id", token)]
            (status, _, body), = roundtrip(gt.port, request("POST", "/mcp", call_body(1, "beta__echo", "b"), sess))
            assert status == 200 and orjson.loads(body)["result"]["backend"] == "beta"
            roundtrip(gt.port, request("POST", "/mcp", call_body(2, "alpha__echo", "a"), sess))
            roundtrip(gt.port, request("GET", "/mcp", headers=sess))
            settle([evil, good])
            for b in (evil, good):
                assert not b.errors
                for h, _ in b.strict_parse():
                    assert _field(h, b"x-injected") is None
                    for _, v in h.headers:
                        assert b"\x00" not in v
            # the hostile backend only ever saw initialize requests, and a DELETE ending the
            # session it opened when that session id is one a head can carry
            got = evil.strict_parse()
            assert all(h.method == b"DELETE" or orjson.loads(body).get("method") == "initialize" for h, body in got)
            deletes = [h for h, _ in got if h.method == b"DELETE"]
            assert all(h.session_id == b"sess-alpha" and h.protocol_version is None for h in deletes)
            assert bool(deletes) == (session is None)
    finally:
        for b in (evil, good, gamma):
            b.close()


# ---------------------------------------------------------------------------------
# Configuration


def _backend_cfg(**kw) -> dict:
    return {"server": {"listen": "127.0.0.1:0"}, "backends": {"b": {"url": "http://127.0.0.1:9/mcp", **kw}}}


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"headers": {"X-A": "v\r\nX-B: w"}}, "backends.b.headers.X-A"),
        ({"headers": {"X-A": "v\x01"}}, "backends.b.headers.X-A"),
        ({"headers": {"X-A": "v\x7f"}}, "backends.b.headers.X-A"),
        ({"headers": {"X-A": " padded"}}, "backends.b.headers.X-A"),
        ({"headers": {"X-A": "\u20ac"}}, "backends.b.headers.X-A"),
        ({"headers": {"X-A\n": "v"}}, "backends.b.headers.X-A\n"),
        ({"headers": {"X A": "v"}}, "backends.b.headers.X A"),
        ({"url": "http://127.0.0.1:9/mcp\r\nX-B: w"}, "backends.b.url"),
        ({"url": "http://127.0.0.1:9/m\tcp"}, "backends.b.url"),
        ({"url": "http://127.0.0.1:9/m cp"}, "backends.b.url"),
        ({"url": "http://127.0.0.1:9/mcp?a=\x00"}, "backends.b.url"),
        ({"bearer_token": "tok\x01en"}, "backends.b.bearer_token"),
        ({"bearer_token": "tok\x7f"}, "backends.b.bearer_token"),
        ({"bearer_token": "tok\ten"}, "backends.b.bearer_token"),
    ],
)
def test_config_refuses_what_cannot_go_in_a_head(kw, key):
    with pytest.raises(ConfigError) as ei:
        build_config(_backend_cfg(**kw))
    assert ei.value.key == key


def test_config_keeps_legitimate_values():
    cfg = build_config(_backend_cfg(headers={"X-A": "v w\tx", "X-Latin": "caf\u00e9"}, bearer_token="abc.DEF-123_~+/="))
    assert dict(cfg.backend("b").headers) == {"X-A": "v w\tx", "X-Latin": "caf\u00e9", "Authorization": "Bearer abc.DEF-123_~+/="}


# ---------------------------------------------------------------------------------
# Property: whatever clients send, backends get exactly the intended requests


_printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
# Control characters a field value may not hold (CR and LF are covered one by one above:
# a random line break may just make another valid field).
_CTL = [bytes([c]) for c in (*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
_hostile_bytes = st.tuples(_printable, st.sampled_from(_CTL), _printable).map(lambda t: t[0].encode() + t[1] + t[2].encode())
_json_id = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=16), _printable)
_arg = st.text(max_size=24)  # any unicode: JSON-escaped in the body, never in a head


@st.composite
def _client_request(draw, i: str):
    """One request of a connection: (raw bytes, what should reach a backend or None,
    whether it breaks the connection)."""
    kind = draw(st.sampled_from(["pt_call", "pt_call", "mux_call", "mux_call", "get", "hostile_field"]))
    marker = f"m{i}-{draw(st.integers(0, 10**9))}"
    rid = draw(_json_id)
    if kind == "pt_call":
        hdrs = draw(st.lists(st.tuples(st.sampled_from(["X-A", "X-Trace", "X-Other"]), _printable), max_size=3))
        name = draw(st.one_of(st.just("echo"), st.text(max_size=20).filter(lambda n: n != "secret")))
        return "pt", request("POST", "/pt", call_body(rid, name, marker, {"x": draw(_arg)}), hdrs), ("gamma", marker, rid), False
    if kind == "mux_call":
        return "mux", ("POST", call_body(rid, "alpha__echo" if draw(st.booleans()) else "beta__echo", marker, {"x": draw(_arg)})), ("mux", marker, rid), False
    if kind == "get":
        pos = draw(st.one_of(_printable.map(str.encode), st.binary(min_size=1, max_size=16)))
        form = draw(st.sampled_from(["g", "p", "raw"]))
        if form == "raw":
            lei = b"g!alpha*" + base64.urlsafe_b64encode(pos).rstrip(b"=")
        else:
            lei = encode_event_id(form, {"alpha": pos})
        return "mux", ("GET", lei), ("get", pos), False
    field = draw(st.sampled_from(["Mcp-Session-Id", "X-A", "Last-Event-ID", "MCP-Protocol-Version"]))
    value = draw(_hostile_bytes)
    return "pt", request("POST", "/pt", call_body(rid, "echo", marker), [(field, value)]), None, True


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_property_backends_get_exactly_the_intended_requests(env, data):
    gt, token, backends = env
    settle(backends.values(), quiet=0.05)
    marks = {n: (len(b.requests), len(b.streams)) for n, b in backends.items()}
    clients = []
    for c in range(data.draw(st.integers(1, 3), label="clients")):
        reqs = [data.draw(_client_request(f"{c}.{i}"), label=f"c{c}r{i}") for i in range(data.draw(st.integers(1, 4)))]
        route = reqs[0][0]
        reqs = [r for r in reqs if r[0] == route]  # one connection speaks to one route
        early_close = data.draw(st.booleans(), label="early close")
        raws, expect = [], []
        for _, raw, want, breaks in reqs:
            if route == "mux":
                method, payload = raw
                if method == "POST":
                    raw = request("POST", "/mcp", payload, [("Mcp-Session-Id", token)])
                else:
                    raw = request("GET", "/mcp", headers=[("Mcp-Session-Id", token), ("Last-Event-ID", payload)])
            raws.append(raw)
            expect.append(want)
            if breaks:
                break
        s = socket.create_connection(("127.0.0.1", gt.port), timeout=10)
        s.sendall(b"".join(raws))
        clients.append((s, expect, early_close))
    results = []
    for s, expect, early_close in clients:
        if early_close:
            s.close()
            results.append(None)
            continue
        results.append(read_answers(s, len(expect)))
        s.close()
    settle(backends.values(), quiet=0.1)

    # What each backend received since this example began, through the strict parser.
    got: dict[str, list] = {}
    for n, b in backends.items():
        assert not b.errors
        reqs = b.strict_parse()
        assert len(reqs) == len(b.requests)
        got[n] = b.requests[marks[n][0]:]
    # A request may reach its backend at most once; it must when its client stayed
    # to read and its connection carried nothing malformed (a malformed request ends
    # the connection: what was pipelined before it may or may not have been served,
    # what came after it never is).
    allowed = collections.Counter()
    required = collections.Counter()
    allowed_positions = []
    for s, expect, early_close in clients:
        breaks = None in expect
        for want in expect:
            if want is None:
                break
            if want[0] == "get":
                allowed_positions.append(want[1])
                continue
            allowed[want[1]] += 1
            if not early_close and not breaks:
                required[want[1]] += 1
    seen = collections.Counter()
    for n, reqs in got.items():
        for head, body in reqs:
            assert _field(head, b"x-injected") is None
            if head.method == b"GET":
                lei = head.last_event_id
                assert lei is None or lei in allowed_positions, lei
                continue
            msg = orjson.loads(body)
            if msg.get("method") != "tools/call":
                continue  # the multiplexer's own traffic (sessions, lists)
            seen[msg["params"]["arguments"]["m"]] += 1
    for m, k in seen.items():
        assert k <= allowed[m], f"request {m} reached a backend {k} times"
    for m, k in required.items():
        assert seen[m] == k, f"request {m} did not reach its backend"
    assert all(b.calls["secret"] == 0 for b in backends.values())

    # Every client got answers to its own requests, in order, and nothing else.
    for (s, expect, early_close), answers in zip(clients, results, strict=True):
        if answers is None:
            continue
        if None not in expect:
            assert len(answers) == len(expect), (answers, expect)
        assert len(answers) <= len(expect)
        for (status, _, body), want in zip(answers, expect):
            if want is None:
                assert status == 400
            elif want[0] == "get":
                assert status in (400, 405)
            else:
                assert status == 200, body
                msg = orjson.loads(body)
                assert msg["id"] == want[2] and msg["result"]["arguments"]["m"] == want[1]
                assert seen[want[1]] == 1, "answered, so it reached its backend once"


# ---------------------------------------------------------------------------------
# The door itself


def test_field_value_grammar_byte_by_byte():
    """RFC 9110 §5.5 for every byte value: inside a value, HTAB, SP, VCHAR and obs-text
    only; at either end no whitespace."""
    for c in range(256):
        ok = c == 9 or 0x20 <= c <= 0x7E or c >= 0x80
        assert heads.is_field_value(b"a" + bytes([c]) + b"a") is ok, c
        assert heads.is_field_value(bytes([c])) is (ok and c not in (9, 32)), c
        assert heads.is_visible(bytes([c])) is (0x21 <= c <= 0x7E), c
    assert heads.is_field_value(b"") and not heads.is_visible(b"")


@pytest.mark.parametrize("value", [b"1\r\n", b"\n", b"a\rb", b"a\x00", b"\x7f", b" a", b"a\t", "caf\u20ac"])
def test_the_builder_refuses_what_does_not_fit(value):
    from mcpfast.config import BackendConfig
    from mcpfast.transport.http_mcp import BackendLink

    link = BackendLink(BackendConfig("b", "http://127.0.0.1:9/mcp", "127.0.0.1", 9, "/mcp"), None, 5.0, 1 << 20)
    with pytest.raises(heads.HeadError):
        link.head(b"GET", "s1", VERSION, -1, ((b"Last-Event-ID", value),))
    with pytest.raises(heads.HeadError):
        link.head(b"POST", value, VERSION, 2)
    with pytest.raises(heads.HeadError):
        link.head(b"POST", "s1", value, 2)
    with pytest.raises(heads.HeadError):
        heads.request_head(b"GET", b"/mcp", heads.host_line(b"h"), b"", ((b"X-A", value),), -1)
    # What it does build parses back, strictly, into exactly the one request meant.
    data = link.head(b"GET", "s1", VERSION, -1, ((b"Last-Event-ID", b"a b\t\xffc"),))
    reqs = _Requests()
    RequestParser(reqs).feed(data)
    (head, body), = reqs.done
    assert head.last_event_id == b"a b\t\xffc" and head.session_id == b"s1" and body == b""
