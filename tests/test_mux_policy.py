"""Policy on a multiplexed route: real SDK backends behind one virtual server, real SDK
clients with real HS256 tokens in front of it.

Rules see what a single-backend route shows them: the backend a message goes to and
the name the backend itself uses (``whoami``), never the namespaced ``alpha__whoami``.
alpha and beta both count how often their ``whoami`` ran (the ``calls`` tool), so a
refused call can be shown never to arrive.
"""

from __future__ import annotations

import os
import time

import anyio
import httpx
import httpx2
import jwt
import orjson
import pytest

from gwutil import ROOT, GatewayThread, backend_process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcpfast.mux.token import new_key_text

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "mux_server.py")
KEY = new_key_text()
SECRET = "m" * 64
ISSUER = "https://login.mux.example"
PUBLIC = "https://mcp.mux.example"
AUDIENCE = PUBLIC + "/mcp"
BASE = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-06-18"


def token(sub: str) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    return jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": "k1"})


RULES = [
    {"id": "alice-everything", "effect": "allow", "subjects": ["alice"]},
    # ann may do anything on alpha, nothing on the others.
    {"id": "ann-alpha", "effect": "allow", "subjects": ["ann"], "backends": ["alpha"]},
    # bob may call whoami, but only beta's.
    {"id": "bob-beta-whoami", "effect": "allow", "subjects": ["bob"], "tools": ["whoami"], "backends": ["beta"]},
    # carol may run steps anywhere (rate limited below).
    {"id": "carol-steps", "effect": "allow", "subjects": ["carol"], "tools": ["steps"]},
    # dan's rule names the namespaced tool: rules match the backend's own names, so it
    # matches nothing.
    {"id": "dan-namespaced", "effect": "allow", "subjects": ["dan"], "tools": ["alpha__whoami"]},
]


def _config(urls: dict, hide: bool = False) -> dict:
    return {
        "backends": {n: {"url": u, "response_timeout": 10.0} for n, u in urls.items()},
        "routes": [{"path": "/mcp", "backends": list(urls), "server_name": "mux-policy"}],
        "sessions": {"key": KEY},
        "auth": {
            "mode": "required",
            "public_url": PUBLIC,
            "authorization_servers": [ISSUER],
            "jwt": {"issuer": ISSUER, "algorithms": ["HS256"], "keys": [{"kid": "k1", "secret": SECRET}]},
        },
        "authz": {"default": "deny", "hide_denied": hide, "rules": RULES},
        "ratelimit": {
            "limits": [
                {"id": "steps-per-backend", "key": ["principal", "backend", "tool"], "rate": 0.01, "burst": 2,
                 "methods": ["tools/call"], "tools": ["steps"]},
            ]
        },
        "audit": {"sink": "off"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def backends():
    with (
        backend_process(SERVER, "--name", "alpha", "--tools", "calls,steps,add") as (_, a),
        backend_process(SERVER, "--name", "beta", "--tools", "calls,steps") as (_, b),
        backend_process(SERVER, "--name", "gamma", "--json-response") as (_, g),
    ):
        yield {"alpha": a, "beta": b, "gamma": g}


@pytest.fixture(scope="module")
def gateway(backends):
    with GatewayThread(_config(backends)) as gt:
        yield gt


@pytest.fixture(scope="module")
def hidden(backends):
    """The same route with ``hide_denied`` and the same session key: also "another
    gateway process" for session tokens."""
    with GatewayThread(_config(backends, hide=True)) as gt:
        yield gt


def client(url: str, sub: str) -> Client:
    headers = {"Authorization": f"Bearer {token(sub)}"}
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30))
    return Client(transport, mode="legacy")


def _text(result) -> str:
    return result.content[0].text


async def _calls(url: str, backend: str) -> int:
    async with client(url, "alice") as c:
        return int(_text(await c.call_tool(f"{backend}__calls", {})))


def test_backend_rule_filters_lists_and_refuses_other_backends(gateway):
    url = gateway.url()

    async def run():
        async with client(url, "ann") as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert tools == {"alpha__whoami", "alpha__calls", "alpha__steps", "alpha__add"}
            assert prompts == {"alpha__hello"}
            assert uris == {"mcpfast:alpha/mem://info"}
            assert _text(await c.call_tool("alpha__whoami", {})) == "alpha"
            assert (await c.read_resource("mcpfast:alpha/mem://info")).contents[0].text == "info from alpha"
            before = await _calls(url, "beta")
            for name in ("beta__whoami", "gamma__whoami"):
                with pytest.raises(MCPError) as ei:
                    await c.call_tool(name, {})
                assert ei.value.code == -32031
                assert f"tools/call {name} is not allowed" in ei.value.message
            with pytest.raises(MCPError):
                await c.read_resource("mcpfast:beta/mem://info")
            with pytest.raises(MCPError):
                await c.get_prompt("beta__hello", {"who": "x"})
            # The refused call never reached beta.
            assert await _calls(url, "beta") == before
        # Pages are cached and shared: ann's filtered answer took nothing from alice's.
        async with client(url, "alice") as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"alpha__whoami", "beta__whoami", "gamma__whoami", "beta__steps"} <= tools

    anyio.run(run)


def test_tool_rule_on_one_backend_allows_exactly_that_tool(gateway):
    url = gateway.url()

    async def run():
        async with client(url, "bob") as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"beta__whoami"}
            assert _text(await c.call_tool("beta__whoami", {})) == "beta"
            before = await _calls(url, "alpha")
            with pytest.raises(MCPError) as ei:
                await c.call_tool("alpha__whoami", {})
            assert ei.value.code == -32031
            with pytest.raises(MCPError):
                await c.call_tool("beta__steps", {"n": 0})
            assert await _calls(url, "alpha") == before
        # A rule naming the namespaced tool matches nothing: rules see backend names.
        async with client(url, "dan") as c:
            assert (await c.list_tools()).tools == []
            with pytest.raises(MCPError):
                await c.call_tool("alpha__whoami", {})

    anyio.run(run)


def _session(h: httpx.Client, url: str, sub: str, version: str = VERSION) -> str:
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }  # fmt: skip
    r = h.post(url, json=init, headers={**BASE, "Authorization": f"Bearer {token(sub)}"})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["protocolVersion"] == version
    return r.headers["mcp-session-id"]


def test_batch_elements_are_authorized_one_by_one_under_their_backend(gateway):
    """A 2025-03-26 batch on a multiplexed route: bob may call beta's whoami only.  The
    batch is not refused as a whole because alpha's element is denied; each element is
    checked under its real backend and own name, and only the denied one fails."""
    url = gateway.url()
    before = anyio.run(_calls, url, "alpha")
    with httpx.Client(timeout=30) as h:
        sid = _session(h, url, "bob", "2025-03-26")
        hdrs = {**BASE, "Mcp-Session-Id": sid, "Authorization": f"Bearer {token('bob')}"}
        assert h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs).status_code == 202
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "beta__whoami", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alpha__whoami", "arguments": {}}},
        ]
        r = h.post(url, json=batch, headers=hdrs)
        assert r.status_code == 200, r.text
        answers = {}
        for line in r.text.splitlines():
            if line.startswith("data:"):
                m = orjson.loads(line[5:])
                answers[m.get("id")] = m
    assert answers[1]["result"]["content"][0]["text"] == "beta"
    assert answers[2]["error"]["code"] == -32031, answers[2]
    assert anyio.run(_calls, url, "alpha") == before, "the denied element never reached alpha"


def _call(h: httpx.Client, url: str, sid: str, sub: str, name: str, rid: int = 7) -> httpx.Response:
    msg = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    hdrs = {**BASE, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION, "Authorization": f"Bearer {token(sub)}"}
    return h.post(url, json=msg, headers=hdrs)


def test_hide_denied_answers_as_unknown_tool(hidden):
    url = hidden.url()
    with httpx.Client(timeout=10) as h:
        sid = _session(h, url, "bob")
        before = _call(h, url, _session(h, url, "alice"), "alice", "alpha__calls")
        denied = _call(h, url, sid, "bob", "alpha__whoami")
        unknown = _call(h, url, sid, "bob", "delta__whoami")
        after = _call(h, url, _session(h, url, "alice"), "alice", "alpha__calls")
    assert denied.status_code == unknown.status_code == 200
    d, u = denied.json()["error"], unknown.json()["error"]
    assert d["code"] == u["code"] == -32602
    assert d["message"] == "Unknown tool: alpha__whoami"
    assert u["message"] == "Unknown tool: delta__whoami"
    assert before.text == after.text  # alpha's whoami did not run

    async def run():
        async with client(url, "bob") as c:
            with pytest.raises(MCPError) as ei:
                await c.call_tool("alpha__whoami", {})
            assert ei.value.code == -32602 and ei.value.message == "Unknown tool: alpha__whoami"
            assert _text(await c.call_tool("beta__whoami", {})) == "beta"

    anyio.run(run)


def test_rate_limit_keyed_by_backend_and_tool(gateway):
    url = gateway.url()

    async def run():
        async with client(url, "carol") as c:
            for _ in range(2):
                assert _text(await c.call_tool("alpha__steps", {"n": 0})) == "alpha done 0"
            with pytest.raises(MCPError) as ei:
                await c.call_tool("alpha__steps", {"n": 0})
            assert ei.value.code == -32032 and "Too many requests" in ei.value.message
            # beta's steps is another bucket.
            assert _text(await c.call_tool("beta__steps", {"n": 0})) == "beta done 0"

    anyio.run(run)
    with httpx.Client(timeout=10) as h:
        sid = _session(h, url, "carol")
        r = h.post(
            url,
            json={"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "alpha__steps", "arguments": {"n": 0}}},
            headers={**BASE, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION,
                     "Authorization": f"Bearer {token('carol')}"},
        )  # fmt: skip
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == -32032 and r.json()["id"] == 5


def test_stolen_session_token_is_refused(gateway, hidden):
    url = gateway.url()
    with httpx.Client(timeout=10) as h:
        sid = _session(h, url, "alice")
        assert _call(h, url, sid, "alice", "alpha__whoami").status_code == 200
        # The token names its principal: to bob it is an unknown session (404).
        stolen = _call(h, url, sid, "bob", "beta__whoami")
        assert stolen.status_code == 404
        assert stolen.json()["error"]["message"] == "Session not found"
        listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        hdrs = {**BASE, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}
        assert h.post(url, json=listing, headers={**hdrs, "Authorization": f"Bearer {token('bob')}"}).status_code == 404
        g = h.get(url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid,
                                "Authorization": f"Bearer {token('bob')}"})  # fmt: skip
        assert g.status_code == 404
        # Another process with the same key: the same, while alice goes on.
        other = hidden.url()
        stolen = _call(h, other, sid, "bob", "beta__whoami")
        assert stolen.status_code == 404
        ok = _call(h, other, sid, "alice", "beta__whoami")
        assert ok.status_code == 200 and '"text":"beta"' in ok.text
        d = h.delete(other, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {token('bob')}"})
        assert d.status_code == 404
        assert _call(h, url, sid, "bob", "beta__whoami").status_code == 404
        d = h.delete(url, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {token('alice')}"})
        assert d.status_code in (200, 204)


def test_access_log_and_audit_name_the_routed_backend(backends, tmp_path):
    """The access log line of a routed message names the backend it went to, and so does
    the audit event of a refusal; what no single backend serves is logged with null."""
    access, audit = tmp_path / "access.log", tmp_path / "audit.log"
    cfg = {**_config(backends), "audit": {"sink": str(audit)}, "log": {"access_log": str(access)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=10) as h:
        url = gt.url()
        sid = _session(h, url, "bob")
        assert _call(h, url, sid, "bob", "beta__whoami", 2).status_code == 200
        assert _call(h, url, sid, "bob", "alpha__whoami", 3).status_code == 403
        hdrs = {**BASE, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}
        hdrs["Authorization"] = f"Bearer {token('bob')}"
        listing = h.post(url, json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, headers=hdrs)
        assert listing.status_code == 200
        gt.call(gt.gw.access.flush)
        gt.call(gt.gw.policy.audit.flush)
        lines = [orjson.loads(x) for x in access.read_text().splitlines()]
        events = [orjson.loads(x) for x in audit.read_text().splitlines()]
    assert [(x["method"], x["tool"], x["backend"], x["status"]) for x in lines] == [
        ("initialize", None, None, 200),  # answered by the virtual server: no one backend
        ("tools/call", "beta__whoami", "beta", 200),
        ("tools/call", "alpha__whoami", "alpha", 403),
        ("tools/list", None, None, 200),
    ]
    # The routed call's time is split into the backend's and the gateway's own, as on a
    # passthrough route; the refused one never reached a backend.
    assert lines[1]["upstream_us"] > 0 and lines[1]["gateway_us"] > 0
    assert lines[2]["upstream_us"] == 0
    (denied,) = events
    assert (denied["event"], denied["tool"], denied["backend"]) == ("denied", "alpha__whoami", "alpha")
