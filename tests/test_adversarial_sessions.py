"""Session binding under attack, on authenticated passthrough routes.

The client's ``Mcp-Session-Id`` is the backend's id sealed with the principal and the
route (``mcpfast/policy/sessions.py``).  These tests play the thief: a flood of sessions
from another principal, forged and unsealed ids, another route's id.  Each is judged by
what the raw backend received -- every request it got is parsed with the gateway's own
strict request parser and its session id read from there -- and by what the owner of
the session still gets.  The last tests run the real MCP Python SDK, client and server,
through an authenticated passthrough route.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time

import anyio
import httpx
import httpx2
import orjson
import pytest

from gwutil import ROOT, GatewayThread, backend_process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from http_events import HeadList
from mcpfast.wire.core import RequestParser
from mcpfast.policy.sessions import TAG_CHARS
from rawbackend import RawBackend

KEYS = {"alice": "mk_alice_0123456789abcdef0123456789", "bob": "mk_bob_0123456789abcdef0123456789ab"}
VERSION = "2025-06-18"
INIT = orjson.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
})  # fmt: skip
CALL = orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "n", "arguments": {}}})


def _auth(**extra) -> dict:
    keys = [{"sha256": hashlib.sha256(k.encode()).hexdigest(), "subject": s} for s, k in KEYS.items()]
    return {"auth": {"api_keys": {"keys": keys}, **extra}, "audit": {"sink": "off"}}


_Heads = HeadList


def received_sids(backend: RawBackend) -> list[bytes | None]:
    """The session id of every request the backend received, read by the strict parser."""
    out = []
    for head, body in list(backend.requests):
        c = _Heads()
        RequestParser(c).feed(head + b"\r\n\r\n" + body)
        assert len(c.heads) == 1
        out.append(c.heads[0].session_id)
    return out


class Client_:
    """A keep-alive HTTP/1.1 client of one principal (http.client: a strict parser too)."""

    def __init__(self, port: int, who: str | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.auth = {"X-API-Key": KEYS[who]} if who else {}

    def request(self, method: str, path: str, body: bytes | None = None, sid: bytes | str | None = None):
        hdrs = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **self.auth}
        if sid is not None:
            hdrs["Mcp-Session-Id"] = sid if isinstance(sid, str) else sid.decode()
            hdrs["MCP-Protocol-Version"] = VERSION
        self.conn.request(method, path, body=body, headers=hdrs)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, r.getheader("Mcp-Session-Id"), data

    def initialize(self, path: str = "/mcp") -> str:
        status, sid, _ = self.request("POST", path, INIT)
        assert status == 200 and sid
        return sid

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def backend():
    b = RawBackend("mux")
    yield b
    b.stop.set()
    b.sock.close()


def _raw(sealed: str) -> bytes:
    assert sealed[-TAG_CHARS - 1] == "."
    return sealed[: -TAG_CHARS - 1].encode()


def _refused_everywhere(bob: Client_, sid: str, backend: RawBackend, path: str = "/mcp") -> None:
    """POST, GET and DELETE with ``sid`` are all an unknown session to bob, and none of
    them reaches the backend."""
    before = len(backend.requests)
    for method, body in (("POST", CALL), ("GET", None), ("DELETE", None)):
        status, shown, data = bob.request(method, path, body, sid)
        assert status == 404, (method, status, data)
        assert orjson.loads(data)["error"]["message"] == "Session not found"
        assert shown is None
    assert len(backend.requests) == before


# ---------------------------------------------------------------------------------
# (a) the hijack by eviction


def test_flooding_small_tables_does_not_hand_a_session_over(backend):
    """Every per-session table of the gateway set to 1,000 entries; bob opens 3,000 real
    sessions through the gateway, pushing alice's out of each of them -- then tries her
    id.  Refused, the backend never sees it, and alice goes on."""
    cfg = {"backends": {"b": {"url": backend.url}}, "limits": {"max_sessions": 1000}, **_auth(max_sessions=1000)}
    with GatewayThread(cfg) as gt:
        alice, bob = Client_(gt.port, "alice"), Client_(gt.port, "bob")
        a_sid = alice.initialize()
        assert alice.request("POST", "/mcp", CALL, a_sid)[0] == 200
        a_raw = _raw(a_sid)
        for _ in range(3000):
            bob.initialize()
        route = gt.gw.routes[b"/mcp"]
        assert len(route.seal._cache) <= 1000 and a_sid.encode() not in route.seal._cache
        assert len(gt.gw.sessions) <= 1000 and a_raw not in gt.gw.sessions
        seen_before = received_sids(backend).count(a_raw)
        _refused_everywhere(bob, a_sid, backend)
        # The backend's own id, learnt some other way, is no key either.
        assert bob.request("POST", "/mcp", CALL, a_raw)[0] == 404
        assert received_sids(backend).count(a_raw) == seen_before
        # Alice is not locked out: her id opens again (from the HMAC, not a table).
        status, shown, _ = alice.request("POST", "/mcp", CALL, a_sid)
        assert status == 200 and shown == a_sid
        assert received_sids(backend).count(a_raw) == seen_before + 1
        alice.close()
        bob.close()


def test_binding_survives_200000_sessions_of_another_principal(backend):
    """Default limits.  Bob opens 10,000 sessions through the gateway and 190,000 more
    through the very functions the gateway's initialize path calls (the route's seal
    and the session table), on the gateway's loop; 200,000 in all.  Then he uses
    alice's id: refused, never forwarded; alice still works."""
    t0 = time.monotonic()
    cfg = {"backends": {"b": {"url": backend.url}}, **_auth()}
    with GatewayThread(cfg) as gt:
        alice, bob = Client_(gt.port, "alice"), Client_(gt.port, "bob")
        a_sid = alice.initialize()
        a_raw = _raw(a_sid)
        real = [bob.initialize() for _ in range(10000)]
        t_real = time.monotonic() - t0
        route = gt.gw.routes[b"/mcp"]
        gw = gt.gw
        # Bob's own ids are sealed for him: they open for him, as the bulk ones will.
        assert route.seal.open(real[-1].encode(), "apikey:bob") == _raw(real[-1])

        def bulk(start: int, n: int) -> None:
            for i in range(start, start + n):
                sid = b"bulk-%d" % i
                route.seal.seal(sid, "apikey:bob")
                gw.session_opened(route, sid)

        for start in range(0, 190000, 19000):
            gt.call(bulk, start, 19000)
        max_cache = gw.config.policy.auth.max_sessions
        assert len(route.seal._cache) <= max_cache and a_sid.encode() not in route.seal._cache
        assert len(gw.sessions) <= gw.config.limits.max_sessions and a_raw not in gw.sessions
        seen_before = received_sids(backend).count(a_raw)
        _refused_everywhere(bob, a_sid, backend)
        assert received_sids(backend).count(a_raw) == seen_before
        status, shown, _ = alice.request("POST", "/mcp", CALL, a_sid)
        assert status == 200 and shown == a_sid
        assert received_sids(backend).count(a_raw) == seen_before + 1
        alice.close()
        bob.close()
    print(f"\n200,000 sessions: {time.monotonic() - t0:.1f}s in all, 10,001 real initializes in {t_real:.1f}s")


# ---------------------------------------------------------------------------------
# (b) ids the gateway did not seal for this caller on this route


def test_forged_unsealed_and_other_route_ids_never_reach_the_backend(backend):
    cfg = {
        "backends": {"b": {"url": backend.url}},
        "routes": [{"path": "/a", "backend": "b"}, {"path": "/b", "backend": "b"}, {"path": "/open", "backend": "b"}],
        **_auth(routes={"/open": {"mode": "off"}}),
    }
    with GatewayThread(cfg) as gt:
        alice, anon = Client_(gt.port, "alice"), Client_(gt.port, None)
        sid = alice.initialize("/a")
        raw = _raw(sid)
        assert raw in backend.sessions and sid.encode() not in backend.sessions
        other = alice.initialize("/a")
        tag = sid[-TAG_CHARS:]
        flipped = tag[:-1] + ("A" if tag[-1] != "A" else "B")
        before = len(backend.requests)
        for bad in (
            raw.decode(),  # the backend's own id
            sid[:-TAG_CHARS] + flipped,  # a forged tag
            sid[:-TAG_CHARS] + "A" * TAG_CHARS,
            _raw(other).decode() + "." + tag,  # this session's tag on another session
            raw.decode() + "x." + tag,  # ... on a longer id
            sid + "." + tag,  # sealed twice
            "." + tag,
            sid[:-1],  # truncated
            "x" * 5000,  # long
        ):
            for method, body in (("POST", CALL), ("GET", None), ("DELETE", None)):
                status, shown, data = alice.request(method, "/a", body, bad)
                assert status == 404 and shown is None, (bad, method, status, data)
        # The same session on another route of the same backend: the tag covers the route.
        for method, body in (("POST", CALL), ("GET", None), ("DELETE", None)):
            assert alice.request(method, "/b", body, sid)[0] == 404
        assert len(backend.requests) == before
        # The real one still works, and the backend gets exactly its own id.
        assert alice.request("POST", "/a", CALL, sid)[0] == 200
        assert received_sids(backend)[-1] == raw
        # A route without authentication is not sealed: the backend's id as it is.
        plain = anon.initialize("/open")
        assert plain.encode() in backend.sessions
        status, shown, _ = anon.request("POST", "/open", CALL, plain)
        assert status == 200 and received_sids(backend)[-1] == plain.encode()
        alice.close()
        anon.close()


def test_a_backend_session_id_never_reaches_the_client(backend):
    """Every answer that carries the backend's id (the raw backend echoes it on each)
    shows the client the sealed one; the backend sees only its own."""
    with GatewayThread({"backends": {"b": {"url": backend.url}}, **_auth()}) as gt:
        alice = Client_(gt.port, "alice")
        sid = alice.initialize()
        for _ in range(3):
            status, shown, _ = alice.request("POST", "/mcp", CALL, sid)
            assert status == 200 and shown == sid
        status, shown, _ = alice.request("POST", "/mcp", b'{"jsonrpc":"2.0","method":"notifications/initialized"}', sid)
        assert status == 202 and shown == sid
        assert all(s is None or s == _raw(sid) for s in received_sids(backend))
        alice.close()


# ---------------------------------------------------------------------------------
# (c) the real SDK through an authenticated passthrough route

SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")


@pytest.fixture(scope="module")
def sdk_gateway():
    with backend_process(SERVER, "--port", "0") as (_, url):
        with GatewayThread({"backends": {"e2e": {"url": url}}, **_auth()}) as gt:
            yield gt


def test_get_and_delete_with_the_sealed_id(sdk_gateway):
    url = sdk_gateway.url()
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx.Client(timeout=10, headers={"X-API-Key": KEYS["alice"]}) as h:
        r = h.post(url, content=INIT, headers=base)
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        assert sid[-TAG_CHARS - 1] == "."
        hdrs = {**base, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}
        r = h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
        assert r.status_code == 202
        with h.stream("GET", url, headers={**hdrs, "Accept": "text/event-stream"}) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        r = h.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=hdrs)
        assert r.status_code == 200 and r.headers["mcp-session-id"] == sid
        r = h.delete(url, headers=hdrs, auth=None)
        assert r.status_code in (200, 204)
        # The seal still opens; the backend itself says the session is gone.
        r = h.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=hdrs)
        assert r.status_code == 404


def test_sdk_client_through_a_sealed_route(sdk_gateway):
    url = sdk_gateway.url()

    def client(who: str) -> Client:
        http = httpx2.AsyncClient(headers={"X-API-Key": KEYS[who]}, timeout=30)
        return Client(streamable_http_client(url, http_client=http), mode="legacy")

    async def run():
        async with client("alice") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"echo", "calls"} <= names
            before = int((await c.call_tool("calls", {})).content[0].text)
            assert (await c.call_tool("echo", {"text": "sealed"})).content[0].text == "sealed"
            assert int((await c.call_tool("calls", {})).content[0].text) == before + 1  # it counts echo calls
        async with client("bob") as c:  # another principal, its own session alongside
            assert (await c.call_tool("echo", {"text": "bob"})).content[0].text == "bob"

    anyio.run(run)
    assert sdk_gateway.gw.routes[b"/mcp"].seal is not None


# ---------------------------------------------------------------------------------
# Abandoned sessions: a bounded table, least recently used out first


def test_session_table_drops_the_idle_first_and_expires_abandoned_ones(backend):
    """limits.max_sessions = 50: a session in use survives 200 newer ones; sessions
    nobody used for timeouts.session_idle are forgotten, the one in use is not."""
    cfg = {"backends": {"b": {"url": backend.url}}, "limits": {"max_sessions": 50}, **_auth()}
    with GatewayThread(cfg) as gt:
        gw = gt.gw
        alice, bob = Client_(gt.port, "alice"), Client_(gt.port, "bob")
        a_sid = alice.initialize()
        a_raw = _raw(a_sid)
        first = bob.initialize()
        for i in range(200):
            bob.initialize()
            if i % 20 == 0:  # alice keeps working now and then
                assert alice.request("POST", "/mcp", CALL, a_sid)[0] == 200
        assert len(gw.sessions) == 50
        assert a_raw in gw.sessions and _raw(first) not in gw.sessions
        gauge = gw.metrics.registry.get_sample_value("mcpfast_sessions_open", {"backend": "b"})
        assert gauge == 50
        # An hour and a bit later, only what was used since is still open.
        later = time.monotonic() + gw.config.timeouts.session_idle + 1
        gt.call(gw.session_used, a_raw, later)  # alice works on
        gt.call(gw.sweep_sessions, later)
        assert list(gw.sessions) == [a_raw]
        assert gw.metrics.registry.get_sample_value("mcpfast_sessions_open", {"backend": "b"}) == 1
        # The table is bookkeeping only: alice's session works whether or not it is in it.
        gt.call(gw.sessions.clear)
        assert alice.request("POST", "/mcp", CALL, a_sid)[0] == 200
        alice.close()
        bob.close()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"limits": {"max_sessions": 0}}, "limits.max_sessions"),
        ({"limits": {"max_sessions": "many"}}, "limits.max_sessions"),
        ({**_auth(max_sessions=-1)}, "auth.max_sessions"),
        ({**_auth(bind_sessions="yes")}, "auth.bind_sessions"),
    ],
)
def test_session_limits_are_validated(raw, key):
    from mcpfast.config import ConfigError, build_config

    with pytest.raises(ConfigError) as ei:
        build_config({"backends": {"b": {"url": "http://127.0.0.1:9/mcp"}}, **raw})
    assert ei.value.key == key


def test_per_session_list_cache_drops_abandoned_sessions_first():
    """Per-session list pages (``list_cache = "session"``): a session whose list is in
    use keeps its page while thousands of abandoned sessions come and go."""
    from mcpfast.mux.merge import BackendPage, ListCache

    cache = ListCache(max_entries=64)
    page = BackendPage("a", b"", 0, None)
    hot = ("/mcp", "a", "hot-session")
    cache.put(hot, "tools/list", None, page, cache.generation(hot, "tools/list"))
    for i in range(5000):
        scope = ("/mcp", "a", f"abandoned-{i}")
        cache.put(scope, "tools/list", None, page, cache.generation(scope, "tools/list"))
        assert cache.size <= 64
        if i % 32 == 0:
            assert cache.get(hot, "tools/list", None) is page
    assert cache.get(hot, "tools/list", None) is page
