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
waiting for (a timer), and what ``_release`` leaves (its in-flight tables).

A request given up while its backend may still answer it (timed out, or its client left)
keeps its id taken in a table of its own (``keep_late``): a later request reusing the id
is refused until the late answer comes and is dropped, so that answer can never be
handed to the newer request.  The table is bounded (``MAX_LATE_IDS``, oldest forgotten
first), and it does not count against the requests in flight: a backend that never
answers what it was sent does not wedge the session.
"""

from __future__ import annotations

import logging

from .base import Message, answer_head
from .http_mcp import Call, CallHandler
from .pool import UpstreamError

__all__ = ["MAX_LATE_IDS", "MessageCall", "keep_late"]

log = logging.getLogger("mcpfast.transport")

_JSON = b"application/json"
_SSE = b"text/event-stream"
MAX_LATE_IDS = 1024  # ids of given-up requests kept per session (or child), at most


def keep_late(table: dict, key) -> None:
    """Note ``key``, the id of a request given up before its answer, in ``table``."""
    table[key] = None
    if len(table) > MAX_LATE_IDS:
        del table[next(iter(table))]  # the oldest: its answer most likely never comes


class MessageCall(Call):
    """One answer of a message-level backend, delivered to ``handler`` as an HTTP
    answer is (the compiled handlers take a ``Call``)."""

    __slots__ = ("backend_name",)

    def __init__(self, handler: CallHandler, backend_name: str) -> None:
        # The base initializer prepares an HTTP exchange: nothing of it applies here.
        # Every attribute a handler or the base class reads is set.
        self.handler = handler
        self.backend_name = backend_name
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
        if self.done:
            return
        if self.head is None:
            self._first()
            if final and not self.listen:
                self.answer(200, data)  # the response came first: a JSON answer
                return
            if not self.begin_stream():
                return
        if self._guard(self.handler.on_event, Message(data)) and final:
            self.end()

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
        self._release()
        self._guard(self.handler.on_end, body)

    def fail(self, err: UpstreamError) -> None:
        if self.done:
            return
        self.done = True
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
