"""OPTIONS, CORS and list caching, judged by what the backends received and by what each
client got.

* OPTIONS is answered by the gateway: the backend never sees one (its bytes, parsed with
  the gateway's own strict request parser, hold no OPTIONS), with or without
  authentication configured, on passthrough and multiplexed routes.
* CORS: a preflight from an allowed origin gets the CORS fields, one from another origin
  none; answers to an allowed origin carry ``Access-Control-Allow-Origin`` (once: the
  backend's own is dropped).
* List caching on a multiplexed route: a backend that offers tools by the client's
  declared capabilities (as ``@modelcontextprotocol/server-everything`` does for
  sampling, elicitation and roots) -- each client gets the list the backend gives a
  session with its capabilities, in the default mode and in ``shared`` mode, and a
  backend restarted with other tools is served fresh.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import orjson
import pytest

from gwutil import GatewayThread
from mcpfast.config import ConfigError, build_config
from http_events import HeadList
from mcpfast.wire.core import RequestParser
from rawbackend import read_request, read_response

API_KEY = "ops-test-key-0123456789"
ALL_CAPS = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}


# ---------------------------------------------------------------------------------
# A backend whose tool list depends on the client's capabilities


_Requests = HeadList


class CapsBackend:
    """A session-era MCP server on raw sockets.  ``initialize`` opens a session and keeps
    the client's capabilities; ``tools/list`` answers ``base_tools`` plus ``sample``,
    ``elicit`` and ``roots`` when the session's client declared sampling, elicitation,
    roots; ``tools/call grow`` adds a tool for everyone and answers on SSE with
    ``notifications/tools/list_changed`` first.  ``close`` ends every connection (a
    restart: a new instance on the same port knows no session).  Every byte received is
    kept, to be parsed with the strict parser."""

    def __init__(self, port: int = 0, base_tools=("base",), version: str = "1", counted_ids: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.base_tools = list(base_tools)
        self.version = version
        self.counted_ids = counted_ids  # session ids s1, s2, ...: a restart hands them out again
        self.sessions: dict[bytes, dict] = {}
        self.methods: list[str] = []
        self.raw: list[bytearray] = []
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def tools_for(self, caps: dict) -> list[str]:
        extra = [t for t, c in (("sample", "sampling"), ("elicit", "elicitation"), ("roots", "roots")) if c in caps]
        return self.base_tools + extra

    def count(self, method: str) -> int:
        return self.methods.count(method)

    def strict_heads(self) -> list:
        out = []
        for raw in self.raw:
            h = _Requests()
            RequestParser(h).feed(bytes(raw))
            out += h.heads
        return out

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raw = bytearray()
        self.raw.append(raw)

        class Tap:  # keeps every byte read for the strict parser
            def recv(self, n):
                d = conn.recv(n)
                raw.extend(d)
                return d

        try:
            while not self.stop.is_set():
                req = read_request(Tap())
                if req is None or self.stop.is_set():
                    return
                self._answer(conn, *req)
        except OSError:
            pass
        finally:
            conn.close()

    def _answer(self, conn, head: bytes, body: bytes) -> None:
        method_line = head.split(b"\r\n", 1)[0]
        if not method_line.startswith(b"POST "):
            self.methods.append(method_line.split(b" ", 1)[0].decode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n")
            return
        sid = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"mcp-session-id":
                sid = v.strip()
        msg = orjson.loads(body)
        method = msg.get("method")
        self.methods.append(method)
        if method == "initialize":
            if self.counted_ids:
                sid = b"s%d" % (len(self.sessions) + 1)
            else:
                sid = os.urandom(8).hex().encode()  # never one an earlier instance gave
            self.sessions[sid] = msg["params"].get("capabilities") or {}
            result = {"protocolVersion": msg["params"]["protocolVersion"],
                      "capabilities": {"tools": {"listChanged": True}},
                      "serverInfo": {"name": "caps", "version": self.version}}  # fmt: skip
            self._json(conn, {"jsonrpc": "2.0", "id": msg["id"], "result": result}, sid)
            return
        if sid not in self.sessions:
            self._json(conn, {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "Session not found"}},
                       None, b"404 Not Found")  # fmt: skip
            return
        if "id" not in msg:
            conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            return
        if method == "tools/list":
            tools = [{"name": t, "inputSchema": {"type": "object"}} for t in self.tools_for(self.sessions[sid])]
            self._json(conn, {"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": tools}}, sid)
            return
        name = (msg.get("params") or {}).get("name")
        if name == "grow":
            self.base_tools.append(f"grown{len(self.base_tools)}")
            events = [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
                      {"jsonrpc": "2.0", "id": msg["id"], "result": {"content": []}}]  # fmt: skip
            data = b"".join(b"event: message\ndata: %s\n\n" % orjson.dumps(e) for e in events)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(data), data))  # fmt: skip
            return
        self._json(conn, {"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [{"type": "text", "text": str(name)}]}}, sid)

    def _json(self, conn, obj, sid, status=b"200 OK") -> None:
        body = orjson.dumps(obj)
        conn.sendall(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sAccess-Control-Allow-Origin: *\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, b"Mcp-Session-Id: %s\r\n" % sid if sid else b"", len(body), body)
        )

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
        self.thread.join(2)


@pytest.fixture
def caps_backends():
    made: list[CapsBackend] = []

    def make(*a, **kw) -> CapsBackend:
        b = CapsBackend(*a, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# ---------------------------------------------------------------------------------
# Raw HTTP helpers


def _fields(resp: bytes) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for line in resp.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        out.setdefault(k.strip().lower(), []).append(v.strip())
    return out


def _status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def _exchange(port: int, method: str, path: str = "/mcp", headers: dict | None = None, body: bytes = b"") -> bytes:
    hs = {"Host": "127.0.0.1", **(headers or {})}
    if body or method == "POST":
        hs.setdefault("Content-Type", "application/json")
        hs.setdefault("Accept", "application/json, text/event-stream")
        hs["Content-Length"] = str(len(body))
    raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in hs.items()) + b"\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        if method == "OPTIONS":
            # A 204 has no Content-Length: read its head only.
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
            return buf
        return read_response(s)


def _rpc(resp: bytes) -> dict:
    body = resp.partition(b"\r\n\r\n")[2]
    if body.startswith(b"event:") or b"\ndata: " in body:
        for line in body.split(b"\n"):
            if line.startswith(b"data: ") and b'"id"' in line:
                return orjson.loads(line[6:])
    return orjson.loads(body)


class McpClient:
    """One MCP session over raw HTTP (what the backend and the gateway see is exact)."""

    def __init__(self, port: int, caps: dict, path: str = "/mcp", headers: dict | None = None) -> None:
        self.port = port
        self.path = path
        self.headers = headers or {}
        init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": caps, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
        resp = _exchange(port, "POST", path, self.headers, init)
        assert _status(resp) == 200, resp
        self.sid = _fields(resp)[b"mcp-session-id"][0].decode()
        self.last = resp
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self._id = 0

    def post(self, msg: dict) -> bytes:
        h = {**self.headers, "Mcp-Session-Id": self.sid, "MCP-Protocol-Version": "2025-06-18"}
        self.last = _exchange(self.port, "POST", self.path, h, orjson.dumps(msg))
        return self.last

    def request(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        msg = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params is not None:
            msg["params"] = params
        return _rpc(self.post(msg))

    def tools(self) -> set[str]:
        return {t["name"] for t in self.request("tools/list")["result"]["tools"]}


# ---------------------------------------------------------------------------------
# OPTIONS


def _options_never_forwarded(backend: CapsBackend) -> None:
    assert not any(h.method == b"OPTIONS" for h in backend.strict_heads())
    assert "OPTIONS" not in backend.methods


@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
def test_options_answered_by_gateway_never_forwarded(caps_backends, auth):
    be = caps_backends()
    raw = {"backends": {"only": {"url": be.url}}}
    if auth:
        raw["auth"] = {"mode": "required", "api_keys": {"keys": [
            {"sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "subject": "ops"}]}}  # fmt: skip
    with GatewayThread(raw) as gt:
        resp = _exchange(gt.port, "OPTIONS", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert _status(resp) == 204
        f = _fields(resp)
        assert set(f[b"allow"][0].split(b", ")) == {b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS"}
        assert b"content-length" not in f  # a 204 announces no content
        assert not any(k.startswith(b"access-control-") for k in f)  # no [cors]: no CORS fields
        # The connection stays usable, and a normal request still reaches the backend.
        hdrs = {"Authorization": f"Bearer {API_KEY}"} if auth else {}
        c = McpClient(gt.port, {}, headers=hdrs)
        assert c.tools() == {"base"}
    _options_never_forwarded(be)
    assert be.count("initialize") == 1  # the backend saw the client, not the preflight


def test_options_on_multiplexed_route(caps_backends):
    a, b = caps_backends(), caps_backends()
    raw = {"backends": {"a": {"url": a.url}, "b": {"url": b.url}}, "routes": [{"path": "/mcp", "backends": ["a", "b"]}]}
    with GatewayThread(raw) as gt:
        resp = _exchange(gt.port, "OPTIONS")
        assert _status(resp) == 204
        assert set(_fields(resp)[b"allow"][0].split(b", ")) == {b"GET", b"POST", b"DELETE", b"OPTIONS"}
    for be in (a, b):
        _options_never_forwarded(be)
        assert be.methods == []


CORS = {"allow_origins": ["https://app.example", "http://localhost:5173"]}


def test_cors_preflight_allowed_and_refused_origins(caps_backends):
    be = caps_backends()
    with GatewayThread({"backends": {"only": {"url": be.url}}, "cors": CORS}) as gt:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, mcp-session-id"}
        ok = _exchange(gt.port, "OPTIONS", headers={"Origin": "https://app.example", **pre})
        assert _status(ok) == 204
        f = _fields(ok)
        assert f[b"access-control-allow-origin"] == [b"https://app.example"]
        assert b"POST" in f[b"access-control-allow-methods"][0]
        allowed = {h.strip().lower() for h in f[b"access-control-allow-headers"][0].split(b",")}
        assert {b"mcp-session-id", b"mcp-protocol-version", b"authorization", b"last-event-id", b"content-type"} <= allowed
        assert f[b"access-control-max-age"] == [b"600"]
        assert b"origin" in f[b"vary"][0].lower()
        # An origin CORS does not name -- not even one the Origin check lets through
        # (localhost by default) -- gets no CORS field; an unknown one is refused.
        for origin, status in (("http://localhost:3000", 204), ("https://evil.example", 403)):
            r = _exchange(gt.port, "OPTIONS", headers={"Origin": origin, **pre})
            assert _status(r) == status
            assert not any(k.startswith(b"access-control-") for k in _fields(r))
    _options_never_forwarded(be)
    assert be.methods == []


def test_cors_fields_on_answers_passthrough(caps_backends):
    be = caps_backends()
    with GatewayThread({"backends": {"only": {"url": be.url}}, "cors": CORS}) as gt:
        c = McpClient(gt.port, {}, headers={"Origin": "https://app.example"})
        # initialize's answer (relayed from the backend): the gateway's origin, once --
        # the backend's own "*" is dropped -- and the session id readable by the page.
        for resp in (c.last, c.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})):
            f = _fields(resp)
            assert f[b"access-control-allow-origin"] == [b"https://app.example"]
            assert b"Mcp-Session-Id" in f[b"access-control-expose-headers"][0]
        # A refusal made by the gateway carries them too (the page can read the error).
        bad = _exchange(gt.port, "POST", headers={"Origin": "https://app.example"}, body=b"{")
        assert _status(bad) == 400 and _fields(bad)[b"access-control-allow-origin"] == [b"https://app.example"]
        # An origin allowed to call but not named by CORS, and no origin at all: none.
        for hdrs in ({"Origin": "http://localhost:3000"}, {}):
            other = McpClient(gt.port, {}, headers=hdrs)
            assert not any(k.startswith(b"access-control-") for k in _fields(other.last))
    assert be.count("initialize") == 3


def test_cors_fields_on_answers_multiplexed(caps_backends):
    a, b = caps_backends(), caps_backends()
    raw = {"backends": {"a": {"url": a.url}, "b": {"url": b.url}}, "routes": [{"path": "/mcp", "backends": ["a", "b"]}],
           "cors": CORS}  # fmt: skip
    with GatewayThread(raw) as gt:
        c = McpClient(gt.port, {}, headers={"Origin": "http://localhost:5173"})
        answers = [c.last, c.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
                   c.post({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "a__base"}})]  # fmt: skip
        assert _rpc(answers[2])["result"]["content"][0]["text"] == "base"
        for resp in answers:
            assert _fields(resp)[b"access-control-allow-origin"] == [b"http://localhost:5173"]
    assert a.count("tools/call") == 1


@pytest.mark.parametrize(
    "cors, key",
    [
        ({"allow_headers": ["Mcp-Session-Id\r\nX-Injected: 1"]}, "cors.allow_headers[0]"),
        ({"expose_headers": ["Mcp-Session-Id", "bad header"]}, "cors.expose_headers[1]"),
        ({"allow_origins": ["https://app.example\r\nX-Injected: 1"]}, "cors.allow_origins[0]"),
        ({"allow_origins": ["https://app.example/path"]}, "cors.allow_origins[0]"),
        ({"max_age": -1}, "cors.max_age"),
        ({"allow_credentials": True, "allow_origins": ["*"]}, "cors.allow_credentials"),
        ({"allow_origin": []}, "cors.allow_origin"),
    ],
)
def test_cors_config_values_are_validated(cors, key):
    with pytest.raises(ConfigError) as ei:
        build_config({"backends": {"a": {"url": "http://127.0.0.1:9/mcp"}}, "cors": cors})
    assert ei.value.key == key


# ---------------------------------------------------------------------------------
# List caching on a multiplexed route


def _mux(a: CapsBackend, b: CapsBackend, **route) -> dict:
    return {
        "backends": {"a": {"url": a.url}, "b": {"url": b.url}},
        "routes": [{"path": "/mcp", "backends": ["a", "b"], **route}],
    }


def _expected(be: CapsBackend, prefix: str, caps: dict) -> set[str]:
    return {f"{prefix}__{t}" for t in be.tools_for(caps)}


@pytest.mark.parametrize("mode", [None, "shared"], ids=["default", "shared"])
def test_each_client_gets_the_list_for_its_capabilities(caps_backends, mode):
    a, b = caps_backends(), caps_backends(base_tools=("other",))
    with GatewayThread(_mux(a, b, **({"list_cache": mode} if mode else {}))) as gt:
        plain = McpClient(gt.port, {})
        rich = McpClient(gt.port, ALL_CAPS)
        some = McpClient(gt.port, {"sampling": {}})
        for c, caps in ((plain, {}), (rich, ALL_CAPS), (some, {"sampling": {}}), (plain, {})):
            assert c.tools() == _expected(a, "a", caps) | _expected(b, "b", caps)
        # And each may call what it was shown.
        assert rich.request("tools/call", {"name": "a__elicit"})["result"]["content"][0]["text"] == "elicit"
        lists = a.count("tools/list")
        # The cache is still a cache: a client like one already served is answered from it
        # in shared mode (the backend sees no new tools/list), from its own session's
        # first fetch in the default mode.
        again = McpClient(gt.port, {"sampling": {}})
        assert again.tools() == _expected(a, "a", {"sampling": {}}) | _expected(b, "b", {"sampling": {}})
        assert again.tools() == _expected(a, "a", {"sampling": {}}) | _expected(b, "b", {"sampling": {}})
        assert a.count("tools/list") == lists + (0 if mode == "shared" else 1)


@pytest.mark.parametrize("mode", [None, "shared"], ids=["default", "shared"])
def test_list_changed_reaches_clients_of_every_capability_set(caps_backends, mode):
    a, b = caps_backends(), caps_backends()
    with GatewayThread(_mux(a, b, **({"list_cache": mode} if mode else {}))) as gt:
        plain, rich = McpClient(gt.port, {}), McpClient(gt.port, ALL_CAPS)
        assert "a__base" in plain.tools() and "a__sample" in rich.tools()
        # The backend grows a tool and says so on plain's call.
        plain.request("tools/call", {"name": "a__grow"})
        grown = f"a__grown{len(a.base_tools) - 1}"
        if mode == "shared":
            assert grown in rich.tools()  # a list_changed from any session clears every key
        assert grown in plain.tools()
        assert rich.tools() - plain.tools() == {"a__sample", "a__elicit", "a__roots", "b__sample", "b__elicit", "b__roots"}


def _restart(old: CapsBackend, make, **kw) -> CapsBackend:
    port = old.port
    old.close()
    return make(port, **kw)


@pytest.mark.parametrize("mode", [None, "shared"], ids=["default", "shared"])
def test_backend_restart_with_new_tools_is_served_fresh(caps_backends, mode):
    a, b = caps_backends(), caps_backends()
    with GatewayThread(_mux(a, b, **({"list_cache": mode} if mode else {}))) as gt:
        x = McpClient(gt.port, {})
        assert x.tools() == {"a__base", "b__base"}
        # The backend restarts with another tool set and the same identity: it knows no
        # session any more.
        a2 = _restart(a, caps_backends, base_tools=("fresh",))
        if mode is None:
            # A new client gets a new backend session, and its lists.
            assert McpClient(gt.port, {}).tools() == {"a__fresh", "b__base"}
        # x's next request finds its backend session gone; the gateway opens another and
        # nothing listed before the restart is served again, to x or anyone.
        assert x.request("tools/call", {"name": "a__base"})["result"]["content"][0]["text"] == "base"
        assert x.tools() == {"a__fresh", "b__base"}
        assert McpClient(gt.port, ALL_CAPS).tools() == _expected(a2, "a", ALL_CAPS) | _expected(b, "b", ALL_CAPS)
        # A restart that changes the backend's identity (its initialize answer) is seen
        # by the first new session, even with no old session to notice it.
        a3 = _restart(a2, caps_backends, base_tools=("newer",), version="2")
        assert McpClient(gt.port, {}).tools() == {"a__newer", "b__base"}
        assert a3.count("tools/list") >= 1


def test_restarted_backend_reusing_a_session_id_is_not_served_the_old_list(caps_backends):
    """A backend that numbers its sessions hands a new client, after a restart, the id an
    old client's backend session had: the cache must not take one for the other."""
    a, b = caps_backends(counted_ids=True), caps_backends()
    with GatewayThread(_mux(a, b)) as gt:
        assert McpClient(gt.port, {}).tools() == {"a__base", "b__base"}  # backend session s1
        a2 = _restart(a, caps_backends, base_tools=("fresh",), counted_ids=True)
        assert McpClient(gt.port, {}).tools() == {"a__fresh", "b__base"}  # s1 again, another session
        assert a2.count("tools/list") == 1
