"""The client side: one ``asyncio.Protocol`` per client connection, speaking HTTP/1.1.

Theory of operation.  ``data_received`` feeds the compiled request parser; its callbacks
build an ``Exchange`` (head, then body chunks) and hand it to the application (the
gateway pipeline) once the body is complete.  Exchanges are answered strictly in order;
while an answer is being written, one more complete request may wait, and reading pauses
until it is started, so a client cannot make us buffer more than one request (plus the
rest of the read that brought it) behind the one being answered.  The connection owns
its timers as one deadline checked by the gateway's once-a-second tick: idle keep-alive,
header read, body read.  Upstream waits are the exchange's business.

Writing goes through ``send``/``send_many`` (one transport call each).  When the client's
socket buffer fills, ``pause_writing`` tells the exchange so it pauses its upstream, and
``resume_writing`` undoes it: a slow reader slows its backend instead of growing our
memory (CONVENTIONS §9).  A client that disconnects mid-answer is reported to the
exchange at once so the upstream stream is closed too.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from typing import Any

from ..wire.core import ProtocolError, RequestParser
from ..wire.rpcerrors import INVALID_REQUEST, PARSE_ERROR, SERVER_ERROR, jsonrpc_error_body, status_reason

__all__ = ["ClientProtocol", "status_reason", "jsonrpc_error_body"]

log = logging.getLogger("mcpfast.server")

# Connection states, for the deadline sweep.
IDLE, HEAD, BODY, BUSY, CLOSING = range(5)

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
# Complete requests that may wait while an answer is written; reading pauses at this many.
MAX_PIPELINE = 1
# A read larger than this is parsed in pieces of this size, so that parsing stops soon
# after the queue is full: one read can hold thousands of small requests, each far
# larger in memory as a parsed request than on the wire.  The rest waits, unparsed.
_FEED_SLICE = 16384
# Linux TCP states (tcpi_state, the first byte of TCP_INFO): the peer sent FIN, or RST.
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n%s"
)


# An asyncio protocol by its methods, not by inheritance: the build compiles this class
# as an extension type (server.pxd), which cannot derive from a Python class, and
# asyncio and uvloop only call the methods.
class ClientProtocol:
    __slots__ = (
        "gateway", "transport", "parser", "peer", "state", "deadline", "reading", "active", "queue",
        "closed", "write_paused", "read_paused", "keep_alive", "eof", "timeouts", "xff_peer",
        "held", "starting", "write_stalled",
    )  # fmt: skip

    # ``gateway``: the gateway that owns this listener (gateway.py imports this module).
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        lim = gateway.config.limits
        self.parser = RequestParser(
            self,
            max_header_bytes=lim.max_header_bytes,
            max_headers=lim.max_headers,
            max_target_bytes=lim.max_target_bytes,
            max_body_bytes=lim.max_body_bytes,
        )
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.timeouts = gateway.config.timeouts
        # The peer as an X-Forwarded-For element, made once per connection.
        self.xff_peer = b"-"
        self.state = IDLE
        self.deadline = 0.0
        self.reading: Any = None  # exchange whose request is being read
        self.active: Any = None  # exchange being answered
        self.queue: collections.deque = collections.deque()
        self.closed = False
        self.write_paused = False
        self.read_paused = False
        self.keep_alive = True
        self.eof = False  # the client half-closed: nothing more will arrive
        self.held = b""  # bytes read but not parsed while reading is paused
        self.starting = False  # exchange_done is starting queued exchanges
        self.write_stalled = 0.0  # when writing last paused (the client took nothing more)

    # --- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
            self.xff_peer = self.peer.encode()
        gw = self.gateway
        if len(gw.connections) >= gw.config.limits.max_connections:
            # Over the connection cap: refuse cheaply rather than degrade everyone.
            self._refuse("connection_limit", "too many connections")
            return
        if not gw.quota.connection_opened(self.peer):
            # One address holds its share already: refuse it alone, before reading a byte.
            self._refuse("address_connection_limit", "too many connections from this address")
            return
        gw.connections.add(self)
        gw.metrics.client_connections.inc()
        self.state = HEAD  # a fresh connection must send its head in time (slowloris)
        self.deadline = time.monotonic() + gw.config.timeouts.header_read

    def _refuse(self, kind: str, message: str) -> None:
        self.gateway.metrics.error(kind)
        body = jsonrpc_error_body(SERVER_ERROR, message)
        self.transport.write(_REFUSED % (len(body), body))
        self.transport.close()
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.state == IDLE:
            self.state = HEAD
            self.deadline = time.monotonic() + self.timeouts.header_read
        self._feed(data)

    def _feed(self, data) -> None:
        try:
            if len(data) <= _FEED_SLICE:
                self.parser.feed(data)
                return
            n = len(data)
            pos = 0
            while pos < n:
                if self.read_paused or self.closed:
                    # The queue is full: the rest is parsed when it drains.
                    if not self.closed:
                        self.held = data[pos:]
                    return
                self.parser.feed(data[pos : pos + _FEED_SLICE])
                pos += _FEED_SLICE
        except ProtocolError as exc:
            self.gateway.metrics.error("client_protocol")
            self.fail_request(exc.status, str(exc))

    def eof_received(self):
        self.eof = True
        try:
            self.parser.feed_eof()
        except ProtocolError:
            pass  # a half-sent request: nobody to answer
        active = self.active
        if active is not None and active.head.method == b"GET":
            # A server->client stream has no end of its own: a client that half-closes
            # has stopped listening.  End it now, and with it the backend stream and its
            # connection, rather than when the backend next writes.
            self.active = None
            self.queue.clear()
            self.keep_alive = False
            active.client_gone()
            self.close()
            return False
        # Keep the write side open while an answer is still being written (half-close);
        # exchange_done closes once the last one received is answered.
        return self.active is not None

    def connection_lost(self, exc) -> None:
        was_open = not self.closed
        self.closed = True
        self.state = CLOSING
        gw = self.gateway
        if self in gw.connections:
            gw.connections.discard(self)
            gw.quota.connection_closed(self.peer)
            gw.metrics.client_connections.dec()
        active, self.active = self.active, None
        self.queue.clear()
        self.reading = None
        if active is not None and was_open:
            active.client_gone()
        elif active is not None:
            active.client_gone()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_stalled = time.monotonic()
        if self.active is not None:
            self.active.pause_upstream()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.active.resume_upstream()

    # --- RequestParser handler --------------------------------------------------------
    def on_request(self, head) -> None:
        ex = self.gateway.new_exchange(self, head)
        self.reading = ex
        self.state = BODY
        self.deadline = ex.t0 + self.timeouts.body_read  # the exchange's start, same clock
        if head.expect_continue:
            # Answer early when the request is going to be refused anyway; otherwise
            # invite the body (RFC 9110 §10.1.1).
            early = self.gateway.early_refusal(ex)
            if early is not None:
                self.reading = None
                status, msg = early
                self.fail_request(status, msg)
                return
            if head.version == 11:
                self.transport.write(CONTINUE_100)

    def on_body(self, chunk) -> None:
        ex = self.reading
        if ex is not None:
            ex.chunks.append(chunk)

    def on_request_end(self, trailers) -> None:
        ex = self.reading
        self.reading = None
        if ex is None:
            return
        if self.active is None:
            self.active = ex
            self.state = BUSY
            ex.start()
        else:
            # Wait behind the answer being written; read no further until it starts.
            self.queue.append(ex)
            self.state = BUSY
            if len(self.queue) >= MAX_PIPELINE and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()

    # --- exchange lifecycle -----------------------------------------------------------
    def _start(self, ex) -> None:
        self.active = ex
        self.state = BUSY
        ex.start()

    def exchange_done(self, ex, keep_alive: bool) -> None:
        """Called by the exchange once its answer is completely written."""
        if self.active is not ex:
            return
        self.active = None
        if not keep_alive or not self.keep_alive or self.closed or (self.eof and not self.queue):
            self.close()
            return
        if self.starting:
            return  # called from _start below: the loop there starts the next one
        while self.queue:
            # A loop, not a call from each exchange's end: requests answered at once
            # (refusals) would otherwise nest one call per queued request.
            nxt = self.queue.popleft()
            resumed = self.read_paused and len(self.queue) < MAX_PIPELINE
            self.starting = True
            try:
                self._start(nxt)
            finally:
                self.starting = False
            if self.active is nxt:
                if resumed:
                    self._resume()
                if resumed and self.active is nxt and (self.reading is not None or self.parser.in_message):
                    # A request cut by the pause is held to a read deadline again, from now.
                    self.state = BODY if self.reading is not None else HEAD
                    self.deadline = time.monotonic() + self.timeouts.header_read
                return
            # Answered at once: its exchange_done has closed the connection if it was
            # to end, and left the next one to this loop.
            if self.closed:
                return
            if resumed:
                self._resume()
                if self.active is not None or self.closed:
                    return
        if self.closed or (self.eof and not self.queue):
            self.close()
            return
        if self.reading is not None or self.parser.in_message:
            self.state = BODY if self.reading is not None else HEAD
        else:
            self.state = IDLE
        t = self.timeouts
        # The exchange's end time is now, on the deadline clock: no second reading.
        self.deadline = (ex.t_end or time.monotonic()) + (t.idle if self.state == IDLE else t.header_read)

    def _resume(self) -> None:
        """The queue has room again: parse what was held back, then read on unless that
        filled the queue again."""
        self.read_paused = False
        held = self.held
        if held:
            self.held = b""
            if not self.eof:
                self._feed(held)  # may fill the queue and pause again
        if not self.read_paused and not self.closed:
            self.transport.resume_reading()

    # --- writing ---------------------------------------------------------------------
    def send(self, data) -> None:
        if not self.closed:
            self.transport.write(data)

    def send_many(self, parts) -> None:
        if not self.closed:
            self.transport.writelines(parts)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.state = CLOSING
            self.transport.close()

    def abort(self) -> None:
        """Close without finishing the answer: the client sees a cut stream, not a
        complete one (used when an upstream dies mid-stream)."""
        if not self.closed:
            self.closed = True
            self.state = CLOSING
            self.transport.abort()

    def fail_request(self, status: int, message: str) -> None:
        """Answer a request that could not be read (or was refused before its body) and
        close: after a framing error the byte stream cannot be trusted."""
        if self.closed:
            return
        if self.active is not None:
            # An answer is in progress; we cannot interleave another.  Drop the
            # connection after the current answer by refusing keep-alive.
            self.keep_alive = False
            self.queue.clear()
            if not self.read_paused:
                self.read_paused = True  # and watched by _check_peer meanwhile
                self.transport.pause_reading()
            return
        body = jsonrpc_error_body(PARSE_ERROR if status == 400 else INVALID_REQUEST, message)
        self.send(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, status_reason(status), len(body), body)
        )
        self.close()

    def _check_peer(self) -> None:
        """With reading paused the event loop does not see the client leave, and a quiet
        stream never writes to find out: ask the kernel.  A reset connection is closed,
        and a FIN during a GET stream ends it as one read would (``eof_received``)."""
        if _TCP_INFO is None:
            return
        try:
            state = self.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
        except (AttributeError, OSError):
            return  # not a TCP socket
        if state == _TCP_CLOSE:
            self.abort()
        elif state == _TCP_CLOSE_WAIT and self.active is not None and self.active.head.method == b"GET":
            self.eof_received()

    # --- deadlines --------------------------------------------------------------------
    def check_deadline(self, now: float) -> None:
        if self.closed:
            return
        if self.write_paused and now - self.write_stalled >= self.timeouts.client_write:
            # The client has taken nothing of its answer for that long: it holds a backend
            # connection (and the answer's buffered bytes) for as long as it likes.
            self.gateway.metrics.error("client_write_timeout")
            self.abort()
            return
        st = self.state
        active = self.active
        if active is not None:
            active.check_deadline(now)
            if self.read_paused and not self.closed:
                self._check_peer()
            # A request read behind the answer is held to its own deadline, unless we
            # paused reading it.
            if st == BUSY or self.read_paused or self.closed:
                return
        elif st == BUSY:
            return
        if now < self.deadline:
            return
        if st == IDLE:
            self.close()
        elif st in (HEAD, BODY):
            self.gateway.metrics.error("client_timeout")
            if self.parser.in_message or st == BODY:
                self.fail_request(408, "request not received in time")
            else:
                self.close()  # connected and said nothing: no answer owed
