"""Configuration: a TOML file (and CLI flags over it) turned into frozen values.

Everything the hot path consults is decided here, once: listen addresses, limits,
timeouts, routes and their backends.  Validation happens at load time and every error
names the key that is wrong (``backends.weather.url: ...``) so ``mcpfast check-config``
can point a user at the line to fix.  The gateway never reads raw TOML.

Theory of operation.  Each section's TOML shape is a ``validate.Section`` (a msgspec
Struct: types, ranges, enumerations, no unknown keys), decoded by ``validate.decode``,
which names the dotted key of any refusal.  Where the TOML shape is already the value
the gateway reads (``[limits]``, ``[timeouts]``, ``[log]``) the Struct is the result
type itself.  Elsewhere a small function per section turns the decoded Struct into the
dataclass the rest of the code reads, doing the checks a type cannot express: host:port
and URL syntax, header values, which keys a backend's transport takes, route references
to backends, path collisions, session keys.  ``build_config`` composes them; the policy
sections and ``[cors]`` are decoded by the modules that own them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from . import heads
from .cors import build_cors_config
from .policy.config import build_policy_config
from .validate import (
    ConfigError, HeaderName, NonEmpty, Positive, Seconds, SecondsOrZero, Section, Text, as_plain, decode,
    origin_patterns,
)  # fmt: skip

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


LOOPBACK_ORIGINS = (
    "http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*",
    "https://localhost:*", "https://127.0.0.1:*", "https://[::1]:*",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    admin_listen: tuple[str, int] | None = None
    mcp_path: str = "/mcp"
    backlog: int = 1024
    workers: int = 1
    # Origins allowed to call the MCP endpoint (DNS-rebinding defence, MCP transports
    # "Security Warning").  Entries are exact origins ("https://app.example") or with a
    # port wildcard ("http://localhost:*").  A request without Origin is allowed: it is
    # not a browser.
    allowed_origins: tuple[str, ...] = LOOPBACK_ORIGINS
    forwarded_headers: bool = True  # add X-Forwarded-For / X-Forwarded-Proto upstream
    # Host header values accepted (DNS-rebinding defence for a gateway on loopback:
    # a page on evil.example resolving to 127.0.0.1 still sends "Host: evil.example").
    # Entries are "name" (any port) or "name:port"; "*" accepts any.  None means: the
    # loopback names when listening on a loopback address, else any.
    allowed_hosts: tuple[str, ...] | None = None

    def effective_allowed_hosts(self) -> tuple[str, ...]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        host = self.listen[0]
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = host == "localhost"
        return ("localhost", "127.0.0.1", "[::1]") if loopback else ("*",)


class LimitsConfig(Section):
    max_header_bytes: Annotated[int, msgspec.Meta(ge=256)] = 65536
    max_headers: Positive = 128
    max_target_bytes: Positive = 8192
    max_body_bytes: Positive = 4 * 1024 * 1024
    max_sse_event_bytes: Positive = 16 * 1024 * 1024
    max_connections: Positive = 10000
    # What one client may hold (docs/security.md, "Per-client resource bounds").  A client
    # address is the peer IP of the TCP connection; a principal is the authenticated caller.
    max_connections_per_address: Positive = 256
    max_streams_per_principal: Positive = 128  # GET streams open at once, routes with authentication
    max_streams_per_address: Positive = 64  # GET streams open at once by one address without credentials
    max_streams_per_session: Positive = 4  # GET streams open at once in one MCP session
    max_sessions: Positive = 100000  # sessions tracked per process (least recently used dropped first)


class TimeoutsConfig(Section):
    header_read: Seconds = 10.0  # first byte of a request to the end of its head
    idle: Seconds = 75.0  # keep-alive connection with no request in flight
    body_read: Seconds = 30.0  # end of head to end of body
    upstream_connect: Seconds = 5.0
    upstream_response: Seconds = 60.0  # request sent to upstream response head
    drain: Seconds = 20.0  # graceful shutdown: how long in-flight requests may finish
    session_idle: Seconds = 3600.0  # a session unseen this long no longer counts as open (metrics)
    client_write: Seconds = 60.0  # a client that takes none of its answer this long is dropped


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"  # case-insensitive in TOML
    format: Literal["json", "text"] = "json"
    access_log: str = "-"  # "-" stdout, a path, or "off"


# What a child gets from the gateway's own environment unless ``env_passthrough`` says
# otherwise: enough to find programs and run them, nothing that is likely a secret.
ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    url: str
    host: str
    port: int
    path: str
    pool_size: int = 64
    pool_idle_timeout: float = 30.0
    connect_timeout: float | None = None  # None: timeouts.upstream_connect
    response_timeout: float | None = None  # None: timeouts.upstream_response
    headers: tuple[tuple[str, str], ...] = ()  # added to every upstream request
    # Forward the client's own credentials (Authorization, the API-key header) to this
    # backend.  Off by default: with auth on, a client's token is for the gateway.
    forward_credentials: bool = False
    # Connections to this backend open at once for requests (POST, DELETE, ...): beyond
    # it, requests wait for one to be free.  GET streams, which stay open as long as the
    # client listens, count apart, up to max_streams; beyond that a GET is refused with
    # 503.  Streams thus never take a request's connection.
    max_connections: int = 1024
    max_streams: int = 1024
    # How the gateway reaches it (docs/transports.md): "http" (Streamable HTTP), "sse"
    # (the 2024-11-05 HTTP+SSE transport) or "stdio" (a child process).
    transport: str = "http"
    tls: bool = False  # an https:// URL
    # TLS to the backend: verification on unless tls_verify is false; ca_file instead of
    # the system's trust store; a client certificate for mutual TLS.
    tls_verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # stdio: the program and its arguments (never a shell), its environment (only what
    # is given, plus env_passthrough names from the gateway's own, or all of it with
    # inherit_env), its working directory.
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    inherit_env: bool = False
    env_passthrough: tuple[str, ...] = ENV_PASSTHROUGH
    cwd: str | None = None
    mode: str = "per_session"  # per_session: a child per client session | shared: one child
    max_processes: int = 16  # children alive at once (per gateway process)
    idle_timeout: float = 300.0  # a per-session child unused this long is stopped (0: never)
    spawn_rate: float = 10.0  # new children per second, at most (bursts up to max_processes)
    shutdown_grace: float = 2.0  # after closing stdin, and again after SIGTERM, before SIGKILL
    max_line_bytes: int | None = None  # one message line from a child; None: limits.max_sse_event_bytes

    @property
    def host_header(self) -> bytes:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii")


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Settings of a route over several backends: the virtual server
    (docs/multiplexing.md).  Keys are the raw 32 bytes, already parsed."""

    namespacing: str = "multi"  # always | multi | never
    separator: str = "__"
    uri_scheme: str = "mcpfast"
    server_name: str = "mcpfast"
    server_version: str = "0.1.0"
    instructions: str | None = None
    fail_mode: str = "open"  # open | closed
    list_cache: str = "session"  # session | shared | off (docs/security.md)
    list_cache_ttl: float = 300.0  # 0: until list_changed only
    session_key: bytes = b""
    old_keys: tuple[bytes, ...] = ()
    max_age: float = 86400.0  # 0: unlimited
    # True when no key was configured: one was made up at load, so sessions survive
    # neither a restart nor a second gateway process (forked workers share it).
    ephemeral_key: bool = False


@dataclass(frozen=True, slots=True)
class RouteConfig:
    path: str
    backends: tuple[str, ...]
    mux: MuxConfig | None = None  # set for a terminating route (see ``terminating``)
    # Where 2024-11-05 HTTP+SSE clients reach this route: the stream (GET) and the
    # message endpoint (POST ?session_id=); "" turns that transport off for the route.
    sse_path: str | None = None  # None until load fills in the default
    messages_path: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    backends: tuple[BackendConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    policy: Any = None  # mcpfast.policy.config.PolicyConfig (imported lazily: it imports us)
    # [sessions] keys, current first (raw 32 bytes): they seal passthrough session ids on
    # authenticated routes.  Made up at load when none is configured (``session_key_ephemeral``).
    session_keys: tuple[bytes, ...] = ()
    session_key_ephemeral: bool = False
    cors: Any = None  # mcpfast.cors.CorsConfig, or None without a [cors] section
    source: str | None = None  # the file it came from, for messages

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (for ``check-config``)."""

        d = as_plain(self)
        d["server"]["listen"] = _fmt_hostport(self.server.listen)
        if self.server.admin_listen:
            d["server"]["admin_listen"] = _fmt_hostport(self.server.admin_listen)
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
                from .observe import log_path

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


def _fmt_hostport(hp: tuple[str, int]) -> str:
    host, port = hp
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------
# The file's top level, and [server]


_SERVER = ServerConfig()  # the defaults where the file gives none


class ServerSection(Section):
    listen: str = _fmt_hostport(_SERVER.listen)
    admin_listen: str | None = None  # "" or "off": none
    mcp_path: str = _SERVER.mcp_path
    backlog: Positive = _SERVER.backlog
    workers: Positive = _SERVER.workers
    allowed_origins: tuple[str, ...] | None = None  # None: LOOPBACK_ORIGINS
    forwarded_headers: bool = _SERVER.forwarded_headers
    allowed_hosts: tuple[NonEmpty, ...] | None = None


_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def _server(s: ServerSection) -> ServerConfig:
    mcp_path = s.mcp_path
    if not mcp_path.startswith("/") or "?" in mcp_path or len(mcp_path) > 1024:
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
        allowed_origins=LOOPBACK_ORIGINS if s.allowed_origins is None else origin_patterns(s.allowed_origins, "server.allowed_origins"),
        forwarded_headers=s.forwarded_headers,
        allowed_hosts=None if s.allowed_hosts is None else tuple(h.lower() for h in s.allowed_hosts),
    )


def _shown_url(url: str, parts) -> str:
    """A backend URL as an error message may show it: no user or password, no query
    values (either may be a credential)."""
    from .observe import log_path

    netloc = parts.netloc.rpartition("@")[2]
    path = log_path(("?" + parts.query).encode("latin-1", "replace")).decode("latin-1") if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{path}" if parts.scheme else "<not a URL>"


def parse_backend_url(url: str, key: str) -> tuple[str, int, str]:
    # urlsplit silently drops tabs and line breaks, and the path and host go into every
    # request head: refuse anything but visible ASCII before it looks.
    if not heads.is_visible(url.encode("utf-8", "replace")):
        raise ConfigError(key, f"URL must be visible ASCII without spaces or control characters, got {url!r}")
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
    limits: LimitsConfig = LimitsConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    log: LogConfig = LogConfig()
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
        limits=f.limits,
        timeouts=f.timeouts,
        log=f.log,
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
        if not path.startswith("/"):
            raise ConfigError(f"{key}.path", f"must start with '/', got {path!r}")
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
            elif v and (not v.startswith("/") or "?" in v or len(v) > 1024):
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


class SseBackendSection(_BackendSection, kw_only=True):
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


class HttpBackendSection(SseBackendSection):
    forward_credentials: bool = _BACKEND.forward_credentials


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


def _headers(sec: SseBackendSection, key: str) -> tuple[tuple[str, str], ...]:
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


_EPHEMERAL: list[bytes] = []


def ephemeral_key() -> bytes:
    """This process's made-up session key (made once, at load, so forked workers share it)."""
    if not _EPHEMERAL:
        import os

        _EPHEMERAL.append(os.urandom(32))
    return _EPHEMERAL[0]


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
