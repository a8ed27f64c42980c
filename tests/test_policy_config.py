"""Policy configuration: the documented examples load, defaults are the secure ones,
and every mistake is reported under the key that holds it."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import tomllib
from policyutil import ISSUER, make_ec, make_rsa

from mcpfast.config import ConfigError
from mcpfast.policy import build_policy_config
from mcpfast.policy.config import DEFAULT_OPEN_METHODS, POLICY_SECTIONS

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "policy.md")


def _toml_blocks() -> list[dict]:
    text = Path(DOC).read_text(encoding="utf-8")
    return [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", text, re.DOTALL)]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def test_documented_examples_load(monkeypatch):
    monkeypatch.setenv("MCPFAST_JWT_SECRET", "x" * 64)
    blocks = _toml_blocks()
    assert len(blocks) >= 3
    full = build_policy_config(blocks[0])
    assert full.enabled and set(blocks[0]) == set(POLICY_SECTIONS)
    assert [r.id for r in full.authz.rules] == [
        "admins", "no-shell", "dangerous-needs-admin-scope", "engineers", "data-team-keys",
    ]  # fmt: skip
    assert full.ratelimit.limits[1].rate == pytest.approx(10 / 60)
    assert full.auth.api_keys.keys[0].attributes == (("team", "data"), ("env", ("prod", "staging")))
    for fragment in blocks[1:]:  # the smaller examples, each on top of the full one
        merged = _merge(blocks[0], fragment)
        if "jwt" in fragment.get("auth", {}):
            merged["auth"]["jwt"] = fragment["auth"]["jwt"]
        build_policy_config(merged)


def test_documented_keys_are_the_known_keys():
    """Every setting the parser knows appears in the docs (and so is documented)."""
    text = Path(DOC).read_text(encoding="utf-8")
    import mcpfast.policy.config as pc

    from mcpfast.validate import Section

    known = set()
    for v in vars(pc).values():  # every section's TOML schema
        if isinstance(v, type) and issubclass(v, Section) and v.__module__ == pc.__name__:
            known.update(v.__struct_fields__)
    assert {"issuer", "sha256", "client_ips", "per_minute", "max_events_per_second"} <= known
    missing = sorted(k for k in known if f"`{k}`" not in text)
    assert not missing, f"undocumented keys: {missing}"


def test_defaults_without_sections():
    cfg = build_policy_config({"server": {"listen": "127.0.0.1:0"}})
    assert not cfg.enabled
    assert cfg.auth.mode == "off" and not cfg.authz.enabled and not cfg.ratelimit.limits


def test_secure_defaults_when_sections_exist():
    cfg = build_policy_config({"auth": {"api_keys": {}}, "authz": {}})
    assert cfg.auth.mode == "required"
    assert cfg.authz.default == "deny" and cfg.authz.open_methods == DEFAULT_OPEN_METHODS
    assert cfg.auth.jwt is None and cfg.auth.api_keys.header == "x-api-key"


def test_key_files_and_secret_sources(tmp_path, monkeypatch):
    rsa_kp, ec_kp = make_rsa("r"), make_ec("e")
    pem = tmp_path / "rsa.pem"
    pem.write_text(rsa_kp.public_pem())
    from cryptography.hazmat.primitives import serialization

    priv = tmp_path / "ec-private.pem"
    priv.write_bytes(
        ec_kp.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    sec = tmp_path / "hmac.txt"
    sec.write_text("k" * 48 + "\n")
    monkeypatch.setenv("HS_SECRET", "e" * 32)
    cfg = build_policy_config(
        {"auth": {"audiences": ["x"], "jwt": {"issuer": ISSUER, "keys": [
            {"kid": "r", "public_key_file": str(pem)},
            {"kid": "e", "public_key_file": str(priv)},
            {"kid": "f", "secret_file": str(sec)},
            {"kid": "v", "secret_env": "HS_SECRET"},
        ]}}}
    )  # fmt: skip
    keys = {k.kid: k for k in cfg.auth.jwt.keys}
    assert keys["r"].algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert keys["e"].algorithms == {"ES256"}
    assert keys["f"].algorithms == {"HS256", "HS384"}  # 48 bytes: too short for HS512
    assert keys["v"].algorithms == {"HS256"}
    redacted = cfg.as_dict()["auth"]["jwt"]["keys"]
    assert all(k["key"] == "<redacted>" for k in redacted)
    assert "e" * 32 not in repr(cfg.as_dict())


def _jwt(**over):
    j = {"issuer": ISSUER, "keys": [{"kid": "h", "secret": "s" * 32}]}
    j.update(over)
    return {"auth": {"audiences": ["x"], "jwt": j}}


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"auth": {"mode": "sometimes"}}, "auth.mode"),
        ({"auth": {"mode": "required"}}, "auth"),
        ({"auth": {"colour": 1, "api_keys": {}}}, "auth.colour"),
        ({"auth": {"jwt": {"issuer": ISSUER, "keys": [{"secret": "s" * 32}]}}}, "auth.public_url"),
        ({"auth": {"authorization_servers": [ISSUER], "api_keys": {}}}, "auth.public_url"),
        ({"auth": {"public_url": "ftp://x", "api_keys": {}}}, "auth.public_url"),
        ({"auth": {"public_url": "https://x/?q=1", "api_keys": {}}}, "auth.public_url"),
        (
            {"auth": {"public_url": "https://x", "authorization_servers": ["not a url"], "api_keys": {}}},
            "auth.authorization_servers[0]",
        ),
        ({"auth": {"scopes_supported": ['bad"scope'], "api_keys": {}}}, "auth.scopes_supported[0]"),
        ({"auth": {"max_sessions": 0, "api_keys": {}}}, "auth.max_sessions"),
        ({"auth": {"routes": {"/x": {"mode": "maybe"}}, "api_keys": {}}}, "auth.routes./x.mode"),
        ({"auth": {"routes": {"x": {}}, "api_keys": {}}}, "auth.routes.x"),
        (_jwt(issuer=None), "auth.jwt.issuer"),
        ({"auth": {"audiences": ["x"], "jwt": {"keys": []}}}, "auth.jwt.issuer"),
        ({"auth": {"audiences": ["x"], "jwt": {"issuer": ISSUER}}}, "auth.jwt"),
        (_jwt(algorithms=["none"]), "auth.jwt.algorithms[0]"),
        (_jwt(algorithms=["HS256", "XS1"]), "auth.jwt.algorithms[1]"),
        (_jwt(keys=[{"kid": "h", "secret": "short"}]), "auth.jwt.keys[0].secret"),
        (_jwt(keys=[{"kid": "h", "secret_env": "MCPFAST_TEST_UNSET_VAR"}]), "auth.jwt.keys[0].secret_env"),
        (_jwt(keys=[{"kid": "h", "secret_file": "/nonexistent/secret"}]), "auth.jwt.keys[0].secret_file"),
        (
            _jwt(keys=[{"kid": "h", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}]),
            "auth.jwt.keys[0].public_key",
        ),
        (_jwt(keys=[{"kid": "h", "public_key_file": "/nonexistent.pem"}]), "auth.jwt.keys[0].public_key_file"),
        (_jwt(keys=[{"kid": "h", "jwk": {"kty": "RSA"}}]), "auth.jwt.keys[0].jwk"),
        (_jwt(keys=[{"kid": "h"}]), "auth.jwt.keys[0]"),
        (_jwt(keys=[{"kid": "h", "secret": "s" * 32, "secret_env": "X"}]), "auth.jwt.keys[0]"),
        (_jwt(keys=[{"kid": "h", "secret": "s" * 32}, {"kid": "h", "secret": "t" * 32}]), "auth.jwt.keys"),
        (_jwt(jwks_url="file:///etc/jwks.json"), "auth.jwt.jwks_url"),
        (_jwt(leeway_seconds=-1), "auth.jwt.leeway_seconds"),
        (_jwt(cache_size="big"), "auth.jwt.cache_size"),
        ({"auth": {"api_keys": {"header": "Bad Header"}}}, "auth.api_keys.header"),
        ({"auth": {"api_keys": {"header": "Authorization"}}}, "auth.api_keys.header"),
        ({"auth": {"api_keys": {"header": "", "bearer": False}}}, "auth.api_keys"),
        ({"auth": {"api_keys": {"keys": [{"sha256": "abc", "subject": "x"}]}}}, "auth.api_keys.keys[0].sha256"),
        ({"auth": {"api_keys": {"keys": [{"subject": "x"}]}}}, "auth.api_keys.keys[0].sha256"),
        ({"auth": {"api_keys": {"keys": [{"sha256": "a" * 64}]}}}, "auth.api_keys.keys[0].subject"),
        (
            {"auth": {"api_keys": {"keys": [{"sha256": "a" * 64, "subject": "x", "attributes": {"n": 1}}]}}},
            "auth.api_keys.keys[0].attributes.n",
        ),
        (
            {
                "auth": {
                    "api_keys": {"keys": [{"sha256": "a" * 64, "subject": "x"}, {"sha256": "A" * 64, "subject": "y"}]}
                }
            },
            "auth.api_keys.keys[1].sha256",
        ),
        ({"audit": {"sink": ""}}, "audit.sink"),
        ({"audit": {"max_events_per_second": -1}}, "audit.max_events_per_second"),
        ({"audit": {"path": "x"}}, "audit.path"),
        ({"authz": {"deny_status": 500}}, "authz.deny_status"),
        ({"authz": {"rules": {"effect": "allow"}}}, "authz.rules"),
        ({"ratelimit": {"limits": {}}}, "ratelimit.limits"),
        ({"ratelimit": {"max_keys": 0}}, "ratelimit.max_keys"),
        ({"auth": "yes"}, "auth"),
    ],
)
def test_errors_name_the_key(raw, key):
    os.environ.pop("MCPFAST_TEST_UNSET_VAR", None)
    with pytest.raises(ConfigError) as ei:
        build_policy_config(raw)
    assert ei.value.key == key, str(ei.value)
