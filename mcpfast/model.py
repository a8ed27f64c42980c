"""The configuration as the gateway reads it: frozen, validated values.

``config`` builds these from TOML and command-line flags (and is the only place that
checks them); everything else reads them.  Nothing here imports the rest of mcpfast.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Config", "ServerConfig", "LimitsConfig", "TimeoutsConfig", "LogConfig", "BackendConfig", "RouteConfig",
    "MuxConfig", "ENV_PASSTHROUGH", "ephemeral_key", "fmt_hostport",
]  # fmt: skip


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
    allowed_origins: tuple[str, ...] = (
        "http://localhost:*",
        "http://127.0.0.1:*",
        "http://[::1]:*",
        "https://localhost:*",
        "https://127.0.0.1:*",
        "https://[::1]:*",
    )
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


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = 65536
    max_headers: int = 128
    max_target_bytes: int = 8192
    max_body_bytes: int = 4 * 1024 * 1024
    max_sse_event_bytes: int = 16 * 1024 * 1024
    max_connections: int = 10000
    # What one client may hold (docs/security.md, "Per-client resource bounds").  A client
    # address is the peer IP of the TCP connection; a principal is the authenticated caller.
    max_connections_per_address: int = 256
    max_streams_per_principal: int = 128  # GET streams open at once, routes with authentication
    max_streams_per_address: int = 64  # GET streams open at once by one address without credentials
    max_streams_per_session: int = 4  # GET streams open at once in one MCP session
    max_sessions: int = 100000  # sessions tracked per process (least recently used dropped first)


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    header_read: float = 10.0  # first byte of a request to the end of its head
    idle: float = 75.0  # keep-alive connection with no request in flight
    body_read: float = 30.0  # end of head to end of body
    upstream_connect: float = 5.0
    upstream_response: float = 60.0  # request sent to upstream response head
    drain: float = 20.0  # graceful shutdown: how long in-flight requests may finish
    session_idle: float = 3600.0  # a session unseen this long no longer counts as open (metrics)
    client_write: float = 60.0  # a client that takes none of its answer this long is dropped


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # json | text
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
    # stdio and sse: answers kept for clients that resume them (bytes over all sessions;
    # 0: answers are not resumable), and how long an answer's stream stays open before
    # the client is asked to resume it later (0: until the answer is complete).
    resume_buffer: int = 8 << 20
    poll_after: float = 0.0

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
    cors: Any = None  # mcpfast.pipeline.cors.CorsConfig, or None without a [cors] section
    source: str | None = None  # the file it came from, for messages

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)


def fmt_hostport(hp: tuple[str, int]) -> str:
    host, port = hp
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_EPHEMERAL: list[bytes] = []


def ephemeral_key() -> bytes:
    """This process's made-up session key (made once, at load, so forked workers share it)."""
    if not _EPHEMERAL:
        _EPHEMERAL.append(os.urandom(32))
    return _EPHEMERAL[0]
