"""Configuration: a TOML file (and CLI flags over it) turned into frozen dataclasses.

Everything the hot path consults is decided here, once: listen addresses, limits,
timeouts, routes and their backends.  Validation happens at load time and every error
names the key that is wrong (``backends.weather.url: ...``) so ``mcpfast check-config``
can point a user at the line to fix.  The gateway never reads raw TOML.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .model import (
    ENV_PASSTHROUGH,
    TRANSPORT_KEYS,
    TRANSPORTS,
    BackendConfig,
    Config,
    LimitsConfig,
    LogConfig,
    MuxConfig,
    RouteConfig,
    ServerConfig,
    TimeoutsConfig,
    ephemeral_key,
    fmt_hostport,
)
from .observe import log_path
from .pipeline.cors import build_cors_config
from .policy.config import build_policy_config
from .wire import heads
from .validate import ConfigError
from .validate import expect as _expect
from .validate import parse_origin_pattern as _parse_origin_pattern
from .validate import positive as _positive

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
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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
# Validation helpers: each takes the dotted key so errors name it.


def _unknown_keys(section: dict, known: set[str], prefix: str) -> None:
    for k in section:
        if k not in known:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(where, f"unknown setting (known: {', '.join(sorted(known))})")


def _section(raw: dict, name: str) -> dict:
    v = raw.get(name, {})
    if not isinstance(v, dict):
        raise ConfigError(name, "expected a table")
    return v


def _shown_url(url: str, parts) -> str:
    """A backend URL as an error message may show it: no user or password, no query
    values (either may be a credential)."""
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


def build_config(raw: dict[str, Any], *, source: str | None = None) -> Config:
    """Validate a TOML-shaped dict into a ``Config``."""
    _unknown_keys(raw, {"server", "limits", "timeouts", "log", "backends", "routes", "auth", "authz", "ratelimit", "audit", "sessions", "cors"}, "")

    s = _section(raw, "server")
    _unknown_keys(
        s,
        {"listen", "admin_listen", "mcp_path", "backlog", "workers", "allowed_origins", "forwarded_headers",
         "allowed_hosts"},
        "server",
    )
    dflt = ServerConfig()
    listen = parse_hostport(_expect(s, "listen", "server", str, "127.0.0.1:8080"), "server.listen")
    admin = s.get("admin_listen")
    admin_listen = None
    if admin not in (None, "", "off"):
        admin_listen = parse_hostport(_expect(s, "admin_listen", "server", str, ""), "server.admin_listen")
    mcp_path = _expect(s, "mcp_path", "server", str, dflt.mcp_path)
    if not mcp_path.startswith("/") or "?" in mcp_path or len(mcp_path) > 1024:
        raise ConfigError("server.mcp_path", f"must be an absolute path without query, got {mcp_path!r}")
    origins = s.get("allowed_origins", None)
    if origins is None:
        allowed = dflt.allowed_origins
    else:
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ConfigError("server.allowed_origins", "expected a list of strings")
        allowed = tuple(
            "*" if o == "*" else _parse_origin_pattern(o, f"server.allowed_origins[{i}]")
            for i, o in enumerate(origins)
        )
    hosts = s.get("allowed_hosts", None)
    if hosts is not None:
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise ConfigError("server.allowed_hosts", "expected a list of non-empty strings")
        for i, h in enumerate(hosts):
            if h != "*" and not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$", h):
                raise ConfigError(f"server.allowed_hosts[{i}]", f"expected host or host:port, got {h!r}")
        hosts = tuple(h.lower() for h in hosts)
    server = ServerConfig(
        allowed_hosts=hosts,
        listen=listen,
        admin_listen=admin_listen,
        mcp_path=mcp_path.rstrip("/") or "/",
        backlog=_positive(_expect(s, "backlog", "server", int, dflt.backlog), "server.backlog"),
        workers=_positive(_expect(s, "workers", "server", int, dflt.workers), "server.workers"),
        allowed_origins=allowed,
        forwarded_headers=_expect(s, "forwarded_headers", "server", bool, dflt.forwarded_headers),
    )

    lim = _section(raw, "limits")
    _unknown_keys(lim, {f.name for f in dataclasses.fields(LimitsConfig)}, "limits")
    ld = LimitsConfig()
    limits = LimitsConfig(
        **{
            f.name: _positive(_expect(lim, f.name, "limits", int, getattr(ld, f.name)), f"limits.{f.name}")
            for f in dataclasses.fields(LimitsConfig)
        }
    )
    if limits.max_header_bytes < 256:
        raise ConfigError("limits.max_header_bytes", "must be at least 256")

    t = _section(raw, "timeouts")
    _unknown_keys(t, {f.name for f in dataclasses.fields(TimeoutsConfig)}, "timeouts")
    td = TimeoutsConfig()
    timeouts = TimeoutsConfig(
        **{
            f.name: _positive(_expect(t, f.name, "timeouts", float, getattr(td, f.name)), f"timeouts.{f.name}")
            for f in dataclasses.fields(TimeoutsConfig)
        }
    )

    lg = _section(raw, "log")
    _unknown_keys(lg, {"level", "format", "access_log"}, "log")
    level = _expect(lg, "level", "log", str, "info").lower()
    if level not in _LOG_LEVELS:
        raise ConfigError("log.level", f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    fmt = _expect(lg, "format", "log", str, "json").lower()
    if fmt not in ("json", "text"):
        raise ConfigError("log.format", f"expected json or text, got {fmt!r}")
    log = LogConfig(level=level, format=fmt, access_log=_expect(lg, "access_log", "log", str, "-"))

    bsec = _section(raw, "backends")
    backends = [_backend(name, b) for name, b in bsec.items()]

    names = {b.name for b in backends}
    kinds = {b.name: b.transport for b in backends}
    sessions = _sessions_defaults(_section(raw, "sessions"))
    rsec = raw.get("routes", [])
    if not isinstance(rsec, list):
        raise ConfigError("routes", "expected an array of tables ([[routes]])")
    routes = []
    seen_paths = set()
    for i, r in enumerate(rsec):
        key = f"routes[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(key, "expected a table")
        _unknown_keys(r, {"path", "backends", "backend", "sse_path", "messages_path", *_MUX_ROUTE_KEYS}, key)
        path = _expect(r, "path", key, str, server.mcp_path)
        if not path.startswith("/"):
            raise ConfigError(f"{key}.path", f"must start with '/', got {path!r}")
        path = path.rstrip("/") or "/"
        if "backend" in r:
            blist = [_expect(r, "backend", key, str, "")]
        else:
            blist = r.get("backends")
            if not isinstance(blist, list) or not blist or not all(isinstance(x, str) for x in blist):
                raise ConfigError(f"{key}.backends", "expected a non-empty list of backend names")
        for bn in blist:
            if bn not in names:
                raise ConfigError(f"{key}.backends", f"unknown backend {bn!r}")
        if len(set(blist)) != len(blist):
            raise ConfigError(f"{key}.backends", "a backend is listed twice")
        mux = None
        if terminating(blist, kinds):
            mux = _mux_route(r, key, blist, sessions)
        else:
            for k in _MUX_ROUTE_KEYS:
                if k in r:
                    raise ConfigError(f"{key}.{k}", "only applies to a route over several backends or a stdio or sse backend")
        if path in seen_paths:
            raise ConfigError(f"{key}.path", f"duplicate route path {path!r}")
        seen_paths.add(path)
        legacy = {k: _text(r, k, key) for k in ("sse_path", "messages_path") if k in r}
        routes.append(RouteConfig(path=path, backends=tuple(blist), mux=mux, **legacy))

    if not routes and backends:
        # Without explicit routes: one backend is served at the MCP path; several are
        # each served at <mcp_path>/<name>.
        def implicit(path: str, name: str) -> RouteConfig:
            mux = _mux_route({}, "routes", [name], sessions) if terminating([name], kinds) else None
            return RouteConfig(path=path, backends=(name,), mux=mux)

        if len(backends) == 1:
            routes.append(implicit(server.mcp_path, backends[0].name))
        else:
            for b in backends:
                routes.append(implicit(f"{server.mcp_path.rstrip('/')}/{b.name}", b.name))

    routes = _legacy_paths(routes, server.mcp_path)
    policy = build_policy_config(raw)
    return Config(
        cors=build_cors_config(raw),
        policy=policy,
        session_keys=(sessions["key"] or ephemeral_key(), *sessions["old_keys"]),
        session_key_ephemeral=sessions["key"] is None,
        server=server,
        limits=limits,
        timeouts=timeouts,
        log=log,
        backends=tuple(backends),
        routes=tuple(routes),
        source=source,
    )


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

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def terminating(blist, kinds: dict[str, str]) -> bool:
    """Is a route over these backends a terminating one (the gateway is the MCP server
    to its clients and a client of each backend)?  Everything but one plain Streamable
    HTTP backend, which stays a byte passthrough."""
    return len(blist) > 1 or kinds[blist[0]] != "http"


def _opt_float(b: dict, name: str, key: str) -> float | None:
    if b.get(name) is None:
        return None
    return _positive(_expect(b, name, key, float, 0.0), f"{key}.{name}")


def _text(b: dict, name: str, key: str, default: str = "") -> str:
    """A string that may not hold NUL or line breaks (it reaches a head, a log line or an
    exec call)."""
    v = _expect(b, name, key, str, default)
    if any(c in v for c in "\x00\r\n"):
        raise ConfigError(f"{key}.{name}", "must not contain NUL or line breaks")
    return v


def _path_file(b: dict, name: str, key: str) -> str | None:
    if b.get(name) is None:
        return None
    v = _text(b, name, key)
    if not v:
        raise ConfigError(f"{key}.{name}", "must not be empty")
    return v


def _backend(name: str, b) -> BackendConfig:
    key = f"backends.{name}"
    if not _NAME_RE.match(name):
        raise ConfigError(key, "backend names use 1-64 characters of [A-Za-z0-9_.-]")
    if not isinstance(b, dict):
        raise ConfigError(key, "expected a table")
    transport = _expect(b, "transport", key, str, "http")
    if transport not in TRANSPORTS:
        raise ConfigError(f"{key}.transport", f"expected one of {', '.join(TRANSPORTS)}, got {transport!r}")
    known = TRANSPORT_KEYS[transport]
    for k in b:
        if k not in known:
            where = [t for t in TRANSPORTS if k in TRANSPORT_KEYS[t]]
            if where:
                raise ConfigError(f"{key}.{k}", f"only applies to transport = {' or '.join(repr(t) for t in where)}")
            raise ConfigError(f"{key}.{k}", f"unknown setting (known for transport {transport!r}: {', '.join(sorted(known))})")
    common = dict(
        name=name,
        transport=transport,
        connect_timeout=_opt_float(b, "connect_timeout", key),
        response_timeout=_opt_float(b, "response_timeout", key),
    )
    if transport == "stdio":
        return _stdio_backend(b, key, common)
    if "url" not in b:
        raise ConfigError(f"{key}.url", "missing")
    url = _expect(b, "url", key, str, "")
    host, port, path = parse_backend_url(url, f"{key}.url")
    tls = url[:8].lower() == "https://"
    hdrs = b.get("headers", {})
    if not isinstance(hdrs, dict) or not all(isinstance(v, str) for v in hdrs.values()):
        raise ConfigError(f"{key}.headers", "expected a table of strings")
    for hk, hv in hdrs.items():
        try:
            heads.field_name(hk)
        except heads.HeadError:
            raise ConfigError(f"{key}.headers.{hk}", "not a valid header name") from None
        try:
            heads.field_value(hv)
        except heads.HeadError:
            raise ConfigError(
                f"{key}.headers.{hk}",
                "value must be Latin-1 text without control characters (CR, LF, NUL, ...) or surrounding spaces",
            ) from None
    hdrs = dict(hdrs)
    bearer = b.get("bearer_token")
    if bearer is not None:
        if not isinstance(bearer, str) or not heads.is_visible(bearer.encode("utf-8", "replace")):
            raise ConfigError(f"{key}.bearer_token", "expected a non-empty token of visible ASCII (no spaces or control characters)")
        if any(k.lower() == "authorization" for k in hdrs):
            raise ConfigError(f"{key}.bearer_token", "conflicts with headers.Authorization")
        hdrs["Authorization"] = f"Bearer {bearer}"
    if not tls:
        for k in ("tls_verify", "ca_file", "client_cert", "client_key"):
            if k in b:
                raise ConfigError(f"{key}.{k}", "only applies to an https:// URL")
    client_cert = _path_file(b, "client_cert", key)
    client_key = _path_file(b, "client_key", key)
    if client_key is not None and client_cert is None:
        raise ConfigError(f"{key}.client_key", "needs client_cert")
    return BackendConfig(
        url=url,
        host=host,
        port=port,
        path=path,
        tls=tls,
        tls_verify=_expect(b, "tls_verify", key, bool, True),
        ca_file=_path_file(b, "ca_file", key),
        client_cert=client_cert,
        client_key=client_key,
        pool_size=_positive(_expect(b, "pool_size", key, int, 64), f"{key}.pool_size"),
        pool_idle_timeout=_positive(_expect(b, "pool_idle_timeout", key, float, 30.0), f"{key}.pool_idle_timeout"),
        headers=tuple(hdrs.items()),
        forward_credentials=_expect(b, "forward_credentials", key, bool, False),
        max_connections=_positive(_expect(b, "max_connections", key, int, 1024), f"{key}.max_connections"),
        max_streams=_positive(_expect(b, "max_streams", key, int, 1024), f"{key}.max_streams"),
        **common,
    )


def _stdio_backend(b: dict, key: str, common: dict) -> BackendConfig:
    if "command" not in b:
        raise ConfigError(f"{key}.command", "missing (the program to start, e.g. \"npx\" or \"/usr/bin/python3\")")
    command = _text(b, "command", key)
    if not command:
        raise ConfigError(f"{key}.command", "must not be empty")
    args = b.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{key}.args", "expected a list of strings")
    for i, a in enumerate(args):
        if "\x00" in a:
            raise ConfigError(f"{key}.args[{i}]", "must not contain NUL")
    env = b.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"{key}.env", "expected a table of strings")
    for ek, ev in env.items():
        if not _ENV_NAME_RE.match(ek):
            raise ConfigError(f"{key}.env.{ek}", "not a valid environment variable name")
        if "\x00" in ev:
            raise ConfigError(f"{key}.env.{ek}", "must not contain NUL")
    passthrough = b.get("env_passthrough", list(ENV_PASSTHROUGH))
    if not isinstance(passthrough, list) or not all(isinstance(v, str) and _ENV_NAME_RE.match(v) for v in passthrough):
        raise ConfigError(f"{key}.env_passthrough", "expected a list of environment variable names")
    mode = _expect(b, "mode", key, str, "per_session")
    if mode not in ("per_session", "shared"):
        raise ConfigError(f"{key}.mode", f"expected per_session or shared, got {mode!r}")
    cwd = _path_file(b, "cwd", key)
    mlb = b.get("max_line_bytes")
    return BackendConfig(
        url="",
        host="",
        port=0,
        path="/",
        command=command,
        args=tuple(args),
        env=tuple(env.items()),
        inherit_env=_expect(b, "inherit_env", key, bool, False),
        env_passthrough=tuple(passthrough),
        cwd=cwd,
        mode=mode,
        max_processes=_positive(_expect(b, "max_processes", key, int, 16), f"{key}.max_processes"),
        idle_timeout=_positive(_expect(b, "idle_timeout", key, float, 300.0), f"{key}.idle_timeout", allow_zero=True),
        spawn_rate=_positive(_expect(b, "spawn_rate", key, float, 10.0), f"{key}.spawn_rate"),
        shutdown_grace=_positive(_expect(b, "shutdown_grace", key, float, 2.0), f"{key}.shutdown_grace"),
        max_line_bytes=None if mlb is None else _positive(_expect(b, "max_line_bytes", key, int, 0), f"{key}.max_line_bytes"),
        **common,
    )


# ---------------------------------------------------------------------------------
# Multiplexed routes: [sessions] defaults and per-route keys.

_MUX_ROUTE_KEYS = (
    "namespacing", "separator", "uri_scheme", "server_name", "server_version", "instructions", "fail_mode",
    "list_cache", "list_cache_ttl", "session_key", "session_key_file", "old_keys", "old_key_files", "max_age",
)  # fmt: skip


def _key_text(value, key: str) -> bytes:
    from .mux.token import parse_key

    if not isinstance(value, str):
        raise ConfigError(key, "expected a key as text (64 hex digits or base64 of 32 bytes)")
    try:
        return parse_key(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _key_file(value, key: str) -> bytes:
    from .mux.token import load_key_file

    if not isinstance(value, str) or not value:
        raise ConfigError(key, "expected a file path")
    try:
        return load_key_file(value)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {value}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _str_list(section: dict, name: str, key: str) -> list:
    v = section.get(name, [])
    if not isinstance(v, list):
        raise ConfigError(key, "expected a list")
    return v


def _keys_of(section: dict, prefix: str, key_name: str, file_name: str) -> tuple[bytes | None, list[bytes]]:
    """(current key or None, old keys) from ``section``'s key settings."""
    current = None
    if key_name in section and file_name in section:
        raise ConfigError(f"{prefix}.{file_name}", f"give either {key_name} or {file_name}, not both")
    if key_name in section:
        current = _key_text(section[key_name], f"{prefix}.{key_name}")
    elif file_name in section:
        current = _key_file(section[file_name], f"{prefix}.{file_name}")
    old = [_key_text(v, f"{prefix}.old_keys[{i}]") for i, v in enumerate(_str_list(section, "old_keys", f"{prefix}.old_keys"))]
    old += [
        _key_file(v, f"{prefix}.old_key_files[{i}]")
        for i, v in enumerate(_str_list(section, "old_key_files", f"{prefix}.old_key_files"))
    ]
    return current, old


def _sessions_defaults(s: dict) -> dict:
    _unknown_keys(s, {"key", "key_file", "old_keys", "old_key_files", "max_age"}, "sessions")
    current, old = _keys_of(s, "sessions", "key", "key_file")
    max_age = _positive(_expect(s, "max_age", "sessions", float, 86400.0), "sessions.max_age", allow_zero=True)
    return {"key": current, "old_keys": old, "max_age": max_age, "given": bool(s)}


def _mux_route(r: dict, key: str, blist: list[str], sessions: dict) -> MuxConfig:
    from .mux.names import MODES, Namespace, check_backend_names, validate_separator

    d = MuxConfig()
    mode = _expect(r, "namespacing", key, str, d.namespacing)
    if mode not in MODES:
        raise ConfigError(f"{key}.namespacing", f"expected one of {', '.join(MODES)}, got {mode!r}")
    sep = _expect(r, "separator", key, str, d.separator)
    scheme = _expect(r, "uri_scheme", key, str, d.uri_scheme)
    for where, check in (
        ("separator", lambda: validate_separator(sep)),
        ("backends", lambda: check_backend_names(blist, sep)),
        ("uri_scheme", lambda: Namespace(blist, separator=sep, mode=mode, uri_scheme=scheme)),
    ):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{key}.{where}", str(exc)) from None
    fail = _expect(r, "fail_mode", key, str, d.fail_mode)
    if fail not in ("open", "closed"):
        raise ConfigError(f"{key}.fail_mode", f"expected open or closed, got {fail!r}")
    lc = _expect(r, "list_cache", key, str, d.list_cache)
    if lc not in ("shared", "session", "off"):
        raise ConfigError(f"{key}.list_cache", f"expected shared, session or off, got {lc!r}")
    server_name = _expect(r, "server_name", key, str, d.server_name)
    if not server_name:
        raise ConfigError(f"{key}.server_name", "must not be empty")
    current, old = _keys_of(r, key, "session_key", "session_key_file")
    if "old_keys" not in r and "old_key_files" not in r:
        old = list(sessions["old_keys"])
    ephemeral = False
    if current is None:
        current = sessions["key"]
    if current is None:
        # No key anywhere: make one up (shared by every route and forked worker of this
        # configuration).  Sessions then end with the process.
        current = ephemeral_key()
        ephemeral = True
    return MuxConfig(
        namespacing=mode,
        separator=sep,
        uri_scheme=scheme,
        server_name=server_name,
        server_version=_expect(r, "server_version", key, str, d.server_version),
        instructions=_expect(r, "instructions", key, str, "") or None,
        fail_mode=fail,
        list_cache=lc,
        list_cache_ttl=_positive(_expect(r, "list_cache_ttl", key, float, d.list_cache_ttl), f"{key}.list_cache_ttl", allow_zero=True),
        session_key=current,
        old_keys=tuple(old),
        max_age=_positive(_expect(r, "max_age", key, float, sessions["max_age"]), f"{key}.max_age", allow_zero=True),
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

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    d = conv(self)
    d["server"]["listen"] = fmt_hostport(self.server.listen)
    if self.server.admin_listen:
        d["server"]["admin_listen"] = fmt_hostport(self.server.admin_listen)
    shown = {t: keys - {"bearer_token"} for t, keys in TRANSPORT_KEYS.items()}
    d["backends"] = {
        b.name: {k: v for k, v in conv(b).items() if k in shown[b.transport]} for b in self.backends
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
