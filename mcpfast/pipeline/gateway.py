"""The per-request pipeline: route → check → scan → forward → relay → observe.

Theory of operation.  ``ClientProtocol`` hands over an ``Exchange`` whose request is
complete.  The exchange finds its route by path (a dict lookup decided at config load),
checks method and ``Origin``, and for a POST asks the envelope scanner for the JSON-RPC
method, id and tool name -- byte spans only, no JSON objects.  It then takes a pooled
upstream connection and writes the request head and the *same body object* it received
in one ``writelines`` call.

The answer is relayed as it comes: the upstream response head becomes the client head
(hop-by-hop fields dropped per RFC 9110 §7.6.1, framing re-decided for the client), and
each body chunk -- JSON or SSE events, byte-identical -- is written the moment the
upstream parser hands it over.  The client head is held back only until the first body
bytes of the same read, so a small JSON answer leaves in one write.  When the answer is
complete the exchange records metrics and one access-log line and tells the connection,
which starts the next pipelined request or waits for one.

Failures map to answers the client can act on: an unreachable backend or garbage from it
gives 502, a slow one 504, always with a JSON-RPC error body on MCP routes; a failure
after the answer started cuts the client connection (an incomplete stream is visible to
the client, a fake end is not); a client that leaves closes its upstream at once.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import signal
import socket
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from ..model import BackendConfig, Config, RouteConfig, ephemeral_key
from .cors import CORS_RESPONSE_FIELDS, CorsPolicy
from ..wire.core import KIND_ERROR, ProtocolError, SSEParser, encode_sse_event, join_fields, scan_jsonrpc
from ..wire.heads import fixed_fields, host_line, origin_target, passthrough_head
from ..observe import MAX_METHOD_CHARS, MAX_NAME_CHARS, METHOD_LABELS, AccessLog, BackendMetrics, Metrics
from .phases import DONE, NEW, RELAYING, WAIT_CONN, WAIT_HEAD
from ..policy import AuthError, Policy, Principal
from .quota import ClientQuota
from ..wire.rpcerrors import (
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, SERVER_ERROR,
    jsonrpc_error_body, status_reason,
)
from ..transport.listener import ClientProtocol
from ..transport.pool import UpstreamError, UpstreamPool
from ..transport.tls import insecure_warnings

__all__ = ["Gateway", "Route", "Exchange", "OriginPolicy"]

log = logging.getLogger("mcpfast.gateway")

# One clock for durations and deadlines, so one reading serves both (a request's start is
# also the base of its body-read deadline).  On Linux time.monotonic has nanosecond
# resolution, like perf_counter, which reads the same clock.
_perf = time.monotonic

# Request header fields that are not forwarded (RFC 9110 §7.6.1 hop-by-hop, plus the
# framing and Host fields we write ourselves).
_DROP_REQUEST = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
     b"upgrade", b"host", b"content-length", b"expect", b"proxy-authorization")
)  # fmt: skip
_DROP_RESPONSE = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
     b"upgrade", b"content-length")
)  # fmt: skip
_XFF = b"x-forwarded-for"
_FORWARDED_METHODS = frozenset((b"POST", b"GET", b"DELETE", b"OPTIONS", b"HEAD"))
_ALLOW = b"GET, POST, DELETE, OPTIONS"
_SESSION_FIELD = b"mcp-session-id"
_ALLOW_PASSTHROUGH = b"GET, HEAD, POST, DELETE, OPTIONS"  # HEAD is forwarded; a multiplexed route has none
_SSE = b"text/event-stream"

_NAMED = frozenset(("tools/call", "prompts/get"))  # methods whose params.name is a tool or prompt name


def _bad_name(env) -> tuple[int, str] | None:
    """Why a JSON-RPC request's method or name is refused (error code, message), or None:
    a method longer than ``MAX_METHOD_CHARS``, or a tool or prompt name longer than MCP
    allows.  Refused before anything records or caches them."""
    m = env.method
    if len(m) > MAX_METHOD_CHARS:
        return INVALID_REQUEST, f"Invalid Request: method longer than {MAX_METHOD_CHARS} characters"
    name = env.name
    if name is not None and m in _NAMED and len(name) > MAX_NAME_CHARS:
        return INVALID_PARAMS, f"Invalid params: name longer than {MAX_NAME_CHARS} characters"
    return None


class OriginPolicy:
    """Allowed ``Origin`` values, compiled once: exact origins and host wildcards
    (``http://localhost:*`` allows any port of that scheme and host)."""

    __slots__ = ("any", "exact", "wild")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.any = "*" in patterns
        self.exact = frozenset(p.encode() for p in patterns if not p.endswith(":*"))
        self.wild = frozenset(p[:-2].encode() for p in patterns if p.endswith(":*"))

    def allows(self, origin: bytes) -> bool:
        if self.any:
            return True
        o = origin.lower().rstrip(b"/")
        if o in self.exact or o in self.wild:
            return True
        # strip the port: "http://localhost:3000" → "http://localhost"
        scheme_end = o.find(b"://")
        colon = o.rfind(b":")
        if colon > scheme_end + 2 and not o.endswith(b"]"):
            return o[:colon] in self.wild
        return False


class _FieldClass(dict):
    """Field name → what to do with it when forwarding: ``KEEP``, ``DROP`` or ``XFF``.

    Names come from the parser's name cache as the same bytes objects request after
    request, so after the first sight a name costs one dict lookup (bytes cache their
    hash) instead of a ``lower()`` and a set test.  Bounded: names are client-chosen."""

    __slots__ = ("dropped", "xff")
    MAX = 1024

    def __init__(self, dropped: frozenset, xff: bool) -> None:
        super().__init__()
        self.dropped = dropped
        self.xff = xff

    def __missing__(self, name: bytes) -> int:
        ln = name.lower()
        code = _DROP if ln in self.dropped else (_XFF_CODE if self.xff and ln == _XFF else _KEEP)
        if len(self) < self.MAX:
            self[name] = code
        return code


_KEEP, _DROP, _XFF_CODE = 0, 1, 2
_CONN_CACHE: dict[bytes, frozenset] = {}


def _connection_listed(value: bytes) -> frozenset:
    """Field names listed in a Connection header are hop-by-hop too (RFC 9110 §7.6.1)."""
    r = _CONN_CACHE.get(value)
    if r is None:
        r = frozenset(x.strip().lower() for x in value.split(b",") if x.strip())
        if len(_CONN_CACHE) < 256:
            _CONN_CACHE[value] = r
    return r


# "Connection: keep-alive" / "close" name no field beyond the ones always dropped.
_PLAIN_CONNECTION = frozenset((frozenset((b"keep-alive",)), frozenset((b"close",)), frozenset()))


class HostPolicy:
    """Allowed ``Host`` values: names (any port) and name:port pairs, compiled once."""

    __slots__ = ("any", "names", "exact", "seen")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.any = "*" in patterns
        self.names = frozenset(p.encode() for p in patterns if not _has_port(p))
        self.exact = frozenset(p.encode() for p in patterns if _has_port(p))
        self.seen: set[bytes] = set()  # Host values already allowed (bounded)

    def allows(self, host: bytes | None) -> bool:
        if self.any or host in self.seen:
            return True
        if host is None:
            return False
        if self._check(host):
            if len(self.seen) < 256:
                self.seen.add(host)
            return True
        return False

    def _check(self, host: bytes) -> bool:
        h = host.lower()
        if h in self.exact or h in self.names:
            return True
        colon = h.rfind(b":")
        if colon > 0 and h.rfind(b"]") < colon:
            return h[:colon] in self.names
        return False


def _param_name(part: bytes) -> bytes:
    """The name of one ``name=value`` query parameter as a backend decodes it."""
    return unquote_to_bytes(part.partition(b"=")[0].replace(b"+", b" "))


def _unpinned(query: bytes, pinned: frozenset) -> bytes:
    """A client's query without the parameters the backend URL sets."""
    return b"&".join([p for p in query.split(b"&") if _param_name(p) not in pinned])


def _has_port(p: str) -> bool:
    colon = p.rfind(":")
    return colon > 0 and p.rfind("]") < colon


class Route:
    """One MCP endpoint path and the backend behind it, with everything the hot path
    needs precomputed."""

    __slots__ = (
        "path", "name", "backend", "pool", "bm", "target", "prefix", "extra", "response_timeout", "policy",
        "virtual", "host_line", "fields", "seal", "pinned", "cors", "rfields", "sessions",
    )  # fmt: skip

    def __init__(
        self, rc: RouteConfig, backend: BackendConfig, pool: UpstreamPool, bm: BackendMetrics, cfg: Config, policy=None
    ):
        self.path = rc.path
        self.policy = policy  # RoutePolicy, or None when no policy section is configured
        self.host_line = host_line(backend.host_header)
        self.virtual = None  # the multiplexing handler of a route over several backends
        # Request fields not forwarded: hop-by-hop ones, and the client's credentials
        # when authentication is on (unless this backend is to receive them).
        drop = _DROP_REQUEST
        if policy is not None and policy.enabled and not backend.forward_credentials:
            drop = drop | policy.drop_headers
        # Session binding (policy/sessions.py): on an authenticated passthrough route the
        # client holds a sealed session id; the backend gets its own id, written by
        # ``forward`` once the seal is verified, never the client's field.
        self.seal = policy.seal if policy is not None and getattr(rc, "mux", None) is None else None
        if self.seal is not None:
            drop = drop | {_SESSION_FIELD}
        self.fields = _FieldClass(drop, cfg.server.forwarded_headers)
        self.name = rc.path
        self.backend = backend
        self.pool = pool
        self.bm = bm
        path, _, query = origin_target(backend.path, f"backends.{backend.name}.url").partition(b"?")
        # ``target``: the backend URL's own path and query, for a request without one;
        # ``prefix``: what a client's query is appended to.
        self.target = path + b"?" + query if query else path
        self.prefix = path + b"?" + query + b"&" if query else path + b"?"
        # Parameters the backend URL sets: a client's own of the same name are dropped
        # (frameworks differ on which of repeated parameters they take).
        self.pinned = frozenset(_param_name(p) for p in query.split(b"&") if p) if query else None
        self.extra = fixed_fields(backend.headers)
        self.response_timeout = backend.response_timeout or cfg.timeouts.upstream_response
        # Decided once: the CORS policy its answers carry (None without [cors]; set by
        # the gateway) and which fields of a backend's answer head the gateway drops.
        self.cors = None
        self.rfields = _RESPONSE_FIELD_CLASSES[2 * (self.seal is not None)]
        self.sessions = None  # the gateway's session table (Gateway.sessions), set by it


_RESPONSE_FIELDS = _FieldClass(_DROP_RESPONSE, False)
# On a sealing route the gateway writes the session id itself; with [cors] configured it
# writes the CORS fields: the backend's own are dropped.  Indexed by (sealed, cors).
_RESPONSE_FIELDS_SEALED = _FieldClass(_DROP_RESPONSE | {_SESSION_FIELD}, False)
_RESPONSE_FIELDS_CORS = _FieldClass(_DROP_RESPONSE | CORS_RESPONSE_FIELDS, False)
_RESPONSE_FIELDS_SEALED_CORS = _FieldClass(_DROP_RESPONSE | CORS_RESPONSE_FIELDS | {_SESSION_FIELD}, False)
_RESPONSE_FIELD_CLASSES = (_RESPONSE_FIELDS, _RESPONSE_FIELDS_CORS, _RESPONSE_FIELDS_SEALED, _RESPONSE_FIELDS_SEALED_CORS)


class Exchange:
    """One request and its answer."""

    __slots__ = (
        "gw", "conn", "head", "chunks", "route", "body", "t0", "t_sent", "t_up_end", "t_end",
        "method", "tool", "rpc_id", "status", "bytes_out", "upstream", "phase", "deadline",
        "queued", "chunked", "keep_alive", "sse", "outcome", "retried", "is_head", "out", "principal",
        "env", "lfilter", "flushed", "stream", "upstream_sid",
    )  # fmt: skip

    def __init__(self, gw: "Gateway", conn: ClientProtocol, head) -> None:
        self.gw = gw
        self.conn = conn
        self.head = head
        self.chunks: list = []
        self.route: Route | None = None
        self.body: Any = b""
        self.t0 = _perf()
        self.t_sent = 0.0
        self.t_up_end = 0.0
        self.t_end = 0.0
        self.method = "-"
        self.tool = ""
        self.rpc_id: Any = None
        self.status = 0
        self.bytes_out = 0
        self.upstream = None
        self.phase = NEW
        self.deadline = 0.0
        # Bytes for the client produced by the current upstream read, written in one call
        # when the read has been parsed (flush): a small answer's head, body and
        # chunked terminator leave in one write.
        self.queued: list | None = None
        self.chunked = False
        self.keep_alive = head.keep_alive
        self.sse = False
        self.outcome = ""
        self.retried = False
        self.is_head = head.method == b"HEAD"
        self.out = None
        self.principal: Principal | None = None
        self.env: Any = None
        self.lfilter: _ListFilter | None = None
        self.flushed = 0  # bytes_out at the last flush
        self.stream = None  # the quota keys of a GET stream while it is open
        # On a route with a session seal: the backend's own session id, once the client's
        # sealed one is verified for its principal (None: none sent, or not verified).
        self.upstream_sid: bytes | None = None

    # --- request side -------------------------------------------------------------
    def start(self) -> None:
        gw = self.gw
        head = self.head
        target = head.target
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        route = gw.routes.get(path)
        if route is None:
            if gw.policy is not None and head.method in (b"GET", b"HEAD"):
                doc = gw.policy.metadata(path)
                if doc is not None:  # RFC 9728 protected-resource metadata
                    self.respond(200, doc, b"Cache-Control: max-age=300\r\n")
                    return
            front = gw.fronts.get(path)
            if front is not None:  # another transport's endpoint (mcpfast/front/)
                front.handle(self)
                return
            self.respond_error(404, METHOD_NOT_FOUND, "no MCP endpoint at this path", mcp=False)
            return
        self.begin(route)

    def begin(self, route: "Route") -> None:
        """The request is for ``route``: checks, scan, authentication and policy, then
        dispatch.  A front calls this for requests that are to meet exactly what a
        request to the route itself meets."""
        gw = self.gw
        head = self.head
        self.route = route
        refusal = gw.check_request(head)
        if refusal is not None:
            self.respond_error(*refusal)
            return
        if head.method == b"OPTIONS":
            # Answered here, never forwarded: a backend would see a request that passed
            # no authentication, session binding or policy.
            self.method = "OPTIONS"
            self.options(_ALLOW_PASSTHROUGH if route.virtual is None else _ALLOW)
            return
        chunks = self.chunks
        if chunks:
            # One chunk (the usual case) is forwarded as the object the parser handed
            # out -- the received bytes or a view of them, never a copy; several are
            # joined once.
            if len(chunks) == 1:
                body = chunks[0]
            else:
                body = b"".join(chunks)
                chunks.clear()  # the pieces are in body now: hold the bytes once
            self.body = body
            if head.method == b"POST":
                try:
                    env = scan_jsonrpc(body)
                except ProtocolError as exc:
                    self.method = "invalid"
                    self.respond_error(400, exc.code or PARSE_ERROR, f"{'Parse error' if exc.code == PARSE_ERROR else 'Invalid Request'}: {exc}")
                    return
                self.env = env
                if type(env) is list:
                    self.method = "batch"
                    for e in env:
                        bad = None if e.method is None else _bad_name(e)
                        if bad is not None:
                            self.method = "invalid"
                            self.respond_error(400, *bad)
                            return
                else:
                    m = env.method
                    if m is not None:
                        self.rpc_id = env.id
                        # Metrics and the access log name a method by its label; the
                        # tool is named only once the caller is authenticated.
                        if m in METHOD_LABELS:
                            self.method = m
                        else:
                            self.method = "other"
                        name = env.name
                        if len(m) > MAX_METHOD_CHARS or (name is not None and len(name) > MAX_NAME_CHARS):
                            bad = _bad_name(env)
                            if bad is not None:
                                self.method = "invalid"
                                self.respond_error(400, *bad)
                                return
                    elif env.kind == KIND_ERROR:
                        self.method = "response:error"
                    else:
                        self.method = "response"
        elif head.method == b"POST":
            self.respond_error(400, PARSE_ERROR, "Parse error: empty body")
            return
        else:
            self.method = head.method.decode("latin-1")
        rp = route.policy
        if rp is not None and rp.enabled and head.method != b"OPTIONS":  # preflights carry no credentials
            try:
                p = rp.authenticate(head, self.conn.peer)
            except AuthError as exc:
                self.respond_error(exc.status, exc.code, exc.message, headers=exc.headers)
                return
            if type(p) is not Principal:
                # A JWKS fetch is under way (unknown key id): continue when it ends.
                self.phase = WAIT_CONN
                self.deadline = _perf() + route.response_timeout
                p.add_done_callback(self._authenticated)
                return
            self.principal = p
            self._name_tool()
            if not self._admit(rp):
                return
        else:
            self._name_tool()
        self._dispatch(route)

    def _name_tool(self) -> None:
        """The caller is authenticated: the tool or prompt name it asked for may now be
        recorded (metrics and the access log label it; see ``observe.tool_label``)."""
        env = self.env
        if env is not None and type(env) is not list:
            name = env.name
            if name is not None and len(name) <= MAX_NAME_CHARS:
                self.tool = name

    def _dispatch(self, route: "Route") -> None:
        """The request is admitted: the virtual server answers it, or it is forwarded."""
        if self.head.method == b"GET":
            # A server->client stream holds a connection here and at a backend for as
            # long as the client listens: counted per client and per session.
            keys = self.gw.quota.open_stream(self.principal, self.conn.peer, route.path, self.head.session_id)
            if type(keys) is str:
                self.gw.metrics.error("stream_limit")
                self.respond_error(429, SERVER_ERROR, keys, headers=b"Retry-After: 1\r\n")
                return
            self.stream = keys
        if route.virtual is not None:
            route.virtual.handle(self)
        else:
            self.forward()

    def _authenticated(self, fut) -> None:
        if self.phase == DONE or fut.cancelled():
            return
        self.phase = NEW
        exc = fut.exception()
        if exc is not None:
            if isinstance(exc, AuthError):
                self.respond_error(exc.status, exc.code, exc.message, headers=exc.headers)
            else:
                log.error("authentication failed unexpectedly", exc_info=exc)
                self.respond_error(500, INTERNAL_ERROR, "Internal error during authentication")
            return
        self.principal = fut.result()
        self._name_tool()
        route = self.route
        if self._admit(route.policy):
            self._dispatch(route)

    def _admit(self, rp) -> bool:
        """Session binding, authorization and rate limits; False when refused (answered)."""
        p = self.principal
        sid = self.head.session_id
        if sid is not None and self.route.seal is not None:
            raw = self.route.seal.open(sid, p.key)
            if raw is None:
                # Not sealed here, forged, another route's or another principal's: an
                # unknown session.  The backend never sees the request.
                r = rp.session_refused(p, sid, None if self.method == "-" else self.method)
                self.respond_error(r.status, r.code, r.message)
                return False
            self.upstream_sid = raw
        vr = self.route.virtual
        # A multiplexed route has no one backend: rules naming backends apply where the
        # multiplexer knows which backend a message goes to.
        backend = self.route.backend.name if vr is None else None
        env = self.env
        refusal = None
        if env is None:
            refusal = rp.admit_transport(p, sid)
        elif type(env) is list:
            for e in env:
                m = e.method
                if m is None or (vr is not None and m in vr.checks_after_routing):
                    # Responses, and namespaced names on a multiplexed route: the
                    # multiplexer checks each element once it is routed.
                    refusal = rp.admit_transport(p, sid)
                else:
                    refusal = rp.admit(p, m, rp.target_name(e), backend, sid)
                if refusal is not None:
                    break
        elif env.method is not None:
            if vr is not None and env.method in vr.checks_after_routing:
                # The name is namespaced: the multiplexer checks authorization and limits
                # once it has split it into backend and the backend's own name.
                refusal = rp.admit_transport(p, sid)
            else:
                refusal = rp.admit(p, env.method, rp.target_name(env), backend, sid)
            if refusal is None and rp.needs_filter(env.method):
                self.lfilter = _ListFilter(self, rp, env.method)
        else:
            refusal = rp.admit_transport(p, sid)
        if refusal is not None:
            self.respond_error(refusal.status, refusal.code, refusal.message, headers=refusal.headers)
            return False
        return True

    def forward(self) -> None:
        route = self.route
        head = self.head
        gw = self.gw
        target = head.target
        q = target.find(b"?")
        if q < 0:
            utarget = route.target
        elif route.pinned is None:
            utarget = route.prefix + target[q + 1 :]
        else:
            utarget = route.prefix + _unpinned(target[q + 1 :], route.pinned)
        conn_listed = _connection_listed(head.connection) if head.connection else None
        if conn_listed is not None and conn_listed in _PLAIN_CONNECTION:
            conn_listed = None
        block, xff = join_fields(head.headers, route.fields, conn_listed)
        fwd = None
        if gw.forwarded:
            peer = self.conn.xff_peer
            fwd = (xff + b", " + peer) if xff else peer
        body = self.body
        data = passthrough_head(
            # upstream_sid: the verified backend id behind a sealed one (or None)
            head.method, utarget, route.host_line, block, self.upstream_sid, fwd, route.extra,
            len(body) if body or head.method in (b"POST", b"PUT", b"PATCH") else -1,
        )  # fmt: skip
        self.phase = WAIT_CONN
        t = _perf()
        self.deadline = t + route.response_timeout
        self.t_sent = t
        self.out = [data, body] if body else [data]
        if head.method == b"GET":
            # Streams have their own connection budget at the backend (max_streams).
            route.pool.acquire_stream(self._got_upstream)
            return
        conn = route.pool.take_idle()
        if conn is not None:  # the usual case: a kept-alive connection is free
            self.upstream = conn
            self.phase = WAIT_HEAD
            if self.conn.write_paused:
                conn.pause_reading()
            conn.send(self, self.out, self.is_head)
            return
        route.pool.acquire(self._got_upstream)

    def _got_upstream(self, conn, err) -> None:
        if self.phase != WAIT_CONN:  # timed out or client left while we waited
            if conn is not None:
                self.route.pool.release(conn)
            return
        if err is not None:
            self.gw.metrics.error(err.kind)
            self.respond_error(err.status, SERVER_ERROR, f"{err} (backend {self.route.backend.name})")
            return
        self.upstream = conn
        self.phase = WAIT_HEAD
        if self.conn.write_paused:
            conn.pause_reading()
        conn.send(self, self.out, self.is_head)

    # --- upstream side (called by UpstreamProtocol) --------------------------------------
    def upstream_head(self, head) -> None:
        self.phase = RELAYING
        status = head.status
        self.status = status
        self.upstream.keep_alive = head.keep_alive
        conn_listed = _connection_listed(head.connection) if head.connection else None
        if conn_listed is not None and conn_listed in _PLAIN_CONNECTION:
            conn_listed = None
        route = self.route
        seal = route.seal
        parts = [b"HTTP/1.1 %d " % status, head.reason or status_reason(status), b"\r\n",
                 join_fields(head.headers, route.rfields, conn_listed)[0]]  # fmt: skip
        p = self.principal
        if seal is None:
            sid = self.head.session_id
        else:
            sid = self.upstream_sid
            if head.session_id is not None and p is not None:
                # The client sees only sealed ids: its own again, or a new one sealed now.
                shown = self.head.session_id if head.session_id == sid else seal.seal(head.session_id, p.key)
                parts += (b"Mcp-Session-Id: ", shown, b"\r\n")
        ct = head.content_type
        if ct is not None and ct.startswith(_SSE):
            self.sse = True
            self.route.bm.sse.inc()
        lf = self.lfilter
        if lf is not None and (status < 200 or status >= 300 or status == 204 or self.is_head):
            self.lfilter = lf = None
        if lf is not None:
            lf.begin(parts)  # the answer is rewritten: framing decided when its size is known
        else:
            self.queued = [self.framed_head(parts, head.content_length, status)]
        # Session bookkeeping (metrics), under the backend's own ids.  The backend owns
        # the session itself.
        gw = self.gw
        if head.session_id is not None and self.method == "initialize" and 200 <= status < 300:
            gw.session_opened(route, head.session_id)
        elif sid is not None and (status == 404 or (self.head.method == b"DELETE" and 200 <= status < 300)):
            gw.session_closed(route, sid)
        elif sid is not None and 200 <= status < 300:
            sessions = route.sessions  # Gateway.session_used, inline: once per request
            entry = sessions.get(sid)
            if entry is not None:
                entry[1] = self.t0
                sessions.move_to_end(sid)

    def framed_head(self, parts: list, content_length: int, status: int) -> bytes:
        """Finish a client response head: framing (RFC 9112 §6), connection and CORS
        fields."""
        keep = self.keep_alive and self.conn.keep_alive
        cors = self.route.cors
        if cors is not None:
            parts.append(cors.answer_fields(self.head.origin))
        if status < 200 or status in (204, 304):
            pass
        elif content_length >= 0:
            parts.append(b"Content-Length: %d\r\n" % content_length)
        elif self.is_head:
            pass
        elif self.head.version == 11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            self.chunked = True
        else:
            keep = False  # HTTP/1.0 client: the end of the body is the end of the connection
        if not keep:
            parts.append(b"Connection: close\r\n")
        elif self.head.version == 10:
            parts.append(b"Connection: keep-alive\r\n")
        self.keep_alive = keep
        parts.append(b"\r\n")
        return b"".join(parts)

    # --- the answer: the small API other layers use ---------------------------------
    # A terminating route, a batch or a client front answers through these, never by
    # setting the exchange's phase or fields: ``alive()``; ``begin_answer(status, head)``
    # with a head made by ``framed_head``; ``relay(piece)`` for each piece of the body;
    # ``flush()`` once per batch of pieces; ``upstream_end()`` (or ``upstream_failed``)
    # to finish.  ``respond``/``respond_error`` answer in one go.
    def alive(self) -> bool:
        """Is an answer still wanted (not finished, client still there)?"""
        return self.phase != DONE

    def begin_answer(self, status: int, head: bytes) -> None:
        """Start a streamed answer: ``head`` is the complete client head (``framed_head``
        or a preformatted one); it leaves with the first ``flush``."""
        self.status = status
        self.phase = RELAYING
        self.queued = [head]

    def flush(self) -> None:
        """End of an upstream read: write what it produced, in one call."""
        p = self.queued
        if p is not None:
            self.queued = None
            if len(p) == 1:
                self.conn.send(p[0])
            elif len(p) <= 8 and self.bytes_out - self.flushed <= 16384:
                # A small answer's pieces (head, chunk framing, body, terminator): one
                # joined buffer is cheaper to hand to the transport than a vector.
                self.conn.send(b"".join(p))
            else:
                self.conn.send_many(p)  # large bodies are not copied
            self.flushed = self.bytes_out

    def upstream_body(self, chunk) -> None:
        lf = self.lfilter
        if lf is not None:
            lf.feed(chunk)
            return
        self.relay(chunk)

    def relay(self, chunk) -> None:
        """Queue one piece of the answer for the client (chunk-framed if need be); it
        leaves with everything else the same upstream read produced (``flush``)."""
        n = len(chunk)
        self.bytes_out += n
        p = self.queued
        if p is None:
            p = self.queued = []
        if self.chunked:
            p += (b"%x\r\n" % n, chunk, b"\r\n")
        else:
            p.append(chunk)

    def upstream_end(self) -> None:
        self.t_up_end = _perf()
        lf = self.lfilter
        if lf is not None:
            try:
                lf.end()
            except ProtocolError as exc:
                self.upstream = None
                self.upstream_failed(UpstreamError("upstream_protocol", f"backend list answer unusable: {exc}"))
                return
        if self.chunked:
            p = self.queued
            if p is None:
                self.queued = [b"0\r\n\r\n"]
            else:
                p.append(b"0\r\n\r\n")
        self.flush()
        self.upstream = None
        self.finish("ok" if self.status < 400 else ("client_error" if self.status < 500 else "upstream_error"))

    def upstream_failed(self, err: UpstreamError) -> None:
        self.upstream = None
        if self.phase == DONE:
            return
        if self.phase == WAIT_HEAD:
            if getattr(err, "retryable", False) and not self.retried:
                # A reused keep-alive connection closed before answering: the backend
                # dropped it as idle, so the request was never processed.  One retry
                # on a fresh connection.
                self.retried = True
                self.phase = WAIT_CONN
                pool = self.route.pool
                (pool.acquire_stream if self.head.method == b"GET" else pool.acquire)(self._got_upstream)
                return
            self.gw.metrics.error(err.kind)
            self.respond_error(err.status, SERVER_ERROR, f"{err} (backend {self.route.backend.name})")
            return
        lf = self.lfilter
        if lf is not None and lf.sse is None:
            # A list answer being collected for filtering: nothing was sent yet.
            self.gw.metrics.error(err.kind)
            self.respond_error(502, SERVER_ERROR, f"{err} (backend {self.route.backend.name})")
            return
        # Mid-answer: pass on what arrived intact, then cut the client connection so
        # it sees an incomplete stream.
        self.flush()
        self.gw.metrics.error(err.kind)
        self.t_up_end = _perf()
        self.keep_alive = False
        self.conn.abort()
        self.finish("upstream_cut")

    # --- flow control and lifetimes -----------------------------------------------------
    def pause_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def client_gone(self) -> None:
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.detach()
        if self.phase != DONE:
            self.keep_alive = False
            self.t_up_end = self.t_up_end or _perf()
            self.phase_done("client_gone")

    def check_deadline(self, now: float) -> None:
        if self.phase in (WAIT_CONN, WAIT_HEAD) and now >= self.deadline:
            up = self.upstream
            self.upstream = None
            if up is not None:
                up.detach()
            self.gw.metrics.error("upstream_timeout")
            self.respond_error(
                504, SERVER_ERROR, f"backend {self.route.backend.name} did not answer within {self.route.response_timeout:g}s"
            )

    # --- answers made here --------------------------------------------------------------
    def respond_error(self, status: int, code: int, message: str, mcp: bool = True, headers: bytes = b"") -> None:
        """Answer with a JSON-RPC error body (the MCP transport's way of saying no)."""
        body = jsonrpc_error_body(code, message, self.rpc_id)
        self.status = status
        if status == 405 and b"Allow:" not in headers:
            headers += b"Allow: " + _ALLOW + b"\r\n"
        cors = self.gw.cors
        if cors is not None:
            headers += cors.answer_fields(self.head.origin)
        keep = self.keep_alive and self.conn.keep_alive and status not in (408,)
        self.keep_alive = keep
        self.bytes_out = len(body)
        self.conn.send(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
            % (status, status_reason(status), len(body), headers, b"" if keep else b"Connection: close\r\n",
               b"" if self.is_head else body)  # a HEAD answer has no content (RFC 9110 §9.3.2)
        )  # fmt: skip
        self.t_up_end = self.t_up_end or _perf()
        self.finish("refused" if status < 500 else "gateway_error")

    def respond(self, status: int, body: bytes, headers: bytes = b"", content_type: bytes = b"application/json") -> None:
        """A complete answer made by the gateway itself."""
        self.status = status
        cors = self.gw.cors
        if cors is not None:
            headers += cors.answer_fields(self.head.origin)
        keep = self.keep_alive and self.conn.keep_alive
        self.keep_alive = keep
        self.bytes_out = len(body)
        self.conn.send(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n%s"
            % (status, status_reason(status), content_type, len(body), headers,
               b"" if keep else b"Connection: close\r\n", b"" if self.is_head else body)
        )  # fmt: skip
        self.t_up_end = self.t_up_end or _perf()
        self.finish("ok")

    def options(self, allow: bytes) -> None:
        """Answer ``OPTIONS``: 204 with the methods of this route, and the preflight
        fields when CORS is configured and the origin is one it allows."""
        cors = self.gw.cors
        extra = cors.preflight_fields(self.head.origin, allow) if cors is not None else b""
        keep = self.keep_alive and self.conn.keep_alive
        self.keep_alive = keep
        self.status = 204
        # No Content-Length: a 204 has no content and must not announce any (RFC 9110 §8.6).
        self.conn.send(
            b"HTTP/1.1 204 No Content\r\nAllow: %s\r\n%s%s\r\n" % (allow, extra, b"" if keep else b"Connection: close\r\n")
        )
        self.t_up_end = self.t_up_end or _perf()
        self.finish("ok")

    def finish(self, outcome: str) -> None:
        if self.phase == DONE:
            return
        self.phase_done(outcome)
        self.conn.exchange_done(self, self.keep_alive)

    def phase_done(self, outcome: str) -> None:
        route = self.route
        if self.phase == WAIT_CONN:
            # Maybe still in a backend pool's queue: leave it, and keep nothing big alive.
            self.body = b""
            self.out = None
            self.chunks = []
            if route is not None and self.upstream is None and self.t_sent:
                route.pool.cancel_wait(self._got_upstream)
        self.phase = DONE
        self.outcome = outcome
        t_end = self.t_end = _perf()
        gw = self.gw
        keys = self.stream
        if keys is not None:
            self.stream = None
            gw.quota.close_stream(keys)
        if route is not None:
            bm = route.bm
            if self.sse:
                bm.sse.dec()
            bm.count(self.method, self.tool, outcome)
            if self.t_sent:
                up = self.t_up_end - self.t_sent
                own = (self.t_sent - self.t0) + (t_end - self.t_up_end)
                bm.upstream.observe(up)
            else:
                up = 0.0
                own = t_end - self.t0
            bm.gateway.observe(own)
        else:
            up = 0.0
            own = t_end - self.t0
        access = gw.access
        if access.enabled:
            # A tuple now; the JSON line is made in a batch on the next tick.
            head = self.head
            access.rows.append(
                (access.wall + t_end, self.conn.peer, head.method, head.target, head.session_id, self.method, self.tool,
                 route.backend.name if route is not None else None, self.status, outcome, self.bytes_out,
                 int(own * 1e6), int(up * 1e6))
            )  # fmt: skip
            if len(access.rows) >= access.FLUSH_ROWS:
                access.flush()


class _ListFilter:
    """Rewrites a list answer (``tools/list`` and friends) so the caller sees only what
    policy lets them use.  A JSON answer is collected whole (bounded), filtered and sent
    with its new length; an SSE answer is parsed event by event, and only an event whose
    list lost items is re-encoded -- every other event leaves byte-identical."""

    __slots__ = ("ex", "rp", "method", "parts", "buf", "size", "limit", "sse")

    def __init__(self, ex: "Exchange", rp, method: str) -> None:
        self.ex = ex
        self.rp = rp
        self.method = method
        self.parts: list | None = None
        self.buf: list = []
        self.size = 0
        self.limit = ex.gw.config.limits.max_sse_event_bytes
        self.sse: Any = None

    def begin(self, parts: list) -> None:
        ex = self.ex
        if ex.sse:
            self.sse = SSEParser(max_event_bytes=self.limit)
            ex.queued = [ex.framed_head(parts, -1, ex.status)]
        else:
            self.parts = parts

    def _filter(self, data: bytes) -> bytes:
        ex = self.ex
        return self.rp.filter_list(ex.principal, self.method, data, ex.route.backend.name)

    def feed(self, chunk) -> None:
        if self.sse is None:
            self.size += len(chunk)
            if self.size > self.limit:
                raise ProtocolError(f"list answer larger than {self.limit} bytes", 502)
            self.buf.append(chunk)
            return
        self._events(self.sse.feed(chunk))

    def _events(self, events) -> None:
        ex = self.ex
        for ev in events:
            data = ev.data
            if data is not None and ev.event in (None, b"message"):
                new = self._filter(data)
                if new is not data:
                    ex.relay(encode_sse_event(data=new, event=ev.event, id=ev.id, retry=ev.retry))
                    continue
            ex.relay(ev.raw)

    def end(self) -> None:
        ex = self.ex
        if self.sse is not None:
            self._events(self.sse.feed_eof())
            return
        body = self.buf[0] if len(self.buf) == 1 else b"".join(self.buf)
        new = self._filter(bytes(body))
        ex.bytes_out += len(new)
        ex.queued = [ex.framed_head(self.parts, len(new), ex.status), new]




class Gateway:
    """One gateway process: listeners, routes, pools, metrics, the tick."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        terminating=None,
        backends=None,
        admin=None,
        front=None,
    ):
        """``terminating(gw, route_config, route)``: the handler of a terminating route
        (several backends, or one that is not plain Streamable HTTP); ``backends(gw,
        backend_config, backend_metrics)``: makes a backend behind the seam for it;
        ``admin(gw)``: the admin listener; ``front(gw, route_config, route)``: serves a
        route's legacy HTTP+SSE paths (``Exchange.begin`` is its way back into the
        pipeline).  ``app.build_gateway`` passes all four."""
        self.config = config
        self._terminating = terminating
        self._front = front
        self._make_backend = backends
        self._admin = admin
        self.metrics = metrics or Metrics()
        self.access = access_log or AccessLog(config.log.access_log)
        cc = config.cors
        # Origins trusted with CORS are trusted to call: they pass the Origin check too.
        self.origins = OriginPolicy(config.server.allowed_origins + (cc.allow_origins if cc is not None else ()))
        self.cors: CorsPolicy | None = CorsPolicy(cc, OriginPolicy(cc.allow_origins)) if cc is not None else None
        self.hosts = HostPolicy(config.server.effective_allowed_hosts())
        self.forwarded = config.server.forwarded_headers
        self.connections: set[ClientProtocol] = set()
        self.quota = ClientQuota(config.limits)
        # Open sessions (for the metric), least recently used first: backend session id →
        # [route, last seen].  Bounded by limits.max_sessions; idle ones expire.
        self.sessions: collections.OrderedDict[bytes, list] = collections.OrderedDict()
        self.pools: dict[str, UpstreamPool] = {}
        # Backends of terminating routes, through the seam (transport/base.py): name →
        # backend, made by the first route that needs one.
        self.backends: dict[str, Any] = {}
        self.routes: dict[bytes, Route] = {}
        # Endpoints of other client transports, by path (legacy HTTP+SSE: the stream and
        # the message path of each route that has them).  Asked only when no route matches.
        self.fronts: dict[bytes, Any] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.admin = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self.ready = False
        pc = config.policy
        self.policy: Policy | None = None
        if pc is not None and pc.enabled:
            self.policy = Policy(
                pc,
                [r.path for r in config.routes],
                registry=self.metrics.registry,
                mcp_path=config.server.mcp_path,
                session_idle=config.timeouts.session_idle,
                session_keys=config.session_keys or (ephemeral_key(),),
            )
            if config.session_key_ephemeral and any(
                r.seal is not None for r in self.policy.routes.values()
            ):
                log.warning(
                    "no session key configured: sealed session ids end with this process "
                    "(set [sessions] key_file for restarts and several gateways)"
                )
        self.new_exchange = functools.partial(Exchange, self)
        self._build_routes()

    def _build_routes(self) -> None:
        cfg = self.config
        for rc in cfg.routes:
            b = cfg.backend(rc.backends[0])
            bm = self.metrics.for_backend(rc.path, b.name)
            pool = self.pool_for(b, bm) if b.transport != "stdio" else None
            route = Route(rc, b, pool, bm, cfg, self.policy.route(rc.path) if self.policy is not None else None)
            route.sessions = self.sessions
            if self.cors is not None:
                route.cors = self.cors
                route.rfields = _RESPONSE_FIELD_CLASSES[2 * (route.seal is not None) + 1]
            if getattr(rc, "mux", None) is not None:  # a terminating route: the virtual server
                if self._terminating is None:
                    raise ValueError(f"route {rc.path}: a terminating route needs a handler (app.build_gateway)")
                route.virtual = self._terminating(self, rc, route)
            p = rc.path.encode()
            self.routes[p] = route
            if p != b"/":
                self.routes[p + b"/"] = route
            if getattr(rc, "sse_path", None) and self._front is not None:  # 2024-11-05 HTTP+SSE clients
                front = self._front(self, rc, route)
                self.fronts[rc.sse_path.encode()] = self.fronts[rc.messages_path.encode()] = front

    def backend_for(self, b: BackendConfig, bm: BackendMetrics):
        """Backend ``b`` behind the seam (``transport/base.py``), made once per gateway and
        shared by every terminating route that uses it."""
        end = self.backends.get(b.name)
        if end is None:
            end = self.backends[b.name] = self._make_backend(self, b, bm)
        return end

    def pool_for(self, b: BackendConfig, bm: BackendMetrics) -> UpstreamPool:
        """The one connection pool of backend ``b`` (made on first use): every route
        and every multiplexer leg to a backend shares it."""
        pool = self.pools.get(b.name)
        if pool is None:
            cfg = self.config
            pool = self.pools[b.name] = UpstreamPool(
                b, bm, connect_timeout=cfg.timeouts.upstream_connect, max_header_bytes=cfg.limits.max_header_bytes,
                max_connections=b.max_connections, max_streams=b.max_streams,
            )  # fmt: skip
        return pool

    # --- pipeline hooks -------------------------------------------------------------
    # ``new_exchange(conn, head)`` is set in ``__init__``: a partial of ``Exchange``
    # costs no Python frame per request.

    def check_request(self, head) -> tuple[int, int, str] | None:
        """Cheap refusals that need no body: method, Origin."""
        if head.method not in _FORWARDED_METHODS:
            return (405, INVALID_REQUEST, f"method {head.method.decode('latin-1')} not allowed on an MCP endpoint")
        hosts = self.hosts
        if head.host not in hosts.seen and not hosts.allows(head.host):
            # A name we do not serve under: a DNS-rebinding page, or a misrouted request.
            self.metrics.error("host_refused")
            return (421, INVALID_REQUEST, "Host not allowed")
        origin = head.origin
        if origin is not None and not self.origins.allows(origin):
            # MCP transports: servers MUST validate Origin; an invalid one gets 403.
            self.metrics.error("origin_refused")
            return (403, INVALID_REQUEST, "Origin not allowed")
        if self.draining:
            return (503, SERVER_ERROR, "gateway is shutting down")
        return None

    def early_refusal(self, ex: Exchange) -> tuple[int, str] | None:
        """For ``Expect: 100-continue``: refuse before the body is sent, or None."""
        head = ex.head
        target = head.target
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        if path not in self.routes and path not in self.fronts:
            return (404, "no MCP endpoint at this path")
        r = self.check_request(head)
        return None if r is None else (r[0], r[2])

    def session_opened(self, route: Route, sid: bytes) -> None:
        sessions = self.sessions
        entry = sessions.get(sid)
        if entry is None:
            route.bm.sessions.inc()
            limit = self.config.limits.max_sessions
            while len(sessions) >= limit:  # the least recently used goes first
                _, (old, _) = sessions.popitem(last=False)
                old.bm.sessions.dec()
            sessions[sid] = [route, time.monotonic()]
        else:
            entry[1] = time.monotonic()
            sessions.move_to_end(sid)

    def session_used(self, sid: bytes, now: float) -> None:
        """A request in session ``sid`` succeeded at ``now`` (monotonic)."""
        entry = self.sessions.get(sid)
        if entry is not None:
            entry[1] = now
            self.sessions.move_to_end(sid)

    def sweep_sessions(self, now: float) -> None:
        """Forget sessions unseen for ``timeouts.session_idle`` (least recently used
        first, so the walk stops at the first one seen lately)."""
        sessions = self.sessions
        stale = now - self.config.timeouts.session_idle
        while sessions:
            sid, entry = next(iter(sessions.items()))
            if entry[1] >= stale:
                break
            self.session_closed(entry[0], sid)

    def session_closed(self, route: Route, sid: bytes) -> None:
        entry = self.sessions.pop(sid, None)
        if entry is not None:
            entry[0].bm.sessions.dec()

    # --- lifecycle -------------------------------------------------------------------
    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for pool in self.pools.values():
            pool._loop = loop
        s = self.config.server
        if sock is not None:
            srv = await loop.create_server(lambda: ClientProtocol(self), sock=sock, backlog=s.backlog)
        else:
            host, port = s.listen
            srv = await loop.create_server(
                lambda: ClientProtocol(self), host, port, backlog=s.backlog, reuse_port=s.workers > 1
            )
        self.servers.append(srv)
        if s.admin_listen is not None:
            if self._admin is None:
                raise ValueError("server.admin_listen: no admin listener given (app.build_gateway)")
            self.admin = self._admin(self)
            await self.admin.start(*s.admin_listen)
        if self.policy is not None:
            await self.policy.start()
        for warning in insecure_warnings(self.config):
            log.warning(warning)
        self._tick_handle = loop.call_later(1.0, self._tick)
        self.ready = True

    @property
    def port(self) -> int:
        return self.servers[0].sockets[0].getsockname()[1]

    def _tick(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_deadline(now)
        for pool in self.pools.values():
            pool.sweep(now)
        if self.sessions:
            self.sweep_sessions(now)
        self.access.flush()
        if self.policy is not None:
            self.policy.tick(now)
        self._tick_handle = self._loop.call_later(1.0, self._tick)

    async def stop(self, drain: float | None = None) -> None:
        """Stop accepting, let answers in flight finish (up to ``drain`` seconds), close."""
        self.draining = True
        self.ready = False
        for srv in self.servers:
            srv.close()
        for conn in list(self.connections):
            if conn.active is None and not conn.parser.in_message:
                conn.close()
            else:
                conn.keep_alive = False
        deadline = time.monotonic() + (self.config.timeouts.drain if drain is None else drain)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for pool in self.pools.values():
            pool.close()
        if self.backends:  # children stopped, streams closed
            await asyncio.gather(*(b.close() for b in self.backends.values()), return_exceptions=True)
        if self.policy is not None:
            self.policy.close()
        if self.admin is not None:
            await self.admin.stop()
        for srv in self.servers:
            await srv.wait_closed()
        self.access.close()

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the access and audit log files by name (logrotate)."""
        self.access.reopen()
        if self.policy is not None and self.policy.audit is not None:
            self.policy.audit.reopen()

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain.  SIGHUP reopens the access log file
        (for logrotate)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reopen_logs)
        await stop.wait()
        log.info("draining", extra={"fields": {"connections": len(self.connections)}})
        await self.stop()
