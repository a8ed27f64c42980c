"""MCP servers run as child processes: the stdio transport behind the backend seam.

Theory of operation.  A stdio MCP server reads JSON-RPC messages from its stdin and
writes them to its stdout, one per line; what it prints on stderr is a log.  It serves
exactly one client, so in ``per_session`` mode (the default) every backend session is a
child of its own: ``ask(None, version, initialize)`` starts one, writes the initialize
and names the new session ``<instance>.<n>``, where the instance is random per gateway
process.  Such a session lives in this process only (``local_sessions``): an id of
another instance raises ``SessionLost``; an id of this instance whose child is gone
(crashed, reaped when idle, evicted to make room) is answered 404, and the route opens
a fresh child for the same client session.  In ``shared`` mode one child serves every
session: it is initialized once (later ``initialize`` requests are answered from that
first result without reaching it), and any gateway process serves any of its sessions
(each process has its own child).  Their ids, ``shared.<random>``, only tell the clients
apart: since several clients then talk to one JSON-RPC peer, every request id and
progress token is replaced on the way in by a number unique on that child and put back
on the way out, so clients never see, or collide with, each other's ids; a cancellation
reaches only a request of the same session, and an answer to a request of the child's
only comes from the session it was handed to.

Flow.  ``send``/``ask`` scan the message (``core.scan_jsonrpc``), note a request in the
child's in-flight table under the id the child will answer with (per_session: a client's
id already in flight there, or timed out and not yet answered, is refused -- see
``messages.py``), and write the message as one line.  Lines written to a child that has
other requests in flight are sent at the end of the loop iteration in one write: with
many sessions on one child, a wake-up of the child then carries every request that
arrived together, not one each (a line to an idle child goes at once: nothing could
join it).  A message is always one line on the wire: a raw CR or LF in a valid JSON
text can only be whitespace between tokens (a string may not hold one unescaped, RFC
8259 §7), so each is replaced by a space -- otherwise a client could hide a second
message on its own line in a body the gateway checked as one.  A request's wait for its
first message is bounded by one sweep per backend over a deadline table (``_watch``),
not by a timer per request.  The child's stdout is
cut into lines by ``core.NDJSONFramer``; each line is scanned, and a response finds its
call by id, a ``notifications/progress`` by token, and any other message goes to the
session's one call in flight, else its listen stream, else (per_session) its newest call
in flight; unattributable ones are dropped (a request among them is answered with an
error at once, so the child does not wait for it) -- in shared mode only list-changed
and resource-updated notifications, which concern everyone, go to every listen stream.

Answers reach the route's handlers as an HTTP backend's would (``transport/http_mcp.py``):
``StdioCall`` is a ``Call``.  The first message decides the shape: the response alone is
a JSON answer (head, one ``on_body`` or the body at ``on_end``); anything before it makes
an event stream (head, ``on_event`` per message, the response last, ``on_end``).  After
each read, every call that got something and set ``queued`` is flushed once.

Processes.  No shell, ever: the configured command (a bare name found on PATH -- the
backend's ``env.PATH`` if it sets one, else the gateway's --, a relative path taken from
the child's working directory) is executed with its arguments, in a new session (so it leads its own process
group), with an explicit environment.  A child is stopped by closing its stdin, then
after ``shutdown_grace`` SIGTERM to its group, after another grace SIGKILL; whatever of
its group outlives it is killed when it exits.  Spawning is bounded three ways:
``max_processes`` children at once (the least recently used idle one is evicted to make
room), ``spawn_rate`` per second (a token bucket), and after a child that dies soon after
its start an exponential backoff during which spawns fail at once with 503.  One timer
per backend stops per-session children idle for ``idle_timeout``.

For the route.  ``send`` and ``listen`` raise ``SessionLost`` at once for a session of
another gateway process, and answer 404 (head, then ``on_end``) for one whose child is
gone.  No answer is delivered inside the ``send`` call: all of them come from the loop.  A
slow client pauses its call with ``pause_reading()`` (setting ``call.paused`` alone
does not reach the child).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import signal
import time
from typing import Any, Callable

import orjson

from ..wire.core import KIND_ERROR, KIND_REQUEST, KIND_RESPONSE, NDJSONFramer, ProtocolError, scan_jsonrpc, splice, splice_many
from ..wire.errors import INVALID_REQUEST
from ..wire.rpcerrors import INTERNAL_ERROR, jsonrpc_error_body
from .base import SessionLost, instance_id
from .http_mcp import CallHandler, Reply, _Collect, collected, sweep_every, take_overdue
from .messages import MessageCall, Replay, keep_late
from .pool import UpstreamError

__all__ = ["SHARED", "StdioBackend", "StdioCall", "instance_id", "one_line"]

log = logging.getLogger("mcpfast.backend")

SHARED = "shared"  # a shared child's session ids: "shared.<random>", one per client session
_JSON = b"application/json"
_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
_ONE_LINE = bytes.maketrans(b"\r\n", b"  ")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_STDERR_LINE = 4096  # bytes of one stderr line logged
_STDERR_PER_SECOND = 50  # stderr lines logged per child and second; the rest are counted
_SHOWN = 200  # bytes of a non-JSON-RPC stdout line shown in the warning
_BACKOFF_FIRST = 0.25
_BACKOFF_MAX = 30.0
_SHORT_LIFE = 5.0  # a child that dies sooner than this after its start arms the backoff
_STABLE_LIFE = 30.0  # one that lived this long resets it
_RATE_WAIT = 1.0  # longest wait for a spawn token; beyond it the spawn is refused
_EXIT_SETTLE = 1.0  # after a child exits, how long its stdout may still deliver
_KILL_WAIT = 5.0  # after SIGKILL, the longest wait for the exit to be seen
_MAX_ASKED = 1024  # a shared child's requests awaiting a session's answer, remembered

# Forks this process has been through (as a child): a backend made before a fork sees
# it (``_check_fork``) without a system call per message.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def one_line(data: bytes) -> bytes:
    """``data`` (a valid JSON text) as one line: raw CR and LF, which in valid JSON can
    only be whitespace between tokens, become spaces."""
    if b"\n" in data or b"\r" in data:
        return data.translate(_ONE_LINE)
    return data


def _printable(raw: bytes) -> str:
    """Child output made safe for one log line (control characters escaped)."""
    text = raw.decode("utf-8", "replace")
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), text)


def _key(value, span, body: bytes):
    """How an id or progress token is looked up: its decoded value (a string or an
    integer), else its raw bytes (a fractional number, null)."""
    if value is not None:
        return value
    if span is None:
        return None
    return body[span[0] : span[1]]


def _json_key(value):
    """``_key`` for a value parsed with orjson."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    return orjson.dumps(value)


def _for_everyone(method: str | None) -> bool:
    """A shared child's notification that concerns every session (a list changed, a
    resource was updated) rather than one client's request."""
    return method is not None and (
        (method.startswith("notifications/") and method.endswith("/list_changed"))
        or method == "notifications/resources/updated"
    )


def _is_shared(session_id: str | None) -> bool:
    return session_id is not None and (session_id == SHARED or session_id.startswith(SHARED + "."))


class StdioCall(MessageCall):
    """One message sent to a child and its answer (or a session's listen stream),
    delivered by ``MessageCall`` as an HTTP answer is."""

    __slots__ = (
        "backend", "child", "bs", "key", "orig_id", "orig_token", "token_key", "client_key", "touched",
        "holds_pause", "sid", "late",
    )  # fmt: skip

    def __init__(self, backend: StdioBackend, handler: CallHandler, bs=None, sid: str | None = None) -> None:
        super().__init__(handler, backend.name)
        self.backend = backend
        self.bs = bs
        self.sid = bs.session_id if bs is not None else sid  # whose call it is
        self.child: _Child | None = None
        self.key = None  # the id the child answers with (in child.inflight)
        self.orig_id: bytes | None = None  # the caller's id, when the wire id differs
        self.orig_token: bytes | None = None  # the caller's progress token, when remapped
        self.token_key = None  # the progress token on the wire (in child.tokens)
        self.client_key = None  # the caller's id as a key (cancellation in shared mode)
        self.touched = False  # got a delivery in the read being processed (flushed after it)
        self.holds_pause = False  # its child's stdout is paused on its behalf
        self.late = False  # given up while the child may still answer (messages.keep_late)

    # --- the client side ----------------------------------------------------------------
    def pause_reading(self) -> None:
        """A slow client: in per_session mode the child's stdout is not read meanwhile
        (a shared child serves others too: it is not paused for one of them)."""
        self.paused = True
        child = self.child
        if not self.holds_pause and not self.done and child is not None and not self.backend.shared:
            self.holds_pause = True
            child.pause()

    def resume_reading(self) -> None:
        self.paused = False
        if self.holds_pause:
            self.holds_pause = False
            self.child.resume()
        if self.listen and self.record is not None:
            self.catch_up()  # a resumed answer: what came meanwhile

    def detach(self) -> None:
        """The client left: its answer is dropped as it comes (the child still finishes
        the request: a dropped connection is not a cancellation)."""
        if self.done:
            return
        self.done = True
        if self.orphaned():
            return  # a resumable answer goes on being recorded
        self._settle()
        # Its id stays taken (per_session) until the child's answer comes and is dropped.
        self.late = not self.backend.shared
        self._unregister()
        if self.listen:
            self.backend._unlisten(self)

    # --- MessageCall hooks ------------------------------------------------------------------
    def _first(self) -> None:
        if self.watched:
            self.watched = False
            self.backend.waiting.pop(self, None)
        elif self.timer is not None and not self.whole:
            self.timer.cancel()
            self.timer = None

    def _release(self) -> None:
        self._settle()
        self._unregister()
        if self.child is not None:
            self.child.last_used = time.monotonic()

    def _orphan(self) -> None:
        if self.holds_pause:
            self.resume_reading()

    def flush(self) -> None:
        MessageCall.flush(self)
        self.touched = False

    # --- its own ---------------------------------------------------------------------------
    def _settle(self) -> None:
        """Timer off, pause released: no more deliveries."""
        if self.watched:
            self.watched = False
            self.backend.waiting.pop(self, None)
        t = self.timer
        if t is not None:
            self.timer = None
            t.cancel()
        if self.holds_pause:
            self.resume_reading()

    def _unregister(self) -> None:
        child = self.child
        if child is None:
            return
        if self.key is not None and child.inflight.get(self.key) is self:
            del child.inflight[self.key]
            if self.late:
                keep_late(child.late, self.key)
        if self.token_key is not None and child.tokens.get(self.token_key) is self:
            del child.tokens[self.token_key]

    def _timed_out(self) -> None:  # the backend's sweep or its own timer
        self.timer = None
        self.watched = False
        if self.done and self.record is None:
            return
        t = self.backend.response_timeout
        # A shared child's wire ids are the gateway's, never reused: nothing to keep.
        self.late = not self.backend.shared
        self.fail(UpstreamError("upstream_timeout", f"backend {self.backend.name} did not answer within {t:g}s", 504))


class _Child(asyncio.SubprocessProtocol):
    """One child process: its pipes, its calls in flight, its listen streams."""

    def __init__(self, backend: StdioBackend, sid: str) -> None:
        self.backend = backend
        self.sid = sid
        self.transport: Any = None
        self.stdin: Any = None
        self.out: list | None = None  # lines written in this loop iteration, not yet sent
        self.out_size = 0
        self.pid = 0
        self.rc: int | None = None
        self.framer = NDJSONFramer(backend.max_line)
        self.inflight: dict[Any, StdioCall] = {}  # wire id -> call
        self.late: dict[Any, None] = {}  # ids of calls given up before their answer
        self.tokens: dict[Any, StdioCall] = {}  # wire progress token -> call
        self.listeners: list[StdioCall] = []
        self.started = self.last_used = time.monotonic()
        self.next_wire = 1
        # shared: the child's own requests (sampling, elicitation, ...) handed to a
        # session -- request id -> that session's id: only that session may answer.
        self.asked: dict[Any, Any] = {}
        self.stopping = False
        self.gone = False
        self.framing_lost = False
        self.stdout_eof = False
        self.exited = False
        self.settle: asyncio.TimerHandle | None = None
        self.pauses = 0
        self.ready = False  # shared: initialized
        self.init_result: bytes | None = None
        self.done_fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.err_buf = bytearray()
        self.err_skip = False  # dropping the rest of an over-long stderr line
        self.err_second = 0
        self.err_lines = 0
        self.err_dropped = 0

    def __repr__(self) -> str:
        return f"<stdio child {self.backend.name} pid={self.pid} sid={self.sid}>"

    # --- asyncio.SubprocessProtocol ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stdin = transport.get_pipe_transport(0)
        self.pid = transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        try:
            if fd == 1:
                self.backend._stdout(self, data)
            else:
                self._stderr(data)
        except Exception:
            log.exception("stdio backend %s: reading process %d failed", self.backend.name, self.pid)

    def pipe_connection_lost(self, fd: int, exc) -> None:
        if fd != 1:
            return
        self.stdout_eof = True
        if not self.framing_lost:
            try:
                self.backend._lines(self, self.framer.feed_eof())
            except Exception:
                log.exception("stdio backend %s: reading process %d failed", self.backend.name, self.pid)
        if self.exited:
            self.finish()

    def process_exited(self) -> None:
        self.exited = True
        self.rc = self.transport.get_returncode()
        if self.stdout_eof:
            self.finish()
        else:
            # Something else of its group may hold stdout open: deliver what is still
            # in the pipe, but not forever.
            self.settle = asyncio.get_running_loop().call_later(_EXIT_SETTLE, self.finish)

    def connection_lost(self, exc) -> None:
        self.finish()

    # --- state --------------------------------------------------------------------------------
    def finish(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self.settle is not None:
            self.settle.cancel()
            self.settle = None
        self.backend._child_gone(self)

    def working(self) -> bool:
        """A call of its is in flight (one whose client left counts while its answer
        is recorded, even where nobody can read the record any more: its tool is
        still at work, and stopping the child would cut it off)."""
        for call in self.inflight.values():
            if not call.done:
                return True
            rec = call.record
            if rec is not None and not call.listen and not rec.finished:
                return True
        return False

    def busy(self) -> bool:
        """In use: a call in flight or a listen stream open (not reaped when idle)."""
        return bool(self.listeners) or self.working()

    def live_calls(self) -> list[StdioCall]:
        return [c for c in self.inflight.values() if c.taking()]

    def pause(self) -> None:
        self.pauses += 1
        if self.pauses == 1 and self.transport is not None and not self.gone:
            pipe = self.transport.get_pipe_transport(1)
            if pipe is not None:
                pipe.pause_reading()

    def resume(self) -> None:
        if self.pauses <= 0:
            return
        self.pauses -= 1
        if self.pauses == 0 and self.transport is not None and not self.gone:
            pipe = self.transport.get_pipe_transport(1)
            if pipe is not None:
                pipe.resume_reading()

    def write(self, data: bytes) -> str | None:
        """Write one message as one line; None, or why it could not be written."""
        w = self.stdin
        if w is None or w.is_closing() or self.gone or self.stopping:
            return "its process is gone"
        if b"\n" in data or b"\r" in data:
            data = data.translate(_ONE_LINE)  # as one_line()
        queued = w.get_write_buffer_size() + self.out_size
        if queued and queued + len(data) > self.backend.write_limit:
            return f"process {self.pid} is not reading its input ({queued} bytes queued)"
        out = self.out
        if out is not None:
            out.append(data)
            out.append(b"\n")
            self.out_size += len(data) + 1
        elif len(self.inflight) <= 1:
            # Nothing else in flight: the child waits for this line alone, so there is no
            # batch to wait for (and no loop iteration to spend on one).
            w.write(data + b"\n")
        else:
            self.out = [data, b"\n"]
            self.out_size = len(data) + 1
            self.backend._flush_soon(self)
        self.last_used = time.monotonic()
        return None

    def flush(self) -> None:
        """Send the lines of this loop iteration in one write (a line split over two
        writes would wake the child twice)."""
        out = self.out
        if out is None:
            return
        self.out = None
        self.out_size = 0
        w = self.stdin
        if w is not None and not w.is_closing() and not self.gone:
            w.write(b"".join(out) if len(out) > 2 else out[0] + b"\n")

    def new_wire(self) -> int:
        n = self.next_wire
        self.next_wire = n + 1
        return n

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group; False when none of it is left."""
        if not self.pid:
            return False
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    # --- stderr -------------------------------------------------------------------------------
    def _stderr(self, data: bytes) -> None:
        buf = self.err_buf
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            if not self.err_skip:
                room = _STDERR_LINE - len(buf)
                buf += data[start : start + min(room, end - start)]
                if end - start > room:
                    self.err_skip = True  # the rest of this line is not logged
                    self._err_line(bytes(buf), True)
                    buf.clear()
            if nl < 0:
                break
            start = nl + 1
            if self.err_skip:
                self.err_skip = False
            else:
                self._err_line(bytes(buf), False)
                buf.clear()

    def _err_line(self, line: bytes, truncated: bool) -> None:
        now = int(time.monotonic())
        if now != self.err_second:
            self._err_dropped()
            self.err_second = now
            self.err_lines = 0
        self.err_lines += 1
        if self.err_lines > _STDERR_PER_SECOND:
            self.err_dropped += 1
            return
        text = _printable(line.rstrip(b"\r"))
        log.info("backend %s[%d]: %s%s", self.backend.name, self.pid, text, " [truncated]" if truncated else "")

    def _err_dropped(self) -> None:
        if self.err_dropped:
            log.info("backend %s[%d]: %d stderr lines not logged (more than %d a second)",
                     self.backend.name, self.pid, self.err_dropped, _STDERR_PER_SECOND)  # fmt: skip
            self.err_dropped = 0


class StdioBackend:
    """The backend seam (``transport/base.py``) for an MCP server run as child processes."""

    kind = "stdio"

    def __init__(self, cfg, *, response_timeout: float, max_line: int, count_error=None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.response_timeout = response_timeout
        self.max_line = max_line
        # What may wait in a child's stdin pipe before a message is refused.
        self.write_limit = max(2 * max_line, 1 << 20)
        self.shared = cfg.mode == "shared"
        self.local_sessions = not self.shared
        self.children: list[_Child] = []  # alive or being started, counted against max_processes
        self.sessions: dict[str, _Child] = {}  # per_session: session id -> child
        self.shared_child: _Child | None = None
        self.starting: asyncio.Task | None = None  # shared: the start under way
        self.init_body: bytes | None = None  # shared: the first initialize seen
        self.listeners: list[StdioCall] = []  # shared: every session's listen stream
        self.replay = Replay(cfg.resume_buffer, count_error) if cfg.resume_buffer else None
        self.unflushed: list[_Child] = []  # children written to in this loop iteration
        # Calls waiting for their first message under the shared sweep: call -> deadline.
        self.waiting: dict[StdioCall, float] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.serial = 0
        self.bucket = float(cfg.max_processes)
        self.bucket_at = time.monotonic()
        self.backoff = 0.0
        self.backoff_until = 0.0
        self.reaper: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        self.launching = 0  # children between fork-exec asked for and seen running
        self.forks = _forks  # see _check_fork

    # --- the seam -------------------------------------------------------------------------------
    async def ask(
        self,
        session_id: str | None,
        version: str | None,
        data,
        on_message: Callable[[bytes, Any], None] | None = None,
        calls: set | None = None,
    ) -> Reply:
        self._check_fork()
        body = bytes(data)
        try:
            env = scan_jsonrpc(body)
        except ProtocolError as exc:
            raise UpstreamError("gateway_error", f"backend {self.name}: not a message: {exc}", 500) from None
        if type(env) is list:
            raise UpstreamError("gateway_error", f"backend {self.name}: a batch cannot be asked", 500)
        opening = env.kind == KIND_REQUEST and env.method == "initialize"
        if self.shared:
            if opening:
                child = await self._shared_ready(body, version)
                msg = b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (body[env.id_span[0] : env.id_span[1]], child.init_result)
                # Any process serves the session (each has its shared child); the name
                # is the client's own, so that its messages are told from the others'.
                sid = f"{SHARED}.{secrets.token_hex(8)}"
                return Reply(200, sid, msg, scan_jsonrpc(msg), _JSON)
            if not _is_shared(session_id):
                return Reply(404, session_id, None, None, None)
            child = await self._shared_ready(None, version)
            sid = session_id
        elif session_id is None:
            if not opening:
                raise UpstreamError("gateway_error", f"backend {self.name}: a stdio session starts with initialize", 500)
            child = await self._spawn(None)
            sid = child.sid
            try:
                reply = await self._request(child, body, env, on_message, calls)
            except BaseException:
                self._stop_later(child, "its initialize failed")
                raise
            if reply.error_text() is not None:
                self._stop_later(child, "its initialize failed")
            else:
                self.sessions[sid] = child
            reply.session_id = sid
            return reply
        else:
            child = self._lookup(session_id)
            if child is None:
                return Reply(404, session_id, None, None, None)
            sid = session_id
        if env.kind != KIND_REQUEST:
            # A client's cancelled request gets no response from the child: its answer
            # (or its record, left to be resumed) ends here.
            gone = self._cancelled_call(child, body, env, sid) if env.method == "notifications/cancelled" else None
            if self.shared:
                body = self._shared_message(child, body, env, sid)
            if body is not None:
                why = child.write(body)
                if why is not None:
                    raise UpstreamError("upstream_unavailable", f"backend {self.name}: {why}", 502)
            if gone is not None and gone.bs is not None:
                # Its id stays taken (per_session): the child may have answered already.
                gone.late = not self.shared
                gone.cancelled()
                gone.flush()
            return Reply(202, sid, None, None, None)
        reply = await self._request(child, body, env, on_message, calls, sid)
        reply.session_id = sid
        return reply

    def send(self, bs, body, handler: CallHandler, paused: bool = False, now: float = 0.0, resumable: bool = False) -> StdioCall:
        """Send a client's message in backend session ``bs``; the answer goes to
        ``handler`` (``paused``: the client is not reading yet; ``now`` is not needed
        here; ``resumable``: a request's answer is a resumable event stream, see
        ``transport/messages.py``).  Raises ``SessionLost`` for a session of another
        gateway process."""
        self._check_fork()
        call = StdioCall(self, handler, bs)
        if type(body) is not bytes:
            body = bytes(body)
        try:
            env = scan_jsonrpc(body)
        except ProtocolError as exc:
            self._later(call.fail, UpstreamError("gateway_error", f"backend {self.name}: not a message: {exc}", 500))
            return call
        if type(env) is list:
            self._later(call.fail, UpstreamError("gateway_error", f"backend {self.name}: send one message at a time", 500))
            return call
        if self.shared:
            if not _is_shared(bs.session_id):
                self._later(call.answer, 404)
                return call
            child = self.shared_child
            if child is None or not child.ready or child.gone or child.stopping:
                self._task(self._send_later(call, body, env, bs, resumable))
                return call
        else:
            child = self._lookup(bs.session_id)
            if child is None:
                self._later(call.answer, 404)
                return call
        self._route(call, child, body, env, False)
        if resumable:
            self._resumable(call, body, env)
        if paused:
            call.pause_reading()
        return call

    def _resumable(self, call: StdioCall, body: bytes, env) -> None:
        """A request just written: its answer becomes resumable."""
        if self.replay is not None and call.key is not None and not call.done:
            s, e = env.id_span
            call.resumable(self.replay, call.sid, body[s:e], self.cfg.poll_after)

    def listen(self, bs, handler: CallHandler, position=None, paused: bool = False) -> StdioCall:
        """The session's stream of messages not tied to a request, or with ``position``
        (an event id of a resumable answer of this session) the rest of that answer.
        Any other position is answered 400: the messages of a listen stream carry no
        ids, so nothing else can be resumed."""
        self._check_fork()
        call = StdioCall(self, handler, bs)
        call.listen = True
        if position is not None:
            call.resume(self.replay, bs.session_id, position)
            return call
        if self.shared:
            if not _is_shared(bs.session_id):
                self._later(call.answer, 404)
                return call
            self.listeners.append(call)
        else:
            child = self._lookup(bs.session_id)
            if child is None:
                self._later(call.answer, 404)
                return call
            call.child = child
            child.listeners.append(call)
        if paused:
            call.pause_reading()
        self._later(self._open_stream, call)
        return call

    async def end(self, session_id: str | None, version: str | None = None) -> None:
        """End a session: its child is stopped (a shared child stays for the others)."""
        self._check_fork()
        if self.replay is not None and session_id is not None:
            self.replay.forget(session_id)
        if self.shared or session_id is None:
            return
        try:
            child = self._lookup(session_id)
        except SessionLost:
            return
        if child is not None:
            await self._stop(child, "its session ended")

    async def probe(self) -> str | None:
        """None when the backend can take work now, else why not."""
        self._check_fork()
        if self._program() is None:
            return f"command {self.cfg.command!r} not found"
        wait = self.backoff_until - time.monotonic()
        if wait > 0:
            return f"restarting after a crash (next start in {wait:.1f}s)"
        if self.shared:
            child = self.shared_child
            if child is not None and not child.gone and not child.stopping:
                return None
            if len(self.children) >= self.cfg.max_processes and not self._victims():
                return f"{self.cfg.max_processes} processes busy"
        return None

    async def close(self) -> None:
        """Stop every child (concurrently) and wait for them."""
        self.closed = True
        if self.reaper is not None:
            self.reaper.cancel()
            self.reaper = None
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for call in list(self.listeners):
            call.end()
        self.listeners.clear()
        await asyncio.gather(*(self._stop(c, "the gateway is stopping") for c in list(self.children)), return_exceptions=True)
        # A child being started when the stop came is stopped as soon as it runs.
        deadline = time.monotonic() + 2 * self.cfg.shutdown_grace + _KILL_WAIT
        while self.launching and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        tasks = [t for t in self.tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- sessions ---------------------------------------------------------------------------------
    def _check_fork(self) -> None:
        """In a forked process the children of the parent are not ours."""
        if _forks != self.forks:
            self.forks = _forks
            self.children = []
            self.sessions = {}
            self.shared_child = None
            self.starting = None
            self.listeners = []
            self.unflushed = []
            self.waiting = {}
            self.sweeper = None
            self.reaper = None
            self.tasks = set()
            self.launching = 0

    def _lookup(self, session_id: str | None) -> _Child | None:
        """The live child of a per-session id of this process, None when it is gone;
        ``SessionLost`` for an id of another process."""
        child = self.sessions.get(session_id)  # type: ignore[arg-type]
        if child is None:  # (a session in the table is of this process)
            inst, dot, _n = (session_id or "").rpartition(".")
            if not dot or inst != instance_id():
                raise SessionLost(session_id)
            return None
        if child.gone or child.stopping:
            return None
        return child

    async def _shared_ready(self, init_body: bytes | None, version: str | None) -> _Child:
        """The shared child, started and initialized (once) if need be."""
        if init_body is not None and self.init_body is None:
            self.init_body = init_body
        child = self.shared_child
        if child is not None and child.ready and not child.gone and not child.stopping:
            return child
        task = self.starting
        if task is None:
            task = self.starting = asyncio.get_running_loop().create_task(self._start_shared(version))

            def clear(_t, self=self) -> None:
                if self.starting is _t:
                    self.starting = None
            task.add_done_callback(clear)
        return await asyncio.shield(task)

    async def _start_shared(self, version: str | None) -> _Child:
        body = self.init_body
        if body is None:  # this process has not seen a client's initialize (another did)
            body = orjson.dumps({
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": version or "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "mcpfast", "version": "0"}},
            })  # fmt: skip
        child = await self._spawn(SHARED)
        self.shared_child = child
        try:
            reply = await self._request(child, body, scan_jsonrpc(body), None, None)
        except BaseException:
            self._stop_later(child, "its initialize failed")
            raise
        why = reply.error_text()
        if why is not None:
            self._stop_later(child, "its initialize failed")
            raise UpstreamError("upstream_protocol", f"backend {self.name} refused initialize ({why})")
        child.init_result = bytes(reply.result_bytes())
        why = child.write(_INITIALIZED)
        if why is not None:
            raise UpstreamError("upstream_unavailable", f"backend {self.name}: {why}", 502)
        child.ready = True
        return child

    async def _send_later(self, call: StdioCall, body: bytes, env, bs, resumable: bool) -> None:
        try:
            child = await self._shared_ready(None, getattr(bs, "protocol_version", None))
        except UpstreamError as err:
            call.fail(err)
            return
        except Exception as exc:
            log.exception("stdio backend %s: starting the shared process failed", self.name)
            call.fail(UpstreamError("upstream_unavailable", f"backend {self.name}: {exc}", 502))
            return
        if not call.done:
            self._route(call, child, body, env, False)
            if resumable:
                self._resumable(call, body, env)

    def _open_stream(self, call: StdioCall) -> None:
        if call.done:
            return
        call.begin_stream()
        if not call.done:
            call.flush()

    def _unlisten(self, call: StdioCall) -> None:
        for table in (self.listeners, call.child.listeners if call.child is not None else None):
            if table is not None and call in table:
                table.remove(call)

    # --- writing ----------------------------------------------------------------------------------
    def _watch(self, call: StdioCall) -> None:
        """Fail ``call`` if its first message does not come within the response timeout.
        A loop timer armed and cancelled per request would cost more than the rest of
        the routing: the deadline joins a table, in deadline order (every entry has the
        same timeout), that one sweep timer checks every quarter of the timeout (at most
        1 s), so a timeout fires up to that much late."""
        call.watched = True
        self.waiting[call] = time.monotonic() + self.response_timeout
        if self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().call_later(sweep_every(self.response_timeout), self._sweep)

    def _sweep(self) -> None:
        self.sweeper = None
        for call in take_overdue(self.waiting, time.monotonic()):
            call._timed_out()
        if self.waiting:
            self.sweeper = asyncio.get_running_loop().call_later(sweep_every(self.response_timeout), self._sweep)

    def _flush_soon(self, child: _Child) -> None:
        """``child`` has lines to send: at the end of this loop iteration."""
        if not self.unflushed:
            asyncio.get_running_loop().call_soon(self._flush)
        self.unflushed.append(child)

    def _flush(self) -> None:
        children, self.unflushed = self.unflushed, []
        for child in children:
            child.flush()

    async def _request(self, child: _Child, body: bytes, env, on_message, calls, sid: str | None = None) -> Reply:
        """A request of the gateway's own (in session ``sid``), and its response."""
        fut = asyncio.get_running_loop().create_future()
        call = StdioCall(self, _Collect(fut, on_message), None, sid)
        call.whole = calls is None  # control traffic: the whole answer is bounded
        self._route(call, child, body, env, True)
        return await collected(call, fut, calls)

    def _route(self, call: StdioCall, child: _Child, body: bytes, env, own: bool) -> None:
        """Write ``body`` (scanned: ``env``) to ``child``, remapping what must be, and
        note a request in flight."""
        call.child = child
        kind = env.kind
        if kind == KIND_REQUEST:
            key = _key(env.id, env.id_span, body)
            edits = []
            if self.shared:
                call.client_key = key
                wire = child.new_wire()
                s, e = env.id_span
                call.orig_id = body[s:e]
                edits.append((s, e, b"%d" % wire))
                key = wire
            elif key in child.inflight or key in child.late:
                if not own:
                    msg = f"request id {env.id if env.id is not None else key!r} is already in flight in this session"
                    self._later(call.answer, 200, jsonrpc_error_body(INVALID_REQUEST, msg, env.id))
                    return
                while True:  # a gateway id never collides with a client's: pick another
                    key = f"mcpfast-{child.new_wire()}"
                    if key not in child.inflight and key not in child.late:
                        break
                s, e = env.id_span
                call.orig_id = body[s:e]
                edits.append((s, e, orjson.dumps(key)))
            span = env.progress_token_span
            if span is not None:
                if self.shared:
                    token = child.new_wire()
                    call.orig_token = body[span[0] : span[1]]
                    edits.append((span[0], span[1], b"%d" % token))
                else:
                    token = _key(env.progress_token, span, body)
                call.token_key = token
                child.tokens[token] = call
            if edits:
                body = splice_many(body, edits) if len(edits) > 1 else splice(body, *edits[0])
            call.key = key
            child.inflight[key] = call
            t = self.response_timeout
            if t:
                if call.whole:
                    call.timer = asyncio.get_running_loop().call_later(t, call._timed_out)
                else:
                    self._watch(call)
            why = child.write(body)
            if why is not None:
                self._later(call.fail, UpstreamError("upstream_unavailable", f"backend {self.name}: {why}", 503))
            return
        if self.shared:
            body = self._shared_message(child, body, env, call.sid)
            if body is None:
                self._later(call.answer, 202)
                return
        why = child.write(body)
        if why is not None:
            self._later(call.fail, UpstreamError("upstream_unavailable", f"backend {self.name}: {why}", 503))
            return
        self._later(call.answer, 202)

    def _cancelled_call(self, child: _Child, body: bytes, env, sid: str | None) -> StdioCall | None:
        """The call in flight of session ``sid`` that a ``notifications/cancelled`` names
        (by the id its client gave it); None if there is none."""
        if env.request_id_span is None or sid is None:
            return None
        ckey = _key(env.request_id, env.request_id_span, body)
        if self.shared:
            for c in child.inflight.values():
                if c.client_key == ckey and c.sid == sid:
                    return c
            return None
        return child.inflight.get(ckey)

    def _shared_message(self, child: _Child, body: bytes, env, sid: str | None) -> bytes | None:
        """A notification or response of session ``sid`` for the shared child: what to
        write (ids mapped to the wire), or None when it must not reach the child."""
        method = env.method
        if method == "notifications/initialized":
            return None  # the child had its one
        if method == "notifications/cancelled" and env.request_id_span is not None:
            c = self._cancelled_call(child, body, env, sid)
            if c is not None:
                s, e = env.request_id_span
                return splice(body, s, e, b"%d" % c.key)
            log.debug("backend %s: cancellation of no request of this session dropped", self.name)
            return None
        if env.kind == KIND_RESPONSE or env.kind == KIND_ERROR:
            # An answer to a request of the child's: only the session it was handed to
            # may give it.
            rkey = _key(env.id, env.id_span, body)
            if sid is None or child.asked.get(rkey) != sid:
                log.debug("backend %s: an answer to a request not asked of this session dropped", self.name)
                return None
            del child.asked[rkey]
        return body

    # --- reading ----------------------------------------------------------------------------------
    def _stdout(self, child: _Child, data: bytes) -> None:
        if child.framing_lost:
            return  # read and dropped, so that the child is not stuck on a full pipe
        try:
            lines = child.framer.feed(data)
        except ProtocolError:
            child.framing_lost = True
            why = f"process {child.pid} wrote a line longer than {self.max_line} bytes"
            log.error("backend %s: %s; stopping it", self.name, why)
            self._fail_calls(child, UpstreamError("upstream_protocol", f"backend {self.name}: {why}", 502))
            self._stop_later(child, "it lost its line framing")
            return
        self._lines(child, lines)

    def _lines(self, child: _Child, lines: list) -> None:
        touched: list[StdioCall] = []
        for line in lines:
            try:
                self._line(child, line, touched)
            except Exception:
                log.exception("backend %s: a message of process %d could not be handled", self.name, child.pid)
        for call in touched:
            call.flush()

    def _line(self, child: _Child, line: bytes, touched: list) -> None:
        try:
            env = scan_jsonrpc(line)
        except ProtocolError as exc:
            env = exc
        if type(env) is list or isinstance(env, ProtocolError):
            shown = _printable(line[:_SHOWN]) + ("..." if len(line) > _SHOWN else "")
            log.warning("backend %s[%d]: dropped a line that is not a JSON-RPC message: %s", self.name, child.pid, shown)
            return
        child.last_used = time.monotonic()
        kind = env.kind
        if kind == KIND_RESPONSE or kind == KIND_ERROR:
            key = _key(env.id, env.id_span, line)
            call = child.inflight.pop(key, None) if key is not None else None
            if call is None:
                if key in child.late:  # a late answer: its id is free from now on
                    del child.late[key]
                    log.debug("backend %s[%d]: late response to a request given up dropped", self.name, child.pid)
                else:
                    log.debug("backend %s[%d]: response to no request in flight dropped", self.name, child.pid)
                return
            if call.token_key is not None and child.tokens.get(call.token_key) is call:
                del child.tokens[call.token_key]
            if call.orig_id is not None:
                line = splice(line, env.id_span[0], env.id_span[1], call.orig_id)
            self._deliver(call, line, True, touched)
            return
        if env.method == "notifications/progress":
            call, line = self._progress(child, line)
            if call is not None:
                self._deliver(call, line, False, touched)
                return
            if self.shared:
                log.debug("backend %s: progress for no call in flight dropped", self.name)
                return
        self._attribute(child, line, env, touched)

    def _progress(self, child: _Child, line: bytes):
        """The call a progress notification belongs to, and the line with the caller's
        token put back."""
        try:
            msg = orjson.loads(line)
            token = msg["params"]["progressToken"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None, line
        call = child.tokens.get(_json_key(token))
        if call is None or not call.taking():
            return None, line
        if call.orig_token is not None:
            msg["params"]["progressToken"] = orjson.loads(call.orig_token)
            line = orjson.dumps(msg)
        return call, line

    def _attribute(self, child: _Child, line: bytes, env, touched: list) -> None:
        """A notification or server→client request not tied to a call by id or token."""
        calls = child.live_calls()
        if len(calls) == 1:
            if self.shared and env.kind == KIND_REQUEST:
                asked = child.asked
                asked[_key(env.id, env.id_span, line)] = calls[0].sid
                while len(asked) > _MAX_ASKED:
                    del asked[next(iter(asked))]  # never answered: forgotten, oldest first
            self._deliver(calls[0], line, False, touched)
            return
        if self.shared:
            if _for_everyone(env.method):
                for call in list(self.listeners):
                    self._deliver(call, line, False, touched)
                return
            log.debug("backend %s: %s not attributable to one session, dropped", self.name, env.method)
            self._refuse(child, line, env, "it names no client session and several are in flight")
            return
        for call in reversed(child.listeners):
            if not call.done:
                self._deliver(call, line, False, touched)
                return
        if calls:
            self._deliver(calls[-1], line, False, touched)
            return
        log.debug("backend %s[%d]: %s with no call or stream to take it, dropped", self.name, child.pid, env.method)
        self._refuse(child, line, env, "no client is listening")

    def _refuse(self, child: _Child, line: bytes, env, why: str) -> None:
        """A request of the child's that no client will see is answered at once with an
        error, so the child does not wait for an answer that cannot come (its tool then
        fails fast instead of at its own timeout)."""
        if env.kind != KIND_REQUEST or env.id_span is None:
            return
        s, e = env.id_span
        msg = f"mcpfast: {env.method} could not be passed to a client: {why}"
        child.write(jsonrpc_error_body(INTERNAL_ERROR, msg, orjson.loads(line[s:e])))

    @staticmethod
    def _deliver(call: StdioCall, line: bytes, final: bool, touched: list) -> None:
        if not call.touched and not call.done:  # (an orphan's answer is only recorded)
            call.touched = True
            touched.append(call)
        call.deliver(line, final)

    # --- processes ----------------------------------------------------------------------------------
    def _program(self) -> str | None:
        """The command as an absolute path, found as the start-up check finds it
        (``preflight``): a bare name on PATH (the one the backend's ``env`` sets, else
        the gateway's), a relative path from the child's working directory."""
        cfg = self.cfg
        cmd = cfg.command
        if os.sep in cmd:
            path = os.path.abspath(os.path.join(cfg.cwd or os.getcwd(), cmd))
            return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
        search = dict(cfg.env).get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(cmd, path=search)
        return os.path.abspath(found) if found is not None else None

    def _environment(self) -> dict[str, str]:
        cfg = self.cfg
        if cfg.inherit_env:
            env = dict(os.environ)
        else:
            env = {k: os.environ[k] for k in cfg.env_passthrough if k in os.environ}
        env.update(cfg.env)
        return env

    def _victims(self) -> list[_Child]:
        """Children that may be evicted to make room: those with no call in flight, the
        ones nobody listens to first, each kind least recently used first."""
        if self.shared:
            return []
        idle = [c for c in self.children if not c.stopping and c.pid and not c.working()]
        idle.sort(key=lambda c: (bool(c.listeners), c.last_used))
        return idle

    async def _make_room(self) -> None:
        while len(self.children) >= self.cfg.max_processes:
            victims = self._victims()
            if victims:
                victim = victims[0]
                await self._stop(victim, "evicted to make room for a new session")
                continue
            stopping = [c for c in self.children if c.stopping]
            if stopping:
                await asyncio.shield(stopping[0].done_fut)
                continue
            raise UpstreamError(
                "upstream_unavailable", f"backend {self.name}: all {self.cfg.max_processes} processes are busy", 503
            )

    def _spawn_wait(self) -> float:
        """Take a token from the spawn bucket; how long to wait before spawning."""
        now = time.monotonic()
        rate = self.cfg.spawn_rate
        self.bucket = min(float(self.cfg.max_processes), self.bucket + (now - self.bucket_at) * rate)
        self.bucket_at = now
        self.bucket -= 1.0
        if self.bucket >= 0:
            return 0.0
        wait = -self.bucket / rate
        if wait > _RATE_WAIT:
            self.bucket += 1.0
            raise UpstreamError(
                "upstream_unavailable", f"backend {self.name}: too many process starts, retry in {wait:.1f}s", 503
            )
        return wait

    def _check_backoff(self) -> None:
        wait = self.backoff_until - time.monotonic()
        if wait > 0:
            raise UpstreamError(
                "upstream_unavailable",
                f"backend {self.name}: its process keeps exiting at start; next start in {wait:.1f}s",
                503,
            )

    async def _spawn(self, sid: str | None) -> _Child:
        if self.closed:
            raise UpstreamError("upstream_unavailable", f"backend {self.name}: the gateway is stopping", 503)
        program = self._program()
        if program is None:
            raise UpstreamError("upstream_unavailable", f"backend {self.name}: command {self.cfg.command!r} not found", 503)
        self._check_backoff()
        wait = self._spawn_wait()
        t0 = time.monotonic()
        try:
            await self._make_room()
        except BaseException:
            self.bucket += 1.0  # no start after all: the token goes back
            raise
        if sid is None:
            self.serial += 1
            sid = f"{instance_id()}.{self.serial}"
        child = _Child(self, sid)
        self.children.append(child)  # counted from now on
        self.launching += 1
        try:
            return await self._launch(child, program, wait - (time.monotonic() - t0))
        finally:
            self.launching -= 1

    async def _launch(self, child: _Child, program: str, wait: float) -> _Child:
        """Start ``child`` (``wait``: seconds the spawn rate still asks for first)."""
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            self._check_backoff()
            cfg = self.cfg
            await asyncio.get_running_loop().subprocess_exec(
                lambda: child,
                program,
                *cfg.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._environment(),
                cwd=cfg.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self._forget(child)
            self._crashed(0.0)
            raise UpstreamError(
                "upstream_unavailable", f"backend {self.name}: cannot start {program}: {exc.strerror or exc}", 503
            ) from None
        except BaseException:
            self._forget(child)
            raise
        child.started = child.last_used = time.monotonic()
        log.info("backend %s: process %d started (%s)", self.name, child.pid, program)
        if child.stopping:  # stopped (gateway stop, reload) while it was being started
            child.stopping = False
            await self._stop(child, "the gateway is stopping")
            raise UpstreamError("upstream_unavailable", f"backend {self.name}: the gateway is stopping", 503)
        self._arm_reaper()
        return child

    def _forget(self, child: _Child) -> None:
        if child in self.children:
            self.children.remove(child)
        if self.sessions.get(child.sid) is child:
            del self.sessions[child.sid]
        if self.shared_child is child:
            self.shared_child = None

    def _crashed(self, life: float) -> None:
        if life < _SHORT_LIFE:
            self.backoff = min(max(self.backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
            self.backoff_until = time.monotonic() + self.backoff
        elif life >= _STABLE_LIFE:
            self.backoff = 0.0

    def _child_gone(self, child: _Child) -> None:
        """The child exited and its output is read (or given up on)."""
        self._forget(child)
        rc = child.rc
        life = time.monotonic() - child.started
        if child.stopping:
            log.info("backend %s: process %d exited (status %s)", self.name, child.pid, rc)
            err = UpstreamError("upstream_unavailable", f"backend {self.name}: process {child.pid} was stopped", 502)
        else:
            self._crashed(life)
            log.warning("backend %s: process %d exited (status %s) after %.1fs", self.name, child.pid, rc, life)
            err = UpstreamError("upstream_unavailable", f"backend {self.name}: process {child.pid} exited (status {rc})", 502)
        if life >= _STABLE_LIFE:
            self.backoff = 0.0
        if child.err_buf and not child.err_skip:  # a last stderr line without its LF
            child._err_line(bytes(child.err_buf), False)
            child.err_buf.clear()
        child._err_dropped()
        # What is left of its process group (grandchildren) goes with it.
        child.signal_group(signal.SIGKILL)
        self._fail_calls(child, err)
        for call in list(child.listeners):
            call.end()
        child.listeners.clear()
        if child.transport is not None:
            child.transport.close()
        if not child.done_fut.done():
            child.done_fut.set_result(None)

    def _fail_calls(self, child: _Child, err: UpstreamError) -> None:
        calls = list(child.inflight.values())
        child.inflight.clear()
        child.tokens.clear()
        for call in calls:
            call.fail(err)

    async def _stop(self, child: _Child, why: str) -> None:
        """Stop ``child``: stdin closed, then SIGTERM, then SIGKILL to its group, each
        after ``shutdown_grace``; returns once it is reaped."""
        if child.stopping or child.gone:
            await asyncio.shield(child.done_fut)
            return
        child.stopping = True
        if not child.pid:  # still being started: _spawn stops it as soon as it runs
            self._forget(child)
            return
        if self.sessions.get(child.sid) is child:
            del self.sessions[child.sid]  # no new calls reach it
        log.info("backend %s: stopping process %d (%s)", self.name, child.pid, why)
        grace = self.cfg.shutdown_grace
        if child.stdin is not None:
            child.flush()  # what was written before the stop still reaches it
            child.stdin.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                await asyncio.wait_for(asyncio.shield(child.done_fut), grace)
                return
            except asyncio.TimeoutError:
                pass
            log.info("backend %s: process %d still running, sending %s to its group", self.name, child.pid, sig.name)
            child.signal_group(sig)
        try:
            await asyncio.wait_for(asyncio.shield(child.done_fut), _KILL_WAIT)
        except asyncio.TimeoutError:
            log.error("backend %s: process %d did not exit after SIGKILL", self.name, child.pid)
            child.finish()

    def _stop_later(self, child: _Child, why: str) -> None:
        self._task(self._stop(child, why))

    # --- timers and tasks -----------------------------------------------------------------------------
    def _arm_reaper(self) -> None:
        idle = self.cfg.idle_timeout
        if self.reaper is not None or self.shared or not idle or self.closed:
            return
        self.reaper = asyncio.get_running_loop().call_later(min(max(idle / 4, 0.05), 5.0), self._reap)

    def _reap(self) -> None:
        self.reaper = None
        now = time.monotonic()
        idle = self.cfg.idle_timeout
        for child in list(self.children):
            if child.pid and not child.stopping and not child.busy() and now - child.last_used >= idle:
                self._stop_later(child, f"idle for {idle:g}s")
        if self.children:
            self._arm_reaper()

    def _later(self, fn, *args) -> None:
        asyncio.get_running_loop().call_soon(fn, *args)

    def _task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
