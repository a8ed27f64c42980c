"""The rest of the adversarial suite on every message-level backend kind: a stdio child of
its own per session, one shared stdio child, a legacy HTTP+SSE backend
(``backend_kinds.py``), each behind a terminating route with API keys and a tool policy.

* heads -- hostile values in every field a client controls (its header fields, session
  id, protocol version, Last-Event-ID; JSON strings with line breaks, NUL, control
  characters, U+2028; raw line breaks between JSON tokens; tool names with CR/LF; ids of
  odd types and sizes; an initialize, a batch, a reply to the backend's own request; the
  same through the gateway's legacy SSE front) never put an extra line on a child's
  stdin nor an extra field or request into a legacy POST: each message arrives once, as
  exactly one JSON object equal to what the client sent (also as a property test).  A
  backend's own hostile output (not JSON, invalid UTF-8, a would-be header in an id or a
  protocol version, answers to ids nobody asked, a legacy endpoint with a would-be
  field, fields on a legacy backend's answers) never becomes a field of an answer to
  the client, nor mixes answers up.
* bounds -- an oversized body is refused (413) before any backend sees it; a child's line
  or a legacy event over its limit fails that one call with a JSON-RPC error naming the
  backend while every session goes on; one caller's many sessions and streams stay
  within the backend's budget and the stream quotas while another caller is served; a
  client that leaves mid-call, a half-closed stream, a call past its deadline leave
  nothing behind -- and a late answer never reaches a request that reused its id.
* logs -- no API key, bearer token, child ``env`` secret or legacy backend header value
  reaches the gateway's log, access log, ``/metrics`` or ``check-config``; hostile names
  reach them bounded and escaped, never as a record of their own.

Judged by what the backends received: every line a child read, every request (head and
body) a legacy backend got, each parsed strictly; and by the bytes clients got back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import subprocess
import sys
from typing import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_kinds import KINDS, LEGACY_GET_FIELDS, LEGACY_POST_FIELDS, LegacyRecorder, backend
from gwutil import ROOT, GatewayThread, free_port, stop_process, wait_port, wait_until
from rawbackend import read_response
from mcpfast.mux.ids import encode_event_id
from mcpfast.transport.base import instance_id
from mcpfast.wire.core import SSEParser
from test_adversarial_heads import _HOSTILE_FIELDS as HOSTILE_FIELDS, read_answers, request as heads_request

pytestmark = pytest.mark.e2e

KEYS = {"mallory": "k-mallory-" + "5" * 30, "alice": "k-alice-" + "6" * 32}
VERSION = "2025-06-18"
BODY_LIMIT = 64 * 1024
EVENT_LIMIT = 128 * 1024
# Fields the gateway's answers to a client carry (lower case); nothing else may appear.
CLIENT_FIELDS = {b"content-type", b"content-length", b"transfer-encoding", b"cache-control", b"mcp-session-id",
                 b"connection", b"allow", b"retry-after", b"www-authenticate"}  # fmt: skip


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


POLICY = {
    "auth": {"mode": "required", "api_keys": {"keys": [{"sha256": _sha(k), "subject": s} for s, k in KEYS.items()]}},
    "authz": {"default": "allow", "rules": [{"id": "no-secret", "effect": "deny", "tools": ["secret"]}]},
    "audit": {"sink": "off"},
}  # fmt: skip


# --- a client on raw sockets ------------------------------------------------------------------


def request(method: str, path: str, body: bytes = b"", fields=(), who: str | None = "mallory") -> bytes:
    """A raw request of ``who`` (None: without credentials) with ``fields`` added."""
    accept = [] if method == "POST" else [("Accept", "text/event-stream")]
    return heads_request(method, path, body, [*accept, *fields], None if who is None else KEYS[who])


def roundtrip(port: int, raw: bytes, n: int = 1) -> list:
    """Send ``raw`` on a new connection; up to ``n`` answers (status, head, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(raw)
        return read_answers(s, n, timeout=20)


def messages_of(head, body: bytes) -> list:
    """The JSON-RPC messages of an answer: its JSON body, or the data of each event as
    an SSE client reads them (CR, LF and CRLF all end a line)."""
    if head.content_type == b"text/event-stream":
        p = SSEParser()
        events = p.feed(body) + p.feed(b"\n\n")
        return [json.loads(ev.data) for ev in events if ev.data]
    return [json.loads(body)] if body else []


def clean_head(head) -> None:
    """An answer's head holds only the gateway's own fields, none of them made by a peer."""
    for name, value in head.headers:
        assert name.lower() in CLIENT_FIELDS, (name, value)
        assert b"evil" not in value.lower() and b"\r" not in value and b"\n" not in value, (name, value)


def encode(msg) -> bytes:
    """JSON as a client may send it: non-ASCII raw (U+2028 too), any integer size."""
    return json.dumps(msg, ensure_ascii=False).encode()


def call(rid, name: str, args: dict) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args}}


_VERSIONS: dict[str, str] = {}  # session id -> the protocol version it speaks


class Route:
    """One kind's route on the gateway, with what its backend received."""

    def __init__(self, gt: GatewayThread | None, kind: str, got, path: str | None = None, port: int = 0) -> None:
        self.gt = gt  # None: a gateway in another process, on ``port``
        self.kind = kind
        self.path = path or f"/k/{kind}"
        self.name = kind.replace("-", "_")
        self.got = got
        self._port = port

    @property
    def port(self) -> int:
        return self.gt.port if self.gt is not None else self._port

    @property
    def end(self):
        return self.gt.gw.backends[self.name]

    def open(self, who: str = "mallory", version: str = VERSION) -> str:
        """A new session of ``who`` speaking ``version`` (2025-11-25: resumable answers)."""
        init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
        (status, head, body), = roundtrip(self.port, request("POST", self.path, init, who=who))
        assert status == 200, body
        clean_head(head)
        assert orjson.loads(body)["result"]["protocolVersion"] == version
        sid = head.session_id.decode()
        _VERSIONS[sid] = version
        note = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
        (status, _, _), = roundtrip(self.port, request("POST", self.path, note, self.session(sid), who))
        assert status == 202
        return sid

    @staticmethod
    def session(sid: str) -> list:
        return [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", _VERSIONS.get(sid, VERSION))]

    def post(self, sid: str, msg, fields=(), who: str = "mallory") -> tuple:
        body = msg if isinstance(msg, bytes) else encode(msg)
        (status, head, data), = roundtrip(self.port, request("POST", self.path, body, [*self.session(sid), *fields], who))
        clean_head(head)
        return status, head, data

    def echo(self, sid: str, marker: str, who: str = "mallory", rid: int = 1) -> None:
        """A call that must work: answered with its own arguments."""
        status, head, data = self.post(sid, call(rid, "echo", {"m": marker}), who=who)
        assert status == 200, data
        assert messages_of(head, data)[-1].get("result", {}).get("echo") == {"m": marker}, data

    def sentinel(self, sid: str, since: int, marker: str) -> None:
        """A call sent last and answered, so that the backend has read everything sent
        before it; what it received since ``since`` is the gateway's own session traffic
        and calls, the sentinel last."""
        self.echo(sid, marker)
        msgs = self.got.messages()[since:]
        assert msgs[-1]["params"]["arguments"] == {"m": marker}, msgs[-3:]
        assert {m.get("method") for m in msgs} <= {"initialize", "notifications/initialized", "tools/call"}, msgs


@contextlib.contextmanager
def gateway(kinds, tmp_path, backend_kw: dict | None = None, prepare=None, **raw) -> Iterator[dict[str, Route]]:
    """A gateway with a route ``/k/<kind>`` for each of ``kinds`` over a backend of that
    kind (``backend_kw``: more keys of each backend table; ``prepare(kind, table, got)``
    may change one before the gateway starts; ``raw``: more of the configuration)."""
    backends, routes, got = {}, [], {}
    try:
        for kind in kinds:
            name = kind.replace("-", "_")
            backends[name], got[kind] = backend(kind, tmp_path, **(backend_kw or {}))
            if prepare is not None:
                prepare(kind, backends[name], got[kind])
            routes.append({"path": f"/k/{kind}", "backends": [name]})
        with GatewayThread({"backends": backends, "routes": routes, **POLICY, **raw}) as gt:
            yield {kind: Route(gt, kind, got[kind]) for kind in kinds}
    finally:
        for g in got.values():
            if g.legacy is not None:
                g.legacy.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One gateway with a route per kind."""
    limits = {"max_body_bytes": BODY_LIMIT, "max_sse_event_bytes": EVENT_LIMIT}
    with gateway(KINDS, tmp_path_factory.mktemp("kinds"), {"response_timeout": 5}, limits=limits) as routes:
        yield routes


@pytest.fixture(params=KINDS)
def route(request, world) -> Route:
    return world[request.param]


@pytest.fixture
def sid(route) -> str:
    return route.open()


# --- heads: what a client sends ---------------------------------------------------------------

HOSTILE_STRINGS = [
    "line\nbreak",
    "crlf\r\nX-Evil: 1\r\n\r\nPOST /messages HTTP/1.1",
    "\u2028\u2029\u0085 unicode line ends",
    "nul\x00byte",
    "\x1b[31mescape\x7f\x0b\x0c",
    '"}}\n{"jsonrpc":"2.0","id":99,"method":"tools/call","params":{"name":"secret","arguments":{}}}\n',
    "caf\u00e9 \U0001f600",
    "x" * 20000,
]
HOSTILE_IDS = ["7\r\nX-Evil: 1", "", "i" * 5000, 2**70, -(2**63), 0, "\u2028", None]
NOT_IDS = [1.5, True, [1], {"id": 1}]  # JSON-RPC: a string, a number without fraction, null


@pytest.mark.parametrize("version", [VERSION, "2025-11-25"], ids=["json", "resumable"])
def test_hostile_json_values_arrive_as_the_one_message_sent(route, version):
    """Arguments, tool names and ids full of line breaks and control characters, and
    bodies with raw CR and LF between their tokens: the backend gets each call once, as
    exactly one JSON object (one line on a child's stdin, one POST body) equal to what
    the client sent, and the client gets its own answer back under its own id (as JSON,
    or as a resumable event stream)."""
    sid = route.open(version=version)
    since = route.got.mark()
    sent = []
    rid = 100
    for value in HOSTILE_STRINGS:
        rid += 1
        sent.append((rid, "echo", {"m": f"s{rid}", "v": value}))
    for hostile_id in HOSTILE_IDS:
        sent.append((hostile_id, "echo", {"m": f"id-{len(sent)}"}))
    for name in ("echo\r\nX-Evil: name", "echo\nsecond", "e\u2028cho", "tab\tname"):
        rid += 1
        sent.append((rid, name, {"m": f"n{rid}"}))
    for rid_, name, args in sent:
        status, head, data = route.post(sid, call(rid_, name, args))
        assert status == 200, data
        answer = messages_of(head, data)[-1]
        assert answer["id"] == rid_ and answer["result"]["echo"] == args, data[:300]
    for bad in NOT_IDS:
        status, head, data = route.post(sid, call(bad, "echo", {"m": "bad-id"}))
        assert status == 400 and orjson.loads(data)["error"]["code"] == -32600, data
    # The same call with raw CR, LF, CRLF and tabs as whitespace between every token.
    raws = []
    for sep in (b"\r\n", b"\n", b"\r", b"\t\r\n "):
        rid += 1
        args = {"m": f"ws{rid}", "v": "a\r\nb"}
        raws.append((rid, args))
        body = encode(call(rid, "echo", args))
        for tok in (b",", b":", b"{", b"}"):
            body = body.replace(tok, tok + sep)
        status, head, data = route.post(sid, sep + body + sep)
        assert status == 200, data
        assert messages_of(head, data)[-1]["result"]["echo"] == args
    got = route.got.calls(since)
    intended = [(r, n, a) for r, n, a in sent] + [(r, "echo", a) for r, a in raws]
    assert [(m["params"]["name"], m["params"]["arguments"]) for m in got] == [(n, a) for _, n, a in intended]
    if route.kind != "stdio-shared":  # a shared child sees ids of the gateway's own
        assert [m["id"] for m in got] == [r for r, _, _ in intended]
    else:
        assert len({m["id"] for m in got}) == len(got)
    assert "secret" not in [m["params"]["name"] for m in route.got.calls()]




def test_hostile_header_fields_are_refused_before_any_backend(route, sid):
    """Each field no request may carry (control characters, CR, obsolete folding, bad
    names) on a call, with a call to the denied tool pipelined behind it: 400, nothing
    more on that connection, and the backend received neither."""
    since = route.got.mark()
    for name, value in HOSTILE_FIELDS:
        fields = [(name, value)] if name == "Mcp-Session-Id" else [*Route.session(sid), (name, value)]
        bad = request("POST", route.path, orjson.dumps(call(1, "echo", {"m": "hostile-field"})), fields)
        behind = request("POST", route.path, orjson.dumps(call(2, "secret", {"m": "behind"})), Route.session(sid))
        answers = roundtrip(route.port, bad + behind, 2)
        assert [a[0] for a in answers] == [400], (name, value, answers)
    route.sentinel(sid, since, "after-fields")
    assert [m["params"]["arguments"]["m"] for m in route.got.calls(since)] == ["after-fields"]


def test_client_fields_never_reach_a_backend(route, sid):
    """Fields a client may send -- its own, hop-by-hop ones, forged session and version
    fields, credentials for the gateway -- reach no backend: a child gets the message
    alone, a legacy backend's every request carries exactly the gateway's fields."""
    junk = [("X-Junkfield", "one"), ("Cookie", "junkfield=b"), ("Forwarded", "for=junkfield"),
            ("X-Forwarded-For", "1.2.3.4"), ("Connection", "keep-alive, X-Junkfield-Hop"), ("X-Junkfield-Hop", "v"),
            ("TE", "trailers"), ("X-Obs", "caf\xe9 \xff junkfield".encode("latin-1"))]  # fmt: skip
    since = route.got.mark()
    status, head, data = route.post(sid, call(3, "echo", {"m": "with-junk"}), junk)
    assert status == 200 and messages_of(head, data)[-1]["result"]["echo"] == {"m": "with-junk"}
    assert [m["params"]["arguments"] for m in route.got.calls(since)] == [{"m": "with-junk"}]
    assert "junkfield" not in route.got.text().lower()
    if route.got.legacy is not None:
        for method, names in route.got.field_names():
            assert names == (LEGACY_POST_FIELDS if method == b"POST" else LEGACY_GET_FIELDS), (method, names)


_SMUGGLED = (b"1\r\nX-Evil: yes\r\n\r\nPOST /messages?session_id=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip


def test_hostile_last_event_id_is_refused_before_any_backend(route, sid):
    """A GET whose Last-Event-ID names a position with CR, LF, NUL or control characters
    for this very backend, or a whole smuggled request: 400 (-32600), and the backend got
    nothing -- no line, no new stream, no POST."""
    streams_before = [h for h, _ in route.got.raw()] if route.got.legacy is not None else None
    since = route.got.mark()
    for form in ("g", "p"):
        for position in (b"1\r\n", b"1\nX: y", b"1\rX", b"a\x00b", b"a\x01b", b"a\x7fb", b" lead", _SMUGGLED):
            lei = encode_event_id(form, {route.name: position})
            (status, _, body), = roundtrip(route.port, request("GET", route.path, fields=[*Route.session(sid), ("Last-Event-ID", lei)]))
            assert status == 400 and orjson.loads(body)["error"]["code"] == -32600, (form, position, body)
    if streams_before is not None:
        assert [h for h, _ in route.got.raw()] == streams_before
    route.sentinel(sid, since, "after-lei")
    assert [m["params"]["arguments"]["m"] for m in route.got.calls(since)] == ["after-lei"]


def test_a_hostile_initialize_reaches_the_backend_as_one_clean_initialize(route):
    """An initialize with a would-be header in its protocol version, line breaks in its
    capability names and client info: the backend's own initialize is one message with a
    version the gateway speaks, the client info as sent, and no capability it invented."""
    since = route.got.mark()
    info = {"name": "t\r\nX-Evil: 2\n", "version": "1\x00\u2028"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18\r\nX-Evil: 1", "capabilities": {"x\r\nX-Evil: 3": {}, "sampling": {}},
        "clientInfo": info}}  # fmt: skip
    (status, head, body), = roundtrip(route.port, request("POST", route.path, encode(init)))
    assert status == 200, body
    clean_head(head)
    version = orjson.loads(body)["result"]["protocolVersion"]
    sid = head.session_id.decode()
    route.sentinel(sid, since, "after-hostile-initialize")
    inits = [m for m in route.got.messages()[since:] if m.get("method") == "initialize"]
    for sent in inits:  # (another session's too, should one have been opened meanwhile)
        assert "\r" not in sent["params"]["protocolVersion"] and "\n" not in sent["params"]["protocolVersion"], sent
        assert not any("\r" in k or "\n" in k for k in sent["params"]["capabilities"]), sent
    ours = [m for m in inits if m["params"]["clientInfo"] == info]
    # The shared child was initialized once, perhaps for an earlier client.
    assert len(ours) <= 1 if route.kind == "stdio-shared" else len(ours) == 1, inits
    for sent in ours:
        assert sent["params"]["protocolVersion"] == version and list(sent["params"]["capabilities"]) == ["sampling"], sent


def test_a_legacy_client_reaches_each_kind_with_nothing_injected(route):
    """A 2024-11-05 client of the route (the gateway's legacy front) with hop-by-hop,
    session and framing fields of its own, a hostile body with raw CR LF between tokens,
    and a forged ``session_id``: the backend gets exactly the intended call, once."""
    from test_adversarial_transports import HOSTILE_FIELDS as HOP_FIELDS, RawLegacy

    key = b"X-API-Key: %s\r\n" % KEYS["mallory"].encode()
    leg = RawLegacy(route.port, f"{route.path}/sse", key)
    try:
        since = route.got.mark()
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2024-11-05\r\nX-Evil: 1", "capabilities": {}, "clientInfo": {"name": "l\r\n"}}}  # fmt: skip
        assert leg.post(key + HOP_FIELDS, encode(init)).startswith(b"HTTP/1.1 202")
        assert "result" in leg.messages(1)[0]
        assert leg.post(key, b'{"jsonrpc":"2.0","method":"notifications/initialized"}').startswith(b"HTTP/1.1 202")
        args = {"m": "legacy-client", "v": "a\r\nX-Evil: 4\r\n\r\n\u2028\x00"}
        body = (b'\r\n{"jsonrpc"\r:\n"2.0",\r\n"id":2,\r"method":"tools/call",\n"params"\r\n:{"name":"echo",'
                b'"arguments":\r\n%s\r\n}}\r\n' % encode(args))  # fmt: skip
        assert leg.post(key + HOP_FIELDS, body).startswith(b"HTTP/1.1 202")
        (answer,) = leg.messages(1)
        assert answer["id"] == 2 and answer["result"]["echo"] == args
        forged = leg.endpoint + b"%0d%0aX-Evil:%201"
        for target in (forged, leg.endpoint.split(b"?")[0] + b"?session_id=%0d%0aPOST%20/"):
            with socket.create_connection(("127.0.0.1", route.port), timeout=10) as s:
                bad = encode(call(3, "echo", {"m": "forged-session"}))
                s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (target, key, len(bad), bad))  # fmt: skip
                (status, _, _), = read_answers(s, 1)
                assert status in (400, 404), status
        assert leg.post(key, encode(call(4, "echo", {"m": "legacy-sentinel"}))).startswith(b"HTTP/1.1 202")
        assert leg.messages(1)[0]["result"]["echo"] == {"m": "legacy-sentinel"}
        calls = route.got.calls(since)
        assert [m["params"]["arguments"] for m in calls] == [args, {"m": "legacy-sentinel"}]
        if route.got.legacy is not None:
            for method, names in route.got.field_names():
                assert names == (LEGACY_POST_FIELDS if method == b"POST" else LEGACY_GET_FIELDS), (method, names)
    finally:
        leg.close()


def test_a_batch_reaches_the_backend_as_one_message_per_element(route):
    """A 2025-03-26 batch of calls with hostile values, a denied call among them: each
    allowed element reaches the backend on its own, as the one message sent; the denied
    one never does; the client gets one answer per request, under its ids."""
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    (status, head, body), = roundtrip(route.port, request("POST", route.path, encode(init)))
    assert status == 200 and orjson.loads(body)["result"]["protocolVersion"] == "2025-03-26", body
    session = [("Mcp-Session-Id", head.session_id.decode())]
    since = route.got.mark()
    one = {"m": "batch-1", "v": "\r\n{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\"}\n"}
    two = {"m": "batch-2", "v": "\u2028\x00\x1b"}
    batch = [call("b\r\n1", "echo", one), call(52, "secret", {"m": "batch-denied"}), call(53, "echo", two)]
    (status, head, body), = roundtrip(route.port, request("POST", route.path, encode(batch), session))
    clean_head(head)
    assert status == 200, body
    got = messages_of(head, body)  # an array, or an event stream of the answers
    answers = {a["id"]: a for a in (got[0] if len(got) == 1 and isinstance(got[0], list) else got)}
    assert len(answers) == 3
    assert answers["b\r\n1"]["result"]["echo"] == one and answers[53]["result"]["echo"] == two
    assert "error" in answers[52]
    assert [m["params"]["arguments"] for m in route.got.calls(since)] in ([one, two], [two, one])


def test_a_session_of_another_route_reaches_nothing(world, route, sid):
    """A session id of this route presented on the routes of the other kinds (each over
    its own backend): 404, and none of those backends got the call."""
    marks = {k: r.got.mark() for k, r in world.items()}
    for other in world.values():
        if other is route:
            continue
        status, _, body = other.post(sid, call(61, "echo", {"m": "crossed-route"}))
        assert status == 404 and orjson.loads(body)["error"]["code"] == -32001, body
    route.echo(sid, "own-route")
    for k, r in world.items():
        assert [m["params"]["arguments"]["m"] for m in r.got.calls(marks[k])] == (["own-route"] if r is route else [])


def test_forged_session_ids_reach_nothing(route, sid):
    """Session ids a client may forge -- the backend's own forms (``shared.<hex>``,
    ``<instance>.<n>``), a long one, one with spaces or obs-text, this session's token
    cut or altered: 404 on POST, GET and DELETE, and the backend got nothing; the real
    session is untouched."""
    forged = ["shared.0123456789abcdef", "shared", f"{instance_id()}.1", f"{instance_id()}.2", "x" * 8000,
              "a b", "caf\xe9".encode("latin-1"), sid[:-1], sid[:-2] + ("A" if sid[-2] != "A" else "B") + sid[-1], sid + "A"]  # fmt: skip
    since = route.got.mark()
    for value in forged:
        fields = [("Mcp-Session-Id", value), ("MCP-Protocol-Version", VERSION)]
        for method, body in (("POST", encode(call(71, "echo", {"m": "forged"}))), ("GET", b""), ("DELETE", b"")):
            (status, _, data), = roundtrip(route.port, request(method, route.path, body, fields))
            assert status in (400, 404), (value, method, status, data)
    route.sentinel(sid, since, "after-forged")
    assert [m["params"]["arguments"]["m"] for m in route.got.calls(since)] == ["after-forged"]


# --- heads: what a backend says --------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION, "2025-11-25"], ids=["json", "resumable"])
def test_a_backends_hostile_output_never_becomes_a_client_field(route, version):
    """Before its answer the backend says: a line that is not JSON (escape sequence,
    NUL), a message with invalid UTF-8, a response to the caller's id with a would-be
    header appended, the caller's id as a string, as a fraction, and followed by
    another id, a response to an id nobody asked, a notification with CR and LF
    in its strings (and for a child, raw CR between its tokens).  The client's answer has
    only the gateway's fields, and the response to its id is the backend's real one --
    also as a resumable (2025-11-25) answer, every event of it numbered."""
    sid = route.open(version=version)
    rid = 4242
    lines = [
        "not json \x1b[2J\x00 at all",
        '{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"\xff\xfe"}}',
        json.dumps({"jsonrpc": "2.0", "id": f"{rid}\r\nX-Evil: id", "result": {"evil": "forged"}}),
        json.dumps({"jsonrpc": "2.0", "id": 987654321, "result": {"evil": "nobody asked"}}),
        json.dumps({"jsonrpc": "2.0", "id": str(rid), "result": {"evil": "the id as a string"}}),
        '{"jsonrpc":"2.0","id":%d.0,"result":{"evil":"the id as a fraction"}}' % rid,
        '{"jsonrpc":"2.0","id":%d,"id":%d,"result":{"evil":"the id twice"}}' % (rid, rid + 1),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "a\r\nX-Evil: note\r\n\r\n"}}),
    ]
    if route.got.legacy is None:
        lines.append('{"jsonrpc":"2.0",\r"method":"notifications/message",\r"params":{"level":"info","data":"raw cr"}}')
    status, head, data = route.post(sid, call(rid, "hostile", {"lines": lines}))
    assert status == 200, data
    msgs = messages_of(head, data)  # strict: each message the client got is JSON
    final = msgs[-1]
    assert final["id"] == rid and final["result"]["echo"] == {"lines": lines}
    assert all("evil" not in json.dumps(m.get("result", {})) or m is final for m in msgs)
    assert not any(m.get("id") in (987654321, f"{rid}\r\nX-Evil: id", str(rid)) for m in msgs)
    assert [m for m in msgs if m.get("id") == rid] == [final]
    # The well-formed notifications reach the client intact, hostile strings and all.
    notes = [m["params"]["data"] for m in msgs if m.get("method") == "notifications/message"]
    assert notes == ["a\r\nX-Evil: note\r\n\r\n"] + (["raw cr"] if route.got.legacy is None else []), notes
    if version != VERSION:
        # Resumable: a priming event, then every message numbered; resuming from the
        # priming event replays the same messages from the record, as cleanly.
        p = SSEParser()
        events = [ev for ev in p.feed(data) + p.feed(b"\n\n") if ev.id is not None or ev.data]
        assert events[0].id and not events[0].data and all(ev.id for ev in events)
        (status, head, again), = roundtrip(route.port, request("GET", route.path, fields=[*Route.session(sid),
                                                                                       ("Last-Event-ID", events[0].id)]))  # fmt: skip
        clean_head(head)
        assert status == 200 and messages_of(head, again) == msgs
    route.echo(sid, "after-hostile-output")


def test_a_legacy_endpoint_with_a_would_be_field_is_refused(tmp_path):
    """A legacy backend whose endpoint event holds a space, a tab, NUL, another host or
    an absolute URL elsewhere: the session is refused (502, naming the backend and why)
    and nothing is POSTed anywhere; an
    endpoint with percent-encoded CR LF is a plain target, sent as it is, and its POSTs
    carry exactly the gateway's fields."""
    endpoints = {
        "space": b"/messages?session_id={n} X-Evil: 1",
        "tab": b"/messages?session_id={n}\tX-Evil: 1",
        "nul": b"/messages?session_id={n}\x00X-Evil",
        "host": b"http://evil.example/messages?session_id={n}",
        "del": b"/messages?session_id={n}\x7f",
        "encoded": b"/messages?x=%0d%0aX-Evil:%201&session_id={n}",
    }
    legacies = {}
    try:
        for name, ep in endpoints.items():
            legacies[name] = LegacyRecorder()
            legacies[name].endpoint = ep
        raw = {"backends": {n: {"transport": "sse", "url": f"http://127.0.0.1:{b.port}/sse", "response_timeout": 5}
                            for n, b in legacies.items()},
               "routes": [{"path": f"/e/{n}", "backends": [n]} for n in legacies], **POLICY}  # fmt: skip
        with GatewayThread(raw) as gt:
            init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
            for name, b in legacies.items():
                (status, head, body), = roundtrip(gt.port, request("POST", f"/e/{name}", init))
                clean_head(head)
                if name != "encoded":
                    err = orjson.loads(body)["error"]
                    assert status == 502 and f"backend {name}: endpoint" in err["message"] and "refused" in err["message"], body
                    assert wait_until(lambda: len(b.requests) >= 1)
                    assert [h.split(b" ", 1)[0] for h, _ in b.requests] == [b"GET"], (name, b.requests)
                    continue
                assert status == 200, body
                r = Route(gt, "sse", None, path=f"/e/{name}")
                sid = head.session_id.decode()
                status, head, data = r.post(sid, call(5, "echo", {"m": "encoded"}))
                assert status == 200 and messages_of(head, data)[-1]["result"]["echo"] == {"m": "encoded"}
                posts = [h for h, _ in b.requests if h.startswith(b"POST ")]
                assert posts and all(h.split(b"\r\n", 1)[0] == b"POST /messages?x=%0d%0aX-Evil:%201&session_id=1 HTTP/1.1"
                                     for h in posts), posts  # fmt: skip
                for h in posts:
                    names = sorted(line.split(b":", 1)[0].lower() for line in h.split(b"\r\n")[1:])
                    assert names == LEGACY_POST_FIELDS
    finally:
        for b in legacies.values():
            b.close()


def test_a_backends_hostile_request_id_goes_back_to_it_as_one_message(route, sid):
    """The backend asks the client something (``ping``) under an id with a would-be
    header and line breaks in it: the client sees an id of the gateway's making, and its
    reply reaches the backend as one message carrying the backend's own id, exactly."""
    hostile_id = "s\r\nX-Evil: 1\n{}"
    ask = json.dumps({"jsonrpc": "2.0", "id": hostile_id, "method": "ping"})
    status, head, data = route.post(sid, call(81, "hostile", {"lines": [ask]}))
    assert status == 200, data
    msgs = messages_of(head, data)
    (asked,) = [m for m in msgs if m.get("method") == "ping"]
    assert asked["id"] != hostile_id
    since = route.got.mark()
    status, _, _ = route.post(sid, {"jsonrpc": "2.0", "id": asked["id"], "result": {}})
    assert status == 202
    route.echo(sid, "after-reply")  # read after the reply: the reply has been read
    assert route.got.messages()[since:] == [{"jsonrpc": "2.0", "id": hostile_id, "result": {}},
                                            *route.got.calls(since)]  # fmt: skip
    assert [m["params"]["arguments"] for m in route.got.calls(since)] == [{"m": "after-reply"}]


@pytest.mark.parametrize("kind", KINDS)
def test_a_backends_hostile_protocol_version_is_refused_and_its_session_ended(kind, tmp_path):
    """A backend whose initialize answer names a protocol version with a would-be header
    in it: the client is told the backend is unavailable (502, the value not shown, only
    the gateway's fields), the half-open backend session does not stay behind (no child of
    its own left running, no legacy stream held), and nothing else is sent to it."""
    hostile = "2025-06-18\r\nX-Evil: 1"

    def prepare(kind: str, table: dict, got) -> None:
        if got.legacy is not None:
            got.legacy.init_version = hostile
        else:
            table["args"] = [*table["args"], "--init-version", hostile]

    with gateway([kind], tmp_path, {"response_timeout": 5}, prepare) as routes:
        route = routes[kind]
        gt, got, end = route.gt, route.got, route.end
        init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
        for _ in range(3):
            (status, head, body), = roundtrip(gt.port, request("POST", route.path, init))
            clean_head(head)
            err = orjson.loads(body)["error"]
            assert status == 502 and "unusable protocolVersion" in err["message"] and "X-Evil" not in err["message"], body

        def held() -> int:
            if got.legacy is not None:
                return gt.call(lambda: len(end.sessions))
            return gt.call(lambda: len([c for c in end.children if not c.stopping]))

        stays = 1 if kind == "stdio-shared" else 0  # the shared child serves everyone: it stays
        assert wait_until(lambda: held() == stays), held()
        # Each refused before its notifications/initialized; the shared child started once.
        want = ["initialize", "notifications/initialized"] if kind == "stdio-shared" else ["initialize"] * 3
        assert wait_until(lambda: [m.get("method") for m in got.messages()] == want), got.messages()
        if got.legacy is not None:
            for method, names in got.field_names():
                assert names == (LEGACY_POST_FIELDS if method == b"POST" else LEGACY_GET_FIELDS), (method, names)


# --- bounds -------------------------------------------------------------------------------------


def test_an_oversized_body_is_refused_and_reaches_no_backend(route, sid):
    """A body one byte over ``max_body_bytes`` (by Content-Length or chunked), with a call
    pipelined behind it: 413, the connection ends, and the backend received neither;
    a body of exactly the limit is served (the bound is where it is said to be)."""
    since = route.got.mark()
    frame = encode(call(21, "echo", {"m": "at-limit", "pad": ""}))
    at_limit = {"m": "at-limit", "pad": "p" * (BODY_LIMIT - len(frame))}
    body = encode(call(21, "echo", at_limit))
    assert len(body) == BODY_LIMIT
    status, head, data = route.post(sid, body)
    assert status == 200 and messages_of(head, data)[-1]["result"]["echo"] == at_limit
    over = encode(call(22, "echo", {"m": "overlmt!", "pad": "p" * (BODY_LIMIT - len(frame) + 1)}))
    assert len(over) == BODY_LIMIT + 1
    behind = request("POST", route.path, encode(call(23, "echo", {"m": "behind-over"})), Route.session(sid))
    answers = roundtrip(route.port, request("POST", route.path, over, Route.session(sid)) + behind, 2)
    assert [a[0] for a in answers] == [413]
    head = request("POST", route.path, b"", [*Route.session(sid), ("Transfer-Encoding", "chunked")]).replace(b"Content-Length: 0\r\n", b"")
    chunked = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(over), over)
    answers = roundtrip(route.port, chunked + behind, 2)
    assert [a[0] for a in answers] == [413]
    route.sentinel(sid, since, "after-oversized")
    assert [m["params"]["arguments"]["m"] for m in route.got.calls(since)] == ["at-limit", "after-oversized"]


def test_an_over_long_message_from_the_backend_fails_that_call_naming_the_backend(route):
    """A child's line over ``max_line_bytes`` (a legacy event over the event limit): the
    call gets a JSON-RPC error naming the backend, and every session -- this one and
    another one -- keeps being served (a new child, a new legacy stream)."""
    a, b = route.open(), route.open()
    route.echo(a, "a-before")
    route.echo(b, "b-before")
    status, head, data = route.post(a, call(31, "long", {"size": 2 * EVENT_LIMIT}))
    assert status == 200, data
    msgs = messages_of(head, data)
    assert msgs[-1]["id"] == 31 and route.name in msgs[-1]["error"]["message"], msgs[-1]
    assert not any(len(json.dumps(m)) > EVENT_LIMIT for m in msgs)
    route.echo(a, "a-after")
    route.echo(b, "b-after")


@pytest.mark.parametrize("kind", KINDS)
def test_one_callers_many_sessions_and_streams_stay_bounded(kind, tmp_path):
    """A backend with room for three children (three legacy streams): one caller opening
    eight sessions never makes it hold more, its oldest sessions still work when it comes
    back to them, and its GET streams are held to ``max_streams_per_session`` and
    ``max_streams_per_principal``; another caller is served throughout."""
    budget = {"max_processes": 3} if kind.startswith("stdio") else {"max_streams": 3}
    limits = {"max_streams_per_session": 1, "max_streams_per_principal": 2}
    held: list[socket.socket] = []
    with gateway([kind], tmp_path, {"response_timeout": 5, **budget}, limits=limits) as routes:
        route = routes[kind]
        gt, got = route.gt, route.got
        try:
            end = route.end

            def live() -> int:
                if got.legacy is not None:
                    return gt.call(lambda: end.pool._streams)
                return gt.call(lambda: len(end.children))

            sessions = []
            for i in range(8):
                sessions.append(route.open())
                route.echo(sessions[-1], f"mallory-{i}")
                assert live() <= 3
            alice = route.open("alice")
            route.echo(alice, "alice-1", who="alice")
            route.echo(sessions[0], "mallory-0-again")  # its backend session was closed to make room
            assert live() <= 3
            if got.legacy is not None:
                assert got.legacy.open_streams() <= 3

            def listen(sid: str, who: str = "mallory") -> bytes:
                s = socket.create_connection(("127.0.0.1", gt.port), timeout=20)
                held.append(s)
                s.sendall(request("GET", route.path, fields=Route.session(sid), who=who))
                return read_response(s).split(b" ", 2)[1]

            assert listen(sessions[-1]) == b"200"
            assert listen(sessions[-1]) == b"429"  # one stream per session
            assert listen(sessions[-2]) == b"200"
            assert listen(sessions[-3]) == b"429"  # two per caller
            assert listen(alice, "alice") == b"200"
            route.echo(alice, "alice-2", who="alice")
            assert live() <= 3
            calls = [m["params"]["arguments"]["m"] for m in got.calls()]
            assert calls == [f"mallory-{i}" for i in range(8)] + ["alice-1", "mallory-0-again", "alice-2"]
        finally:
            for s in held:
                s.close()


def test_a_client_that_leaves_mid_call_leaves_nothing_behind(route, sid):
    """A client sends a slow call and goes away before the answer: the call is dropped
    from the backend's table once its answer comes, the session serves the next call
    with its own answer, and the gateway holds no connection for the one that left."""
    since = route.got.mark()
    s = socket.create_connection(("127.0.0.1", route.port), timeout=20)
    s.sendall(request("POST", route.path, encode(call(41, "sleep", {"seconds": 0.5, "m": "left"})), Route.session(sid)))
    assert wait_until(lambda: any(m["params"]["arguments"].get("m") == "left" for m in route.got.calls(since)))
    s.close()
    # Its id again at once: refused while the left call may still be answered, or
    # answered with its own answer -- never the left call's.
    args = {"m": "reuse-after-leaving", "seconds": 0.1}
    status, head, data = route.post(sid, call(41, "echo" if route.kind.startswith("stdio") else "sleep", args))
    assert messages_of(head, data)[-1].get("result") in (None, {"echo": args}), data
    route.echo(sid, "after-leaving", rid=42)
    gw, end = route.gt.gw, route.end

    def in_flight() -> int:
        if route.got.legacy is not None:
            return sum(len(x.inflight) + len(x.chatty) for x in end.sessions.values())
        return sum(len(c.inflight) for c in end.children)

    assert wait_until(lambda: route.gt.call(in_flight) == 0)
    assert wait_until(lambda: route.gt.call(lambda: len(gw.connections)) == 0)
    route.echo(sid, "after-settling", rid=41)  # its id is free again


# --- logs -------------------------------------------------------------------------------------

SECRETS = {
    "mallory's key": KEYS["mallory"], "alice's key": KEYS["alice"], "invalid key": "k-INVALIDKEY" + "4" * 24,
    "invalid bearer": "BADBEARER" + "3" * 24, "query token": "QUERYTOKEN" + "2" * 20,
    "made-up session": "MADEUPSESSION" + "1" * 20,
    "child env secret": "CHILDENVSECRET" + "9" * 18, "shared child env secret": "SHAREDENVSECRET" + "8" * 17,
    "legacy header": "LEGACYHEADERSECRET" + "7" * 14, "legacy bearer_token": "LEGACYBEARER" + "6" * 20,
}  # fmt: skip
# A name whose control characters would forge a log line, or garble a terminal, if logged raw.
FORGING = "\x1b[2J\r\nFORGED-RECORD level=error\x00\x07\u2028"
# The same as a line a backend prints (its code points are the bytes): not JSON, so logged.
FORGING_LINE = "not json \x1b[2J\rFORGED-RECORD level=error\x00\x07\xff"
TEXT_RECORD = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) mcpfast[\w.]*: "


def _toml(raw: dict) -> str:
    """``raw`` as TOML: a table per top-level key (an array of tables for a list), every
    value inline (a JSON string is a TOML basic string)."""

    def value(v) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    out = []
    for section, body in raw.items():
        for table in body if isinstance(body, list) else [body]:
            out.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            out += [f"{json.dumps(k)} = {value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


def _config_file(tmp_path, port: int, admin: int, fmt: str):
    """A configuration file with a route per kind, each backend holding secrets of the
    kind it can have; the file, the access log and what each backend received."""
    access = tmp_path / "access.log"
    secrets = {"stdio": {"env": {"CHILD_SECRET": SECRETS["child env secret"]}},
               "stdio-shared": {"env": {"SHARED_SECRET": SECRETS["shared child env secret"]}},
               "sse": {"bearer_token": SECRETS["legacy bearer_token"], "headers": {"X-Backend-Secret": SECRETS["legacy header"]}}}  # fmt: skip
    backends, got = {}, {}
    for kind in KINDS:
        backends[kind.replace("-", "_")], got[kind] = backend(kind, tmp_path, **secrets[kind])
    auth = {**POLICY["auth"], "api_keys": {**POLICY["auth"]["api_keys"], "header": "X-API-Key"}}
    raw = {"server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"},
           "log": {"access_log": str(access), "level": "debug", "format": fmt}, **POLICY, "auth": auth,
           "backends": backends, "routes": [{"path": f"/k/{k}", "backends": [k.replace("-", "_")]} for k in KINDS]}  # fmt: skip
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_toml(raw))
    return cfg, access, got


def _drive(port: int, path: str) -> dict:
    """Every kind of request a client can make on one route, secrets planted all over;
    returns what the positive controls need."""
    r = Route(None, path.rpartition("/")[2], None, port=port)
    sid = r.open()
    r.echo(sid, "plain")
    status, head, data = r.post(sid, call(2, "env", {}))  # the child's own environment, to this client only
    env_answer = messages_of(head, data)[-1]
    for cred in ([("X-API-Key", SECRETS["invalid key"])], [("Authorization", f"Bearer {SECRETS['invalid bearer']}")]):
        raw = request("POST", path, encode(call(3, "echo", {"m": "x"})), [*Route.session(sid), *cred], who=None)
        assert roundtrip(port, raw)[0][0] == 401
    for q in (f"?access_token={SECRETS['query token']}", f"?api_key={SECRETS['query token']}", f"?{SECRETS['query token']}"):
        roundtrip(port, request("POST", path + q, encode(call(4, "echo", {"m": "q"})), Route.session(sid)))
    made_up = [("Mcp-Session-Id", SECRETS["made-up session"]), ("MCP-Protocol-Version", VERSION)]
    assert roundtrip(port, request("POST", path, encode(call(5, "echo", {"m": "x"})), made_up))[0][0] == 404
    assert roundtrip(port, request("GET", path, fields=made_up))[0][0] == 404
    assert r.post(sid, call(6, "secret", {}))[0] == 403
    # Hostile names: over-long (refused before anything records them), with control
    # characters, and many distinct valid ones.
    assert r.post(sid, call(7, "n" * 5000, {}))[0] == 400
    assert r.post(sid, {"jsonrpc": "2.0", "id": 8, "method": "x" * 5000})[0] == 400
    assert r.post(sid, call(9, FORGING, {}))[0] == 200
    assert r.post(sid, {"jsonrpc": "2.0", "id": 10, "method": FORGING})[0] == 200  # -32601, named in the body only
    assert r.post(sid, call(11, "hostile", {"lines": [FORGING_LINE]}))[0] == 200
    for i in range(60):
        assert r.post(sid, call(100 + i, f"tool.{i:03d}_" + "v" * 100, {}))[0] == 200
    lei = encode_event_id("g", {r.name: FORGING.encode()})
    assert roundtrip(port, request("GET", path, fields=[*Route.session(sid), ("Last-Event-ID", lei)]))[0][0] == 400
    assert roundtrip(port, request("DELETE", path, fields=Route.session(sid)))[0][0] == 200
    return {"session": sid, "env": env_answer}


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_secret_and_no_raw_hostile_name_reaches_any_output(tmp_path, fmt):
    """A real ``mcpfast serve`` with a stdio child holding an ``env`` secret, a shared one,
    and a legacy backend with a configured header and bearer token, driven with every
    secret a client can plant and with hostile names: no secret appears in its log, its
    access log, ``/metrics`` or ``check-config``; hostile names appear bounded, escaped,
    and never as a record of their own."""
    port, admin = free_port(), free_port()
    cfg, access, got = _config_file(tmp_path, port, admin, fmt)
    legacy = got["sse"].legacy
    proc = subprocess.Popen([sys.executable, "-m", "mcpfast", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    seen = {}
    try:
        wait_port(port)
        wait_port(admin)
        for kind in KINDS:
            seen[kind] = _drive(port, f"/k/{kind}")
        (status, _, metrics), = roundtrip(admin, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 200 and b"mcpfast_requests_total" in metrics
    finally:
        out, err = stop_process(proc)
        legacy.close()
    assert proc.returncode == 0, err[-3000:]
    from click.testing import CliRunner

    from mcpfast.cli import main

    checked = CliRunner().invoke(main, ["check-config", str(cfg)])
    assert checked.exit_code == 0, checked.output
    # The secrets did get where they belong: each child its environment, the legacy
    # backend its fields, on every request.
    assert seen["stdio"]["env"]["result"]["env"]["CHILD_SECRET"] == SECRETS["child env secret"]
    assert seen["stdio-shared"]["env"]["result"]["env"]["SHARED_SECRET"] == SECRETS["shared child env secret"]
    heads = [h for h, _ in legacy.requests]
    assert heads and all(SECRETS["legacy header"].encode() in h and SECRETS["legacy bearer_token"].encode() in h for h in heads)
    outputs = {"log": err, "stdout": out, "access log": access.read_bytes(), "/metrics": metrics,
               "check-config": checked.output.encode()}  # fmt: skip
    secrets = {**SECRETS, **{f"{k} session": v["session"] for k, v in seen.items()}}
    for where, data in outputs.items():
        # A key's configured digest is the operator's to see in check-config, not in logs.
        more = {} if where == "check-config" else {"key sha256": _sha(KEYS["mallory"])}
        for what, secret in {**secrets, **more}.items():
            assert secret.encode() not in data, f"{what} found in {where}"
    # Hostile names: never raw, never a record of their own, bounded.
    assert len(access.read_bytes().splitlines()) > 3 * 70
    assert err.count(b"dropped a line that is not a JSON-RPC message") == 2  # each child's, escaped
    assert err.count(b"FORGED-RECORD") == 2
    for where, data in outputs.items():
        assert b"\x1b" not in data and b"\x00" not in data and b"\x07" not in data, where
        assert b"\nFORGED-RECORD" not in data.replace(b"\r", b"\n"), where
        assert max((len(line) for line in data.splitlines()), default=0) < 4096, where
    for line in err.decode().splitlines():
        if fmt == "json":
            assert isinstance(json.loads(line), dict), line
        else:
            assert re.match(TEXT_RECORD, line) or line.startswith(("Traceback", " ", "During", "The above")), line
    tools = [json.loads(line)["tool"] for line in access.read_bytes().splitlines()]
    assert all(t is None or re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", t) for t in tools), set(tools)
    assert tools.count("other") >= 3 and tools.count("tool.059_" + "v" * 100) == 3  # recorded, as labels
    assert b'tool="tool.059_' + b"v" * 100 + b'"' in metrics and b"FORGED" not in metrics
    shown = json.loads(checked.output[checked.output.index("{"):])["backends"]
    assert shown["stdio"]["env"] == {"CHILD_SECRET": "<redacted>"}


# --- configuration: what reaches an exec call or a head is checked at load --------------------


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"transport": "stdio", "command": "py\x00thon"}, "backends.b.command"),
        ({"transport": "stdio", "command": "py\nthon"}, "backends.b.command"),
        ({"transport": "stdio", "args": ["a\x00b"]}, "backends.b.args[0]"),
        ({"transport": "stdio", "env": {"A=B": "v"}}, "backends.b.env.A=B"),
        ({"transport": "stdio", "env": {"A\nB": "v"}}, "backends.b.env.A\nB"),
        ({"transport": "stdio", "env": {"A": "v\x00"}}, "backends.b.env.A"),
        ({"transport": "stdio", "cwd": "/tmp\n/x"}, "backends.b.cwd"),
        ({"transport": "sse", "headers": {"X-A": "v\r\nX-B: w"}}, "backends.b.headers.X-A"),
        ({"transport": "sse", "headers": {"X A": "v"}}, "backends.b.headers.X A"),
        ({"transport": "sse", "url": "http://127.0.0.1:1/sse\r\nX-B: w"}, "backends.b.url"),
        ({"transport": "sse", "url": "http://127.0.0.1:1/s se"}, "backends.b.url"),
        ({"transport": "sse", "bearer_token": "a b"}, "backends.b.bearer_token"),
    ],
)
def test_config_refuses_what_cannot_go_into_an_exec_or_a_head(kw, key):
    from mcpfast.config import ConfigError, build_config

    table = {"command": sys.executable} if kw["transport"] == "stdio" else {"url": "http://127.0.0.1:1/sse"}
    with pytest.raises(ConfigError) as ei:
        build_config({"backends": {"b": {**table, **kw}}})
    assert ei.value.key == key


# --- more bounds ---------------------------------------------------------------------------------


def test_pipelined_calls_are_answered_in_order_each_reaching_the_backend_once(route, sid):
    """Five calls written at once on one connection: five answers in order, each its
    own, and each call reached the backend exactly once."""
    since = route.got.mark()
    raw = b"".join(request("POST", route.path, encode(call(90 + i, "echo", {"m": f"pipe-{i}"})), Route.session(sid))
                   for i in range(5))  # fmt: skip
    answers = roundtrip(route.port, raw, 5)
    assert [(a[0], messages_of(a[1], a[2])[-1]["id"]) for a in answers] == [(200, 90 + i) for i in range(5)]
    assert [messages_of(a[1], a[2])[-1]["result"]["echo"]["m"] for a in answers] == [f"pipe-{i}" for i in range(5)]
    assert [m["params"]["arguments"]["m"] for m in route.got.calls(since)] == [f"pipe-{i}" for i in range(5)]


def test_a_half_closed_get_stream_gives_everything_back(route, sid):
    """A client half-closes its GET stream: the backend side lets go of it (no listener
    left on the child or the legacy session), the caller's stream quota is given back,
    and the session keeps serving."""
    gw, end = route.gt.gw, route.end

    def listeners() -> int:
        if route.got.legacy is not None:
            return sum(s.listener is not None and not s.listener.done for s in end.sessions.values())
        if route.kind == "stdio-shared":
            return len(end.listeners)
        return sum(len(c.listeners) for c in end.children)

    before = route.gt.call(listeners)
    s = socket.create_connection(("127.0.0.1", route.port), timeout=20)
    try:
        s.sendall(request("GET", route.path, fields=Route.session(sid)))
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        assert wait_until(lambda: route.gt.call(listeners) == before + 1)
        s.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: route.gt.call(listeners) == before, 5)
        assert wait_until(lambda: route.gt.call(lambda: dict(gw.quota.streams)) == {}, 5)
    finally:
        s.close()
    route.echo(sid, "after-half-close")


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_past_its_deadline_fails_and_the_request_behind_it_is_served(kind, tmp_path):
    """A call the backend answers only after ``response_timeout``, with a request
    pipelined behind it on the same connection: the first gets an error naming the
    backend, the second its answer.  A call reusing the late call's id before the late
    answer came is refused or gets its own answer, never the late one; once the backend
    is free the session serves calls again."""
    with gateway([kind], tmp_path, {"response_timeout": 1}) as routes:
        route = routes[kind]
        gt, name = route.gt, route.name
        sid = route.open()
        raw = (request("POST", route.path, encode(call(1, "sleep", {"seconds": 1.5})), Route.session(sid))
               + request("POST", route.path, encode({"jsonrpc": "2.0", "id": 2, "method": "ping"}), Route.session(sid)))  # fmt: skip
        first, second = roundtrip(gt.port, raw, 2)
        late = messages_of(first[1], first[2])[-1]
        assert first[0] in (200, 504) and late["id"] == 1 and name in late["error"]["message"], late
        assert second[0] == 200 and messages_of(second[1], second[2]) == [{"jsonrpc": "2.0", "id": 2, "result": {}}]
        # A child reads one line at a time: its echo is answered after the late call.
        args = {"m": "reuse", "seconds": 0.5}
        status, head, data = route.post(sid, call(1, "echo" if kind.startswith("stdio") else "sleep", args))
        reuse = messages_of(head, data)[-1]
        assert reuse["id"] == 1 and reuse.get("result") in (None, {"echo": args}), reuse

        def served() -> bool:
            status, head, data = route.post(sid, call(1, "echo", {"m": "after-deadline"}))  # the late call's id
            return status == 200 and messages_of(head, data)[-1].get("result") == {"echo": {"m": "after-deadline"}}

        assert wait_until(served)


def test_an_answer_crossing_a_cancellation_never_reaches_a_request_reusing_its_id(route, sid):
    """A client cancels a slow call and at once reuses its id: the backend (which answers
    the cancelled call anyway, as a cancellation may arrive too late) never has that
    answer handed to the new request -- it is refused, or answered with its own."""
    s = socket.create_connection(("127.0.0.1", route.port), timeout=20)
    try:
        since = route.got.mark()
        s.sendall(request("POST", route.path, encode(call(5, "sleep", {"seconds": 1, "m": "cancelled"})), Route.session(sid)))
        assert wait_until(lambda: [m["params"]["arguments"].get("m") for m in route.got.calls(since)] == ["cancelled"])
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5, "reason": "no"}}
        assert route.post(sid, cancel)[0] == 202
        args = {"m": "reuse-after-cancel", "seconds": 0.5}
        status, head, data = route.post(sid, call(5, "echo" if route.kind.startswith("stdio") else "sleep", args))
        assert messages_of(head, data)[-1].get("result") in (None, {"echo": args}), data
    finally:
        s.close()
    route.echo(sid, "after-cancel", rid=6)


def test_the_ids_of_given_up_requests_are_kept_within_a_bound():
    """A backend that never answers what timed out: the ids kept for it stay within
    ``MAX_LATE_IDS``, the oldest forgotten first."""
    from mcpfast.transport.messages import MAX_LATE_IDS, keep_late

    table: dict = {}
    for i in range(MAX_LATE_IDS + 10):
        keep_late(table, i)
    assert list(table) == list(range(10, MAX_LATE_IDS + 10))


# --- property: whatever a client sends, the backend gets exactly the message it meant ------------

# Tools the fixtures give a meaning of their own (they sleep, print, ask): not called here.
_SPECIAL = {"secret", "env", "long", "hostile", "notify", "ask", "changed", "sleep", "stats"}
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_ids = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(2**64, 2**80), _text)
_separators = st.tuples(st.sampled_from([",", ", ", ",\r\n", ",\n\t", "\r,\r", "\n,"]),
                        st.sampled_from([":", ": ", "\r\n:\r\n", "\t:\n", "\r:"]))  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_property_the_backend_gets_exactly_the_message_sent(route, sid, data):
    name = data.draw(st.one_of(st.just("echo"), _text.filter(lambda n: n and n not in _SPECIAL)), label="name")
    args = data.draw(st.dictionaries(_text, st.one_of(_text, st.integers(-(2**53), 2**53), st.booleans(), st.none()),
                                     max_size=4), label="args")  # fmt: skip
    rid = data.draw(_ids, label="id")
    separators = data.draw(_separators, label="separators")
    lead, trail = data.draw(st.sampled_from(["", " ", "\r\n", "\n\t"])), data.draw(st.sampled_from(["", "\n", "\r\n \r"]))
    body = (lead + json.dumps(call(rid, name, args), ensure_ascii=False, separators=separators) + trail).encode()
    since = route.got.mark()
    status, head, answer = route.post(sid, body)
    assert status == 200, answer
    msg = messages_of(head, answer)[-1]
    assert msg["id"] == rid and msg["result"] == {"echo": args}, (msg, args)
    (got,) = route.got.calls(since)
    assert got["params"] == {"name": name, "arguments": args}
    if route.kind != "stdio-shared":
        assert got["id"] == rid
