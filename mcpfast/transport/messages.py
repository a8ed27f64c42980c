"""The answer of a message-level backend (stdio, legacy HTTP+SSE), as a route sees it.

Theory of operation.  A terminating route's handlers (``mux/virtual.py``) take a backend's
answer in the shape an HTTP call delivers it (``http_mcp.Call``): ``on_head``, then the
body (``on_body``) or its events (``on_event``), ``on_flush`` after each batch, and
``on_end`` or ``on_error``.  A message-level backend receives parsed messages instead,
and ``MessageCall`` turns them into that shape, the same way for every such transport:

* the first message decides the answer's form: the response alone is a JSON answer
  (``application/json`` with its length; the body through ``on_body`` when the handler
  streams, else at ``on_end``); anything before the response makes an event stream
  (``text/event-stream``, one ``on_event`` per message, the response last);
* ``answer(status, body)`` is an answer made by the gateway, not the backend (202 for a
  notification, 404 for a forgotten session, a JSON-RPC error);
* ``end()`` finishes a streamed answer or a listen stream, ``fail(err)`` gives up with an
  ``UpstreamError``; after either nothing more is delivered;
* a handler that raises is logged and the call given up (never the stream or child it
  came from).

A transport subclasses it for what is its own: how it is paused, what ``_first`` stops
waiting for (a timer), what ``_release`` leaves (its in-flight tables) and what
``_orphan`` keeps when the client goes but the answer is still recorded.

Resumable answers.  A message-level backend's messages carry no event ids, so the gateway
numbers them itself when the client can resume (``send(..., resumable=True)``: a client
of 2025-11-25 or later that accepts an event stream).  Such an answer is an event stream
from the start: a priming event (an id, ``retry:``, empty data) goes out at once, then
every message with an id, recorded in the backend's ``Replay``.  The call no longer
ends with its client: a client that loses its connection -- or is sent away by
``poll_after``, which closes a long answer's stream so that no connection is held while a
tool works -- comes back with ``GET`` and ``Last-Event-ID``; ``listen`` with that
position replays what the client missed from the record and then follows it to the
response.  A backend failure after the priming event ends the record with a JSON-RPC
error for the request, so a client always gets an answer to resume.  Records are bounded
in bytes per backend (oldest first out) and kept ``_KEEP`` seconds after their response;
an id names its session, so one client session can never read another's record.

A request given up while its backend may still answer it (timed out, or its client left)
keeps its id taken in a table of its own (``keep_late``): a later request reusing the id
is refused until the late answer comes and is dropped, so that answer can never be
handed to the newer request.  The table is bounded (``MAX_LATE_IDS``, oldest forgotten
first), and it does not count against the requests in flight: a backend that never
answers what it was sent does not wedge the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson

from ..wire.rpcerrors import INTERNAL_ERROR, jsonrpc_error_body
from .base import Message, answer_head, instance_id
from .http_mcp import Call, CallHandler
from .pool import UpstreamError

__all__ = ["AnswerRecord", "MAX_LATE_IDS", "MessageCall", "Replay", "RETRY_MS", "keep_late"]

log = logging.getLogger("mcpfast.transport")

_JSON = b"application/json"
_SSE = b"text/event-stream"
MAX_LATE_IDS = 1024  # ids of given-up requests kept per session (or child), at most


def keep_late(table: dict, key) -> None:
    """Note ``key``, the id of a request given up before its answer, in ``table``."""
    table[key] = None
    if len(table) > MAX_LATE_IDS:
        del table[next(iter(table))]  # the oldest: its answer most likely never comes

#: The ``retry:`` of a priming event: how long a client waits before it resumes (ms).
RETRY_MS = 1000
_KEEP = 30.0  # seconds an answer stays resumable after its response
# Bytes counted besides a message's data, as CPython allocates them: per recorded
# message (its object, its id, its bytes' header) and per record (its object, key,
# list and table entries).
_EVENT_COST = 160
_RECORD_COST = 640


class AnswerRecord:
    """The messages of one resumable answer so far, numbered from 1 (the priming event
    is 0); the oldest may have been dropped for room.  ``reader``: the resumed stream
    following it now, if any."""

    __slots__ = ("key", "sid", "rid", "events", "next", "size", "finished", "ended_at", "reader", "replay", "kept")

    def __init__(self, replay: "Replay", key: bytes, sid, rid: bytes | None) -> None:
        self.replay = replay
        self.key = key  # b"<instance>.<n>": the ids are key + b"." + index
        self.sid = sid  # the backend session it belongs to
        self.rid = rid  # the request's id as the client wrote it (JSON)
        # The newest ones, up to index next - 1.  A list, not a deque: an empty deque
        # alone takes more memory than a short answer, and most answers are short.
        self.events: list[Message] = []
        self.next = 1  # the index of the next message
        self.size = _RECORD_COST
        self.finished = False
        self.ended_at = 0.0
        self.reader: MessageCall | None = None
        self.kept = True  # still in the replay's tables (and its byte counts)

    @property
    def first(self) -> int:
        """The index of the oldest message kept."""
        return self.next - len(self.events)

    def event_id(self, index: int) -> bytes:
        return b"%s.%d" % (self.key, index)

    def priming(self) -> Message:
        m = Message(b"")
        m.id = self.event_id(0)
        m.retry = RETRY_MS
        return m

    def append(self, data: bytes, final: bool) -> Message | None:
        """Record one message (``final``: the response); None once finished."""
        if self.finished:
            return None
        m = Message(data)
        m.id = self.event_id(self.next)
        self.next += 1
        if final:
            self.finished = True
            self.ended_at = time.monotonic()
        if self.kept:  # one dropped for room is only passed on to its reader
            self.events.append(m)
            self.replay.grew(self, len(data) + _EVENT_COST)
        r = self.reader
        if r is not None:
            if r.done:
                self.reader = None
            else:
                r.follow(m, self.next - 1, final)
        return m

    def since(self, index: int) -> list[Message] | None:
        """The messages after ``index``, or None when some of them were dropped."""
        first = self.first
        if index < first - 1:
            return None
        return self.events[index + 1 - first :]

    def error_body(self, err: UpstreamError) -> bytes:
        rid = orjson.loads(self.rid) if self.rid is not None else None
        return jsonrpc_error_body(INTERNAL_ERROR, str(err), rid)


class Replay:
    """The resumable answers of one backend: at most ``budget`` bytes over all its
    sessions, the oldest answer dropped first; at most an eighth of it per session (the
    session's own oldest answers go first, so one client cannot push the others' out)
    and per answer (its oldest messages go first); a finished answer is dropped
    ``_KEEP`` s after its response."""

    __slots__ = ("budget", "share", "records", "sessions", "size", "count", "count_error")

    def __init__(self, budget: int, count_error=None) -> None:
        self.budget = budget
        self.share = max(budget // 8, _RECORD_COST + _EVENT_COST)
        # Counts a failure that ends a recorded answer (the route never sees it as one).
        self.count_error = count_error
        self.records: OrderedDict[bytes, AnswerRecord] = OrderedDict()  # oldest first
        self.sessions: dict[Any, list] = {}  # sid -> [bytes, OrderedDict of its records]
        self.size = 0
        self.count = 0

    def open(self, sid, rid: bytes | None) -> AnswerRecord:
        self._expire()
        self.count += 1
        rec = AnswerRecord(self, b"%s.%d" % (instance_id().encode(), self.count), sid, rid)
        self.records[rec.key] = rec
        held = self.sessions.get(sid)
        if held is None:
            held = self.sessions[sid] = [0, OrderedDict()]
        held[1][rec.key] = rec
        self.size += rec.size
        held[0] += rec.size
        self._shrink(rec, held)
        return rec

    def grew(self, rec: AnswerRecord, n: int) -> None:
        """``rec`` (kept) took ``n`` more bytes."""
        held = self.sessions[rec.sid]
        rec.size += n
        self.size += n
        held[0] += n
        events = rec.events
        if rec.size > self.share and len(events) > 1:
            # The oldest messages go, down to three quarters of the share at once (so a
            # long answer does not move its whole list for every message it adds).
            goal = self.share - self.share // 4
            k = freed = 0
            while rec.size - freed > goal and k < len(events) - 1:
                freed += len(events[k].data) + _EVENT_COST
                k += 1
            del events[:k]
            rec.size -= freed
            self.size -= freed
            held[0] -= freed
        self._shrink(rec, held)

    def _shrink(self, rec: AnswerRecord, held: list) -> None:
        mine = held[1]
        while held[0] > self.share and len(mine) > 1:
            old = next(iter(mine.values()))
            if old is rec:
                break
            self._drop(old)
        while self.size > self.budget and len(self.records) > 1:
            self._drop(next(iter(self.records.values())))

    def _drop(self, rec: AnswerRecord) -> None:
        del self.records[rec.key]
        held = self.sessions[rec.sid]
        del held[1][rec.key]
        held[0] -= rec.size
        if not held[1]:
            del self.sessions[rec.sid]
        self.size -= rec.size
        rec.kept = False
        rec.events.clear()

    def _expire(self) -> None:
        limit = time.monotonic() - _KEEP
        while self.records:
            rec = next(iter(self.records.values()))
            if not rec.finished or rec.ended_at > limit:
                return
            self._drop(rec)

    def find(self, sid, position) -> tuple[AnswerRecord, int] | None:
        """The record and index a client's ``Last-Event-ID`` names in session ``sid``,
        or None (not one of ours, another session's, or gone)."""
        key, _, index = bytes(position).rpartition(b".")
        rec = self.records.get(key)
        if rec is None or rec.sid != sid or not index.isdigit() or len(index) > 12:
            return None
        if rec.finished and rec.ended_at <= time.monotonic() - _KEEP:
            # Expired (the sweep in ``open`` stops at the oldest answer still running).
            self._drop(rec)
            return None
        k = int(index)
        if k < rec.first - 1 or k >= rec.next:
            return None  # dropped for room, or not sent yet
        return rec, k

    def forget(self, sid) -> None:
        """Session ``sid`` ended: its records go."""
        held = self.sessions.get(sid)
        if held is not None:
            for rec in list(held[1].values()):
                self._drop(rec)


class MessageCall(Call):
    """One answer of a message-level backend, delivered to ``handler`` as an HTTP
    answer is (the compiled handlers take a ``Call``)."""

    __slots__ = ("backend_name", "record", "poll", "pos")

    def __init__(self, handler: CallHandler, backend_name: str) -> None:
        # The base initializer prepares an HTTP exchange: nothing of it applies here.
        # Every attribute a handler or the base class reads is set.
        self.handler = handler
        self.backend_name = backend_name
        self.record: AnswerRecord | None = None  # a resumable answer's (or the one a resumed stream follows)
        self.poll: asyncio.TimerHandle | None = None  # poll_after
        self.pos = 0  # a resumed stream: the index of the last message it delivered
        self.link = None
        self.data = None
        self.conn = None
        self.sse = None
        self.buf = None
        self.size = 0
        self.retried = False
        self.watched = False
        self.timeout = None
        self.head = None
        self.status = 0
        self.queued = None
        self.paused = False
        self.stream = False
        self.events = False
        self.plain = False
        self.done = False
        self.whole = False
        self.timer = None
        self.listen = False

    # --- what a transport adds --------------------------------------------------------
    def _first(self) -> None:
        """The first message of the answer arrived (a wait for it may end)."""

    def _release(self) -> None:
        """Nothing more will be delivered: timers off, tables left."""

    def _orphan(self) -> None:
        """The client is gone but the answer is still recorded: what only served the
        client (a pause held for it) goes; the tables and the deadline stay."""

    def start(self, now: float = 0.0) -> "MessageCall":
        return self  # the work began when the backend made the call

    # --- deliveries -------------------------------------------------------------------
    def _guard(self, method, *args) -> bool:
        """Call a handler method; one that raises is logged and the call given up.  False
        when it raised."""
        try:
            method(self, *args)
            return True
        except Exception as exc:
            log.exception("backend %s: handler failed", self.backend_name)
            if not self.done:
                self.fail(UpstreamError("gateway_error", f"internal error: {exc}"))
            return False

    def _begin(self, head) -> bool:
        """Deliver the answer's head; False when the handler failed or the client left."""
        self.head = head
        self.status = head.status
        return self._guard(self.handler.on_head, head) and not self.done

    def deliver(self, data: bytes, final: bool) -> None:
        """One message of the answer (``final``: its response)."""
        rec = self.record
        if rec is not None and not self.listen:
            msg = rec.append(data, final)
            if msg is None:
                return
            if rec.next == 2:
                self._first()  # the backend's first message (the priming one was ours)
            if self.done:
                if final:
                    self._release()  # an orphan's answer is complete
                return
        elif self.done:
            return
        else:
            msg = None
        if self.head is None:
            self._first()
            if final and not self.listen and rec is None:
                self.answer(200, data)  # the response came first: a JSON answer
                return
            if not self.begin_stream():
                return
        if self._guard(self.handler.on_event, msg if msg is not None else Message(data)) and final:
            self.end()

    # --- resumable answers ------------------------------------------------------------------
    def resumable(self, replay: Replay, sid, rid: bytes | None, poll_after: float) -> None:
        """Make this routed request's answer resumable (see the module docstring): the
        priming event goes out from the loop, right after ``send`` returns."""
        self.record = replay.open(sid, rid)
        asyncio.get_running_loop().call_soon(self._prime, poll_after)

    def _prime(self, poll_after: float) -> None:
        if self.done or self.head is not None:
            return  # answered already (a refusal), or the client left
        if not self.begin_stream():
            return
        if self._guard(self.handler.on_event, self.record.priming()):
            self.queued = True
            self._arm_poll(poll_after)
            self.flush()

    def _arm_poll(self, poll_after: float) -> None:
        if poll_after > 0 and not self.done:
            self.poll = asyncio.get_running_loop().call_later(poll_after, self._poll_now)

    def _poll_now(self) -> None:
        """``poll_after`` passed: the client's stream ends here, the answer goes on being
        recorded, and the client resumes it with ``Last-Event-ID``."""
        self.poll = None
        if self.done:
            return
        rec = self.record
        if rec is not None and not rec.kept:
            return  # dropped for room: a client sent away could only be refused, so it stays
        self.done = True
        self._orphan()
        self._guard(self.handler.on_end, None)

    def taking(self) -> bool:
        """Does the answer still take messages: for its client, or recorded for a
        client that will resume it (a record dropped for room, or of a session that
        ended, takes them only while a resumed stream follows it)?"""
        if not self.done:
            return True
        rec = self.record
        return rec is not None and not self.listen and not rec.finished and (rec.kept or rec.reader is not None)

    def orphaned(self) -> bool:
        """The client left (``detach``): True when the answer is still recorded for it to
        resume, so the call keeps its place; False when it is simply dropped."""
        self._stop_poll()
        rec = self.record
        if rec is None or self.listen or rec.finished or not rec.kept:
            return False
        self._orphan()
        return True

    def cancelled(self) -> None:
        """The client cancelled this request: a server sends no response to a cancelled
        request, so the answer ends here -- its client's stream, or its record (and the
        resumed stream following it) when the client had left it to be resumed; one
        whose client left leaves the transport's tables, as no response will free it."""
        if not self.done:
            self.end()
            return
        if self.taking():
            self._close_record()
        self._release()

    def _stop_poll(self) -> None:
        p = self.poll
        if p is not None:
            self.poll = None
            p.cancel()

    def resume(self, replay: Replay | None, sid, position) -> None:
        """This ``listen`` call asks for the rest of the answer ``position`` names in
        session ``sid``: replayed from the loop, or 400 when there is none to resume (gone
        after ``_KEEP`` s or for room, never this session's, or no ``replay`` at all)."""
        found = replay.find(sid, position) if replay is not None else None
        loop = asyncio.get_running_loop()
        if found is None:
            loop.call_soon(self._refuse_resumption)
        else:
            loop.call_soon(self.replay_from, found[0], found[1])

    def _refuse_resumption(self) -> None:
        self.answer(400)
        self.flush()

    def replay_from(self, rec: AnswerRecord, index: int) -> None:
        """A resumed stream (a ``listen`` call): what the client missed after ``index``,
        then the record as it grows, to its response (not cut by ``poll_after``: the
        client came back for the rest, and a stream it would have to resume again
        with nothing new would only cost it a round trip).  While its client does not
        read, the record is its buffer: it catches up when the client reads again."""
        if self.done:
            return
        if not self.begin_stream():
            return
        old = rec.reader
        if old is not None and old is not self:
            old.end()  # a newer resumption takes over
            old.flush()
        self.record = rec
        self.pos = index
        rec.reader = self
        self.catch_up()

    def catch_up(self) -> None:
        """A resumed stream delivers what its record holds beyond ``pos``; it ends with
        the response, or when what it would need next was dropped for room (the client
        then learns, resuming, that the rest is gone)."""
        rec = self.record
        if self.done or self.paused or rec is None:
            return
        missed = rec.since(self.pos)
        if missed is None:
            self.end()
        else:
            for m in missed:
                self.pos += 1
                if not self._guard(self.handler.on_event, m):
                    return
            if rec.finished and self.pos == rec.next - 1:
                self.end()
            else:
                self.queued = True
        self.flush()

    def follow(self, m: Message, index: int, final: bool) -> None:
        """Message ``index`` of the record this resumed stream follows (the record
        keeps it for later while the client is not reading)."""
        if self.paused or index != self.pos + 1:
            return
        self.pos = index
        if self._guard(self.handler.on_event, m):
            if final:
                self.end()
            else:
                self.queued = True
        self.flush()

    def begin_stream(self) -> bool:
        """Start an event stream answer (or a listen stream); False when the handler
        failed or the client left."""
        self.events = True
        return self._begin(answer_head(200, _SSE))

    def answer(self, status: int, body: bytes | None = None) -> None:
        """A whole answer: ``status`` with a JSON ``body``, or without one."""
        if self.done:
            return
        head = answer_head(status, None, 0) if body is None else answer_head(status, _JSON, len(body))
        if not self._begin(head):
            return
        if self.stream:
            if body and not self._guard(self.handler.on_body, body):
                return
            body = None
        self._finish(body)

    def end(self) -> None:
        """The answer is complete: a streamed one, or a listen stream."""
        if self.done:
            return
        if self.head is None and not self.begin_stream():
            return
        self._finish(None)

    def _finish(self, body) -> None:
        self.done = True
        self._stop_poll()
        self._close_record()
        self._release()
        self._guard(self.handler.on_end, body)

    def _close_record(self) -> None:
        """No more messages: a resumed stream stops following its record; a record
        that got no response (a refusal, a cancellation) is complete as it is."""
        rec = self.record
        if rec is None:
            return
        if self.listen:
            if rec.reader is self:
                rec.reader = None
        elif not rec.finished:
            rec.finished = True
            rec.ended_at = time.monotonic()
            r = rec.reader
            if r is not None:
                rec.reader = None
                r.end()
                r.flush()

    def fail(self, err: UpstreamError) -> None:
        rec = self.record
        if rec is not None and not self.listen and not rec.finished and (self.head is not None or self.done):
            # The client has the priming event (or left after it): the answer ends with
            # an error for its request, recorded like any other message.
            if rec.replay.count_error is not None:
                rec.replay.count_error(err.kind)
            self.deliver(rec.error_body(err), True)
            return
        if self.done:
            return
        self.done = True
        self._stop_poll()
        self._close_record()
        self._release()
        try:
            self.handler.on_error(self, err)
        except Exception:
            log.exception("backend %s: error handler failed", self.backend_name)

    # ``Call``'s own methods of these names reach an HTTP connection and pool, which a
    # message-level answer has none of.
    def _fail(self, err: UpstreamError) -> None:
        self.fail(err)

    def _abandon(self, err: UpstreamError) -> None:
        self.fail(err)

    def _handler_failed(self, exc: Exception) -> None:
        if not self.done:
            self.fail(UpstreamError("gateway_error", f"internal error: {exc}"))

    def _cancel_timer(self) -> None:
        t = self.timer
        if t is not None:
            self.timer = None
            t.cancel()

    def flush(self) -> None:
        """After a batch of deliveries: the handler writes what they produced."""
        if self.queued is not None:
            self.queued = None
            self._guard(self.handler.on_flush)
