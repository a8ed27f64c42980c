"""Gateway-originated requests to one backend, over that backend's connection pool.

Theory of operation.  A multiplexed route talks to its backends on its own behalf: it
opens their sessions (``initialize``), asks each for its lists, ends sessions, and it
forwards client requests whose answers it must rewrite on the way back.  ``BackendLink``
knows how to address one backend (request line, Host, the configured extra headers)
and ``Call`` is one HTTP exchange with it: it takes a pooled connection, writes head and
body in one call, and becomes the connection's *sink* -- the same callback interface a
client ``Exchange`` offers (``upstream_head``/``upstream_body``/``upstream_end``/
``upstream_failed``/``flush`` and ``queued``).  What it receives goes to a handler:
``on_head(call, head)``, ``on_event(call, ev)`` for each SSE event of a
``text/event-stream`` answer, ``on_end(call, body)`` (``body`` is the collected JSON
answer, None for SSE), ``on_error(call, err)``, and ``on_flush(call)`` after each read
(so a handler can write everything one read produced in one call).  A handler that
relays a JSON answer rather than reading it sets ``call.stream`` in ``on_head``: the
body then goes to ``on_body(call, chunk)`` piece by piece as it arrives, each chunk the
object the response parser handed out, and nothing is collected (``body`` is None).
Every handler derives from ``CallHandler``, so in the compiled build these are C calls.

An SSE answer is parsed into events only when it must be.  A handler that relays
events which need no rewriting as they came sets ``call.plain`` in ``on_head``; then a
read that is whole events with no request, notification or event id in it
(``core.sse_passable``: the usual read, one response event) goes to ``on_body`` as it
came, and no parser is made.  The first read that fails the check makes the parser
(started mid-stream if reads went past it) and from then on every event is parsed
and goes to ``on_event``.

``request()`` wraps a ``Call`` in a future for the control traffic: it returns a
``Reply`` holding the status, the backend's ``Mcp-Session-Id`` and the JSON-RPC answer
-- the JSON body, or the first response event of an SSE answer (Streamable HTTP: the
server may send related requests and notifications before the response; those go to
``on_message`` or are dropped).

A ``Call`` also stands in for the client exchange's upstream connection
(``pause_reading``/``resume_reading``/``detach``), so back-pressure and a client that
leaves reach the backend connection as they do for a passthrough route.

Timeouts.  A routed call waits at most the backend's response timeout for the answer's
head.  Arming and cancelling a loop timer per request costs more than the rest of the
routing, so such calls are instead entered in their link's ``waiting`` table with a
deadline, and one sweep timer per link (every quarter of the timeout, at most 1 s) fails
the overdue ones -- the way the passthrough path checks its deadlines on a periodic
tick.  Every entry of a link has the same timeout, so the table is in deadline order and
a sweep stops at the first entry still in time.  A timeout thus fires up to one sweep
interval late.  Calls with another timeout, or bounded as a whole (control traffic),
keep their own timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from ..wire.core import KIND_ERROR, KIND_RESPONSE, ProtocolError, SSEParser, scan_jsonrpc, sse_passable
from ..wire.heads import fixed_fields, host_line, origin_target, request_head
from .pool import UpstreamError, UpstreamPool
from .base import BackendSession

__all__ = ["BackendLink", "Call", "CallHandler", "HttpBackend", "Reply", "request", "tcp_probe"]

log = logging.getLogger("mcpfast.mux")

_SSE = b"text/event-stream"
_ACCEPT_POST = b"Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
_ACCEPT_GET = b"Accept: text/event-stream\r\n"
_SESSION_ID = b"Mcp-Session-Id"
_VERSION = b"MCP-Protocol-Version"


def sweep_every(timeout: float) -> float:
    """How often a table of deadlines ``timeout`` from their start is swept: every
    quarter of it, within [10 ms, 1 s]."""
    return min(max(timeout / 4, 0.01), 1.0)


def take_overdue(waiting: dict, now: float) -> list:
    """Take out of ``waiting`` (call -> deadline, in deadline order: every entry has the
    same timeout) the calls whose deadline passed; the scan stops at the first one still
    in time."""
    late = []
    for call, deadline in waiting.items():
        if deadline > now:
            break
        late.append(call)
    for call in late:
        del waiting[call]
    return late


class BackendLink:
    """How to reach one backend of a multiplexed route: its pool, its request line
    prefix, its timeouts.  Built once per route and backend at startup."""

    __slots__ = (
        "name", "pool", "target", "host_line", "extra", "response_timeout", "max_body", "waiting", "sweeper",
        "heads",
    )  # fmt: skip

    def __init__(self, backend, pool: UpstreamPool, response_timeout: float, max_body: int) -> None:
        self.name = backend.name
        self.pool = pool
        self.target = origin_target(backend.path, f"backends.{backend.name}.url")
        self.host_line = host_line(backend.host_header)
        self.extra = fixed_fields(backend.headers)
        self.response_timeout = response_timeout
        self.max_body = max_body
        # Calls waiting for their answer's head under the shared sweep: call -> deadline.
        self.waiting: dict[Call, float] = {}
        self.sweeper: asyncio.TimerHandle | None = None

    def watch(self, call: Call, now: float = 0.0) -> None:
        """Fail ``call`` if no answer head arrives within the response timeout from now
        (``now``: the monotonic time, read here when 0)."""
        self.waiting[call] = (now or time.monotonic()) + self.response_timeout
        if self.sweeper is None:
            loop = self.pool._loop or asyncio.get_running_loop()
            self.sweeper = loop.call_later(sweep_every(self.response_timeout), self._sweep)

    def _sweep(self) -> None:
        self.sweeper = None
        for call in take_overdue(self.waiting, time.monotonic()):
            call._timed_out()
        if self.waiting:
            loop = self.pool._loop or asyncio.get_running_loop()
            self.sweeper = loop.call_later(sweep_every(self.response_timeout), self._sweep)

    def post_head(self, session_id: str | None, version: str | None, body_length: int) -> bytes:
        """The head of a POST of ``body_length`` bytes (control traffic; a routed request
        takes ``session_head``, which keeps the fixed part)."""
        return self.head(b"POST", session_id, version, body_length)

    def session_head(self, bs: BackendSession, body_length: int) -> bytes:
        """``head(b"POST", ...)`` in backend session ``bs``, for the routed hot path: the
        fixed part is made once per session and kept on ``bs``."""
        pre = bs.post_pre
        if pre is None or bs.post_link is not self:
            pre = self.head(b"POST", bs.session_id, bs.protocol_version)[:-2]  # without the blank line
            bs.post_pre = pre
            bs.post_link = self
        return b"%sContent-Length: %d\r\n\r\n" % (pre, body_length)

    def head(
        self,
        method: bytes,
        session_id: str | None,
        version: str | None,
        body_length: int = -1,
        fields: tuple = (),
    ) -> bytes:
        """A request head in backend session ``session_id`` (None: none) speaking
        ``version``; ``fields``: more (name, value) pairs.  Every value is checked by
        ``heads.request_head``: one that does not fit a header raises ``HeadError``."""
        fixed = self.extra + (_ACCEPT_GET if method == b"GET" else _ACCEPT_POST)
        pairs = ((_SESSION_ID, session_id), (_VERSION, version)) + fields
        return request_head(method, self.target, self.host_line, fixed, pairs, body_length)

    def post(self, body: bytes, session_id: str | None, version: str | None, fields: tuple = ()) -> list:
        return [self.head(b"POST", session_id, version, len(body), fields), body]


class CallHandler:
    """Where a ``Call`` delivers its answer (the module docstring says when each method
    runs).  Every handler derives from this class: in the compiled build the call then
    reaches the handler's methods as C calls.  Each method here does nothing."""

    __slots__ = ()

    def on_head(self, call: Call, head) -> None:
        pass

    def on_body(self, call: Call, chunk) -> None:
        pass

    def on_event(self, call: Call, ev) -> None:
        pass

    def on_flush(self, call: Call) -> None:
        pass

    def on_end(self, call: Call, body) -> None:
        pass

    def on_error(self, call: Call, err) -> None:
        pass


class Call:
    """One HTTP request to a backend and its answer, delivered to ``handler``."""

    __slots__ = (
        "link", "data", "handler", "timeout", "whole", "conn", "head", "sse", "buf", "size", "done",
        "retried", "queued", "timer", "status", "paused", "watched", "stream", "events", "plain", "listen",
    )  # fmt: skip

    def __init__(self, link: BackendLink, data: list, handler: CallHandler, timeout: float | None = None, whole: bool = False):
        self.link = link
        self.data = data
        self.handler = handler
        # ``timeout`` bounds the wait for the response head, or (``whole``) for the
        # complete answer -- control requests are not meant to stream.
        self.timeout = link.response_timeout if timeout is None else timeout
        self.whole = whole
        self.conn = None
        self.head = None
        self.events = False  # the answer is an event stream
        self.sse: Any = None  # its parser, made when the first read needs one
        # Set by the handler's on_head: reads of whole events that need no rewriting
        # (``sse_passable``) go to on_body as they are, unparsed.
        self.plain = False
        self.buf: list | None = None  # the collected body (made on its first chunk)
        self.size = 0
        self.done = False
        self.retried = False
        self.queued: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.paused = False
        self.watched = False
        self.stream = False  # set by the handler's on_head: body chunks go to on_body
        # A GET stream: its connection comes from the backend's stream budget (set
        # before ``start``).
        self.listen = False

    def start(self, now: float = 0.0) -> "Call":
        """Send the request; ``now``: the monotonic time if the caller just read it."""
        t = self.timeout
        if t:
            link = self.link
            if not self.whole and t == link.response_timeout:
                self.watched = True
                link.watch(self, now)
            else:
                loop = link.pool._loop or asyncio.get_running_loop()
                self.timer = loop.call_later(t, self._timed_out)
        pool = self.link.pool
        if self.listen:
            pool.acquire_stream(self._got)
            return self
        conn = pool.take_idle()
        if conn is None:
            pool.acquire(self._got)
            return self
        self.conn = conn  # the usual case: a kept-alive connection is free
        if self.paused:
            conn.pause_reading()
        conn.send(self, self.data)
        return self

    def _got(self, conn, err) -> None:
        if self.done:
            if conn is not None:
                self.link.pool.release(conn)
            return
        if err is not None:
            self._fail(err)
            return
        self.conn = conn
        if self.paused:
            conn.pause_reading()
        conn.send(self, self.data)

    def _timed_out(self) -> None:
        self.timer = None
        self.watched = False
        if self.done:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach()
        self._fail(UpstreamError("upstream_timeout", f"backend {self.link.name} did not answer within {self.timeout:g}s", 504))

    def _fail(self, err: UpstreamError) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        if self.conn is None:  # maybe still waiting for a connection: wait no more
            self.link.pool.cancel_wait(self._got)
        try:
            self.handler.on_error(self, err)
        except Exception:
            log.exception("multiplexer: error handler failed")

    def _cancel_timer(self) -> None:
        if self.watched:
            self.watched = False
            self.link.waiting.pop(self, None)
            return
        t = self.timer
        if t is not None:
            self.timer = None
            t.cancel()

    # --- sink interface (called by UpstreamProtocol) --------------------------------
    # Handler code runs inside the response parser's callbacks: an exception must not
    # unwind through the parser (CONVENTIONS 10).  Each call below is wrapped in its own
    # try (no helper frame: this is the routed hot path): the exception is logged and
    # ``_handler_failed`` gives up on this call.
    def upstream_head(self, head) -> None:
        self.head = head
        self.status = head.status
        conn = self.conn
        if conn is not None:
            conn.keep_alive = head.keep_alive
        if self.watched:  # a routed call's head deadline (never set when ``whole``)
            self.watched = False
            self.link.waiting.pop(self, None)
        elif self.timer is not None and not self.whole:
            self._cancel_timer()
        ct = head.content_type
        if ct is not None and ct.startswith(_SSE):
            self.events = True
        try:
            self.handler.on_head(self, head)
        except Exception as exc:
            log.exception("multiplexer: handler failed")
            self._handler_failed(exc)

    def upstream_body(self, chunk) -> None:
        if self.done:
            return
        if self.events:
            if self.sse is None and self.plain and len(chunk) <= self.link.max_body and sse_passable(chunk):
                # The usual routed answer (its response event): passed on as it came.
                self.size += len(chunk)  # bytes passed on unparsed
            else:
                self._feed(chunk)
                return
        elif not self.stream:
            self._collect(chunk)
            return
        try:
            self.handler.on_body(self, chunk)
        except Exception as exc:
            log.exception("multiplexer: handler failed")
            self._handler_failed(exc)

    def _feed(self, chunk) -> None:
        """Parse a read of an event stream and hand its events to the handler."""
        sse = self.sse
        if sse is None:
            # After reads passed on, the parser starts mid-stream: a BOM there is no
            # stream start to drop (WHATWG HTML §9.2.6).
            sse = self.sse = SSEParser(max_event_bytes=self.link.max_body, stream_start=not self.size)
        try:
            events = sse.feed(chunk)
        except ProtocolError as exc:
            self._abandon(UpstreamError("upstream_protocol", f"backend {self.link.name} sent invalid SSE: {exc}"))
            return
        self._events(events)

    def _collect(self, chunk) -> None:
        self.size += len(chunk)
        if self.size > self.link.max_body:
            self._abandon(UpstreamError("upstream_protocol", f"backend {self.link.name} answer too large"))
            return
        if self.buf is None:
            self.buf = [bytes(chunk)]
        else:
            self.buf.append(bytes(chunk))

    def _events(self, events) -> None:
        handler = self.handler
        try:
            for ev in events:
                if self.done:  # a handler failed on an earlier one
                    return
                handler.on_event(self, ev)
        except Exception as exc:
            log.exception("multiplexer: handler failed")
            self._handler_failed(exc)

    def upstream_end(self) -> None:
        self.conn = None  # the connection goes back to the pool by itself
        if self.done:
            return
        if self.events:
            if self.sse is not None:
                try:
                    events = self.sse.feed_eof()
                except ProtocolError:
                    events = []
                if events:
                    self._events(events)
            body = None
        elif self.stream:
            body = None
        else:
            buf = self.buf
            body = b"" if buf is None else buf[0] if len(buf) == 1 else b"".join(buf)
            self.buf = None
        if self.done:
            return
        self.done = True
        if self.watched or self.timer is not None:
            self._cancel_timer()
        try:
            self.handler.on_end(self, body)
        except Exception as exc:
            log.exception("multiplexer: handler failed")
            self._handler_failed(exc)

    def upstream_failed(self, err: UpstreamError) -> None:
        self.conn = None
        if self.done:
            return
        if self.head is None and getattr(err, "retryable", False) and not self.retried:
            # A pooled keep-alive connection the backend had already closed: the request
            # was never processed; one retry on a fresh connection.
            self.retried = True
            pool = self.link.pool
            (pool.acquire_stream if self.listen else pool.acquire)(self._got)
            return
        self._fail(err)

    def flush(self) -> None:
        self.queued = None
        try:
            self.handler.on_flush(self)
        except Exception as exc:
            log.exception("multiplexer: handler failed")
            self._handler_failed(exc)

    # --- used by the client side ----------------------------------------------------
    def pause_reading(self) -> None:
        self.paused = True
        if self.conn is not None:
            self.conn.pause_reading()

    def resume_reading(self) -> None:
        self.paused = False
        if self.conn is not None:
            self.conn.resume_reading()

    def detach(self) -> None:
        """Abandon the answer (the client left): the connection holds a partial
        response, so it is closed, not reused.  No handler callback follows."""
        self.done = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach()
        else:  # maybe still waiting for a connection: wait no more
            self.link.pool.cancel_wait(self._got)

    def _abandon(self, err: UpstreamError) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach()
        self._fail(err)

    def _handler_failed(self, exc: Exception) -> None:
        """A handler raised (and it was logged): give up on this call."""
        if not self.done:
            self._abandon(UpstreamError("gateway_error", f"internal error: {exc}"))


class Reply:
    """A backend's answer to a control request."""

    __slots__ = ("status", "session_id", "message", "env", "content_type")

    def __init__(self, status: int, session_id: str | None, message: bytes | None, env, content_type: bytes | None):
        self.status = status
        self.session_id = session_id
        self.message = message  # the JSON-RPC answer (bytes) or None
        self.env = env  # its scan_jsonrpc envelope
        self.content_type = content_type

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_text(self) -> str | None:
        """None when this is a JSON-RPC result, else a short description."""
        if not self.ok:
            return f"HTTP {self.status}"
        env = self.env
        if env is None or type(env) is list:
            return "no JSON-RPC answer"
        if env.kind == KIND_ERROR:
            return f"JSON-RPC error {env.error_code}"
        if env.kind != KIND_RESPONSE or env.result_span is None:
            return "not a JSON-RPC response"
        return None

    def result_bytes(self) -> memoryview:
        s, e = self.env.result_span
        return memoryview(self.message)[s:e]


class _Collect(CallHandler):
    __slots__ = ("fut", "on_message", "message", "env")

    def __init__(self, fut: asyncio.Future, on_message: Callable | None) -> None:
        self.fut = fut
        self.on_message = on_message
        self.message = None
        self.env = None

    def on_event(self, call, ev) -> None:
        data = ev.data
        if not data:
            return
        try:
            env = scan_jsonrpc(data)
        except ProtocolError:
            return
        if type(env) is not list and env.kind in (KIND_RESPONSE, KIND_ERROR) and self.message is None:
            self.message = bytes(data)
            self.env = env
        elif self.on_message is not None:
            self.on_message(bytes(data), env)

    def on_end(self, call, body) -> None:
        if body:
            try:
                self.env = scan_jsonrpc(body)
                self.message = bytes(body)
            except ProtocolError:
                self.env = None
        head = call.head
        sid = head.session_id
        reply = Reply(
            head.status,
            sid.decode("ascii", "replace") if sid is not None else None,
            self.message,
            self.env,
            head.content_type,
        )
        if not self.fut.done():
            self.fut.set_result(reply)

    def on_error(self, call, err) -> None:
        if not self.fut.done():
            self.fut.set_exception(err)


async def request(
    link: BackendLink,
    data: list,
    *,
    timeout: float | None = None,
    on_message: Callable[[bytes, Any], None] | None = None,
    calls: set | None = None,
) -> Reply:
    """Send one request (``data``: head and body, see ``BackendLink.post``) and wait
    for the whole answer.  Raises ``UpstreamError`` when the backend cannot be reached,
    breaks the answer, or takes longer than ``timeout`` (default: its response timeout).

    With ``calls`` (a client's request, whose answer takes as long as the work it asks
    for) only the wait for the answer's head is bounded, and the ``Call`` sits in
    ``calls`` while it runs, so the caller can pause or abandon it."""
    fut = asyncio.get_running_loop().create_future()
    call = Call(link, data, _Collect(fut, on_message), timeout, whole=calls is None).start()
    return await collected(call, fut, calls)


async def collected(call, fut: asyncio.Future, calls: set | None) -> Reply:
    """Wait for ``fut``, the ``Reply`` that ``call``'s ``_Collect`` handler makes, with
    ``call`` in ``calls`` (if given) meanwhile; a waiter that is cancelled abandons it.
    (Shared with the message-level backends' control requests.)"""
    if calls is not None:
        calls.add(call)
    try:
        return await fut
    except asyncio.CancelledError:
        call.detach()
        raise
    finally:
        if calls is not None:
            calls.discard(call)


_LAST_EVENT_ID = b"Last-Event-ID"
_PROBE_TIMEOUT = 2.0


async def tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """Readiness of an HTTP backend: None when it accepts a connection within
    ``timeout``, else why not."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"unreachable: {exc.__class__.__name__}"
    w.close()
    return None


class HttpBackend:
    """The backend seam (``transport/base.py``) over Streamable HTTP: ``BackendLink``
    and ``Call`` above, with the answer relayed as bytes where nothing must change."""

    kind = "http"
    local_sessions = False

    def __init__(self, link: BackendLink, host: str, port: int) -> None:
        self.link = link
        self.name = link.name
        self.host = host
        self.port = port

    async def ask(self, session_id, version, data: bytes, on_message=None, calls=None) -> Reply:
        link = self.link
        return await request(link, link.post(data, session_id, version), on_message=on_message, calls=calls)

    def send(self, bs: BackendSession, body: bytes, handler: CallHandler, paused: bool = False, now: float = 0.0) -> Call:
        link = self.link
        call = Call(link, [link.session_head(bs, len(body)), body], handler)
        call.paused = paused
        return call.start(now)

    def listen(self, bs: BackendSession, handler: CallHandler, position, paused: bool = False) -> Call:
        """The session's GET stream (``position``: the Last-Event-ID to resume from).
        Raises ``HeadError`` when ``position`` cannot be sent."""
        link = self.link
        data = link.head(b"GET", bs.session_id, bs.protocol_version, -1, ((_LAST_EVENT_ID, position),))
        call = Call(link, [data], handler)
        call.paused = paused
        call.listen = True
        return call.start()

    async def end(self, session_id, version) -> None:
        link = self.link
        try:
            await request(link, [link.head(b"DELETE", session_id, version)])
        except UpstreamError:
            pass

    async def probe(self) -> str | None:
        return await tcp_probe(self.host, self.port, _PROBE_TIMEOUT)

    async def close(self) -> None:
        pass  # its pool is the gateway's
