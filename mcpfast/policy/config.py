"""The ``[auth]``, ``[authz]``, ``[ratelimit]`` and ``[audit]`` sections: TOML → frozen dataclasses.

Theory of operation.  ``build_policy_config(raw)`` takes the whole TOML-shaped dict (it
only reads these four sections) and returns a ``PolicyConfig``, or raises
``ConfigError(key, problem)`` naming the dotted key at fault, as the rest of the
configuration does.  Everything that can fail is tried here, at load time: PEM files
are read and parsed, JWKs decoded, secrets checked for length, globs compiled, CIDRs
parsed, so ``mcpfast check-config`` reports a bad key file before the gateway starts.
Secrets are kept only as key objects (HMAC bytes) or hashes (API keys); ``as_dict``
redacts them.

Secure defaults: an ``[auth]`` section without ``mode`` means ``required``; an
``[authz]`` section without ``default`` means ``deny`` (protocol plumbing such as
``initialize`` and the list methods stays open, see ``open_methods``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..validate import ConfigError
from ..validate import expect as _expect
from ..validate import positive as _positive
from .keys import SUPPORTED_ALGORITHMS, KeyError_, VerifyKey, key_from_jwk, load_pem, make_key

__all__ = [
    "PolicyConfig",
    "AuthConfig",
    "RouteAuthConfig",
    "JwtConfig",
    "ApiKeysConfig",
    "ApiKeyEntry",
    "AuthzConfig",
    "RuleConfig",
    "RateLimitConfig",
    "LimitConfig",
    "AuditConfig",
    "build_policy_config",
    "POLICY_SECTIONS",
    "DEFAULT_OPEN_METHODS",
]

#: Top-level TOML tables this module owns.
POLICY_SECTIONS = ("auth", "authz", "ratelimit", "audit")

MODES = ("off", "optional", "required")
# Methods that stay allowed when no rule matches, even with ``default = "deny"``: the
# session lifecycle, liveness and the list methods (their answers are filtered per item).
DEFAULT_OPEN_METHODS = (
    "initialize",
    "ping",
    "notifications/*",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "logging/setLevel",
)
LIMIT_DIMENSIONS = ("principal", "ip", "tool", "method", "backend")
# RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_RULE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


# ---------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True, slots=True)
class JwtConfig:
    issuers: tuple[str, ...]
    keys: tuple[VerifyKey, ...] = ()
    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS
    jwks_url: str | None = None
    jwks_refresh_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 30.0
    jwks_timeout_seconds: float = 5.0
    jwks_max_bytes: int = 1 << 20
    leeway_seconds: float = 30.0
    required_claims: tuple[str, ...] = ("exp",)
    subject_claim: str = "sub"
    scope_claims: tuple[str, ...] = ("scope", "scp")
    cache_size: int = 10000
    cache_seconds: float = 300.0  # a token without exp is re-verified after this long


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    sha256: str
    subject: str
    scopes: frozenset[str] = frozenset()
    attributes: tuple[tuple[str, Any], ...] = ()  # values: str or tuple of str


@dataclass(frozen=True, slots=True)
class ApiKeysConfig:
    header: str | None = "x-api-key"  # lower-cased; None: not read from a header
    bearer: bool = True  # also accepted as "Authorization: Bearer <key>"
    keys: tuple[ApiKeyEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteAuthConfig:
    """Per-route overrides of ``mode`` and ``required_scopes``."""

    path: str
    mode: str | None = None
    required_scopes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: str = "off"
    public_url: str | None = None
    authorization_servers: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()  # accepted besides each route's canonical resource URI
    resource_name: str | None = None
    resource_documentation: str | None = None
    forward_credentials: bool = False
    bind_sessions: bool = True  # seal passthrough session ids with the principal (policy/sessions.py)
    max_sessions: int = 100000  # verified sealed ids cached per route (a miss costs one HMAC)
    jwt: JwtConfig | None = None
    api_keys: ApiKeysConfig | None = None
    routes: tuple[RouteAuthConfig, ...] = ()

    def for_route(self, path: str) -> tuple[str, tuple[str, ...]]:
        """(mode, required_scopes) in force on ``path``."""
        for r in self.routes:
            if r.path == path:
                return (r.mode or self.mode, self.required_scopes if r.required_scopes is None else r.required_scopes)
        return self.mode, self.required_scopes


@dataclass(frozen=True, slots=True)
class RuleConfig:
    id: str
    effect: str  # "allow" | "deny"
    subjects: tuple[str, ...] | None = None  # globs
    kinds: tuple[str, ...] | None = None
    claims: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (dotted claim path, any-of values)
    scopes: tuple[str, ...] = ()  # all required for the rule to match
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (attribute, any-of values)
    client_ips: tuple[Any, ...] | None = None  # ip_network objects
    methods: tuple[str, ...] | None = None  # globs
    names: tuple[str, ...] | None = None  # globs, with ``methods``
    tools: tuple[str, ...] | None = None  # globs: tools/call names
    prompts: tuple[str, ...] | None = None  # globs: prompts/get names
    resources: tuple[str, ...] | None = None  # globs: resources/read|subscribe|unsubscribe URIs
    backends: tuple[str, ...] | None = None  # globs
    require_scopes: tuple[str, ...] = ()  # allow rules: matched but lacking these → 403 insufficient_scope


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    enabled: bool = False
    default: str = "deny"
    hide_denied: bool = False
    deny_status: int = 403
    open_methods: tuple[str, ...] = DEFAULT_OPEN_METHODS
    rules: tuple[RuleConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitConfig:
    id: str
    key: tuple[str, ...]
    rate: float  # tokens per second
    burst: float
    methods: tuple[str, ...] | None = None  # globs; None: every request
    tools: tuple[str, ...] | None = None  # globs over the tool/prompt name or resource URI
    backends: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    limits: tuple[LimitConfig, ...] = ()
    max_keys: int = 100000


@dataclass(frozen=True, slots=True)
class AuditConfig:
    sink: str = "-"  # "-" stdout, a file path, or "off"
    max_events_per_second: int = 1000  # 0: unlimited


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    auth: AuthConfig = field(default_factory=AuthConfig)
    authz: AuthzConfig = field(default_factory=AuthzConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    @property
    def enabled(self) -> bool:
        return self.auth.mode != "off" or self.authz.enabled or bool(self.ratelimit.limits)

    def as_dict(self) -> dict[str, Any]:
        """Effective policy as plain data for ``check-config``: secrets redacted."""

        def conv(v: Any) -> Any:
            if isinstance(v, VerifyKey):
                return {"kid": v.kid, "algorithms": sorted(v.algorithms), "key": "<redacted>"}
            if dataclasses.is_dataclass(v):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, (tuple, list)):
                return [conv(x) for x in v]
            if isinstance(v, frozenset):
                return sorted(conv(x) for x in v)
            if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                return str(v)
            return v

        return conv(self)


# ---------------------------------------------------------------------------------
# Helpers: every one takes the dotted key, so errors name it.


def _table(raw: dict, name: str, key: str) -> dict:
    v = raw.get(name, {})
    if not isinstance(v, dict):
        raise ConfigError(key, "expected a table")
    return v


def _unknown(section: dict, known: set[str], prefix: str) -> None:
    for k in section:
        if k not in known:
            raise ConfigError(f"{prefix}.{k}", f"unknown setting (known: {', '.join(sorted(known))})")


def _get(section: dict, name: str, prefix: str, typ, default):
    """``validate.expect``, but a boolean is refused wherever a number is expected."""
    if typ in (int, float) and isinstance(section.get(name), bool):
        raise ConfigError(f"{prefix}.{name}", f"expected a number, got {section[name]!r}")
    return _expect(section, name, prefix, typ, default)


def _strings(section: dict, name: str, prefix: str, *, allow_str: bool = True, nonempty: bool = False):
    """A list of strings (or one string when ``allow_str``), as a tuple; None when absent."""
    if name not in section:
        return None
    v = section[name]
    key = f"{prefix}.{name}"
    if isinstance(v, str) and allow_str:
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(key, "expected a list of strings")
    for i, x in enumerate(v):
        if not x:
            raise ConfigError(f"{key}[{i}]", "empty string")
    if nonempty and not v:
        raise ConfigError(key, "must not be empty")
    return tuple(v)


def _scopes(section: dict, name: str, prefix: str) -> tuple[str, ...] | None:
    v = _strings(section, name, prefix)
    if v is None:
        return None
    out: list[str] = []
    for i, s in enumerate(v):
        for tok in s.split():
            if not _SCOPE_RE.match(tok):
                raise ConfigError(f"{prefix}.{name}[{i}]", f"not a valid OAuth scope token: {tok!r}")
            out.append(tok)
    return tuple(out)


def _url(v: str, key: str, *, allow_path: bool = True) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http(s) URL, got {v!r}")
    if parts.fragment or (parts.query and not allow_path):
        raise ConfigError(key, f"must not have a query or fragment, got {v!r}")
    try:
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(key, f"bad port in {v!r}") from None
    if any(c in v for c in '"\\ \r\n'):
        raise ConfigError(key, "must not contain quotes, backslashes or whitespace")
    return v


def _glob(v: str, key: str) -> str:
    if len(v) > 1024:
        raise ConfigError(key, "pattern longer than 1024 characters")
    return v


def _globs(section: dict, name: str, prefix: str) -> tuple[str, ...] | None:
    v = _strings(section, name, prefix)
    if v is None:
        return None
    return tuple(_glob(x, f"{prefix}.{name}[{i}]") for i, x in enumerate(v))


def _value_lists(section: dict, name: str, prefix: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``{ groups = ["a", "b"], org = "acme" }`` → ((name, (values...)), ...)."""
    if name not in section:
        return ()
    t = section[name]
    key = f"{prefix}.{name}"
    if not isinstance(t, dict):
        raise ConfigError(key, "expected a table of string or list-of-string values")
    out = []
    for k, v in t.items():
        if isinstance(v, (str, bool, int)) and not isinstance(v, float):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, (str, bool, int)) for x in v):
            raise ConfigError(f"{key}.{k}", "expected a string or a non-empty list of strings")
        out.append((k, tuple(_scalar_str(x) for x in v)))
    return tuple(out)


def _scalar_str(x: Any) -> str:
    # Claims can be booleans or numbers; they are compared in their JSON text form.
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


def _read_secret(section: dict, prefix: str) -> bytes | None:
    """An HMAC secret from ``secret``, ``secret_env`` or ``secret_file``."""
    given = [k for k in ("secret", "secret_env", "secret_file") if k in section]
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError(f"{prefix}.{given[1]}", "give only one of secret, secret_env, secret_file")
    k = given[0]
    v = _get(section, k, prefix, str, "")
    key = f"{prefix}.{k}"
    if k == "secret":
        data = v.encode("utf-8")
    elif k == "secret_env":
        env = os.environ.get(v)
        if env is None:
            raise ConfigError(key, f"environment variable {v} is not set")
        data = env.encode("utf-8")
    else:
        try:
            with open(v, "rb") as f:
                data = f.read().strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read {v}: {exc.strerror}") from None
    if not data:
        raise ConfigError(key, "empty secret")
    return data


def _jwt_key(k: Any, prefix: str, allowed: frozenset[str]) -> VerifyKey:
    if not isinstance(k, dict):
        raise ConfigError(prefix, "expected a table")
    _unknown(
        k,
        {"kid", "algorithms", "secret", "secret_env", "secret_file", "public_key", "public_key_file", "jwk"},
        prefix,
    )
    kid = _get(k, "kid", prefix, str, None)
    algs = _strings(k, "algorithms", prefix)
    if algs is not None:
        bad = [a for a in algs if a not in SUPPORTED_ALGORITHMS]
        if bad:
            raise ConfigError(f"{prefix}.algorithms", f"unsupported algorithm {bad[0]!r}")
        allowed = allowed & frozenset(algs)
    sources = [s for s in ("secret", "secret_env", "secret_file", "public_key", "public_key_file", "jwk") if s in k]
    if len(sources) != 1:
        raise ConfigError(
            prefix, "give exactly one of secret, secret_env, secret_file, public_key, public_key_file, jwk"
        )
    src = sources[0]
    key = f"{prefix}.{src}"
    try:
        if src.startswith("secret"):
            secret = _read_secret(k, prefix)
            return make_key(secret, kid, allowed, "config")
        if src == "jwk":
            jwk = k["jwk"]
            if not isinstance(jwk, dict):
                raise ConfigError(key, "expected an inline table (a JWK)")
            if kid is not None:
                jwk = {**jwk, "kid": kid}
            return key_from_jwk(jwk, allowed, "config", allow_symmetric=True)
        if src == "public_key":
            pem = _get(k, "public_key", prefix, str, "").encode()
        else:
            path = _get(k, "public_key_file", prefix, str, "")
            try:
                with open(path, "rb") as f:
                    pem = f.read()
            except OSError as exc:
                raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
        return make_key(load_pem(pem), kid, allowed, "config")
    except KeyError_ as exc:
        raise ConfigError(key, str(exc)) from None


# ---------------------------------------------------------------------------------
# Sections


def _build_jwt(j: dict, prefix: str) -> JwtConfig:
    _unknown(
        j,
        {"issuer", "algorithms", "keys", "jwks_url", "jwks_refresh_seconds", "jwks_min_refresh_seconds",
         "jwks_timeout_seconds", "jwks_max_bytes", "leeway_seconds", "required_claims", "subject_claim",
         "scope_claims", "cache_size", "cache_seconds"},
        prefix,
    )  # fmt: skip
    issuers = _strings(j, "issuer", prefix, nonempty=True)
    if issuers is None:
        raise ConfigError(f"{prefix}.issuer", "missing (the accepted token issuer, or a list of them)")
    algs = _strings(j, "algorithms", prefix)
    if algs is None:
        allowed = SUPPORTED_ALGORITHMS
    else:
        for i, a in enumerate(algs):
            if a not in SUPPORTED_ALGORITHMS:
                why = " (unsigned tokens are never accepted)" if a.lower() == "none" else ""
                raise ConfigError(f"{prefix}.algorithms[{i}]", f"unsupported algorithm {a!r}{why}")
        allowed = frozenset(algs)
    keys_raw = j.get("keys", [])
    if not isinstance(keys_raw, list):
        raise ConfigError(f"{prefix}.keys", "expected an array of tables ([[auth.jwt.keys]])")
    keys = tuple(_jwt_key(k, f"{prefix}.keys[{i}]", allowed) for i, k in enumerate(keys_raw))
    kids = [k.kid for k in keys if k.kid is not None]
    if len(kids) != len(set(kids)):
        raise ConfigError(f"{prefix}.keys", "duplicate kid")
    jwks_url = _get(j, "jwks_url", prefix, str, None)
    if jwks_url is not None:
        _url(jwks_url, f"{prefix}.jwks_url")
    if not keys and jwks_url is None:
        raise ConfigError(prefix, "needs keys ([[auth.jwt.keys]]) or jwks_url")
    req = _strings(j, "required_claims", prefix)
    scope_claims = _strings(j, "scope_claims", prefix)
    d = JwtConfig(issuers=())
    return JwtConfig(
        issuers=issuers,
        keys=keys,
        algorithms=allowed,
        jwks_url=jwks_url,
        jwks_refresh_seconds=_positive(
            _get(j, "jwks_refresh_seconds", prefix, float, d.jwks_refresh_seconds), f"{prefix}.jwks_refresh_seconds"
        ),
        jwks_min_refresh_seconds=_positive(
            _get(j, "jwks_min_refresh_seconds", prefix, float, d.jwks_min_refresh_seconds),
            f"{prefix}.jwks_min_refresh_seconds",
            allow_zero=True,
        ),
        jwks_timeout_seconds=_positive(
            _get(j, "jwks_timeout_seconds", prefix, float, d.jwks_timeout_seconds), f"{prefix}.jwks_timeout_seconds"
        ),
        jwks_max_bytes=_positive(_get(j, "jwks_max_bytes", prefix, int, d.jwks_max_bytes), f"{prefix}.jwks_max_bytes"),
        leeway_seconds=_positive(
            _get(j, "leeway_seconds", prefix, float, d.leeway_seconds), f"{prefix}.leeway_seconds", allow_zero=True
        ),
        required_claims=d.required_claims if req is None else req,
        subject_claim=_get(j, "subject_claim", prefix, str, d.subject_claim),
        scope_claims=d.scope_claims if scope_claims is None else scope_claims,
        cache_size=_positive(_get(j, "cache_size", prefix, int, d.cache_size), f"{prefix}.cache_size", allow_zero=True),
        cache_seconds=_positive(_get(j, "cache_seconds", prefix, float, d.cache_seconds), f"{prefix}.cache_seconds"),
    )


def _build_api_keys(a: dict, prefix: str) -> ApiKeysConfig:
    _unknown(a, {"header", "bearer", "keys"}, prefix)
    header = _get(a, "header", prefix, str, "X-API-Key")
    if header:
        if not _HEADER_NAME_RE.match(header):
            raise ConfigError(f"{prefix}.header", f"not a valid header name: {header!r}")
        if header.lower() in ("authorization", "host", "content-length", "cookie"):
            raise ConfigError(f"{prefix}.header", f"{header} cannot carry API keys")
    keys_raw = a.get("keys", [])
    if not isinstance(keys_raw, list):
        raise ConfigError(f"{prefix}.keys", "expected an array of tables ([[auth.api_keys.keys]])")
    entries = []
    seen = set()
    for i, k in enumerate(keys_raw):
        kp = f"{prefix}.keys[{i}]"
        if not isinstance(k, dict):
            raise ConfigError(kp, "expected a table")
        _unknown(k, {"sha256", "subject", "scopes", "attributes"}, kp)
        digest = _get(k, "sha256", kp, str, None)
        if digest is None:
            raise ConfigError(f"{kp}.sha256", "missing (hex SHA-256 of the key: `printf %s KEY | sha256sum`)")
        digest = digest.lower()
        if not _SHA256_RE.match(digest):
            raise ConfigError(f"{kp}.sha256", "expected 64 hex digits")
        if digest in seen:
            raise ConfigError(f"{kp}.sha256", "duplicate key")
        seen.add(digest)
        subject = _get(k, "subject", kp, str, None)
        if not subject:
            raise ConfigError(f"{kp}.subject", "missing")
        attrs = []
        at = k.get("attributes", {})
        if not isinstance(at, dict):
            raise ConfigError(f"{kp}.attributes", "expected a table")
        for name, v in at.items():
            if isinstance(v, str):
                attrs.append((name, v))
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                attrs.append((name, tuple(v)))
            else:
                raise ConfigError(f"{kp}.attributes.{name}", "expected a string or a list of strings")
        entries.append(
            ApiKeyEntry(
                sha256=digest,
                subject=subject,
                scopes=frozenset(_scopes(k, "scopes", kp) or ()),
                attributes=tuple(attrs),
            )
        )
    bearer = _get(a, "bearer", prefix, bool, True)
    if not header and not bearer:
        raise ConfigError(prefix, "API keys need a header or bearer = true")
    return ApiKeysConfig(header=header.lower() if header else None, bearer=bearer, keys=tuple(entries))


def _build_auth(raw: dict) -> AuthConfig:
    if "auth" not in raw:
        return AuthConfig()
    a = _table(raw, "auth", "auth")
    _unknown(
        a,
        {"mode", "public_url", "authorization_servers", "scopes_supported", "required_scopes", "audiences",
         "resource_name", "resource_documentation", "forward_credentials", "bind_sessions", "max_sessions",
         "jwt", "api_keys", "routes"},
        "auth",
    )  # fmt: skip
    mode = _get(a, "mode", "auth", str, "required").lower()
    if mode not in MODES:
        raise ConfigError("auth.mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    public_url = _get(a, "public_url", "auth", str, None)
    if public_url is not None:
        _url(public_url, "auth.public_url", allow_path=False)
        public_url = public_url.rstrip("/")
    servers = _strings(a, "authorization_servers", "auth") or ()
    for i, s in enumerate(servers):
        _url(s, f"auth.authorization_servers[{i}]")
    audiences = _strings(a, "audiences", "auth") or ()
    jwt_cfg = _build_jwt(_table(a, "jwt", "auth.jwt"), "auth.jwt") if "jwt" in a else None
    api = _build_api_keys(_table(a, "api_keys", "auth.api_keys"), "auth.api_keys") if "api_keys" in a else None
    if mode == "required" and jwt_cfg is None and api is None:
        raise ConfigError("auth", "mode = required needs [auth.jwt] or [auth.api_keys]")
    if jwt_cfg is not None and public_url is None and not audiences:
        raise ConfigError(
            "auth.public_url", "needed to check token audiences (RFC 8707): set it, or list auth.audiences"
        )
    if servers and public_url is None:
        raise ConfigError("auth.public_url", "needed to publish protected-resource metadata for authorization_servers")
    for k in ("resource_name", "resource_documentation"):
        v = _get(a, k, "auth", str, None)
        if k == "resource_documentation" and v is not None:
            _url(v, "auth.resource_documentation")
    routes = []
    rt = _table(a, "routes", "auth.routes")
    for path, r in rt.items():
        rp = f"auth.routes.{path}"
        if not path.startswith("/"):
            raise ConfigError(rp, "route paths start with '/'")
        if not isinstance(r, dict):
            raise ConfigError(rp, "expected a table")
        _unknown(r, {"mode", "required_scopes"}, rp)
        rmode = _get(r, "mode", rp, str, None)
        if rmode is not None and rmode.lower() not in MODES:
            raise ConfigError(f"{rp}.mode", f"expected one of {', '.join(MODES)}, got {rmode!r}")
        routes.append(
            RouteAuthConfig(
                path=path.rstrip("/") or "/",
                mode=rmode.lower() if rmode else None,
                required_scopes=_scopes(r, "required_scopes", rp),
            )
        )
    return AuthConfig(
        mode=mode,
        public_url=public_url,
        authorization_servers=servers,
        scopes_supported=_scopes(a, "scopes_supported", "auth") or (),
        required_scopes=_scopes(a, "required_scopes", "auth") or (),
        audiences=audiences,
        resource_name=_get(a, "resource_name", "auth", str, None),
        resource_documentation=_get(a, "resource_documentation", "auth", str, None),
        forward_credentials=_get(a, "forward_credentials", "auth", bool, False),
        bind_sessions=_get(a, "bind_sessions", "auth", bool, True),
        max_sessions=_positive(_get(a, "max_sessions", "auth", int, 100000), "auth.max_sessions"),
        jwt=jwt_cfg,
        api_keys=api,
        routes=tuple(routes),
    )


_RULE_KEYS = {
    "id", "effect", "subjects", "kinds", "claims", "scopes", "attributes", "client_ips", "methods", "names",
    "tools", "prompts", "resources", "backends", "require_scopes",
}  # fmt: skip


def _build_rule(r: Any, i: int, prefix: str) -> RuleConfig:
    rp = f"{prefix}[{i}]"
    if not isinstance(r, dict):
        raise ConfigError(rp, "expected a table")
    _unknown(r, _RULE_KEYS, rp)
    rid = _get(r, "id", rp, str, f"rule-{i}")
    if not _RULE_ID_RE.match(rid):
        raise ConfigError(f"{rp}.id", "use 1-64 characters of [A-Za-z0-9_.:-]")
    effect = _get(r, "effect", rp, str, None)
    if effect not in ("allow", "deny"):
        raise ConfigError(f"{rp}.effect", f"expected allow or deny, got {effect!r}")
    kinds = _strings(r, "kinds", rp)
    if kinds is not None:
        for j, k in enumerate(kinds):
            if k not in ("jwt", "apikey", "anonymous"):
                raise ConfigError(f"{rp}.kinds[{j}]", f"expected jwt, apikey or anonymous, got {k!r}")
    nets = None
    ips = _strings(r, "client_ips", rp)
    if ips is not None:
        out = []
        for j, s in enumerate(ips):
            try:
                out.append(ipaddress.ip_network(s, strict=False))
            except ValueError:
                raise ConfigError(f"{rp}.client_ips[{j}]", f"not an IP address or CIDR: {s!r}") from None
        nets = tuple(out)
    methods = _globs(r, "methods", rp)
    names = _globs(r, "names", rp)
    if names is not None and methods is None:
        raise ConfigError(f"{rp}.names", "needs methods (or use tools / prompts / resources)")
    require = _scopes(r, "require_scopes", rp) or ()
    if require and effect != "allow":
        raise ConfigError(f"{rp}.require_scopes", "only allow rules can require scopes")
    return RuleConfig(
        id=rid,
        effect=effect,
        subjects=_globs(r, "subjects", rp),
        kinds=kinds,
        claims=_value_lists(r, "claims", rp),
        scopes=_scopes(r, "scopes", rp) or (),
        attributes=_value_lists(r, "attributes", rp),
        client_ips=nets,
        methods=methods,
        names=names,
        tools=_globs(r, "tools", rp),
        prompts=_globs(r, "prompts", rp),
        resources=_globs(r, "resources", rp),
        backends=_globs(r, "backends", rp),
        require_scopes=require,
    )


def _build_authz(raw: dict) -> AuthzConfig:
    if "authz" not in raw:
        return AuthzConfig()
    z = _table(raw, "authz", "authz")
    _unknown(z, {"default", "hide_denied", "deny_status", "open_methods", "rules"}, "authz")
    default = _get(z, "default", "authz", str, "deny")
    if default not in ("allow", "deny"):
        raise ConfigError("authz.default", f"expected allow or deny, got {default!r}")
    status = _get(z, "deny_status", "authz", int, 403)
    if status not in (200, 403, 404):
        raise ConfigError("authz.deny_status", f"expected 200, 403 or 404, got {status!r}")
    rules_raw = z.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError("authz.rules", "expected an array of tables ([[authz.rules]])")
    rules = tuple(_build_rule(r, i, "authz.rules") for i, r in enumerate(rules_raw))
    ids = [r.id for r in rules]
    for i, rid in enumerate(ids):
        if rid in ids[:i]:
            raise ConfigError(f"authz.rules[{i}].id", f"duplicate rule id {rid!r}")
    om = _globs(z, "open_methods", "authz")
    return AuthzConfig(
        enabled=True,
        default=default,
        hide_denied=_get(z, "hide_denied", "authz", bool, False),
        deny_status=status,
        open_methods=DEFAULT_OPEN_METHODS if om is None else om,
        rules=rules,
    )


def _build_ratelimit(raw: dict) -> RateLimitConfig:
    if "ratelimit" not in raw:
        return RateLimitConfig()
    s = _table(raw, "ratelimit", "ratelimit")
    _unknown(s, {"max_keys", "limits"}, "ratelimit")
    lims_raw = s.get("limits", [])
    if not isinstance(lims_raw, list):
        raise ConfigError("ratelimit.limits", "expected an array of tables ([[ratelimit.limits]])")
    lims = []
    for i, lr in enumerate(lims_raw):
        lp = f"ratelimit.limits[{i}]"
        if not isinstance(lr, dict):
            raise ConfigError(lp, "expected a table")
        _unknown(lr, {"id", "key", "rate", "per_minute", "burst", "methods", "tools", "backends"}, lp)
        lid = _get(lr, "id", lp, str, f"limit-{i}")
        if not _RULE_ID_RE.match(lid):
            raise ConfigError(f"{lp}.id", "use 1-64 characters of [A-Za-z0-9_.:-]")
        key = _strings(lr, "key", lp, nonempty=True)
        if key is None:
            raise ConfigError(f"{lp}.key", f"missing (one or more of {', '.join(LIMIT_DIMENSIONS)})")
        for j, k in enumerate(key):
            if k not in LIMIT_DIMENSIONS:
                raise ConfigError(f"{lp}.key[{j}]", f"expected one of {', '.join(LIMIT_DIMENSIONS)}, got {k!r}")
        if len(set(key)) != len(key):
            raise ConfigError(f"{lp}.key", "repeated dimension")
        if ("rate" in lr) == ("per_minute" in lr):
            raise ConfigError(f"{lp}.rate", "give exactly one of rate (per second) or per_minute")
        if "rate" in lr:
            rate = _positive(_get(lr, "rate", lp, float, 0.0), f"{lp}.rate")
        else:
            rate = _positive(_get(lr, "per_minute", lp, float, 0.0), f"{lp}.per_minute") / 60.0
        burst = _get(lr, "burst", lp, float, max(1.0, rate))
        if burst < 1:
            raise ConfigError(f"{lp}.burst", f"must be >= 1, got {burst!r}")
        lims.append(
            LimitConfig(
                id=lid,
                key=key,
                rate=rate,
                burst=burst,
                methods=_globs(lr, "methods", lp),
                tools=_globs(lr, "tools", lp),
                backends=_globs(lr, "backends", lp),
            )
        )
    ids = [x.id for x in lims]
    for i, lid in enumerate(ids):
        if lid in ids[:i]:
            raise ConfigError(f"ratelimit.limits[{i}].id", f"duplicate limit id {lid!r}")
    return RateLimitConfig(
        limits=tuple(lims),
        max_keys=_positive(_get(s, "max_keys", "ratelimit", int, 100000), "ratelimit.max_keys"),
    )


def _build_audit(raw: dict) -> AuditConfig:
    if "audit" not in raw:
        return AuditConfig()
    s = _table(raw, "audit", "audit")
    _unknown(s, {"sink", "max_events_per_second"}, "audit")
    sink = _get(s, "sink", "audit", str, "-")
    if not sink:
        raise ConfigError("audit.sink", 'expected "-" (stdout), a file path, or "off"')
    return AuditConfig(
        sink=sink,
        max_events_per_second=_positive(
            _get(s, "max_events_per_second", "audit", int, 1000), "audit.max_events_per_second", allow_zero=True
        ),
    )


def build_policy_config(raw: dict[str, Any]) -> PolicyConfig:
    """Validate the policy sections of a TOML-shaped dict (other sections are ignored)."""
    return PolicyConfig(
        auth=_build_auth(raw),
        authz=_build_authz(raw),
        ratelimit=_build_ratelimit(raw),
        audit=_build_audit(raw),
    )
