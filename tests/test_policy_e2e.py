"""Policy end to end: a real SDK server behind the gateway, real SDK clients with real
signed tokens in front of it.  Two principals see different tool lists from the same
backend, a denied call never reaches the backend, a stolen session is refused, a
rate-limited caller gets 429 while another keeps working, and discovery works."""

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
from rawbackend import RawBackend

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")
SECRET = "s" * 64
ISSUER = "https://login.test.example"
PUBLIC = "https://mcp.test.example"
AUDIENCE = PUBLIC + "/mcp"


def token(sub: str, *, aud: str = AUDIENCE, exp: float | None = None, **claims) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iss": ISSUER, "aud": aud, "iat": now, "exp": exp or now + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": "k1"})


POLICY = {
    "auth": {
        "mode": "required",
        "public_url": PUBLIC,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp:tools"],
        "jwt": {"issuer": ISSUER, "algorithms": ["HS256"], "keys": [{"kid": "k1", "secret": SECRET}]},
    },
    "authz": {
        "default": "deny",
        "rules": [
            {"id": "alice-everything", "effect": "allow", "subjects": ["alice"]},
            {"id": "bob-some-tools", "effect": "allow", "subjects": ["bob"], "tools": ["calls", "steps"]},
            {"id": "bob-prompts", "effect": "allow", "subjects": ["bob"], "prompts": ["*"]},
        ],
    },
    "ratelimit": {
        "limits": [
            {"id": "carol-calls", "key": ["principal"], "rate": 0.01, "burst": 3, "methods": ["tools/call"],
             "tools": ["echo"]},
        ]
    },
    "audit": {"sink": "off"},
}  # fmt: skip
POLICY["authz"]["rules"].append({"id": "carol-and-dave", "effect": "allow", "subjects": ["carol", "dave"]})


@pytest.fixture(scope="module")
def backend():
    with backend_process(SERVER, "--port", "0") as (_, url):
        yield url


@pytest.fixture(scope="module")
def gateway(backend):
    with GatewayThread({"backends": {"e2e": {"url": backend}}, **POLICY}) as gt:
        yield gt


def client(url: str, tok: str | None, **kw) -> Client:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30))
    return Client(transport, mode="legacy", **kw)


def test_two_principals_see_different_tool_lists(gateway):
    async def run():
        async with client(gateway.url(), token("alice")) as c:
            alice = {t.name for t in (await c.list_tools()).tools}
        async with client(gateway.url(), token("bob")) as c:
            bob = {t.name for t in (await c.list_tools()).tools}
            prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert {"echo", "calls", "steps", "ask_model", "big"} <= alice
        assert bob == {"calls", "steps"}
        assert "greet" in prompts  # bob may use prompts: that list is not cut

    anyio.run(run)


def test_denied_call_never_reaches_the_backend(gateway):
    async def run():
        async with client(gateway.url(), token("bob")) as c:
            before = int((await c.call_tool("calls", {})).content[0].text)
            for _ in range(3):
                with pytest.raises(MCPError) as ei:
                    await c.call_tool("echo", {"text": "counted if it arrives"})
                assert "not allowed" in str(ei.value)
            after = int((await c.call_tool("calls", {})).content[0].text)
            # The backend counts every echo it runs: none of bob's arrived.
            assert after == before
        async with client(gateway.url(), token("alice")) as c:
            await c.call_tool("echo", {"text": "counted"})
            assert int((await c.call_tool("calls", {})).content[0].text) == before + 1

    anyio.run(run)


def test_session_stolen_by_another_principal_is_refused(gateway):
    url = gateway.url()
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }  # fmt: skip
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx.Client(timeout=10) as h:
        r = h.post(url, json=init, headers={**base, "Authorization": f"Bearer {token('alice')}"})
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        hdrs = {**base, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        ok = h.post(url, json=listing, headers={**hdrs, "Authorization": f"Bearer {token('alice')}"})
        assert ok.status_code == 200
        stolen = h.post(url, json=listing, headers={**hdrs, "Authorization": f"Bearer {token('bob')}"})
        # The sealed id does not open for bob: to him it is an unknown session.
        assert stolen.status_code == 404
        assert stolen.json()["error"]["message"] == "Session not found"
        # GET and DELETE of the session are refused to bob as well; alice may end it.
        g = h.get(url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid,
                                "Authorization": f"Bearer {token('bob')}"})  # fmt: skip
        assert g.status_code == 404
        d = h.delete(url, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {token('bob')}"})
        assert d.status_code == 404
        d = h.delete(url, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {token('alice')}"})
        assert d.status_code in (200, 204)


def test_rate_limited_caller_gets_429_while_another_keeps_working(gateway):
    async def run():
        async with client(gateway.url(), token("carol")) as c:
            for _ in range(3):
                await c.call_tool("echo", {"text": "x"})
            with pytest.raises(MCPError) as ei:
                await c.call_tool("echo", {"text": "x"})
            assert "Too many requests" in str(ei.value)
        # Buckets are per principal: dave has his own three calls.
        async with client(gateway.url(), token("dave")) as c:
            for _ in range(3):
                assert (await c.call_tool("echo", {"text": "fine"})).content[0].text == "fine"

    anyio.run(run)
    # On the wire: 429, Retry-After and a JSON-RPC error body.
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    r = httpx.post(
        gateway.url(), json=call, timeout=10,
        headers={"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token('carol')}"},
    )  # fmt: skip
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == -32032 and r.json()["id"] == 9


@pytest.mark.parametrize(
    "case",
    ["none", "expired", "wrong-audience", "wrong-key", "garbage", "query-string"],
)
def test_bad_credentials_are_refused_with_discovery_hints(gateway, case):
    tok = {
        "none": None,
        "expired": token("alice", exp=time.time() - 3600),
        "wrong-audience": token("alice", aud="https://other.example/mcp"),
        "wrong-key": jwt.encode({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
                                "x" * 64, algorithm="HS256", headers={"kid": "k1"}),
        "garbage": "not.a.token",
        "query-string": None,
    }[case]  # fmt: skip
    url = gateway.url() + (f"?access_token={token('alice')}" if case == "query-string" else "")
    headers = {"Accept": "application/json, text/event-stream"}
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers, timeout=10)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"]["code"] < 0
    if r.status_code == 401:
        www = r.headers["www-authenticate"]
        assert www.startswith("Bearer ")
        assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"' in www


def test_discovery_document_names_the_authorization_server(gateway):
    r = httpx.post(gateway.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)
    assert r.status_code == 401
    www = r.headers["www-authenticate"]
    meta_url = www.split('resource_metadata="', 1)[1].split('"', 1)[0]
    path = meta_url[len(PUBLIC):]
    doc = httpx.get(f"http://127.0.0.1:{gateway.port}{path}", timeout=10)
    assert doc.status_code == 200 and doc.headers["content-type"].startswith("application/json")
    meta = doc.json()
    assert meta["resource"] == AUDIENCE
    assert meta["authorization_servers"] == [ISSUER]
    assert "header" in meta.get("bearer_methods_supported", ["header"])
    root = httpx.get(f"http://127.0.0.1:{gateway.port}/.well-known/oauth-protected-resource", timeout=10)
    assert root.status_code == 200 and root.json()["resource"] == AUDIENCE


def test_client_token_is_not_forwarded_but_backend_credentials_are():
    raw = RawBackend("ok")
    cfg = {"backends": {"b": {"url": raw.url, "bearer_token": "backend-secret"}}, **POLICY}
    try:
        with GatewayThread(cfg) as gt:
            r = httpx.post(
                gt.url(), timeout=10,
                json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {}}},
                headers={"Authorization": f"Bearer {token('alice')}"},
            )  # fmt: skip
            assert r.status_code == 200
        head = raw.requests[-1][0].decode()
        auth_lines = [line for line in head.split("\r\n") if line.lower().startswith("authorization:")]
        assert auth_lines == ["Authorization: Bearer backend-secret"]
    finally:
        raw.close()


def test_list_filtering_keeps_unchanged_answers_byte_identical(gateway, backend):
    """alice may use every tool: her tools/list answer is the backend's, byte for byte
    (modulo the session the two requests run in, which is why tools/list is sent in
    a session-free batch-less POST to each)."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    hdrs = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
            "MCP-Protocol-Version": "2025-06-18"}  # fmt: skip

    def first_event(r):
        return [line for line in r.text.splitlines() if line.startswith("data:")][0]

    with httpx.Client(timeout=10) as h:
        init = {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }  # fmt: skip
        via = h.post(gateway.url(), json=init, headers={**hdrs, "Authorization": f"Bearer {token('alice')}"})
        sid_gw = via.headers["mcp-session-id"]
        direct = h.post(backend, json=init, headers=hdrs)
        sid_direct = direct.headers["mcp-session-id"]
        a = h.post(gateway.url(), content=body,
                   headers={**hdrs, "Mcp-Session-Id": sid_gw, "Authorization": f"Bearer {token('alice')}"})  # fmt: skip
        d = h.post(backend, content=body, headers={**hdrs, "Mcp-Session-Id": sid_direct})
        assert a.status_code == d.status_code == 200
        assert first_event(a) == first_event(d)


def test_list_filtering_with_a_json_answering_backend():
    """The same filtering when the backend answers lists as one JSON body (the gateway
    collects it, filters it and sends it with its new length)."""
    with backend_process(SERVER, "--port", "0", "--json-response") as (_, url):
        with GatewayThread({"backends": {"e2e": {"url": url}}, **POLICY}) as gt:

            async def run():
                async with client(gt.url(), token("bob")) as c:
                    assert {t.name for t in (await c.list_tools()).tools} == {"calls", "steps"}
                async with client(gt.url(), token("alice")) as c:
                    assert len((await c.list_tools()).tools) > 5

            anyio.run(run)


def test_jwks_key_rotation_through_the_gateway():
    """RS256 tokens verified with keys from a JWKS URL served on 127.0.0.1.  A token
    signed with a key the gateway has not fetched yet makes it fetch the JWKS again
    without blocking the loop (the request waits on the fetch); a kid the issuer does
    not publish is refused.  (The fetch rate limit is shown in test_policy_jwks.py.)"""
    from policyutil import ISSUER as P_ISSUER
    from policyutil import RESOURCE as P_RESOURCE
    from policyutil import JwksServer, make_rsa, sign

    old, new = make_rsa("old"), make_rsa("new")
    public = P_RESOURCE.rsplit("/", 1)[0]
    raw = RawBackend("ok")
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
    try:
        with JwksServer() as jwks:
            jwks.set_keys(old)
            cfg = {
                "backends": {"b": {"url": raw.url}},
                "auth": {"mode": "required", "public_url": public,
                         "jwt": {"issuer": P_ISSUER, "jwks_url": jwks.url, "algorithms": ["RS256"],
                                 "jwks_min_refresh_seconds": 0}},
            }  # fmt: skip
            with GatewayThread(cfg) as gt:
                url = gt.url(P_RESOURCE[len(public):])

                def post_with(tok: str) -> httpx.Response:
                    return httpx.post(url, json=call, timeout=10, headers={"Authorization": f"Bearer {tok}"})

                assert post_with(sign(old)).status_code == 200
                hits = jwks.hits
                jwks.set_keys(old, new)  # the issuer rotates in a new key
                assert post_with(sign(new)).status_code == 200  # fetched on the unknown kid
                assert jwks.hits == hits + 1
                r = post_with(sign(make_rsa("never-published")))
                assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
                assert len(raw.requests) == 2  # the refused one never reached the backend
    finally:
        raw.close()
