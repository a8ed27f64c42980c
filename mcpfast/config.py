"""Configuration: a TOML file (and CLI flags over it) turned into frozen values.

Everything the hot path consults is decided here, once: listen addresses, limits,
timeouts, routes and their backends.  Validation happens at load time and every error
names the key that is wrong (``backends.weather.url: ...``) so ``mcpfast check-config``
can point a user at the line to fix.  The gateway never reads raw TOML.

Theory of operation.  Each section's TOML shape is a ``validate.Section`` (a msgspec
Struct: types, ranges, enumerations, no unknown keys), decoded by ``validate.decode``,
which names the dotted key of any refusal.  The values the rest of the code reads are
``model``'s dataclasses, which import nothing of mcpfast; the sections whose shape is
theirs field for field (``[limits]``, ``[timeouts]``, ``[log]``) are made from their
fields and defaults (``_section_of``), the others are written out here with the
result's defaults.  A small function per section turns the decoded Struct into its
value, doing the checks a type cannot express: host:port and URL syntax, header
values, which keys a backend's transport takes, route references to backends, path
collisions, session keys.  ``build_config`` composes them; the policy sections and
``[cors]`` are decoded by the modules that own them.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from .model import (
    ENV_PASSTHROUGH, BackendConfig, Config, LimitsConfig, LogConfig, MuxConfig, RouteConfig, ServerConfig,
    TimeoutsConfig, ephemeral_key, fmt_hostport,
)  # fmt: skip
from .observe import log_path
from .pipeline.cors import build_cors_config
from .policy.config import build_policy_config
from .validate import (
    ConfigError, HeaderName, NonEmpty, NonNegative, Positive, Seconds, SecondsOrZero, Section, Text, as_plain, decode,
    origin_patterns,
)  # fmt: skip
from .wire import heads

__all__ = [
    "ConfigError",
    "Config",
    "ServerConfig",
    "LimitsConfig",
    "TimeoutsConfig",
    "LogConfig",
    "BackendConfig",
    "RouteConfig",
    "MuxConfig",
    "load_config",
    "build_config",
    "parse_hostport",
    "as_dict",
]


# Tool names may use [A-Za-z0-9_.-] (MCP spec, "Tool names"); backend names become
# namespace prefixes later, so they obey the same alphabet.
_BackendName = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z", description="backend names use 1-64 characters of [A-Za-z0-9_.-]")
]


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` → (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(key, f"expected [IPv6]:PORT, got {value!r}")
        port_s = rest[1:]
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    if not host:
        raise ConfigError(key, f"missing host in {value!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(key, f"port is not a number in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port out of range in {value!r}")
    return host, port


# ---------------------------------------------------------------------------------
# The file's top level, and [server]


_SERVER = ServerConfig()  # the defaults where the file gives none


def _section_of(model: type, typ: Any, **other: Any) -> type[Section]:
    """A section with the fields and defaults of the dataclass ``model``, each of type
    ``typ`` unless ``other`` gives its own."""
    fields = [(f.name, other.get(f.name, typ), f.default) for f in dataclasses.fields(model)]
    return msgspec.defstruct(model.__name__.replace("Config", "Section"), fields, bases=(Section,), module=__name__)


LimitsSection = _section_of(LimitsConfig, Positive, max_header_bytes=Annotated[int, msgspec.Meta(ge=256)])
TimeoutsSection = _section_of(TimeoutsConfig, Seconds)
LogSection = _section_of(
    LogConfig,
    str,  # access_log: "-" stdout, a path, or "off"
    level=Literal["debug", "info", "warning", "error", "critical"],  # case-insensitive in TOML
    format=Literal["json", "text"],
)


class ServerSection(Section):
    listen: str = fmt_hostport(_SERVER.listen)
    admin_listen: str | None = None  # "" or "off": none
    mcp_path: str = _SERVER.mcp_path
    backlog: Positive = _SERVER.backlog
    workers: Positive = _SERVER.workers
    allowed_origins: tuple[str, ...] | None = None  # None: ServerConfig's (the loopback origins)
    forwarded_headers: bool = _SERVER.forwarded_headers
    allowed_hosts: tuple[NonEmpty, ...] | None = None


def _is_path(v: str) -> bool:
    """An absolute path as it may appear in a request target (and so in the heads and the
    ``endpoint`` events the gateway writes): visible ASCII, no query, at most 1024 bytes."""
    return v.startswith("/") and "?" not in v and len(v) <= 1024 and heads.is_visible(v.encode("utf-8", "replace"))


_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def _server(s: ServerSection) -> ServerConfig:
    mcp_path = s.mcp_path
    if not _is_path(mcp_path):
        raise ConfigError("server.mcp_path", f"must be an absolute path without query, got {mcp_path!r}")
    for i, h in enumerate(s.allowed_hosts or ()):
        if h != "*" and not _HOST_RE.fullmatch(h):
            raise ConfigError(f"server.allowed_hosts[{i}]", f"expected host or host:port, got {h!r}")
    return ServerConfig(
        listen=parse_hostport(s.listen, "server.listen"),
        admin_listen=None if s.admin_listen in (None, "", "off") else parse_hostport(s.admin_listen, "server.admin_listen"),
        mcp_path=mcp_path.rstrip("/") or "/",
        backlog=s.backlog,
        workers=s.workers,
        allowed_origins=_SERVER.allowed_origins if s.allowed_origins is None else origin_patterns(s.allowed_origins, "server.allowed_origins"),
        forwarded_headers=s.forwarded_headers,
        allowed_hosts=None if s.allowed_hosts is None else tuple(h.lower() for h in s.allowed_hosts),
    )


def _shown_url(url: str, parts) -> str:
    """A backend URL as an error message may show it: no user or password, no query
    values (either may be a credential)."""
    netloc = parts.netloc.rpartition("@")[2]
    path = log_path(("?" + parts.query).encode("latin-1", "replace")).decode("latin-1") if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{path}" if parts.scheme else "<not a URL>"


def parse_backend_url(url: str, key: str) -> tuple[str, int, str]:
    # urlsplit silently drops tabs and line breaks, and the path and host go into every
    # request head: refuse anything but visible ASCII before it looks.
    if not url:
        raise ConfigError(key, "must not be empty (expected an http:// or https:// URL)")
    if not heads.is_visible(url.encode("utf-8", "replace")):
        # Shown without its query values (a key pasted with a trailing line break is the
        # usual case): the character at fault is named apart.
        at = next((i for i, ch in enumerate(url) if not "!" <= ch <= "~"), 0)
        raise ConfigError(
            key,
            f"URL must be visible ASCII without spaces or control characters, got {url[at:at + 1]!r} at "
            f"position {at} of {_shown_url(url, urlsplit(url))!r}",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, f"expected an http:// or https:// URL, got {_shown_url(url, parts)!r}")
    if "@" in parts.netloc:
        # Never sent: a backend gets credentials from ``headers`` or ``bearer_token``.
        raise ConfigError(key, "a user or password in the URL is not supported (use bearer_token or headers)")
    if not parts.hostname:
        raise ConfigError(key, f"missing host in {_shown_url(url, parts)!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(key, f"bad port in {_shown_url(url, parts)!r}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


class SessionsSection(Section):
    key: str | None = None
    key_file: NonEmpty | None = None
    old_keys: tuple[str, ...] = ()
    old_key_files: tuple[NonEmpty, ...] = ()
    max_age: SecondsOrZero = 86400.0


class RouteSection(Section):
    path: str | None = None  # None: server.mcp_path
    backends: tuple[str, ...] | None = None
    backend: str | None = None  # one backend: instead of backends
    sse_path: Text | None = None
    messages_path: Text | None = None
    # Multiplexed (terminating) routes only; None: not given (MuxConfig's default, or [sessions]).
    namespacing: Literal["always", "multi", "never"] | None = None
    separator: str | None = None
    uri_scheme: str | None = None
    server_name: NonEmpty | None = None
    server_version: str | None = None
    instructions: str | None = None
    fail_mode: Literal["open", "closed"] | None = None
    list_cache: Literal["session", "shared", "off"] | None = None
    list_cache_ttl: SecondsOrZero | None = None
    session_key: str | None = None
    session_key_file: NonEmpty | None = None
    old_keys: tuple[str, ...] | None = None
    old_key_files: tuple[NonEmpty, ...] | None = None
    max_age: SecondsOrZero | None = None


# Route keys that become the MuxConfig field of the same name as they are, and all of a
# multiplexed route's keys.
_MUX_AS_GIVEN = ("namespacing", "separator", "uri_scheme", "server_name", "server_version", "fail_mode", "list_cache", "list_cache_ttl")
_MUX_ROUTE_KEYS = (*_MUX_AS_GIVEN, "instructions", "session_key", "session_key_file", "old_keys", "old_key_files", "max_age")
_MUX = MuxConfig()  # the defaults where a route gives none


class _File(Section):
    """The top level; ``backends`` are decoded each by its transport's schema, the policy
    sections and ``[cors]`` by their own modules."""

    server: ServerSection = ServerSection()
    limits: LimitsSection = LimitsSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    log: LogSection = LogSection()
    sessions: SessionsSection = SessionsSection()
    backends: dict[_BackendName, dict] = {}
    routes: tuple[RouteSection, ...] = ()
    auth: Any = None
    authz: Any = None
    ratelimit: Any = None
    audit: Any = None
    cors: Any = None


def build_config(raw: dict[str, Any], *, source: str | None = None) -> Config:
    """Validate a TOML-shaped dict into a ``Config``."""
    log = raw.get("log")
    if isinstance(log, dict):  # level and format are case-insensitive
        raw = {**raw, "log": {k: v.lower() if k in ("level", "format") and isinstance(v, str) else v for k, v in log.items()}}
    f = decode(raw, _File, "")
    server = _server(f.server)
    backends = tuple(_backend(name, b) for name, b in f.backends.items())
    sessions = _sessions(f.sessions)
    routes = _routes(f.routes, backends, server.mcp_path, sessions)
    return Config(
        server=server,
        limits=LimitsConfig(**msgspec.structs.asdict(f.limits)),
        timeouts=TimeoutsConfig(**msgspec.structs.asdict(f.timeouts)),
        log=LogConfig(**msgspec.structs.asdict(f.log)),
        backends=backends,
        routes=_legacy_paths(routes, server.mcp_path),
        policy=build_policy_config(raw),
        session_keys=(sessions.key or ephemeral_key(), *sessions.old_keys),
        session_key_ephemeral=sessions.key is None,
        cors=build_cors_config(raw),
        source=source,
    )


# ---------------------------------------------------------------------------------
# Routes: [[routes]], each over one or several backends.


def _routes(sections, backends: tuple[BackendConfig, ...], mcp_path: str, sessions: _Sessions) -> list[RouteConfig]:
    kinds = {b.name: b.transport for b in backends}
    routes = []
    seen_paths = set()
    for i, r in enumerate(sections):
        key = f"routes[{i}]"
        path = mcp_path if r.path is None else r.path
        if not _is_path(path):
            raise ConfigError(f"{key}.path", f"must start with '/' (an absolute path without query, visible ASCII), got {path!r}")
        path = path.rstrip("/") or "/"
        blist = [r.backend] if r.backend is not None else list(r.backends or ())
        if not blist:
            raise ConfigError(f"{key}.backends", "expected a non-empty list of backend names")
        for bn in blist:
            if bn not in kinds:
                raise ConfigError(f"{key}.backends", f"unknown backend {bn!r}")
        if len(set(blist)) != len(blist):
            raise ConfigError(f"{key}.backends", "a backend is listed twice")
        mux = None
        if terminating(blist, kinds):
            mux = _mux_route(r, key, blist, sessions)
        else:
            for k in _MUX_ROUTE_KEYS:
                if getattr(r, k) is not None:
                    raise ConfigError(f"{key}.{k}", "only applies to a route over several backends or a stdio or sse backend")
        if path in seen_paths:
            raise ConfigError(f"{key}.path", f"duplicate route path {path!r}")
        seen_paths.add(path)
        routes.append(RouteConfig(path=path, backends=tuple(blist), mux=mux, sse_path=r.sse_path, messages_path=r.messages_path))
    if not routes and backends:
        # Without explicit routes: one backend is served at the MCP path; several are
        # each served at <mcp_path>/<name>.
        for b in backends:
            path = mcp_path if len(backends) == 1 else f"{mcp_path.rstrip('/')}/{b.name}"
            mux = _mux_route(RouteSection(), "routes", [b.name], sessions) if terminating([b.name], kinds) else None
            routes.append(RouteConfig(path=path, backends=(b.name,), mux=mux))
    return routes


def _legacy_paths(routes: list[RouteConfig], mcp_path: str) -> tuple[RouteConfig, ...]:
    """Each route's 2024-11-05 HTTP+SSE endpoints: as configured, or by default ``/sse``
    and ``/messages`` for the route at the MCP path and ``<route>/sse`` and
    ``<route>/messages`` for the others.  None may collide with a route or another's."""
    taken = {r.path: f"routes path {r.path!r}" for r in routes}
    out = []
    for i, r in enumerate(routes):
        paths = {}
        for k, leaf in (("sse_path", "/sse"), ("messages_path", "/messages")):
            v = getattr(r, k)
            if v is None:  # not given
                v = leaf if r.path == mcp_path else r.path.rstrip("/") + leaf
            elif v and not _is_path(v):
                raise ConfigError(f"routes[{i}].{k}", f"must be an absolute path without query, or \"\" for off, got {v!r}")
            if v:
                v = v.rstrip("/") or "/"
                if v in taken:
                    raise ConfigError(f"routes[{i}].{k}", f"{v!r} is already used by {taken[v]}")
                taken[v] = f"{k} of route {r.path!r}"
            paths[k] = v
        if bool(paths["sse_path"]) != bool(paths["messages_path"]):
            raise ConfigError(f"routes[{i}].sse_path", "sse_path and messages_path are on or off together")
        out.append(dataclasses.replace(r, **paths))
    return tuple(out)


# ---------------------------------------------------------------------------------
# Backends: [backends.NAME], one table each; its transport decides which keys apply.

Transport = Literal["http", "sse", "stdio"]
# A file path: not empty, and it reaches an exec call or an open.
_Path = Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[^\x00\r\n]*\Z", description="must not contain NUL or line breaks")]
_NoNul = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*\Z", description="must not contain NUL")]
_EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z", description="not a valid environment variable name")]


class _BackendSection(Section):
    transport: Transport = "http"
    connect_timeout: Seconds | None = None  # None: timeouts.upstream_connect
    response_timeout: Seconds | None = None  # None: timeouts.upstream_response


_BACKEND = BackendConfig(name="", url="", host="", port=0, path="")  # the defaults where a table gives none


class _UrlBackendSection(_BackendSection, kw_only=True):
    url: str
    pool_size: Positive = _BACKEND.pool_size
    pool_idle_timeout: Seconds = _BACKEND.pool_idle_timeout
    headers: dict[HeaderName, str] = {}
    bearer_token: str | None = None
    max_connections: Positive = _BACKEND.max_connections
    max_streams: Positive = _BACKEND.max_streams
    tls_verify: bool | None = None  # these four: an https:// URL only (None: not given)
    ca_file: _Path | None = None
    client_cert: _Path | None = None
    client_key: _Path | None = None


class HttpBackendSection(_UrlBackendSection):
    forward_credentials: bool = _BACKEND.forward_credentials


class SseBackendSection(_UrlBackendSection):
    # A message-level transport: the gateway numbers the answers' events itself.
    resume_buffer: NonNegative = _BACKEND.resume_buffer
    poll_after: SecondsOrZero = _BACKEND.poll_after


class StdioBackendSection(_BackendSection, kw_only=True):
    command: Annotated[Text, msgspec.Meta(extra={"missing": 'the program to start, e.g. "npx" or "/usr/bin/python3"'})]
    args: tuple[_NoNul, ...] = ()
    env: dict[_EnvName, _NoNul] = {}
    inherit_env: bool = _BACKEND.inherit_env
    env_passthrough: tuple[_EnvName, ...] = ENV_PASSTHROUGH
    cwd: _Path | None = None
    mode: Literal["per_session", "shared"] = _BACKEND.mode
    max_processes: Positive = _BACKEND.max_processes
    idle_timeout: SecondsOrZero = _BACKEND.idle_timeout
    spawn_rate: Seconds = _BACKEND.spawn_rate
    shutdown_grace: Seconds = _BACKEND.shutdown_grace
    max_line_bytes: Positive | None = None  # None: limits.max_sse_event_bytes
    resume_buffer: NonNegative = _BACKEND.resume_buffer
    poll_after: SecondsOrZero = _BACKEND.poll_after


_BACKEND_SCHEMAS = {"http": HttpBackendSection, "sse": SseBackendSection, "stdio": StdioBackendSection}
_TLS_KEYS = ("tls_verify", "ca_file", "client_cert", "client_key")


def terminating(blist, kinds: dict[str, str]) -> bool:
    """Is a route over these backends a terminating one (the gateway is the MCP server
    to its clients and a client of each backend)?  Everything but one plain Streamable
    HTTP backend, which stays a byte passthrough."""
    return len(blist) > 1 or kinds[blist[0]] != "http"


def _backend(name: str, b: dict) -> BackendConfig:
    key = f"backends.{name}"
    transport = b.get("transport", "http")
    if not isinstance(transport, str) or transport not in _BACKEND_SCHEMAS:
        decode(transport, Transport, f"{key}.transport")  # raises, naming the transports
    schema = _BACKEND_SCHEMAS[transport]
    for k in b.keys() - schema.__struct_fields__:
        where = [t for t, other in _BACKEND_SCHEMAS.items() if k in other.__struct_fields__]
        if where:
            raise ConfigError(f"{key}.{k}", f"only applies to transport = {' or '.join(repr(t) for t in where)}")
    sec = decode(b, schema, key)
    d = msgspec.structs.asdict(sec)
    if transport == "stdio":
        if not sec.command:
            raise ConfigError(f"{key}.command", "must not be empty")
        return BackendConfig(name=name, url="", host="", port=0, path="/", **{**d, "env": tuple(sec.env.items())})
    host, port, path = parse_backend_url(sec.url, f"{key}.url")
    tls = sec.url[:8].lower() == "https://"
    for k in () if tls else _TLS_KEYS:
        if d[k] is not None:
            raise ConfigError(f"{key}.{k}", "only applies to an https:// URL")
    if sec.client_key is not None and sec.client_cert is None:
        raise ConfigError(f"{key}.client_key", "needs client_cert")
    d.update(headers=_headers(sec, key), tls_verify=sec.tls_verify is not False)
    del d["bearer_token"]
    return BackendConfig(name=name, host=host, port=port, path=path, tls=tls, **d)


def _headers(sec: _UrlBackendSection, key: str) -> tuple[tuple[str, str], ...]:
    """The fields added to every request to a backend: ``headers`` and ``bearer_token``."""
    for hk, hv in sec.headers.items():
        try:
            heads.field_value(hv)
        except heads.HeadError:
            raise ConfigError(
                f"{key}.headers.{hk}",
                "value must be Latin-1 text without control characters (CR, LF, NUL, ...) or surrounding spaces",
            ) from None
    hdrs = dict(sec.headers)
    if sec.bearer_token is not None:
        if not heads.is_visible(sec.bearer_token.encode("utf-8", "replace")):
            raise ConfigError(f"{key}.bearer_token", "expected a non-empty token of visible ASCII (no spaces or control characters)")
        if any(k.lower() == "authorization" for k in hdrs):
            raise ConfigError(f"{key}.bearer_token", "conflicts with headers.Authorization")
        hdrs["Authorization"] = f"Bearer {sec.bearer_token}"
    return tuple(hdrs.items())


# ---------------------------------------------------------------------------------
# Multiplexed routes: [sessions] defaults and per-route keys.


def _key_text(value: str, key: str) -> bytes:
    from .mux.token import parse_key

    try:
        return parse_key(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _key_file(value: str, key: str) -> bytes:
    from .mux.token import load_key_file

    try:
        return load_key_file(value)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {value}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _keys_of(prefix: str, key_name: str, key, file_name: str, file, old_keys, old_key_files) -> tuple[bytes | None, list[bytes]]:
    """(current key or None, old keys) from a section's key settings."""
    if key is not None and file is not None:
        raise ConfigError(f"{prefix}.{file_name}", f"give either {key_name} or {file_name}, not both")
    current = _key_text(key, f"{prefix}.{key_name}") if key is not None else None
    if file is not None:
        current = _key_file(file, f"{prefix}.{file_name}")
    old = [_key_text(v, f"{prefix}.old_keys[{i}]") for i, v in enumerate(old_keys or ())]
    old += [_key_file(v, f"{prefix}.old_key_files[{i}]") for i, v in enumerate(old_key_files or ())]
    return current, old


@dataclass(frozen=True, slots=True)
class _Sessions:
    key: bytes | None
    old_keys: tuple[bytes, ...]
    max_age: float


def _sessions(s: SessionsSection) -> _Sessions:
    current, old = _keys_of("sessions", "key", s.key, "key_file", s.key_file, s.old_keys, s.old_key_files)
    return _Sessions(current, tuple(old), s.max_age)


def _mux_route(r: RouteSection, key: str, blist: list[str], sessions: _Sessions) -> MuxConfig:
    from .mux.names import Namespace, check_backend_names, validate_separator

    given = {k: v for k in _MUX_AS_GIVEN if (v := getattr(r, k)) is not None}
    sep, mode, scheme = (given.get(k, getattr(_MUX, k)) for k in ("separator", "namespacing", "uri_scheme"))
    for where, check in (
        ("separator", lambda: validate_separator(sep)),
        ("backends", lambda: check_backend_names(blist, sep)),
        ("uri_scheme", lambda: Namespace(blist, separator=sep, mode=mode, uri_scheme=scheme)),
    ):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{key}.{where}", str(exc)) from None
    current, old = _keys_of(key, "session_key", r.session_key, "session_key_file", r.session_key_file, r.old_keys, r.old_key_files)
    if r.old_keys is None and r.old_key_files is None:
        old = list(sessions.old_keys)
    ephemeral = False
    if current is None:
        current = sessions.key
    if current is None:
        # No key anywhere: make one up (shared by every route and forked worker of this
        # configuration).  Sessions then end with the process.
        current = ephemeral_key()
        ephemeral = True
    return MuxConfig(
        **given,
        instructions=r.instructions or None,
        session_key=current,
        old_keys=tuple(old),
        max_age=sessions.max_age if r.max_age is None else r.max_age,
        ephemeral_key=ephemeral,
    )


def load_config(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (TOML) if given, apply ``overrides`` (dotted keys → values, from CLI
    flags, which win over the file), validate."""
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(dotted, "conflicts with a non-table value in the file")
            node = nxt
        node[parts[-1]] = value
    return build_config(raw, source=path)


def as_dict(self: Config) -> dict[str, Any]:  # noqa: N805 (it reads as a method of Config)
    """The effective configuration as plain data (for ``check-config``)."""

    d = as_plain(self)
    d["server"]["listen"] = fmt_hostport(self.server.listen)
    if self.server.admin_listen:
        d["server"]["admin_listen"] = fmt_hostport(self.server.admin_listen)
    shown = {t: set(schema.__struct_fields__) - {"bearer_token"} for t, schema in _BACKEND_SCHEMAS.items()}
    d["backends"] = {
        b.name: {k: v for k, v in as_plain(b).items() if k in shown[b.transport]} for b in self.backends
    }
    for b in d["backends"].values():
        if "env" in b:  # a child's environment may carry credentials
            b["env"] = {k: "<redacted>" for k, _ in b["env"]}
        if "url" not in b:
            continue
        b["headers"] = {k: "<redacted>" for k, _ in b["headers"]} if b["headers"] else {}
        if "?" in b["url"]:  # a backend URL's query may hold a key: its values are not shown
            base, _, query = b["url"].partition("?")
            b["url"] = base + log_path(b"?" + query.encode("latin-1", "replace")).decode("latin-1")
    for r in d["routes"]:
        m = r.pop("mux", None)  # shown only for multiplexed routes
        if m is not None:
            r["mux"] = m
            m["session_key"] = "<redacted>"
            m["old_keys"] = ["<redacted>"] * len(m["old_keys"])
    d.pop("source", None)
    d["session_keys"] = ["<redacted>"] * len(self.session_keys)
    d["policy"] = self.policy.as_dict() if self.policy is not None else None
    return d
