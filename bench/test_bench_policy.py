"""Policy cost per request, beside the no-policy baseline.

Run: ``pytest bench/test_bench_policy.py --benchmark-group-by=group``.

``per-request`` is the group that answers "what does policy add": the baseline row does
what the gateway does for a ``tools/call`` anyway (the envelope scan); the policy row adds
authentication with a cached RS256 token, the sealed session id's check, a 50-rule authorization set
(the caller matches only the last rule) and a rate limit that is not hit.  The other
groups take the pieces apart, including the cold paths (first sight of a token, rule
evaluation without the memo) that a steady client never pays.
"""

from __future__ import annotations

import hashlib
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcpfast.wire.core import RequestParser, scan_jsonrpc
from mcpfast.policy import AuditLog, Policy, Principal, build_policy_config

ISSUER = "https://idp.example.com"
PUBLIC_URL = "https://gw.example.com"
API_KEY = "mk_bench_0123456789abcdef0123456789"

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def _pem(k) -> str:
    return (
        k.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _token(key, alg: str, kid: str, sub: str = "alice") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": PUBLIC_URL + "/mcp", "sub": sub, "iat": now, "exp": now + 3600,
              "groups": ["eng"], "scope": "mcp:tools"}  # fmt: skip
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def _rules() -> list[dict]:
    rules = []
    for i in range(49):  # rules that look at the operation or the principal and do not match alice
        if i % 3 == 0:
            rules.append({"id": f"r{i}", "effect": "deny", "tools": [f"team{i}_*"]})
        elif i % 3 == 1:
            rules.append({"id": f"r{i}", "effect": "allow", "subjects": [f"svc-{i}-*"], "tools": ["*"]})
        else:
            rules.append(
                {"id": f"r{i}", "effect": "allow", "claims": {"groups": f"group{i}"}, "client_ips": ["192.168.0.0/16"]}
            )
    rules.append({"id": "eng", "effect": "allow", "claims": {"groups": "eng"}, "tools": ["echo", "weather.*"]})
    return rules


RAW = {
    "auth": {
        "public_url": PUBLIC_URL,
        "authorization_servers": [ISSUER],
        "jwt": {
            "issuer": ISSUER,
            "keys": [{"kid": "rsa", "public_key": _pem(_RSA)}, {"kid": "ec", "public_key": _pem(_EC)}],
        },
        "api_keys": {"keys": [{"sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "subject": "ci"}]},
    },
    "authz": {"rules": _rules()},
    "ratelimit": {"limits": [{"id": "per-principal", "key": "principal", "rate": 1e9, "burst": 1e9}]},
}
POLICY = Policy(build_policy_config(RAW), ["/mcp"], audit=AuditLog("off"))
RP = POLICY.route("/mcp")
RS_TOKEN = _token(_RSA, "RS256", "rsa")
BODY = b'{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'


class _Heads:
    def __init__(self) -> None:
        self.heads = []

    def on_request(self, h) -> None:
        self.heads.append(h)

    def on_body(self, c) -> None:
        pass

    def on_request_end(self, t) -> None:
        pass


def _head(authorization: str, session: str = "7d3f0c2a9b"):
    c = _Heads()
    RequestParser(c).feed(
        (
            "POST /mcp HTTP/1.1\r\nHost: gw.example.com\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\n"
            f"MCP-Protocol-Version: 2025-06-18\r\nAuthorization: {authorization}\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode()
    )
    return c.heads[0]


PEER = "10.0.0.1"
# The session id as an authenticated client holds it: sealed with its principal.
_SEALED = RP.seal.seal(b"7d3f0c2a9b", RP.authenticate(_head("Bearer " + RS_TOKEN), PEER).key).decode()
HEAD = _head("Bearer " + RS_TOKEN, _SEALED)


def _baseline():
    env = scan_jsonrpc(BODY)
    return env.method, env.name


def _policy_on():
    env = scan_jsonrpc(BODY)
    p = RP.authenticate(HEAD, PEER)
    assert RP.seal.open(HEAD.session_id, p.key) is not None
    r = RP.admit(p, env.method, env.name, "b1", HEAD.session_id)
    assert r is None
    return p


@pytest.mark.benchmark(group="per-request")
def test_baseline_no_policy(benchmark):
    benchmark(_baseline)


@pytest.mark.benchmark(group="per-request")
def test_policy_on(benchmark):
    _policy_on()
    benchmark(_policy_on)


# --- the pieces ----------------------------------------------------------------------------


@pytest.mark.benchmark(group="authenticate")
def test_auth_cached_jwt(benchmark):
    RP.authenticate(HEAD, PEER)
    benchmark(RP.authenticate, HEAD, PEER)


@pytest.mark.benchmark(group="authenticate")
def test_auth_cached_api_key(benchmark):
    h = _head("Bearer " + API_KEY)
    RP.authenticate(h, PEER)
    benchmark(RP.authenticate, h, PEER)


@pytest.mark.benchmark(group="authenticate")
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_auth_first_sight_verify(benchmark, alg):
    """Cold: a token never seen before (pyjwt verification).  A fresh authenticator per
    round so the cache never answers."""
    from mcpfast.policy.auth import Authenticator

    key, kid = (_RSA, "rsa") if alg == "RS256" else (_EC, "ec")
    h = _head("Bearer " + _token(key, alg, kid))
    cfg = POLICY.config.auth

    def setup():
        return (Authenticator(cfg, resource=PUBLIC_URL + "/mcp", keys=POLICY.keys),), {}

    benchmark.pedantic(lambda a: a.authenticate(h, PEER), setup=setup, rounds=300)


@pytest.mark.benchmark(group="authorize")
def test_authz_memo_hit(benchmark):
    p = RP.authenticate(HEAD, PEER)
    benchmark(POLICY.authz.check, p, "tools/call", "echo", "b1")


@pytest.mark.benchmark(group="authorize")
def test_authz_50_rules_cold(benchmark):
    p = RP.authenticate(HEAD, PEER)
    assert POLICY.authz.evaluate(p, "tools/call", "echo", "b1").rule_id == "eng"
    benchmark(POLICY.authz.evaluate, p, "tools/call", "echo", "b1")


@pytest.mark.benchmark(group="ratelimit")
def test_ratelimit_not_hit(benchmark):
    p = RP.authenticate(HEAD, PEER)
    benchmark(POLICY.limiter.check, p, "tools/call", "echo", "b1")


_LIST = orjson.dumps(
    {"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": n, "description": "d" * 80, "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}}
        for n in ["echo"] + [f"team{i}_tool" for i in range(49)]]}}
)  # fmt: skip


@pytest.mark.benchmark(group="filter")
def test_filter_tools_list_50(benchmark):
    p = RP.authenticate(HEAD, PEER)
    out = RP.filter_list(p, "tools/list", _LIST, "b1")
    assert len(orjson.loads(out)["result"]["tools"]) == 1
    benchmark(RP.filter_list, p, "tools/list", _LIST, "b1")


@pytest.mark.benchmark(group="filter")
def test_principal_copy_new_ip(benchmark):
    p: Principal = RP.authenticate(HEAD, PEER)
    benchmark(p.with_ip, "10.9.9.9")
