"""The ``[auth]``, ``[authz]``, ``[ratelimit]`` and ``[audit]`` sections: TOML → frozen values.

Theory of operation.  ``build_policy_config(raw)`` takes the whole TOML-shaped dict (it
only reads these four sections) and returns a ``PolicyConfig``, or raises
``ConfigError(key, problem)`` naming the dotted key at fault, as the rest of the
configuration does.  Each section's TOML shape is a ``validate.Section`` (``AuthSection``,
``JwtSection``, ...: types, ranges, enumerations, no unknown keys), decoded in one
``validate.decode``; the ``_build_*`` functions then turn the decoded sections into the
dataclasses the policy engine reads, with the checks a type cannot say (URLs, scope
tokens, key material, which keys go together, duplicate ids).  ``[audit]``'s shape is its
value, so ``AuditConfig`` is its Struct.  Everything that can fail is tried here, at load time: PEM files
are read and parsed, JWKs decoded, secrets checked for length, globs compiled, CIDRs
parsed, so ``mcpfast check-config`` reports a bad key file before the gateway starts.
Secrets are kept only as key objects (HMAC bytes) or hashes (API keys); ``as_dict``
redacts them.

Secure defaults: an ``[auth]`` section without ``mode`` means ``required``; an
``[authz]`` section without ``default`` means ``deny`` (protocol plumbing such as
``initialize`` and the list methods stays open, see ``open_methods``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args
from urllib.parse import urlsplit

import msgspec

from ..validate import (
    ConfigError, HeaderName, NonEmpty, NonNegative, OneOrMore, Positive, Seconds, SecondsOrZero, Section, as_plain,
    decode, one_or_more,
)  # fmt: skip
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

Mode = Literal["off", "optional", "required"]
MODES = get_args(Mode)
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
# RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """Built from ``[auth.jwt]`` only (its defaults are ``JwtSection``'s)."""

    issuers: tuple[str, ...]
    keys: tuple[VerifyKey, ...]
    algorithms: frozenset[str]
    jwks_url: str | None
    jwks_refresh_seconds: float
    jwks_min_refresh_seconds: float
    jwks_timeout_seconds: float
    jwks_max_bytes: int
    leeway_seconds: float
    required_claims: tuple[str, ...]
    subject_claim: str
    scope_claims: tuple[str, ...]
    cache_size: int
    cache_seconds: float  # a token without exp is re-verified after this long


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    sha256: str
    subject: str
    scopes: frozenset[str] = frozenset()
    attributes: tuple[tuple[str, Any], ...] = ()  # values: str or tuple of str


@dataclass(frozen=True, slots=True)
class ApiKeysConfig:
    header: str | None  # lower-cased; None: not read from a header
    bearer: bool  # also accepted as "Authorization: Bearer <key>"
    keys: tuple[ApiKeyEntry, ...]


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


class AuditConfig(Section):
    sink: NonEmpty = "-"  # "-" stdout, a file path, or "off"
    max_events_per_second: NonNegative = 1000  # 0: unlimited


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

        def special(v: Any) -> Any:
            if isinstance(v, VerifyKey):
                return {"kid": v.kid, "algorithms": sorted(v.algorithms), "key": "<redacted>"}
            if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                return str(v)
            return NotImplemented

        return as_plain(self, special)


# ---------------------------------------------------------------------------------
# The TOML shape of each section (validate.Section: types, ranges, no unknown keys)

_Glob = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Globs = Union[_Glob, tuple[_Glob, ...]]
_Scalar = Union[str, bool, int]  # claims can be booleans or numbers
_AnyOf = Union[_Scalar, Annotated[tuple[_Scalar, ...], msgspec.Meta(min_length=1)]]
_Kind = Literal["jwt", "apikey", "anonymous"]
_Dimension = Literal["principal", "ip", "tool", "method", "backend"]
_Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}\Z", description="use 1-64 characters of [A-Za-z0-9_.:-]")]
_SECRETS = ("secret", "secret_env", "secret_file")
_KEY_SOURCES = (*_SECRETS, "public_key", "public_key_file", "jwk")


class JwtKeySection(Section):
    kid: str | None = None
    algorithms: OneOrMore | None = None
    secret: str | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None
    jwk: dict[str, Any] | None = None


class JwtSection(Section):
    issuer: Annotated[
        Union[NonEmpty, Annotated[tuple[NonEmpty, ...], msgspec.Meta(min_length=1)]],
        msgspec.Meta(extra={"missing": "the accepted token issuer, or a list of them"}),
    ]
    algorithms: OneOrMore | None = None
    keys: tuple[JwtKeySection, ...] = ()
    jwks_url: str | None = None
    jwks_refresh_seconds: Seconds = 300.0
    jwks_min_refresh_seconds: SecondsOrZero = 30.0
    jwks_timeout_seconds: Seconds = 5.0
    jwks_max_bytes: Positive = 1 << 20
    leeway_seconds: SecondsOrZero = 30.0
    required_claims: OneOrMore = ("exp",)
    subject_claim: str = "sub"
    scope_claims: OneOrMore = ("scope", "scp")
    cache_size: NonNegative = 10000
    cache_seconds: Seconds = 300.0


class ApiKeySection(Section, kw_only=True):
    sha256: Annotated[str, msgspec.Meta(extra={"missing": "hex SHA-256 of the key: `printf %s KEY | sha256sum`"})]
    subject: NonEmpty
    scopes: OneOrMore = ()
    attributes: dict[str, Union[str, tuple[str, ...]]] = {}


class ApiKeysSection(Section):
    header: str = "X-API-Key"  # "": not read from a header
    bearer: bool = True
    keys: tuple[ApiKeySection, ...] = ()


class RouteAuthSection(Section):
    mode: str | None = None
    required_scopes: OneOrMore | None = None


_AUTH, _AUTHZ = AuthConfig(), AuthzConfig()  # the defaults where a section gives none


class AuthSection(Section):
    mode: str = "required"  # an [auth] section means authentication, unless it says otherwise
    public_url: str | None = None
    authorization_servers: OneOrMore = ()
    scopes_supported: OneOrMore = ()
    required_scopes: OneOrMore = ()
    audiences: OneOrMore = ()
    resource_name: str | None = None
    resource_documentation: str | None = None
    forward_credentials: bool = _AUTH.forward_credentials
    bind_sessions: bool = _AUTH.bind_sessions
    max_sessions: Positive = _AUTH.max_sessions
    jwt: JwtSection | None = None
    api_keys: ApiKeysSection | None = None
    routes: dict[str, RouteAuthSection] = {}


class RuleSection(Section, kw_only=True):
    id: _Id | None = None  # None: rule-<index>
    effect: Literal["allow", "deny"]
    subjects: Globs | None = None
    kinds: Union[_Kind, tuple[_Kind, ...], None] = None
    claims: dict[str, _AnyOf] = {}
    scopes: OneOrMore = ()
    attributes: dict[str, _AnyOf] = {}
    client_ips: OneOrMore | None = None
    methods: Globs | None = None
    names: Globs | None = None
    tools: Globs | None = None
    prompts: Globs | None = None
    resources: Globs | None = None
    backends: Globs | None = None
    require_scopes: OneOrMore = ()


class AuthzSection(Section):
    default: Literal["allow", "deny"] = _AUTHZ.default
    hide_denied: bool = _AUTHZ.hide_denied
    deny_status: Literal[200, 403, 404] = _AUTHZ.deny_status
    open_methods: Globs = _AUTHZ.open_methods
    rules: tuple[RuleSection, ...] = ()


class LimitSection(Section, kw_only=True):
    id: _Id | None = None  # None: limit-<index>
    key: Annotated[
        Union[_Dimension, Annotated[tuple[_Dimension, ...], msgspec.Meta(min_length=1)]],
        msgspec.Meta(extra={"missing": f"one or more of {', '.join(get_args(_Dimension))}"}),
    ]
    rate: Seconds | None = None  # tokens per second
    per_minute: Seconds | None = None
    burst: Annotated[float, msgspec.Meta(ge=1)] | None = None  # None: max(1, rate)
    methods: Globs | None = None
    tools: Globs | None = None
    backends: Globs | None = None


class RateLimitSection(Section):
    max_keys: Positive = RateLimitConfig().max_keys
    limits: tuple[LimitSection, ...] = ()


class _Sections(msgspec.Struct, frozen=True):
    """The policy sections of the file (other top-level keys are not ours)."""

    auth: AuthSection | None = None
    authz: AuthzSection | None = None
    ratelimit: RateLimitSection | None = None
    audit: AuditConfig = AuditConfig()


# ---------------------------------------------------------------------------------
# What a type cannot say: every function takes the dotted key, so errors name it.


def _scopes(values: str | tuple[str, ...] | None, key: str) -> tuple[str, ...] | None:
    """OAuth scope tokens (RFC 6749 §3.3); an entry may hold several, space-separated."""
    if values is None:
        return None
    out: list[str] = []
    for i, s in enumerate(one_or_more(values)):
        for tok in s.split():
            if not _SCOPE_RE.match(tok):
                raise ConfigError(f"{key}[{i}]", f"not a valid OAuth scope token: {tok!r}")
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


def _mode(v: str, key: str) -> str:
    return decode(v.lower(), Mode, key)


def _any_of(table: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``{ groups = ["a", "b"], admin = true }`` → (("groups", ("a", "b")), ("admin", ("true",)));
    values are compared in their JSON text form."""

    def text(x: Any) -> str:
        return ("true" if x else "false") if isinstance(x, bool) else str(x)

    return tuple((k, tuple(text(x) for x in (v if isinstance(v, tuple) else (v,)))) for k, v in table.items())


def _unique(ids: list, key: str, what: str) -> None:
    for i, v in enumerate(ids):
        if v in ids[:i]:
            raise ConfigError(key.format(i), f"duplicate {what} {v!r}")


def _read_secret(k: JwtKeySection, prefix: str) -> bytes:
    """An HMAC secret from ``secret``, ``secret_env`` or ``secret_file``."""
    name = next(s for s in _SECRETS if getattr(k, s) is not None)
    v, key = getattr(k, name), f"{prefix}.{name}"
    if name == "secret":
        data = v.encode("utf-8")
    elif name == "secret_env":
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


def _jwt_key(k: JwtKeySection, prefix: str, allowed: frozenset[str]) -> VerifyKey:
    if k.algorithms is not None:
        bad = [a for a in one_or_more(k.algorithms) if a not in SUPPORTED_ALGORITHMS]
        if bad:
            raise ConfigError(f"{prefix}.algorithms", f"unsupported algorithm {bad[0]!r}")
        allowed = allowed & frozenset(one_or_more(k.algorithms))
    sources = [s for s in _KEY_SOURCES if getattr(k, s) is not None]
    if len(sources) != 1:
        raise ConfigError(prefix, f"give exactly one of {', '.join(_KEY_SOURCES)}")
    src = sources[0]
    key = f"{prefix}.{src}"
    try:
        if src in _SECRETS:
            return make_key(_read_secret(k, prefix), k.kid, allowed, "config")
        if src == "jwk":
            jwk = k.jwk if k.kid is None else {**k.jwk, "kid": k.kid}
            return key_from_jwk(jwk, allowed, "config", allow_symmetric=True)
        if src == "public_key":
            pem = k.public_key.encode()
        else:
            try:
                with open(k.public_key_file, "rb") as f:
                    pem = f.read()
            except OSError as exc:
                raise ConfigError(key, f"cannot read {k.public_key_file}: {exc.strerror}") from None
        return make_key(load_pem(pem), k.kid, allowed, "config")
    except KeyError_ as exc:
        raise ConfigError(key, str(exc)) from None


# ---------------------------------------------------------------------------------
# Sections


def _build_jwt(j: JwtSection, prefix: str) -> JwtConfig:
    allowed = SUPPORTED_ALGORITHMS
    if j.algorithms is not None:
        for i, a in enumerate(one_or_more(j.algorithms)):
            if a not in SUPPORTED_ALGORITHMS:
                why = " (unsigned tokens are never accepted)" if a.lower() == "none" else ""
                raise ConfigError(f"{prefix}.algorithms[{i}]", f"unsupported algorithm {a!r}{why}")
        allowed = frozenset(one_or_more(j.algorithms))
    keys = tuple(_jwt_key(k, f"{prefix}.keys[{i}]", allowed) for i, k in enumerate(j.keys))
    kids = [k.kid for k in keys if k.kid is not None]
    if len(kids) != len(set(kids)):
        raise ConfigError(f"{prefix}.keys", "duplicate kid")
    if j.jwks_url is not None:
        _url(j.jwks_url, f"{prefix}.jwks_url")
    if not keys and j.jwks_url is None:
        raise ConfigError(prefix, "needs keys ([[auth.jwt.keys]]) or jwks_url")
    same = {f: getattr(j, f) for f in j.__struct_fields__ if f not in ("issuer", "algorithms", "keys")}
    same.update(required_claims=one_or_more(j.required_claims), scope_claims=one_or_more(j.scope_claims))
    return JwtConfig(issuers=one_or_more(j.issuer), keys=keys, algorithms=allowed, **same)


def _build_api_keys(a: ApiKeysSection, prefix: str) -> ApiKeysConfig:
    if a.header:
        decode(a.header, HeaderName, f"{prefix}.header")
        if a.header.lower() in ("authorization", "host", "content-length", "cookie"):
            raise ConfigError(f"{prefix}.header", f"{a.header} cannot carry API keys")
    elif not a.bearer:
        raise ConfigError(prefix, "API keys need a header or bearer = true")
    entries = []
    for i, k in enumerate(a.keys):
        kp = f"{prefix}.keys[{i}]"
        digest = k.sha256.lower()
        if not _SHA256_RE.fullmatch(digest):
            raise ConfigError(f"{kp}.sha256", "expected 64 hex digits")
        if digest in (e.sha256 for e in entries):
            raise ConfigError(f"{kp}.sha256", "duplicate key")
        scopes = frozenset(_scopes(k.scopes, f"{kp}.scopes"))
        entries.append(ApiKeyEntry(sha256=digest, subject=k.subject, scopes=scopes, attributes=tuple(k.attributes.items())))
    return ApiKeysConfig(header=a.header.lower() or None, bearer=a.bearer, keys=tuple(entries))


def _build_auth(a: AuthSection | None) -> AuthConfig:
    if a is None:
        return AuthConfig()
    mode = _mode(a.mode, "auth.mode")
    public_url = a.public_url
    if public_url is not None:
        public_url = _url(public_url, "auth.public_url", allow_path=False).rstrip("/")
    servers = one_or_more(a.authorization_servers)
    for i, s in enumerate(servers):
        _url(s, f"auth.authorization_servers[{i}]")
    jwt_cfg = _build_jwt(a.jwt, "auth.jwt") if a.jwt is not None else None
    api = _build_api_keys(a.api_keys, "auth.api_keys") if a.api_keys is not None else None
    if mode == "required" and jwt_cfg is None and api is None:
        raise ConfigError("auth", "mode = required needs [auth.jwt] or [auth.api_keys]")
    if jwt_cfg is not None and public_url is None and not a.audiences:
        raise ConfigError("auth.public_url", "needed to check token audiences (RFC 8707): set it, or list auth.audiences")
    if servers and public_url is None:
        raise ConfigError("auth.public_url", "needed to publish protected-resource metadata for authorization_servers")
    if a.resource_documentation is not None:
        _url(a.resource_documentation, "auth.resource_documentation")
    routes = []
    for path, r in a.routes.items():
        rp = f"auth.routes.{path}"
        if not path.startswith("/"):
            raise ConfigError(rp, "route paths start with '/'")
        mode_r = None if r.mode is None else _mode(r.mode, f"{rp}.mode")
        routes.append(RouteAuthConfig(path.rstrip("/") or "/", mode_r, _scopes(r.required_scopes, f"{rp}.required_scopes")))
    return AuthConfig(
        mode=mode,
        public_url=public_url,
        authorization_servers=servers,
        scopes_supported=_scopes(a.scopes_supported, "auth.scopes_supported"),
        required_scopes=_scopes(a.required_scopes, "auth.required_scopes"),
        audiences=one_or_more(a.audiences),
        resource_name=a.resource_name,
        resource_documentation=a.resource_documentation,
        forward_credentials=a.forward_credentials,
        bind_sessions=a.bind_sessions,
        max_sessions=a.max_sessions,
        jwt=jwt_cfg,
        api_keys=api,
        routes=tuple(routes),
    )


def _build_rule(r: RuleSection, rp: str, i: int) -> RuleConfig:
    nets = None
    if r.client_ips is not None:
        nets = []
        for j, s in enumerate(one_or_more(r.client_ips)):
            try:
                nets.append(ipaddress.ip_network(s, strict=False))
            except ValueError:
                raise ConfigError(f"{rp}.client_ips[{j}]", f"not an IP address or CIDR: {s!r}") from None
    if r.names is not None and r.methods is None:
        raise ConfigError(f"{rp}.names", "needs methods (or use tools / prompts / resources)")
    if r.require_scopes and r.effect != "allow":
        raise ConfigError(f"{rp}.require_scopes", "only allow rules can require scopes")
    globs = {k: one_or_more(getattr(r, k)) for k in ("subjects", "kinds", "methods", "names", "tools", "prompts", "resources", "backends")}
    return RuleConfig(
        id=r.id or f"rule-{i}",
        effect=r.effect,
        claims=_any_of(r.claims),
        scopes=_scopes(r.scopes, f"{rp}.scopes"),
        attributes=_any_of(r.attributes),
        client_ips=None if nets is None else tuple(nets),
        require_scopes=_scopes(r.require_scopes, f"{rp}.require_scopes"),
        **globs,
    )


def _build_authz(z: AuthzSection | None) -> AuthzConfig:
    if z is None:
        return AuthzConfig()
    rules = tuple(_build_rule(r, f"authz.rules[{i}]", i) for i, r in enumerate(z.rules))
    _unique([r.id for r in rules], "authz.rules[{}].id", "rule id")
    return AuthzConfig(
        enabled=True,
        default=z.default,
        hide_denied=z.hide_denied,
        deny_status=z.deny_status,
        open_methods=one_or_more(z.open_methods),
        rules=rules,
    )


def _build_ratelimit(s: RateLimitSection | None) -> RateLimitConfig:
    if s is None:
        return RateLimitConfig()
    lims = []
    for i, lr in enumerate(s.limits):
        lp = f"ratelimit.limits[{i}]"
        key = one_or_more(lr.key)
        if len(set(key)) != len(key):
            raise ConfigError(f"{lp}.key", "repeated dimension")
        if (lr.rate is None) == (lr.per_minute is None):
            raise ConfigError(f"{lp}.rate", "give exactly one of rate (per second) or per_minute")
        rate = lr.rate if lr.rate is not None else lr.per_minute / 60.0
        lims.append(
            LimitConfig(
                id=lr.id or f"limit-{i}",
                key=key,
                rate=rate,
                burst=max(1.0, rate) if lr.burst is None else lr.burst,
                methods=one_or_more(lr.methods),
                tools=one_or_more(lr.tools),
                backends=one_or_more(lr.backends),
            )
        )
    _unique([x.id for x in lims], "ratelimit.limits[{}].id", "limit id")
    return RateLimitConfig(limits=tuple(lims), max_keys=s.max_keys)


def build_policy_config(raw: dict[str, Any]) -> PolicyConfig:
    """Validate the policy sections of a TOML-shaped dict (other sections are ignored)."""
    s = decode({k: raw[k] for k in POLICY_SECTIONS if k in raw}, _Sections, "")
    return PolicyConfig(
        auth=_build_auth(s.auth),
        authz=_build_authz(s.authz),
        ratelimit=_build_ratelimit(s.ratelimit),
        audit=s.audit,
    )
