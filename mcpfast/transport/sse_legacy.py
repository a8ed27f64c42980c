"""Backends that speak the 2024-11-05 HTTP+SSE transport, behind the backend seam.

Theory of operation.  A legacy backend session is one event stream: ``GET url`` opens
it, its first event (``event: endpoint``) names the URL to POST messages to, every POST
is merely accepted (202, some servers 200), and everything the backend says -- the
responses, progress, logging, its own requests -- arrives on that stream as ``event:
message``.  So the session lives where its stream is held: in this process.  Its id is
``<instance>.<n>``, ``instance`` random per process; an id of another instance raises
``SessionLost`` (the client re-initializes), one of this instance whose stream is gone
answers 404 (the route opens a new backend session for the same client session).

All HTTP goes through the multiplexer's machinery (``mux.client``): the stream is a
``listen`` ``Call`` on the backend's pool (its stream budget), each POST a ``Call``.  The
session (``_Session``) is the stream's handler and takes every event apart:

* a response goes to the call in flight with its id (``inflight``);
* ``notifications/progress`` goes to the call whose request carried its token;
* any other notification or a server→client request goes to the one call in flight
  that takes such messages if there is exactly one, else to the session's ``listen``
  stream, else to the most recent such call, else nowhere (debug log).

Each routed message's answer is an ``SseCall`` (a ``Call`` subclass, so the compiled
handlers take it) delivering as ``transport/base.py`` says: the first message for a
request decides its shape -- the response first gives a JSON answer, anything else a
streamed one ending with the response.  What one stream read produced is flushed per
call afterwards (``on_flush``).  Deliveries never happen inside ``send``/``listen``: an
answer known at once (a refusal, a 404) is delivered from the loop right after.

Client ids pass through (the backend session is the client's own); a request whose id is
already in flight in the session, or was given up but not yet answered (``messages.py``),
is refused (-32600).  The gateway's own requests
(``ask``) get a private id no call in flight has, and the response gets the original id
back.

The endpoint comes from the backend, so it is checked before anything is sent there:
visible ASCII, resolved against the configured URL, on the same scheme, host and port,
a valid origin-form target (``heads``).  The configured headers go on the GET and every
POST; nothing of the client's becomes a header.  Events are bounded by ``max_event``
(the SSE parser), answers waited for per session by ``max_inflight``; messages nobody
waits for are dropped, never kept.  Sessions are bounded by the backend's ``max_streams``
(one stream each): when all are taken, a new session closes the least recently used
one that has nothing under way.

Failures.  A stream that ends or breaks fails every call in flight on it (502) and the
session is gone (404 afterwards).  Opening a stream that fails (no connection, no 200
event stream, no endpoint in time, a refused endpoint, initialize unanswered) backs off
0.25 s doubling to 30 s; while backing off a new session fails at once with 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

from ..wire.core import KIND_ERROR, KIND_NOTIFICATION, KIND_REQUEST, KIND_RESPONSE, ProtocolError, scan_jsonrpc, splice
from ..wire.heads import HeadError, is_visible, origin_target, request_head
from .http_mcp import BackendLink, Call, CallHandler, Reply, _Collect, collected
from .messages import MessageCall, Replay, keep_late
from ..wire.rpcerrors import INVALID_REQUEST, jsonrpc_error_body
from .pool import UpstreamError, UpstreamPool
from .base import SessionLost, instance_id

__all__ = ["SseBackend", "SseCall"]

log = logging.getLogger("mcpfast.transport.sse")

_JSON = b"application/json"
_POST_FIXED = b"Content-Type: application/json\r\n"
_ENDPOINT = b"endpoint"
_MESSAGE = b"message"
_PROGRESS = "notifications/progress"
_CANCELLED = "notifications/cancelled"
_BACKOFF_FIRST = 0.25
_BACKOFF_MAX = 30.0
_PROBE_TIMEOUT = 5.0

# What each SseCall is for.
_ROUTED = 0  # a client's request: answered on the stream
_POSTED = 1  # a client's notification or response: answered 202 once accepted
_LISTEN = 2  # the session's server→client stream

def _id_key(rpc_id: Any) -> tuple[bool, Any]:
    """A JSON-RPC id as a key: the string "1" and the number 1 are different ids."""
    return (type(rpc_id) is str, rpc_id)


def endpoint_target(url: str, scheme: str, host: str, port: int, data: bytes) -> bytes:
    """The origin-form target to POST to, from an ``endpoint`` event's data, resolved
    against the configured ``url`` (scheme, host and port: the configured ones).  Raises
    ``ValueError`` naming the fault for anything else: not visible ASCII, another
    scheme, host or port, credentials, not a valid request target."""
    if not is_visible(data):
        raise ValueError("not visible ASCII (spaces, line breaks or control characters)")
    text = data.decode("ascii")
    resolved = urlsplit(urljoin(url, text))
    if resolved.scheme != scheme:
        raise ValueError(f"another scheme ({resolved.scheme})")
    if "@" in resolved.netloc:
        raise ValueError("credentials in the URL")
    try:
        rport = resolved.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ValueError("a bad port") from None
    if (resolved.hostname or "").lower() != host.lower() or rport != port:
        raise ValueError("another host or port than the configured URL")
    target = resolved.path or "/"
    if resolved.query:
        target += "?" + resolved.query
    try:
        return origin_target(target, "endpoint")
    except HeadError as exc:
        raise ValueError(str(exc)) from None


class SseCall(MessageCall):
    """One answer of a legacy backend: a routed request's, a posted notification's or
    response's, or the session's ``listen`` stream, delivered by ``MessageCall`` as an
    HTTP answer is; the work began in ``send``/``listen``."""

    __slots__ = ("sess", "role", "key", "token", "chatty", "backend", "late")

    def __init__(self, backend: "SseBackend", handler: CallHandler, role: int, whole: bool = False) -> None:
        super().__init__(handler, backend.name)
        self.backend = backend
        self.link = backend.link  # its response deadline joins the link's shared sweep
        self.timeout = backend.response_timeout
        self.whole = whole  # the timeout bounds the whole answer, not its first message
        self.listen = role == _LISTEN
        self.sess: _Session | None = None
        self.role = role
        self.key: tuple | None = None  # its request id in the session's ``inflight``
        self.token: tuple | None = None  # its progress token in the session's ``tokens``
        self.chatty = False  # takes messages not tied to a response (see module doc)
        self.late = False  # given up while the backend may still answer (messages.keep_late)

    # --- used by the route (Exchange.upstream) ------------------------------------
    def pause_reading(self) -> None:
        self.paused = True
        s = self.sess
        if s is not None and not self.done:
            s.pause(self)

    def resume_reading(self) -> None:
        self.paused = False
        s = self.sess
        if s is not None:
            s.resume(self)
        if self.listen and self.record is not None:
            self.catch_up()  # a resumed answer: what came meanwhile

    def detach(self) -> None:
        """The client left: nothing more is delivered; later messages for this call are
        dropped, or recorded when its answer is resumable."""
        if self.done:
            return
        self.done = True
        if not self.orphaned():
            self.late = self.role == _ROUTED
            self._forget()

    # --- MessageCall hooks ------------------------------------------------------------
    def _first(self) -> None:
        self._disarm()

    def _release(self) -> None:
        self._forget()

    def _orphan(self) -> None:
        s = self.sess
        if s is not None and self in s.paused:
            s.resume(self)

    # --- its own -------------------------------------------------------------------------
    def _arm(self, now: float = 0.0) -> None:
        """Bound the wait for the first message (or, ``whole``, for the answer); ``now``:
        the monotonic time, read here when 0."""
        t = self.timeout
        if not t:
            return
        if not self.whole and t == self.link.response_timeout:
            self.watched = True
            self.link.watch(self, now)
        else:
            loop = self.link.pool._loop or asyncio.get_running_loop()
            self.timer = loop.call_later(t, self._timed_out)

    def _disarm(self) -> None:
        if self.watched:
            self.watched = False
            self.link.waiting.pop(self, None)
        t = self.timer
        if t is not None:
            self.timer = None
            t.cancel()

    def _cancel_timer(self) -> None:
        self._disarm()

    def _timed_out(self) -> None:  # the link's sweep or our own timer
        self.timer = None
        self.watched = False
        if self.done and self.record is None:
            return
        what = "answer" if self.whole else "first message"
        self.late = self.role == _ROUTED
        self.fail(UpstreamError("upstream_timeout", f"backend {self.link.name} sent no {what} within {self.timeout:g}s", 504))
        self.flush()

    def _forget(self) -> None:
        self._disarm()
        s = self.sess
        if s is not None:
            self.sess = None
            s.forget(self)


class _Post(CallHandler):
    """The POST of one message to the session's endpoint: accepted (2xx) or not."""

    __slots__ = ("answer", "name")

    def __init__(self, answer: SseCall, name: str) -> None:
        self.answer = answer
        self.name = name

    def on_end(self, call, body) -> None:
        a = self.answer
        status = call.status
        if 200 <= status < 300:
            if a.role == _POSTED:
                a.answer(202)
                a.flush()
            return
        a.fail(UpstreamError("upstream_status", f"backend {self.name} answered a message POST with HTTP {status}", 502))
        a.flush()

    def on_error(self, call, err) -> None:
        a = self.answer
        a.fail(UpstreamError(err.kind, f"backend {self.name}: message POST failed: {err}", err.status))
        a.flush()


class _Session(CallHandler):
    """One backend session: its event stream (this is the stream call's handler), its
    endpoint, the calls waiting for answers on it."""

    __slots__ = (
        "backend", "sid", "stream", "ready", "post_pre", "inflight", "tokens", "chatty", "listener", "touched",
        "paused", "gone", "next_id", "late",
    )  # fmt: skip

    def __init__(self, backend: "SseBackend", sid: str) -> None:
        self.backend = backend
        self.sid = sid
        self.stream: Call | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()  # the endpoint arrived
        self.post_pre: bytes | None = None  # POST head up to Content-Length
        self.inflight: dict[tuple, SseCall] = {}  # request id -> its answer
        self.late: dict[tuple, None] = {}  # ids of requests given up before their answer
        self.tokens: dict[tuple, SseCall] = {}  # progress token -> its answer
        self.chatty: dict[SseCall, None] = {}  # calls taking unattributed messages, oldest first
        self.listener: SseCall | None = None
        self.touched: list[SseCall] = []  # got deliveries in the stream read being parsed
        self.paused: set[SseCall] = set()
        self.gone = False
        self.next_id = 0

    # --- the stream (CallHandler of the GET) ----------------------------------------
    def on_head(self, call, head) -> None:
        if head.status == 200 and call.events:
            return
        why = f"HTTP {head.status}" if head.status != 200 else f"not an event stream ({head.content_type!r})"
        call.detach()
        # The path only: the URL's query may hold a credential, and this reaches clients.
        path = self.backend.cfg.path.partition("?")[0]
        self.lost(UpstreamError("upstream_status", f"backend {self.backend.name}: GET {path} answered {why}"))

    def on_event(self, call, ev) -> None:
        if self.gone:
            return
        kind = ev.event
        if self.post_pre is None:
            if kind == _ENDPOINT:
                self._endpoint(call, ev.data or b"")
            return  # nothing else means anything before the endpoint
        if kind is not None and kind != _MESSAGE:
            return
        data = ev.data
        if data:
            self._message(data)
            if self.touched:
                call.queued = True

    def on_flush(self, call) -> None:
        touched = self.touched
        if touched:
            self.touched = []
            for c in touched:
                c.flush()

    def on_end(self, call, body) -> None:
        self.on_flush(call)
        self.lost(UpstreamError("upstream_unavailable", f"backend {self.backend.name}: event stream lost (the backend ended it)", 502))

    def on_error(self, call, err) -> None:
        self.on_flush(call)
        self.lost(UpstreamError("upstream_unavailable", f"backend {self.backend.name}: event stream lost ({err})", 502))

    def _endpoint(self, call, data: bytes) -> None:
        b = self.backend
        cfg = b.cfg
        try:
            target = endpoint_target(cfg.url, "https" if cfg.tls else "http", cfg.host, cfg.port, data)
            pre = request_head(b"POST", target, b.link.host_line, b.link.extra + _POST_FIXED, (), -1)[:-2]
        except (ValueError, HeadError) as exc:
            shown = bytes(data[:120]).decode("ascii", "backslashreplace")
            call.detach()
            self.lost(UpstreamError("upstream_protocol", f"backend {b.name}: endpoint {shown!r} refused: {exc}", 502))
            return
        self.post_pre = pre
        if not self.ready.done():
            self.ready.set_result(None)

    def _message(self, data: bytes) -> None:
        try:
            env = scan_jsonrpc(data)
        except ProtocolError as exc:
            log.debug("backend %s sent a message that is not JSON-RPC: %s", self.backend.name, exc)
            return
        if type(env) is list:
            log.debug("backend %s sent a batch on its event stream: dropped", self.backend.name)
            return
        kind = env.kind
        if kind == KIND_RESPONSE or kind == KIND_ERROR:
            key = _id_key(env.id)
            call = self.inflight.get(key)
            if call is None:
                if key in self.late:  # a late answer: its id is free from now on
                    del self.late[key]
                    log.debug("backend %s answered id %r after it was given up: dropped", self.backend.name, env.id)
                else:
                    log.debug("backend %s answered id %r, which nobody waits for: dropped", self.backend.name, env.id)
                return
            self._to(call, data, True)
            return
        if kind == KIND_NOTIFICATION and env.method == _PROGRESS and env.progress_token is not None:
            call = self.tokens.get(_id_key(env.progress_token))
            if call is not None:
                self._to(call, data, False)
                return
        chatty = self.chatty
        if len(chatty) == 1:
            call = next(iter(chatty))
        elif self.listener is not None:
            call = self.listener
        elif chatty:
            call = next(reversed(chatty))
        else:
            log.debug("backend %s sent %s with nobody to take it: dropped", self.backend.name, env.method)
            return
        self._to(call, data, False)

    def _to(self, call: SseCall, data: bytes, final: bool) -> None:
        call.deliver(data, final)
        if call.queued is not None:
            self.touched.append(call)

    # --- calls ------------------------------------------------------------------------
    def add(self, call: SseCall, key: tuple | None, token, chatty: bool) -> None:
        call.sess = self
        if key is not None:
            call.key = key
            self.inflight[key] = call
        if token is not None:
            tk = _id_key(token)
            if tk not in self.tokens:
                call.token = tk
                self.tokens[tk] = call
        if chatty:
            call.chatty = True
            self.chatty[call] = None
        if call.paused:
            self.pause(call)

    def forget(self, call: SseCall) -> None:
        if call.key is not None and self.inflight.get(call.key) is call:
            del self.inflight[call.key]
            if call.late:
                keep_late(self.late, call.key)
        if call.token is not None and self.tokens.get(call.token) is call:
            del self.tokens[call.token]
        if call.chatty:
            self.chatty.pop(call, None)
        if self.listener is call:
            self.listener = None
        if call in self.paused:
            self.resume(call)

    def cancelled_call(self, env) -> SseCall | None:
        """The client's request in flight that a ``notifications/cancelled`` names: the
        client gave up on it, and the backend sends no response to a cancelled request,
        so its answer (or its record, left to be resumed) ends when it is posted."""
        if env.kind != KIND_NOTIFICATION or env.method != _CANCELLED or env.request_id is None:
            return None
        gone = self.inflight.get(_id_key(env.request_id))
        return gone if gone is not None and gone.role == _ROUTED else None

    def private_id(self) -> str:
        """An id for a request of the gateway's own that no call in flight has."""
        while True:
            self.next_id += 1
            rid = f"mcpfast-sse-{self.next_id}"
            if (True, rid) not in self.inflight and (True, rid) not in self.late:
                return rid

    def pause(self, call: SseCall) -> None:
        self.paused.add(call)
        if self.stream is not None:
            self.stream.pause_reading()

    def resume(self, call: SseCall) -> None:
        self.paused.discard(call)
        if not self.paused and self.stream is not None:
            self.stream.resume_reading()

    def post(self, body: bytes, answer: SseCall) -> None:
        link = self.backend.link
        Call(link, [b"%sContent-Length: %d\r\n\r\n" % (self.post_pre, len(body)), body], _Post(answer, link.name)).start()

    # --- the end ------------------------------------------------------------------------
    def lost(self, err: UpstreamError) -> None:
        """The stream is gone: every call on it fails, the session is forgotten."""
        if self.gone:
            return
        self.gone = True
        self.stream = None
        self.backend.sessions.pop(self.sid, None)
        if not self.ready.done():
            self.ready.set_exception(err)
            self.ready.exception()  # retrieved: nobody may be waiting any more
        for call in list(self.inflight.values()):
            call.fail(err)
            call.flush()
        for call in list(self.chatty):
            call.fail(err)
            call.flush()
        listener = self.listener
        if listener is not None:
            listener.end()
            listener.flush()
        log.info("backend %s: session %s ended: %s", self.backend.name, self.sid, err)

    def close(self, why: str) -> None:
        stream = self.stream
        if stream is not None:
            stream.detach()
        self.lost(UpstreamError("upstream_unavailable", f"backend {self.backend.name}: {why}", 502))


class SseBackend:
    """A backend reached over the 2024-11-05 HTTP+SSE transport (the module docstring
    says how).  ``max_event``: bytes of one event; ``max_inflight``: answers waited for
    at once per session."""

    kind = "sse"
    local_sessions = True

    def __init__(
        self,
        cfg,
        pool: UpstreamPool,
        *,
        response_timeout: float,
        max_event: int,
        max_inflight: int = 1024,
        count_error=None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.pool = pool
        self.response_timeout = response_timeout
        self.max_inflight = max_inflight
        self.link = BackendLink(cfg, pool, response_timeout, max_event)
        self.sessions: dict[str, _Session] = {}
        self._pid = os.getpid()
        self._n = 0
        # Reconnection back-off: failed stream opens in a row, and when the next may try.
        self.failures = 0
        self.retry_at = 0.0
        self.last_failure = ""
        self.closed = False
        self.replay = Replay(cfg.resume_buffer, count_error) if cfg.resume_buffer else None

    # --- sessions ---------------------------------------------------------------------
    def _sessions(self) -> dict[str, _Session]:
        if os.getpid() != self._pid:  # a forked child: the parent's streams are not ours
            self._pid = os.getpid()
            self.sessions = {}
        return self.sessions

    def _lookup(self, session_id: str | None) -> _Session | None:
        """The live session ``session_id``; None when it is gone.  Raises ``SessionLost``
        for an id this process cannot serve."""
        sessions = self._sessions()
        if session_id is None or session_id.rpartition(".")[0] != instance_id():
            raise SessionLost(session_id)
        s = sessions.pop(session_id, None)
        if s is not None:
            sessions[session_id] = s  # most recently used last (``_make_room``)
        return s

    def _make_room(self) -> None:
        """Each session holds one of the backend's streams (``max_streams``), and a client
        that walks away never ends its own: when they are all taken, the least recently
        used session with nothing under way (no answer awaited, nobody listening) gives
        its stream up.  Its client, if it comes back, meets a lost session and gets a new
        one, as after any loss.  With every one busy the new session is refused (503):
        the gateway's own budget is spent, the backend did not fail, so no back-off."""
        pool = self.pool
        if pool._streams < pool.max_streams:
            return
        for s in self._sessions().values():
            if not s.inflight and not s.chatty and s.listener is None:
                s.close("closed to make room for a new session (max_streams)")
                return
        raise UpstreamError(
            "upstream_stream_limit", f"backend {self.name} has {pool.max_streams} streams open, its max_streams", 503
        )

    def _refuse_while_backing_off(self) -> None:
        if self.closed:
            raise UpstreamError("upstream_unavailable", "gateway is shutting down", 503)
        left = self.retry_at - time.monotonic()
        if left > 0:
            raise UpstreamError(
                "upstream_unavailable",
                f"backend {self.name} unavailable (retrying in {left:.2f}s after {self.failures} failed "
                f"attempt(s): {self.last_failure})",
                503,
            )

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_failure = why
        delay = min(_BACKOFF_FIRST * 2 ** (self.failures - 1), _BACKOFF_MAX)
        self.retry_at = time.monotonic() + delay

    async def _open(self) -> _Session:
        """A new session with its stream open and its endpoint known."""
        self._refuse_while_backing_off()
        self._make_room()
        self._n += 1
        sid = f"{instance_id()}.{self._n}"
        s = _Session(self, sid)
        link = self.link
        call = Call(link, [link.head(b"GET", None, None)], s)
        call.listen = True
        s.stream = call
        call.start()
        try:
            await asyncio.wait_for(asyncio.shield(s.ready), self.response_timeout)
        except asyncio.TimeoutError:
            s.close("no endpoint event")
            err = UpstreamError(
                "upstream_timeout", f"backend {self.name} sent no endpoint event within {self.response_timeout:g}s", 504
            )
            self._failed(str(err))
            raise err from None
        except UpstreamError as err:
            s.close("stream failed")
            self._failed(str(err))
            raise
        except BaseException:
            s.close("abandoned")
            raise
        return s

    # --- the seam -----------------------------------------------------------------------
    async def ask(
        self,
        session_id: str | None,
        version: str | None,
        data: bytes,
        on_message: Callable[[bytes, Any], None] | None = None,
        calls: set | None = None,
    ) -> Reply:
        """One message of the gateway's own (``transport/base.py``); ``session_id`` None
        with an ``initialize`` opens a session."""
        env = scan_jsonrpc(data)
        if type(env) is list:
            raise UpstreamError("gateway_error", f"backend {self.name}: a batch cannot be sent to a legacy SSE backend", 500)
        if session_id is None:
            s = await self._open()
            try:
                status, message, renv = await self._exchange(s, data, env, on_message, calls)
            except BaseException as exc:
                s.close("initialize failed")
                if isinstance(exc, UpstreamError):
                    self._failed(str(exc))
                raise
            if status != 200 or renv is None or renv.kind != KIND_RESPONSE:
                s.close("initialize refused")  # the route gives up: nobody would end it
                return Reply(status, None, message, renv, _JSON)
            self.failures = 0
            self.sessions[s.sid] = s
            return Reply(200, s.sid, message, renv, _JSON)
        s = self._lookup(session_id)
        if s is None:
            return Reply(404, None, None, None, None)
        status, message, renv = await self._exchange(s, data, env, on_message, calls)
        return Reply(status, session_id, message, renv, _JSON if message is not None else None)

    async def _exchange(self, s: _Session, data: bytes, env, on_message, calls) -> tuple[int, bytes | None, Any]:
        fut = asyncio.get_running_loop().create_future()
        if env.kind != KIND_REQUEST:
            call = SseCall(self, _Collect(fut, None), _POSTED)
            call.sess = s
            s.post(data, call)
            await collected(call, fut, None)
            gone = s.cancelled_call(env)
            if gone is not None:
                _later_cancel(gone)
            return 202, None, None
        if len(s.inflight) >= self.max_inflight:
            raise UpstreamError("upstream_busy", f"backend {self.name}: {self.max_inflight} requests in flight in one session", 503)
        call = SseCall(self, _Collect(fut, on_message), _ROUTED, whole=calls is None)
        rid = s.private_id()
        s_, e_ = env.id_span
        body = splice(data, s_, e_, b'"%s"' % rid.encode("ascii"))
        s.add(call, _id_key(rid), env.progress_token if on_message is not None else None, on_message is not None)
        call._arm()
        s.post(body, call)
        reply = await collected(call, fut, calls)
        message, renv = reply.message, reply.env
        if message is None:
            raise UpstreamError("upstream_protocol", f"backend {self.name}: no response to {env.method}", 502)
        # The response carries the private id: put the caller's back.
        if renv.id_span is not None and env.id_span is not None:
            message = splice(message, renv.id_span[0], renv.id_span[1], data[env.id_span[0]:env.id_span[1]])
            renv = scan_jsonrpc(message)
        return 200, message, renv

    def send(self, bs, body: bytes, handler: CallHandler, paused: bool = False, now: float = 0.0, resumable: bool = False) -> SseCall:
        """A client's routed message in backend session ``bs``; its answer goes to
        ``handler`` (see the module docstring).  ``paused``: the client is not reading
        yet (the stream is not read until it resumes); ``now``: the monotonic time if
        the caller just read it; ``resumable``: a request's answer is a resumable event
        stream (``transport/messages.py``).  Raises ``SessionLost``."""
        s = self._lookup(bs.session_id)
        loop = self.pool._loop or asyncio.get_running_loop()
        try:
            env = scan_jsonrpc(body)
        except ProtocolError as exc:
            call = SseCall(self, handler, _POSTED)
            loop.call_soon(_later_fail, call, UpstreamError("gateway_error", f"not a JSON-RPC message: {exc}", 500))
            return call
        if type(env) is list:
            call = SseCall(self, handler, _POSTED)
            loop.call_soon(_later_fail, call, UpstreamError("gateway_error", "a batch cannot be sent to a legacy SSE backend", 500))
            return call
        request = env.kind == KIND_REQUEST
        call = SseCall(self, handler, _ROUTED if request else _POSTED)
        call.paused = paused
        if s is None:
            loop.call_soon(_later_answer, call, 404, None)
            return call
        if request:
            key = _id_key(env.id)
            if key in s.inflight or key in s.late:
                err = jsonrpc_error_body(INVALID_REQUEST, "Invalid Request: this id is already in use by a request in flight", env.id)
                loop.call_soon(_later_answer, call, 200, err)
                return call
            if len(s.inflight) >= self.max_inflight:
                loop.call_soon(
                    _later_fail, call,
                    UpstreamError("upstream_busy", f"backend {self.name}: {self.max_inflight} requests in flight in one session", 503),
                )  # fmt: skip
                return call
            s.add(call, key, env.progress_token, True)
            call._arm(now)
            if resumable and self.replay is not None:
                call.resumable(self.replay, bs.session_id, body[env.id_span[0] : env.id_span[1]], self.cfg.poll_after)
        else:
            call.sess = s
            gone = s.cancelled_call(env)
            if gone is not None:
                loop.call_soon(_later_cancel, gone)
        s.post(body, call)
        return call

    def listen(self, bs, handler: CallHandler, position: bytes | None = None, paused: bool = False) -> SseCall:
        """The server→client stream of session ``bs``, or with ``position`` (an event id
        of a resumable answer of this session) the rest of that answer.  Any other
        position is answered 400: a legacy stream cannot be resumed.  ``paused``: as
        for ``send``.  A newer ``listen`` of the session ends an older one."""
        s = self._lookup(bs.session_id)
        call = SseCall(self, handler, _LISTEN)
        call.paused = paused
        loop = self.pool._loop or asyncio.get_running_loop()
        if position is not None:
            call.resume(self.replay, bs.session_id, position)
            return call
        if s is None:
            loop.call_soon(_later_answer, call, 404, None)
            return call
        old = s.listener
        if old is not None:
            old.end()
            old.flush()
        call.sess = s
        s.listener = call
        if call.paused:
            s.pause(call)
        loop.call_soon(_later_begin, call)
        return call

    async def end(self, session_id: str | None, version: str | None = None) -> None:
        """End a session: close its stream.  An id of another process or one already gone
        is a no-op."""
        if self.replay is not None and session_id is not None:
            self.replay.forget(session_id)
        try:
            s = self._lookup(session_id)
        except SessionLost:
            return
        if s is not None:
            s.close("session ended")

    async def probe(self) -> str | None:
        """None when a GET of the URL answers with a 200 event stream head in time, else why
        not.  The stream is closed at once."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        link = self.link
        call = Call(link, [link.head(b"GET", None, None)], _Probe(fut), timeout=min(self.response_timeout, _PROBE_TIMEOUT))
        call.listen = True
        call.start()
        try:
            return await fut
        finally:
            call.detach()

    async def close(self) -> None:
        """Close every stream (gateway stop or reload)."""
        self.closed = True
        for s in list(self._sessions().values()):
            s.close("gateway is closing the session")
        self.sessions.clear()


class _Probe(CallHandler):
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future) -> None:
        self.fut = fut

    def on_head(self, call, head) -> None:
        if self.fut.done():
            return
        if head.status == 200 and call.events:
            self.fut.set_result(None)
        else:
            self.fut.set_result(f"HTTP {head.status}" if head.status != 200 else "not an event stream")

    def on_end(self, call, body) -> None:
        if not self.fut.done():
            self.fut.set_result("no answer")

    def on_error(self, call, err) -> None:
        if not self.fut.done():
            self.fut.set_result(str(err))


# Deliveries decided in ``send``/``listen``, made from the loop right after.
def _later_answer(call: SseCall, status: int, body: bytes | None) -> None:
    call.answer(status, body)
    call.flush()


def _later_fail(call: SseCall, err: UpstreamError) -> None:
    call.fail(err)
    call.flush()


def _later_cancel(call: SseCall) -> None:
    call.late = True  # its id stays taken: the backend may have answered already
    call.cancelled()
    call.flush()


def _later_begin(call: SseCall) -> None:
    if not call.done and call.head is None:
        call.begin_stream()
        call.flush()
