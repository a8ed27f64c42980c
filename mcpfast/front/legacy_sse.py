"""Legacy HTTP+SSE clients (MCP 2024-11-05) on any route.

Theory of operation.  A 2024-11-05 client opens ``GET <sse_path>`` and keeps it open; the
first event (``endpoint``) names ``<messages_path>?session_id=<id>``, where it POSTs its
messages one by one.  Each POST is acknowledged with ``202 Accepted`` and whatever the
server has to say -- answers, notifications, its own requests -- arrives on the stream as
``message`` events.

The front does not speak to backends.  Every message a legacy client sends becomes a
Streamable HTTP request to the route, run through the gateway's own pipeline on an
*internal connection*: a ``ClientProtocol`` of the gateway whose transport is a ``_Leg``
of this module.  The leg writes a request head made here (the route's path, the client's
own Host, Origin and other fields including its credentials, and the route's session id
and protocol version) and the client's body as it came; the gateway handles it exactly as
if it came from the client's socket -- Origin and Host checks, authentication,
authorization per tool, rate limits, metrics, the access log, audit, the passthrough or
the multiplexer -- and writes its answer back into the leg, which parses it (the core's
``ResponseParser`` and ``SSEParser``) and hands each JSON-RPC message to the session's
stream as an ``event: message``.  The leg reports the real client's address as its peer,
so address bounds and the access log see the client, and the internal connection counts
as one of that client's connections while it runs.  Each message gets its own internal
connection (closed after its answer): an answer may take as long as a tool runs, and the
client's reply to a request the server makes meanwhile (sampling, elicitation) must not
wait behind it.

A session (``LegacySession``) belongs to this process, to the stream's connection and to
the principal that opened it; its id is 128 random bits in hex.  The stream's own
``Exchange`` stays open as an ordinary GET stream of the route (the route's checks,
stream quotas, metrics and access log) with the session standing in for its upstream:
when the client stops reading, the gateway pauses the session, which pauses every
internal connection, which pause their backends; when the client leaves (or takes nothing
for ``timeouts.client_write``), the session ends: its internal connections are dropped,
and the route's session is ended with a DELETE through the pipeline.  The route's session
id comes from the answer to ``initialize``; after the client's
``notifications/initialized`` a GET stream on the route is opened for the server's
messages that belong to no request.  An SSE answer the route closes before it is complete
(a server asking its clients to poll, as the 2025-11-25 revision allows) is continued the
way a Streamable HTTP client would: a GET with ``Last-Event-ID`` after the ``retry`` delay
it gave (0.1 s at least), and the route's GET stream is reopened when it ends.

A POST is refused at once when it is not for a live session of the caller (404), has no
well-formed ``session_id`` (400), or fails authentication (as on the route).  Otherwise
the message is started, and if the pipeline refused it without an answer to send on the
stream (a body that is not JSON-RPC, a refused notification, too many connections) the
POST gets that status and body; else ``202 Accepted``, and a refusal of a request (a
denied tool, a rate limit) reaches the client as its JSON-RPC error on the stream, as a
2024-11-05 client expects.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import secrets
import time
from typing import Any

import orjson

from ..policy import AuthError, Principal
from ..transport.listener import ClientProtocol
from ..wire.core import (
    KIND_ERROR, KIND_REQUEST, KIND_RESPONSE, ProtocolError, ResponseParser, SSEParser, encode_sse_event, scan_jsonrpc,
)  # fmt: skip
from ..wire.heads import is_visible
from ..wire.rpcerrors import INTERNAL_ERROR, INVALID_REQUEST, SERVER_ERROR, SESSION_NOT_FOUND, jsonrpc_error_body

__all__ = ["LegacyFront", "LegacySession", "PING_EVERY"]

log = logging.getLogger("mcpfast.front.legacy_sse")

#: Seconds between keep-alive comments on a quiet stream (proxies close idle ones).
PING_EVERY = 15.0
_PING = b": ping\n\n"
_SESSION_ID = re.compile(rb"[0-9a-f]{32}")
_SSE = b"text/event-stream"
# Fields of the client's request that the front writes itself, or that are hop-by-hop
# (RFC 9110 §7.6.1); every other field goes to the route as the client sent it.
_NOT_REPLAYED = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"host", b"content-length", b"expect", b"proxy-authorization", b"content-type", b"accept",
     b"mcp-session-id", b"mcp-protocol-version", b"last-event-id", b"mcp-method", b"mcp-name")
)  # fmt: skip
# Fields of a refusal passed on when the POST itself is refused with it.
_REFUSAL_FIELDS = frozenset((b"www-authenticate", b"retry-after", b"allow"))
# A refusal's body is kept up to this size (the gateway's own are a few hundred bytes).
_REFUSAL_BYTES = 65536
# A new message is refused while the session's stream holds this much unread.
_STREAM_BACKLOG = 4 * 1024 * 1024
_ACCEPTED = b"Accepted"
# Seconds a request whose answer the client already has may take to end after its session.
_GRACE = 2.0
_ANSWERS = (KIND_RESPONSE, KIND_ERROR)
# Resuming an SSE answer the route closed early: the delay when it asked for none, and
# how many resumptions in a row may bring no message before the requests are failed.
_RESUME_DELAY = 1.0
# The shortest delay honoured: a route answering ``retry: 0`` after every event would
# otherwise have the front send it requests as fast as the two can go.
_MIN_RESUME_DELAY = 0.1
_MAX_RESUMES = 8


def _session_param(target: bytes) -> str | None:
    """The ``session_id`` of a message URL, or None when it is missing, repeated or not
    one of ours in form (32 lower-case hex digits).  Checked before any lookup."""
    q = target.find(b"?")
    if q < 0:
        return None
    found = None
    for part in target[q + 1 :].split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"session_id":
            if found is not None:
                return None
            found = value
    if found is None or _SESSION_ID.fullmatch(found) is None:
        return None
    return found.decode("ascii")


def _replayed(head) -> bytes:
    """The client's fields a request to the route carries on its behalf."""
    listed = frozenset(x.strip().lower() for x in head.connection.split(b",")) if head.connection else ()
    out = []
    for n, v in head.headers:
        ln = n.lower()
        if ln not in _NOT_REPLAYED and ln not in listed:
            out += (n, b": ", v, b"\r\n")
    return b"".join(out)


def _error_id(body: bytes) -> Any:
    """The id of a JSON-RPC error answer (None: not one, or one for no request)."""
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(msg) is dict and "error" in msg:
        return msg.get("id")
    return None


class _Leg:
    """One request of a legacy session run through the gateway's pipeline, and the
    transport of the internal connection that carries it: the gateway writes the route's
    answer here, and it is parsed into messages for the session's stream."""

    __slots__ = ("session", "proto", "parser", "sse", "head", "buf", "size", "limit", "live", "early",
                 "closed", "done", "ids", "initialize", "opens_listener", "refusal", "last_id", "retry",
                 "resumes", "polling")  # fmt: skip

    def __init__(
        self, session: "LegacySession", ids: tuple = (), initialize: bool = False, opens_listener: bool = False
    ) -> None:
        self.session = session
        gw = session.front.gw
        self.limit = gw.config.limits.max_sse_event_bytes
        self.parser = ResponseParser(self, max_header_bytes=gw.config.limits.max_header_bytes)
        self.sse: Any = None
        self.head: Any = None
        self.buf: list = []
        self.size = 0
        self.live = False  # messages go to the stream at once (else they wait in ``early``)
        self.early: list = []
        self.closed = False
        self.done = False
        self.ids = list(ids)  # ids of the requests posted and not answered yet
        self.initialize = initialize
        self.opens_listener = opens_listener
        self.refusal: tuple | None = None  # (head, body) of a non-2xx answer not yet passed on
        # Where an SSE answer can be resumed (its last event id, and the retry delay it
        # asked for in ms), and how many resumptions in a row brought no message.
        self.last_id: bytes | None = None
        self.retry: int | None = None
        self.resumes = 0
        self.polling = False  # a GET that continues a POST's answer: ends with its last answer
        self.proto = ClientProtocol(gw)

    def start(self, head: bytes, body: bytes = b"") -> None:
        """Connect (counted as one of the client's connections) and send the request.
        A refused connection leaves the gateway's 503 in ``refusal``."""
        proto = self.proto
        proto.connection_made(self)
        if proto.closed:
            return
        self.session.legs.add(self)
        if self.session.paused:
            proto.pause_writing()
        proto.data_received(head)
        if body and not proto.closed:
            proto.data_received(body)

    def go(self) -> None:
        """The POST is answered: from now on messages go to the stream as they come."""
        self.live = True
        early, self.early = self.early, []
        for data in early:
            self.session.send(data)
        if self.refusal is not None:
            self._answer_refusal()
        if self.closed and self.ids:
            self._owed(502, "the route's answer was cut off")

    def cancel(self) -> None:
        """The session ended: drop this request (the gateway closes its backend side)."""
        if not self.closed:
            self.closed = True
            s = self.session
            s.legs.discard(self)
            if s.listener is self:
                s.listener = None
            self.proto.connection_lost(None)

    # --- the transport the gateway writes to --------------------------------------------
    def write(self, data) -> None:
        if self.closed:
            return
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            # Only an answer larger than the event limit gets here: the gateway's own
            # writing is well-formed.
            log.warning("legacy SSE: answer dropped: %s", exc)
            self.abort()

    def writelines(self, parts) -> None:
        for p in parts:
            self.write(p)

    def close(self) -> None:
        self._lost()

    def abort(self) -> None:
        self._lost()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass  # the request was sent whole: nothing more to hold back

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return (self.session.peer, 0)
        return default

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        s = self.session
        s.legs.discard(self)
        listener = s.listener is self
        if listener:
            s.listener = None
        asyncio.get_running_loop().call_soon(self.proto.connection_lost, None)
        if s.closed or not self.live:
            return
        if self.resumes < _MAX_RESUMES and (
            (self.ids and self.last_id is not None) or (listener and self.sse is not None and self.done)
        ):
            # An SSE answer closed before it was complete (the server asks the client to
            # poll, or it failed), or the server's own stream ended: resume it as a
            # Streamable HTTP client would.
            s.resume(self, listener)
            return
        if self.ids:
            # Cut before its answer came (a backend that failed mid-stream): say so
            # rather than leave the client waiting for ever.
            self._owed(502, "the route's answer was cut off")

    # --- the route's answer (ResponseParser handler) ----------------------------------
    def on_interim(self, head) -> None:
        pass

    def on_response(self, head) -> None:
        self.head = head
        status = head.status
        if 200 <= status < 300:
            sid = head.session_id
            if self.initialize and sid is not None and is_visible(sid):
                self.session.mcp_sid = sid
            ct = head.content_type
            if ct is not None and ct.startswith(_SSE):
                self.sse = SSEParser(max_event_bytes=self.limit)

    def on_body(self, chunk) -> None:
        sse = self.sse
        if sse is not None:
            for ev in sse.feed(chunk):
                self._event(ev)
            return
        self.size += len(chunk)
        if self.size > self.limit:
            raise ProtocolError(f"answer larger than {self.limit} bytes", 502)
        self.buf.append(bytes(chunk))

    def on_response_end(self, trailers) -> None:
        self.done = True
        if self.opens_listener and 200 <= self.head.status < 300:
            self.session.listen()
        if self.sse is not None:
            for ev in self.sse.feed_eof():
                self._event(ev)
            return
        body = b"".join(self.buf)
        self.buf = []
        head = self.head
        if 200 <= head.status < 300:
            if body:
                self._messages(body)
            return
        if self is self.session.listener:
            return  # no server->client stream on this route: the session works without
        self.refusal = (head, body[:_REFUSAL_BYTES])
        if self.live:
            self._answer_refusal()

    def _event(self, ev) -> None:
        if ev.id is not None:
            self.last_id = ev.id
        if ev.retry is not None:
            self.retry = ev.retry
        data = ev.data
        if data and ev.event in (None, b"message"):
            self._deliver(data)

    def _messages(self, body: bytes) -> None:
        if body.lstrip()[:1] == b"[":  # a batch's answers: one event each
            try:
                items = orjson.loads(body)
            except orjson.JSONDecodeError:
                items = None
            if type(items) is list:
                for item in items:
                    self._deliver(orjson.dumps(item))
                return
        self._deliver(body)

    def _deliver(self, data: bytes) -> None:
        self.resumes = 0
        ids = self.ids
        if ids:
            try:
                env = scan_jsonrpc(data)
            except ProtocolError:
                env = None
            if env is not None and type(env) is not list and env.kind in _ANSWERS and env.id in ids:
                ids.remove(env.id)
                if not ids and self.polling:
                    asyncio.get_running_loop().call_soon(self.cancel)  # nothing more to wait for
        if self.initialize:
            self._learn_version(data)
        if self.live:
            self.session.send(data)
        else:
            self.early.append(data)

    def _learn_version(self, data: bytes) -> None:
        """The protocol version the route agreed to, from its ``initialize`` answer."""
        try:
            result = orjson.loads(data).get("result")
            v = result.get("protocolVersion").encode("ascii")
        except (orjson.JSONDecodeError, AttributeError, UnicodeEncodeError):
            return
        if len(v) <= 64 and is_visible(v):
            self.session.version = v

    def _answer_refusal(self) -> None:
        head, body = self.refusal
        self.refusal = None
        if _error_id(body) is not None:
            self._deliver(body)  # the request's own error: the client matches it by id
        else:
            self._owed(head.status, f"the route answered HTTP {head.status}")

    def _owed(self, status: int, message: str) -> None:
        """Each posted request that got no answer gets an error of its own."""
        code = SERVER_ERROR if status >= 500 else INVALID_REQUEST
        ids, self.ids = self.ids, []
        for rid in ids:
            self.session.send(jsonrpc_error_body(code, message, rid))


class LegacySession:
    """One legacy client's session: its stream, the route's session id and protocol
    version, and the requests under way.  Stands in for the stream exchange's upstream
    (``pause_reading``, ``resume_reading``, ``detach``)."""

    __slots__ = ("front", "id", "owner", "ex", "peer", "host", "fields", "mcp_sid", "version", "legs",
                 "listener", "paused", "ping", "closed", "last_write")  # fmt: skip

    def __init__(self, front: "LegacyFront", ex, sid: str, owner: str | None) -> None:
        self.front = front
        self.id = sid
        self.owner = owner  # the principal's key (None on a route without policy)
        self.ex = ex  # the client's stream
        self.peer = ex.conn.peer
        self.host = b""
        self.fields = b""
        self.use(ex.head)
        self.mcp_sid: bytes | None = None  # the route's Mcp-Session-Id
        self.version: bytes | None = None  # and protocol version, from initialize
        self.legs: set[_Leg] = set()
        self.listener: _Leg | None = None
        self.paused = False
        self.closed = False
        self.last_write = time.monotonic()
        self.ping = asyncio.get_running_loop().call_later(PING_EVERY, self._ping)

    def use(self, head) -> None:
        """Requests to the route carry the fields of the client's latest verified request
        (its credentials may have been renewed since the stream opened)."""
        self.host = head.host or b""
        self.fields = _replayed(head)

    # --- requests to the route ----------------------------------------------------------
    def request_head(self, method: bytes, length: int, position: bytes | None = None) -> bytes:
        parts = [method, b" ", self.front.target, b" HTTP/1.1\r\nHost: ", self.host, b"\r\n", self.fields]
        if method == b"POST":
            parts.append(b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n")
        elif method == b"GET":
            parts.append(b"Accept: text/event-stream\r\n")
        if self.mcp_sid is not None:
            parts += (b"Mcp-Session-Id: ", self.mcp_sid, b"\r\n")
        if self.version is not None:
            parts += (b"MCP-Protocol-Version: ", self.version, b"\r\n")
        if position is not None:
            parts += (b"Last-Event-ID: ", position, b"\r\n")
        if length >= 0:
            parts.append(b"Content-Length: %d\r\n" % length)
        parts.append(b"Connection: close\r\n\r\n")
        return b"".join(parts)

    def post(self, ex, body: bytes) -> None:
        """One message from the client (``ex``: its POST, already authenticated as the
        session's owner)."""
        try:
            env = scan_jsonrpc(body)
        except ProtocolError:
            env = None  # the route refuses it the same way: its 400 is the answer
        envs = env if type(env) is list else (() if env is None else (env,))
        ids = tuple(e.id for e in envs if e.kind == KIND_REQUEST)
        methods = {e.method for e in envs}
        leg = _Leg(self, ids, "initialize" in methods, "notifications/initialized" in methods)
        leg.start(self.request_head(b"POST", len(body)), body)
        ref = leg.refusal
        if ref is not None and _error_id(ref[1]) is None:
            # Refused as a whole, with nothing to say on the stream: the POST says it.
            head, rbody = ref
            leg.refusal = None
            leg.ids = []
            fields = b"".join([n + b": " + v + b"\r\n" for n, v in head.headers if n.lower() in _REFUSAL_FIELDS])
            ex.respond(head.status, rbody, fields)
            return
        ex.respond(202, _ACCEPTED, b"", b"text/plain; charset=utf-8")
        leg.go()

    def listen(self) -> None:
        """Open the route's GET stream for the server's messages outside any request."""
        if self.listener is not None or self.closed or self.mcp_sid is None:
            return
        leg = self.listener = _Leg(self)
        leg.live = True
        leg.start(self.request_head(b"GET", -1))

    def resume(self, old: _Leg, listener: bool) -> None:
        """Continue ``old``'s SSE answer with a GET from its last event id, after the
        delay it asked for; the requests it still owes answers to move to the new leg."""
        pos = old.last_id
        if pos is not None and (len(pos) > 1024 or not is_visible(pos)):
            pos = None
        if pos is None and not listener:
            old._owed(502, "the route's answer was cut off")
            return
        leg = _Leg(self, old.ids, old.initialize)
        old.ids = []
        leg.polling = not listener
        leg.live = True
        leg.last_id = pos
        leg.retry = old.retry
        leg.resumes = old.resumes + 1
        if listener:
            self.listener = leg
        delay = min(max(old.retry / 1000.0, _MIN_RESUME_DELAY), 30.0) if old.retry is not None else _RESUME_DELAY
        asyncio.get_running_loop().call_later(delay, self._resumed, leg, pos)

    def _resumed(self, leg: _Leg, pos: bytes | None) -> None:
        if self.closed:
            return
        leg.start(self.request_head(b"GET", -1, pos))

    # --- the client's stream -------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """One message to the client, as an ``event: message``."""
        ex = self.ex
        if self.closed or not ex.alive():
            return
        ex.relay(encode_sse_event(data=data, event=b"message"))
        ex.flush()
        self.last_write = time.monotonic()

    def backlog(self) -> int:
        t = self.ex.conn.transport
        return t.get_write_buffer_size() if t is not None else 0

    def _ping(self) -> None:
        if self.closed:
            return
        ex = self.ex
        if time.monotonic() - self.last_write >= PING_EVERY - 1.0 and not ex.conn.write_paused and ex.alive():
            ex.relay(_PING)
            ex.flush()
            self.last_write = time.monotonic()
        self.ping = asyncio.get_running_loop().call_later(PING_EVERY, self._ping)

    def pause_reading(self) -> None:
        """The client stopped taking its stream: hold every request's backend."""
        if not self.paused:
            self.paused = True
            for leg in list(self.legs):
                leg.proto.pause_writing()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            for leg in list(self.legs):
                leg.proto.resume_writing()

    def detach(self) -> None:
        """The client's stream is gone: the session ends."""
        self.end()

    def end(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.front.sessions.pop(self.id, None)
        self.ping.cancel()
        loop = asyncio.get_running_loop()
        for leg in list(self.legs):
            if leg.ids or leg is self.listener:
                leg.cancel()  # nobody will read its answer: its backend side is closed
            else:
                # Its answers were all delivered: let it end by itself (metrics and the
                # access log then record what happened), but not wait for ever.
                loop.call_later(_GRACE, leg.cancel)
        self.legs.clear()
        self.listener = None
        if self.mcp_sid is not None and not self.front.gw.draining:
            # End the route's session as its client would (answer not awaited).
            _Leg(self).start(self.request_head(b"DELETE", -1))


class LegacyFront:
    """The legacy endpoints of one route: ``sse_path`` and ``messages_path``."""

    # A multiplexed route asks its handler which methods it checks itself; this one
    # sees only GET streams, which carry no message.
    checks_after_routing: frozenset = frozenset()

    def __init__(self, gw, rc, route) -> None:
        self.gw = gw
        self.route = route
        self.target = rc.path.encode()
        self.sse_path = rc.sse_path.encode()
        self.messages_path = rc.messages_path.encode()
        self.sessions: dict[str, LegacySession] = {}
        # The stream is admitted as a GET stream of the route would be (checks,
        # authentication, stream quotas, metrics), then handed back here to open.
        stream = self.stream = copy.copy(route)
        stream.virtual = self
        stream.seal = None  # a legacy client sends no session id of the route's

    def handle(self, ex) -> None:
        if ex.route is self.stream:
            self._open(ex)
            return
        head = ex.head
        refusal = self.gw.check_request(head)
        if refusal is not None:
            ex.respond_error(*refusal)
            return
        m = head.method
        target = head.target
        q = target.find(b"?")
        if (target if q < 0 else target[:q]) == self.sse_path:
            if m == b"GET":
                if head.session_id is not None:
                    # A 2024-11-05 client has no session of the route's, and nothing here
                    # would check one: counted as given, it would spend the stream quota
                    # of whoever's session it names.
                    ex.respond_error(400, INVALID_REQUEST, "Invalid Request: a legacy SSE stream carries no Mcp-Session-Id")
                    return
                ex.begin(self.stream)
                return
            allow = b"GET, OPTIONS"
        else:
            if m == b"POST":
                self._post(ex)
                return
            allow = b"POST, OPTIONS"
        if m == b"OPTIONS":
            ex.options(allow)
            return
        ex.respond_error(405, INVALID_REQUEST, "method not allowed here", headers=b"Allow: " + allow + b"\r\n")

    def _open(self, ex) -> None:
        """An admitted stream: a new session, and its ``endpoint`` event."""
        sid = secrets.token_hex(16)
        p = ex.principal
        s = LegacySession(self, ex, sid, p.key if p is not None else None)
        self.sessions[sid] = s
        ex.upstream = s
        ex.t_sent = time.monotonic()
        ex.sse = True
        ex.route.bm.sse.inc()
        parts = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"]
        ex.begin_answer(200, ex.framed_head(parts, -1, 200))
        ex.relay(encode_sse_event(data=self.messages_path + b"?session_id=" + sid.encode(), event=b"endpoint"))
        ex.flush()

    def _post(self, ex) -> None:
        sid = _session_param(ex.head.target)
        if sid is None:
            ex.respond_error(400, INVALID_REQUEST, "Invalid Request: session_id missing or malformed")
            return
        rp = self.route.policy
        if rp is None or not rp.enabled:
            self._post_as(ex, sid, None)
            return
        try:
            p = rp.authenticate(ex.head, ex.conn.peer)
        except AuthError as exc:
            ex.respond_error(exc.status, exc.code, exc.message, headers=exc.headers)
            return
        if type(p) is not Principal:  # a future: a key fetch is under way
            p.add_done_callback(lambda fut: self._authenticated(ex, sid, fut))
            return
        self._post_as(ex, sid, p)

    def _authenticated(self, ex, sid: str, fut) -> None:
        if not ex.alive() or fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, AuthError):
            ex.respond_error(exc.status, exc.code, exc.message, headers=exc.headers)
        elif exc is not None:
            log.error("authentication failed unexpectedly", exc_info=exc)
            ex.respond_error(500, INTERNAL_ERROR, "Internal error during authentication")
        else:
            self._post_as(ex, sid, fut.result())

    def _post_as(self, ex, sid: str, p) -> None:
        s = self.sessions.get(sid)
        if s is None or s.owner != (p.key if p is not None else None):
            if p is not None:
                self.route.policy.session_refused(p, sid.encode(), None)  # audited
            ex.respond_error(404, SESSION_NOT_FOUND, "Session not found")
            return
        if s.backlog() > _STREAM_BACKLOG:
            self.gw.metrics.error("legacy_stream_backlog")
            ex.respond_error(503, SERVER_ERROR, "the session's stream is not being read", headers=b"Retry-After: 1\r\n")
            return
        chunks = ex.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        ex.chunks = []
        s.use(ex.head)
        s.post(ex, bytes(body))
