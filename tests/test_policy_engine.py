"""The gateway-facing policy: ``Policy`` / ``RoutePolicy`` end to end below the sockets --
authenticate → session seal → admit (authorization, rate limit) → filter, the answers
each refusal produces, RFC 9728 discovery, audit events and their counters."""

from __future__ import annotations

import hashlib
import io
import json
from urllib.parse import urlsplit

import orjson
import pytest
from policyutil import ISSUER, PUBLIC_URL, RESOURCE, FakeClock, bearer, head, make_rsa, sign
from prometheus_client import CollectorRegistry

from mcpfast.observe import session_tag
from mcpfast.wire.core import scan_jsonrpc
from mcpfast.policy import AuditLog, AuthError, Policy, Refusal, build_policy_config
from mcpfast.policy.principal import KIND_ANONYMOUS

API_KEY = "mk_test_abcdefabcdefabcdefabcdef"


@pytest.fixture(scope="module")
def rsa_key():
    return make_rsa("k1")


def raw_config(rsa_key, **over):
    raw = {
        "auth": {
            "public_url": PUBLIC_URL,
            "authorization_servers": [ISSUER],
            "scopes_supported": ["mcp:tools", "mcp:admin"],
            "resource_name": "Example gateway",
            "jwt": {"issuer": ISSUER, "keys": [{"kid": "k1", "public_key": rsa_key.public_pem()}]},
            "api_keys": {
                "keys": [
                    {
                        "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                        "subject": "ci",
                        "attributes": {"team": "data"},
                    }
                ]
            },
            "routes": {"/public": {"mode": "optional"}},
        },
        "authz": {
            "rules": [
                {"id": "admins-all", "effect": "allow", "claims": {"groups": "admins"}},
                {"id": "admin-tools", "effect": "allow", "tools": ["admin_*"], "require_scopes": ["mcp:admin"]},
                {"id": "shell-never", "effect": "deny", "tools": ["shell*"]},
                {"id": "everyone-echo", "effect": "allow", "tools": ["echo", "weather.*"], "kinds": ["jwt", "apikey"]},
                {"id": "docs", "effect": "allow", "resources": ["file:///docs/*"]},
            ]
        },
        "ratelimit": {
            "limits": [{"id": "per-principal", "key": "principal", "rate": 1, "burst": 2, "methods": ["tools/call"]}]
        },
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v}
    return raw


def make_policy(rsa_key, clock=None, session_keys=(), **over):
    buf = io.BytesIO()
    reg = CollectorRegistry()
    cfg = build_policy_config(raw_config(rsa_key, **over))
    audit = AuditLog("-", stream=buf, registry=reg, max_per_second=cfg.audit.max_events_per_second)
    clock = clock or FakeClock()
    pol = Policy(cfg, ["/mcp", "/public"], registry=reg, audit=audit, clock=clock, session_keys=session_keys)
    return pol, buf, reg, clock


def events(pol, buf):
    pol.audit.flush()
    return [json.loads(x) for x in buf.getvalue().splitlines()]


# ---------------------------------------------------------------------------------
# Discovery (RFC 9728) and challenges


def test_metadata_documents_and_the_challenge_that_points_at_them(rsa_key):
    pol, *_ = make_policy(rsa_key)
    doc = json.loads(pol.metadata(b"/.well-known/oauth-protected-resource/mcp"))
    assert doc == {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools", "mcp:admin"],
        "resource_name": "Example gateway",
    }
    root = json.loads(pol.metadata(b"/.well-known/oauth-protected-resource"))
    assert root["resource"] == RESOURCE  # the main MCP path
    assert (
        json.loads(pol.metadata(b"/.well-known/oauth-protected-resource/public"))["resource"] == PUBLIC_URL + "/public"
    )
    assert pol.metadata(b"/.well-known/oauth-protected-resource/nope") is None
    # the 401 names the document by a URL whose path the gateway serves
    rp = pol.route("/mcp")
    with pytest.raises(AuthError) as ei:
        rp.authenticate(head(), "10.0.0.1")
    hdr = ei.value.headers.decode()
    assert hdr.startswith('WWW-Authenticate: Bearer resource_metadata="https://gw.example.com/.well-known/')
    url = hdr.split('resource_metadata="')[1].split('"')[0]
    assert pol.metadata(urlsplit(url).path.encode()) is not None
    assert 'scope="mcp:tools mcp:admin"' in hdr


def test_public_url_with_a_path_prefix():
    cfg = build_policy_config(
        {"auth": {"public_url": "https://Example.COM:443/gw/", "authorization_servers": [ISSUER], "api_keys": {}}}
    )
    pol = Policy(cfg, ["/mcp"], audit=AuditLog("off"))
    rp = pol.route("/mcp")
    assert rp.resource == "https://example.com/gw/mcp"
    assert rp.metadata_url == "https://example.com/.well-known/oauth-protected-resource/gw/mcp"
    assert pol.metadata(b"/.well-known/oauth-protected-resource/gw/mcp")


def test_audience_is_the_routes_canonical_resource(rsa_key):
    pol, *_ = make_policy(rsa_key)
    tok = sign(rsa_key)  # aud = https://gw.example.com/mcp
    assert pol.route("/mcp").authenticate(head(bearer(tok)), "10.0.0.1").subject == "alice"
    with pytest.raises(AuthError) as ei:
        pol.route("/public").authenticate(head(bearer(tok), target="/public"), "10.0.0.1")
    assert ei.value.reason == "wrong_audience"  # a token for /mcp is not a token for /public


def test_per_route_mode(rsa_key):
    pol, *_ = make_policy(rsa_key)
    assert pol.route("/public").authenticate(head(target="/public"), "10.0.0.1").kind == KIND_ANONYMOUS
    with pytest.raises(AuthError):
        pol.route("/mcp").authenticate(head(), "10.0.0.1")


def test_credentials_are_not_forwarded_unless_configured(rsa_key):
    pol, *_ = make_policy(rsa_key)
    assert pol.route("/mcp").drop_headers == {b"authorization", b"x-api-key"}
    pol2, *_ = make_policy(rsa_key, auth={"forward_credentials": True})
    assert pol2.route("/mcp").drop_headers == frozenset()
    off = Policy(build_policy_config({}), ["/mcp"])
    assert off.route("/mcp").drop_headers == frozenset() and not off.enabled and not off.route("/mcp").enabled
    assert off.audit is None


# ---------------------------------------------------------------------------------
# admit: authorization answers


KEY: list = []  # the module's signing key, set by the autouse fixture below


@pytest.fixture(autouse=True)
def _key(rsa_key):
    KEY[:] = [rsa_key]


def _alice(pol, **claims):
    """A JWT principal (alice unless ``sub`` says otherwise) authenticated on /mcp."""
    return pol.route("/mcp").authenticate(head(bearer(sign(KEY[0], **claims))), "10.0.0.1")


def test_allowed_call_is_none_and_denied_call_is_a_403(rsa_key):
    pol, buf, reg, _ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    p = _alice(pol)
    assert rp.admit(p, "tools/call", "echo", "b1", b"s1") is None
    r = rp.admit(p, "tools/call", "shell.exec", "b1", b"s1")
    assert isinstance(r, Refusal)
    assert (r.status, r.code, r.rule, r.reason) == (403, -32031, "shell-never", "denied")
    assert "shell.exec" in r.message and r.headers == b""
    r2 = rp.admit(p, "tools/call", "unlisted", "b1", None)
    assert (r2.status, r2.rule) == (403, None)  # the default decided
    (e1, e2) = events(pol, buf)
    assert e1 == {
        "time": e1["time"], "event": "denied", "reason": "rule", "client": "10.0.0.1",
        "principal": {"subject": "alice", "kind": "jwt", "issuer": ISSUER}, "session": session_tag(b"s1"),
        "method": "tools/call", "tool": "shell.exec", "backend": "b1", "rule": "shell-never", "route": "/mcp",
        "status": 403,
    }  # fmt: skip
    assert e2["reason"] == "default" and e2["rule"] is None
    assert reg.get_sample_value("mcpfast_policy_events_total", {"event": "denied", "reason": "rule"}) == 1


def test_hidden_denials_look_like_unknown_names(rsa_key):
    pol, *_ = make_policy(rsa_key, authz={"hide_denied": True})
    rp = pol.route("/mcp")
    p = _alice(pol)
    r = rp.admit(p, "tools/call", "shell.exec", "b1")
    assert (r.status, r.code, r.message) == (200, -32602, "Unknown tool: shell.exec")
    r = rp.admit(p, "resources/read", "file:///etc/passwd", "b1")
    assert (r.status, r.code, r.message) == (200, -32602, "Resource not found: file:///etc/passwd")
    r = rp.admit(p, "prompts/get", "secret", "b1")
    assert (r.code, r.message) == (-32602, "Unknown prompt: secret")
    r = rp.admit(p, "completion/complete", None, "b1")  # nothing to hide behind: plain denial
    assert (r.status, r.code) == (403, -32031)


def test_step_up_scope_gives_insufficient_scope(rsa_key):
    pol, buf, *_ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    r = rp.admit(_alice(pol, scope="mcp:tools"), "tools/call", "admin_reset", "b1")
    assert (r.status, r.code, r.reason, r.rule) == (403, -32031, "insufficient_scope", "admin-tools")
    assert r.headers == (
        b"WWW-Authenticate: Bearer "
        b'resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/mcp", '
        b'scope="mcp:admin", error="insufficient_scope", error_description="this operation needs more scope"\r\n'
    )
    assert rp.admit(_alice(pol, scope="mcp:admin"), "tools/call", "admin_reset", "b1") is None
    assert events(pol, buf)[0]["reason"] == "insufficient_scope"


def test_api_key_principal_through_admit(rsa_key):
    pol, *_ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    p = rp.authenticate(head(headers={"X-API-Key": API_KEY}), "10.0.0.7")
    assert rp.admit(p, "tools/call", "weather.get", "b1") is None
    assert rp.admit(p, "tools/call", "admin_x", "b1").status == 403


def test_target_name_from_real_envelopes():
    from mcpfast.policy import RoutePolicy

    call = scan_jsonrpc(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}')
    read = scan_jsonrpc(b'{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///docs/a"}}')
    lst = scan_jsonrpc(b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    assert RoutePolicy.target_name(call) == "echo"
    assert RoutePolicy.target_name(read) == "file:///docs/a"
    assert RoutePolicy.target_name(lst) is None


# ---------------------------------------------------------------------------------
# admit: rate limits


def test_rate_limited_caller_gets_429_while_another_keeps_working(rsa_key):
    pol, buf, _reg, clock = make_policy(rsa_key)
    rp = pol.route("/mcp")
    alice, bob = _alice(pol), _alice(pol, sub="bob")
    assert rp.admit(alice, "tools/call", "echo", "b1") is None
    assert rp.admit(alice, "tools/call", "echo", "b1") is None
    r = rp.admit(alice, "tools/call", "echo", "b1")
    assert (r.status, r.code, r.reason, r.rule) == (429, -32032, "rate_limited", "per-principal")
    assert r.headers == b"Retry-After: 1\r\n"
    assert rp.admit(bob, "tools/call", "echo", "b1") is None
    assert rp.admit(alice, "tools/list", None, "b1") is None  # the limit counts tools/call only
    clock.advance(1.0)
    assert rp.admit(alice, "tools/call", "echo", "b1") is None
    (ev,) = events(pol, buf)
    assert (ev["event"], ev["rule"], ev["status"], ev["principal"]["subject"]) == (
        "rate_limited",
        "per-principal",
        429,
        "alice",
    )


def test_denied_requests_do_not_spend_tokens(rsa_key):
    pol, *_ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    p = _alice(pol)
    for _ in range(10):
        assert rp.admit(p, "tools/call", "shell", "b1").status == 403
    assert rp.admit(p, "tools/call", "echo", "b1") is None


# ---------------------------------------------------------------------------------
# Session binding


def test_a_session_belongs_to_its_principal(rsa_key):
    pol, buf, *_ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    alice, bob = _alice(pol), _alice(pol, sub="bob")
    sealed = rp.seal.seal(b"sess-A", alice.key)
    assert sealed.startswith(b"sess-A.") and len(sealed) == len(b"sess-A.") + 22
    assert rp.seal.open(sealed, alice.key) == b"sess-A"
    assert rp.seal.open(sealed, bob.key) is None
    # the same subject from another issuer or as an API key is another principal
    key_alice = rp.authenticate(head(headers={"X-API-Key": API_KEY}), "10.0.0.1")
    assert rp.seal.open(sealed, key_alice.key) is None
    # the raw backend id and another route's seal do not open either
    assert rp.seal.open(b"sess-A", alice.key) is None
    assert pol.route("/public").seal.open(sealed, alice.key) is None
    r = rp.session_refused(bob, sealed, "tools/call")
    assert (r.status, r.code, r.message, r.reason) == (404, -32001, "Session not found", "session_mismatch")
    ev = events(pol, buf)
    assert ev[0]["event"] == "session_refused" and ev[0]["principal"]["subject"] == "bob"
    assert ev[0]["session"] == session_tag(sealed)  # the id as the logs show it


def test_binding_needs_no_table_and_survives_a_restart(rsa_key):
    """Another ``Policy`` with the same keys (another worker, a restart) opens the ids."""
    keys = (b"k" * 32,)
    pol, *_ = make_policy(rsa_key, session_keys=keys)
    alice = _alice(pol)
    sealed = pol.route("/mcp").seal.seal(b"s1", alice.key)
    again, *_ = make_policy(rsa_key, session_keys=(b"n" * 32, *keys))  # rotated: old key still opens
    assert again.route("/mcp").seal.open(sealed, alice.key) == b"s1"
    other, *_ = make_policy(rsa_key, session_keys=(b"n" * 32,))
    assert other.route("/mcp").seal.open(sealed, alice.key) is None


def test_binding_can_be_turned_off(rsa_key):
    pol, *_ = make_policy(rsa_key, auth={"bind_sessions": False})
    assert pol.route("/mcp").seal is None


# ---------------------------------------------------------------------------------
# Lists


def test_filter_through_the_route_policy(rsa_key):
    pol, *_ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    body = orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": n} for n in ("echo", "shell", "admin_reset", "x")]}}
    )
    assert rp.needs_filter("tools/list") and not rp.needs_filter("tools/call")

    def names(b: bytes) -> list[str]:
        return [t["name"] for t in orjson.loads(b)["result"]["tools"]]

    assert names(rp.filter_list(_alice(pol), "tools/list", body, "b1")) == ["echo"]
    assert names(rp.filter_list(_alice(pol, scope="mcp:admin"), "tools/list", body, "b1")) == ["echo", "admin_reset"]
    assert names(rp.filter_list(_alice(pol, groups=["admins"]), "tools/list", body, "b1")) == [
        "echo",
        "shell",
        "admin_reset",
        "x",
    ]


# ---------------------------------------------------------------------------------
# Audit sinks


def test_audit_to_a_file_and_rate_cap(tmp_path):
    path = tmp_path / "audit.jsonl"
    clock = FakeClock(1_700_000_000.0)
    reg = CollectorRegistry()
    log = AuditLog(str(path), registry=reg, max_per_second=3, clock=clock)
    for _ in range(10):
        log.event("denied", "rule", client="1.2.3.4", method="tools/call", tool="x", rule="r")
    clock.advance(1.0)
    log.flush()
    log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["denied"] * 3 + ["audit_suppressed"]
    assert lines[-1]["count"] == 7
    assert lines[0]["time"] == "2023-11-14T22:13:20.000Z"
    assert reg.get_sample_value("mcpfast_policy_events_total", {"event": "denied", "reason": "rule"}) == 10


def test_audit_off_still_counts():
    reg = CollectorRegistry()
    log = AuditLog("off", registry=reg)
    log.event("rate_limited", "rate_limited", client="1.1.1.1")
    assert reg.get_sample_value("mcpfast_policy_events_total", {"event": "rate_limited", "reason": "rate_limited"}) == 1


def test_no_event_ever_contains_a_credential(rsa_key):
    pol, buf, *_ = make_policy(rsa_key)
    rp = pol.route("/mcp")
    tok = sign(rsa_key, sub="mallory")
    p = rp.authenticate(head(bearer(tok)), "10.0.0.66")
    rp.session_refused(p, b"sid." + b"A" * 22)
    rp.admit(p, "tools/call", "shell", "b1", b"sid")
    rp.admit(p, "tools/call", "shell", "b1")
    for _ in range(3):
        rp.admit(p, "tools/call", "echo", "b1")
    for bad in (tok[:-4] + "AAAA", API_KEY + "x"):
        with pytest.raises(AuthError):
            rp.authenticate(head(bearer(bad)), "10.0.0.66")
    pol.audit.flush()
    text = buf.getvalue().decode()
    assert len(text.splitlines()) == 6
    for secret in (tok, tok.split(".")[1], tok.split(".")[2], API_KEY):
        assert secret not in text


def test_tick_flushes_and_sweeps(rsa_key):
    pol, buf, _, _clock = make_policy(rsa_key)
    rp = pol.route("/mcp")
    with pytest.raises(AuthError):
        rp.authenticate(head(), "1.1.1.1")
    assert buf.getvalue() == b""  # buffered
    pol.tick()
    assert b"missing_credentials" in buf.getvalue()
