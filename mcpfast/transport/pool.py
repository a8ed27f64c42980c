"""Upstream connections: one ``asyncio.Protocol`` per backend connection and a
keep-alive pool per backend.

Theory of operation.  A client-side exchange asks the pool for a connection; an idle one
is handed over synchronously (the common case costs no task and no await), otherwise a
new connection is opened in a task bounded by the connect timeout.  The exchange writes
its request with one ``writelines`` call and becomes the connection's *sink*: the
response parser's callbacks go straight to it (``upstream_head``, ``upstream_body``,
``upstream_end``, ``upstream_failed``).  When a response ends cleanly on a keep-alive
connection the connection returns to the pool's idle stack (LIFO, so hot connections
stay hot and surplus ones age out); anything unusual -- an error, an unread body, a
client that left -- closes it instead, because a half-read connection cannot be reused.

A connection carries exactly one exchange's bytes.  It is released only after the read
that ended the response has been parsed to its end (never from inside the parser's
callbacks), and only when the parser is idle with nothing buffered and the request was
written in full.  Anything else the backend sends -- bytes after the end of the answer,
a second response, bytes on an idle connection, an answer while the request is still
being written -- closes the connection: the exchange that owns it keeps its complete
answer, and nobody else ever reads those bytes.

Flow control runs both ways through the sink: the client side pauses this transport's
reading when the client's socket buffer fills (a slow SSE reader), and resumes it later.

An https backend's connections are TLS connections wrapped in the one context its pool
built (``transport/tls.py``); they are kept alive and reused exactly like plain ones.  A
handshake that fails is an ``upstream_tls`` error for the exchange that asked.

Two budgets per backend.  Requests (``acquire``) may have ``max_connections`` connections
open, and wait their turn beyond that.  GET streams (``acquire_stream``) last as long as
their client listens, so they are counted apart, up to ``max_streams``, and refused at
once beyond it: however many streams are open, requests keep their own connections.  A
connection counts as a stream's from the moment a stream takes it until it goes back to
the pool or closes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable

from ..wire.core import ProtocolError, ResponseParser
from .tls import client_context, closed_after_handshake, handshake_error

if TYPE_CHECKING:
    from ..observe import BackendMetrics

__all__ = ["UpstreamPool", "UpstreamProtocol", "UpstreamError", "set_nodelay", "tls_error"]

log = logging.getLogger("mcpfast.upstream")


class UpstreamError(Exception):
    """A backend could not be reached or misbehaved; ``kind`` names it for metrics and
    ``status`` is what the client gets (502 unreachable/garbage, 504 timeout)."""

    def __init__(self, kind: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def tls_error(name: str, exc: ssl.SSLError) -> UpstreamError:
    """A failed TLS handshake (or a refusal of the client certificate right after it)."""
    return UpstreamError(*handshake_error(name, exc))


def set_nodelay(transport) -> None:
    """Turn Nagle's algorithm off on ``transport``'s socket.  A request head and body
    leave in one write, but a backend answering in small pieces must not meet a delayed
    ACK on every kept-alive exchange.  uvloop and asyncio usually set it already; saying
    it here makes it independent of the loop."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not a TCP socket (a test transport, a Unix socket)


# An asyncio protocol by its methods, not by inheritance: the build compiles this class
# as an extension type (upstream.pxd), which cannot derive from a Python class, and
# asyncio and uvloop only call the methods.
class UpstreamProtocol:
    """One connection to a backend.  ``sink`` is the exchange being answered, or None
    while the connection is idle in the pool."""

    __slots__ = (
        "pool", "transport", "parser", "sink", "closed", "reused", "got_bytes", "idle_since",
        "keep_alive", "ended", "_paused", "_write_paused", "_forgotten", "_write_buffer_size", "stream",
    )  # fmt: skip

    def __init__(self, pool: "UpstreamPool", max_header_bytes: int) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self, max_header_bytes=max_header_bytes)
        self.sink: Any = None
        self.closed = False
        self.reused = False  # served a request before: a failure may be a keep-alive race
        self.got_bytes = False  # any byte of the current response seen
        self.idle_since = 0.0
        self.keep_alive = True  # the current response leaves the connection reusable
        self.ended = False  # the current response ended in the read being parsed
        self._paused = False
        self._write_paused = False
        self._forgotten = False
        self._write_buffer_size: Callable[[], int] | None = None  # the transport's, bound once
        self.stream = False  # held by a GET stream: counted in the pool's stream budget

    # --- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self._write_buffer_size = getattr(transport, "get_write_buffer_size", None)
        set_nodelay(transport)
        self.pool._open += 1
        self.pool.metrics.connections.inc()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        sink = self.sink
        if sink is None:
            # Bytes on an idle connection: the backend is confused; never reuse it.
            self.close()
            return
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            owner = self.sink
            self.sink = None
            self.close()
            if self.ended:
                # The answer was complete; what followed it is dropped with the connection.
                self.ended = False
                if sink.queued is not None:
                    sink.flush()
            elif owner is not None:
                owner.upstream_failed(UpstreamError("upstream_protocol", f"backend sent invalid HTTP: {exc}"))
            return
        if sink.queued is not None:
            sink.flush()
        if self.ended:
            # The answer ended in this read, which is now parsed to its end: release the
            # connection only if nothing of another message was in it and the request
            # left in full (an early answer means the backend may yet read our body as
            # a request of its own).
            self.ended = False
            if self.keep_alive and not self.closed and not self._write_paused and not self.parser.in_message:
                size = self._write_buffer_size
                if size is None or not size():
                    self.pool.release(self)
                    return
            self.close()

    def eof_received(self):
        sink = self.sink
        if sink is not None:
            try:
                self.parser.feed_eof()  # ends a read-until-close body
            except ProtocolError as exc:
                self.sink = None
                self.close()
                sink.upstream_failed(self._lost_error(exc))
                return False
            if self.ended:
                self.ended = False
                self.close()  # the backend closes: never reused
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool._forget(self)
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.upstream_failed(self._lost_error(exc))

    def _lost_error(self, exc) -> UpstreamError:
        if isinstance(exc, ssl.SSLError):
            # A TLS 1.3 server refuses a client certificate on the first read, after
            # the handshake; never retried: a new connection meets the same refusal.
            return tls_error(self.pool.backend.name, exc)
        if not self.got_bytes:
            pool = self.pool
            if pool.tls is not None and not self.reused:
                # A new TLS connection closed unanswered.  A server that refuses the
                # client certificate (or its lack) after a TLS 1.3 handshake does this
                # when it closes without sending its alert -- asyncio servers such as
                # uvicorn do.
                return UpstreamError("upstream_tls", closed_after_handshake(pool.backend))
            err = UpstreamError("upstream_closed", "backend closed the connection before answering")
            err.retryable = self.reused  # type: ignore[attr-defined]
            return err
        return UpstreamError("upstream_closed", "backend closed the connection mid-response")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    # --- ResponseParser handler ---------------------------------------------------
    def on_interim(self, head) -> None:
        if self.sink is None or self.ended:
            raise ProtocolError("response nobody asked for", 502)
        # 100 Continue and friends are for us, not the client

    def on_response(self, head) -> None:
        sink = self.sink
        if sink is None or self.ended:
            # A second answer to one request, or one after the exchange left: it must
            # reach no one.  Stops the parser; data_received closes the connection.
            raise ProtocolError("response nobody asked for", 502)
        sink.upstream_head(head)

    def on_body(self, chunk) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_body(chunk)

    def on_response_end(self, trailers) -> None:
        sink = self.sink
        if sink is None or self.ended:
            raise ProtocolError("response nobody asked for", 502)
        self.sink = None
        # Released (or closed) by data_received / eof_received once this read has been
        # parsed to its end: the parser may hold more bytes of it.
        self.ended = True
        sink.upstream_end()

    # --- used by the exchange -----------------------------------------------------
    def send(self, sink, data: list, head_request: bool = False) -> None:
        self.sink = sink
        self.got_bytes = False
        self.keep_alive = True
        self.ended = False
        if head_request:
            self.parser.expect_head_response()
        self.transport.writelines(data)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def detach(self) -> None:
        """The client went away mid-exchange: this connection holds a partial response."""
        self.sink = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.abort() if self.got_bytes else self.transport.close()


class UpstreamPool:
    """Keep-alive connections to one backend.

    ``pool_size`` idle connections are kept (LIFO); more may be open while busy, up to
    ``max_connections`` for requests (beyond that requests wait their turn) plus
    ``max_streams`` for GET streams (beyond that a stream is refused).  Idle connections older
    than ``idle_timeout`` are closed by ``sweep`` -- keep that below the backend's own
    keep-alive timeout (uvicorn closes after 5 s) so we rarely reuse a connection the
    backend is closing.
    """

    def __init__(
        self,
        backend: Any,  # a config.BackendConfig (config imports this module's callers)
        metrics: "BackendMetrics",
        *,
        connect_timeout: float,
        max_header_bytes: int = 65536,
        max_connections: int | None = None,
        max_streams: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.host = backend.host
        self.port = backend.port
        self.size = backend.pool_size
        self.idle_timeout = backend.pool_idle_timeout
        self.connect_timeout = backend.connect_timeout or connect_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = backend.max_connections if max_connections is None else max_connections
        self.max_streams = backend.max_streams if max_streams is None else max_streams
        # Connections held by (or being opened for) GET streams; the rest of the open
        # and connecting ones count against max_connections.
        self._streams = 0
        self._idle: list[UpstreamProtocol] = []
        self._open = 0
        self._connecting = 0
        self._waiters: collections.deque[Callable] = collections.deque()
        # The connection ``release`` is offering to a waiter right now (see there).
        self._offering: UpstreamProtocol | None = None
        self._loop = loop
        self.closed = False
        # https: the context every connection is wrapped in (built once, here), and the
        # URL's host for SNI and the certificate check.
        self.tls = client_context(backend) if getattr(backend, "tls", False) else None
        self.server_hostname = backend.host if self.tls is not None else None

    @property
    def open_connections(self) -> int:
        return self._open

    def acquire(self, callback: Callable[[UpstreamProtocol | None, UpstreamError | None], None]) -> None:
        """Call ``callback(conn, None)`` with a connection -- right away when one is idle --
        or ``callback(None, error)`` when none can be had."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.resume_reading()
                callback(conn, None)
                return
        if self.closed:
            callback(None, UpstreamError("upstream_unavailable", "gateway is shutting down", 503))
            return
        if self._open + self._connecting - self._streams >= self.max_connections:
            self._waiters.append(callback)
            return
        self._connect(callback)

    def acquire_stream(self, callback: Callable[[UpstreamProtocol | None, UpstreamError | None], None]) -> None:
        """``acquire`` for a GET stream: from the stream budget, and refused at once
        (503) when it is spent rather than queued behind streams that may never end."""
        if self.closed:
            callback(None, UpstreamError("upstream_unavailable", "gateway is shutting down", 503))
            return
        if self._streams >= self.max_streams:
            callback(
                None,
                UpstreamError(
                    "upstream_stream_limit",
                    f"backend {self.backend.name} has {self.max_streams} streams open, its max_streams",
                    503,
                ),
            )
            return
        self._streams += 1
        conn = self.take_idle()
        if conn is not None:
            conn.stream = True
            callback(conn, None)
            return
        self._connecting += 1
        loop = self._loop or asyncio.get_running_loop()
        loop.create_task(self._open_connection(callback, True))

    def take_idle(self) -> "UpstreamProtocol | None":
        """An idle kept-alive connection, or None (then use ``acquire``)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                if conn._paused:
                    conn.resume_reading()
                return conn
        return None

    def cancel_wait(self, callback) -> None:
        """Take a waiter whose request ended out of the queue (a no-op if it is not
        there any more)."""
        try:
            self._waiters.remove(callback)
        except ValueError:
            pass

    def _connect(self, callback) -> None:
        self._connecting += 1
        loop = self._loop or asyncio.get_running_loop()
        loop.create_task(self._open_connection(callback))

    async def _open_connection(self, callback, stream: bool = False) -> None:
        loop = self._loop or asyncio.get_running_loop()
        err = None
        try:
            try:
                # The connect timeout covers the TLS handshake too: create_connection
                # returns once it is done.
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: UpstreamProtocol(self, self.max_header_bytes), self.host, self.port,
                        ssl=self.tls, server_hostname=self.server_hostname,
                    ),
                    self.connect_timeout,
                )  # fmt: skip
            finally:
                self._connecting -= 1
        except ssl.SSLError as exc:  # before OSError: it is one
            err = tls_error(self.backend.name, exc)
        except asyncio.TimeoutError:
            err = UpstreamError("upstream_connect_timeout", f"connecting to backend {self.backend.name} timed out", 504)
        except OSError as exc:
            err = UpstreamError("upstream_unreachable", f"backend {self.backend.name} unreachable: {exc.strerror or exc}")
        except BaseException:
            if stream:
                self._streams -= 1
            raise
        if err is not None:
            if stream:
                self._streams -= 1
            callback(None, err)
            return
        conn.stream = stream
        if self.closed:
            conn.close()
            callback(None, UpstreamError("upstream_unavailable", "gateway is shutting down", 503))
            return
        callback(conn, None)

    def release(self, conn: UpstreamProtocol) -> None:
        """A clean keep-alive connection is free again."""
        conn.reused = True
        if conn.stream:
            conn.stream = False
            self._streams -= 1
            if self._open + self._connecting - self._streams > self.max_connections:
                conn.close()  # the request budget is full: no room to keep it
                return
        waiters = self._waiters
        if waiters:
            if self._offering is conn:
                # Handed straight back by a waiter that had already given up: the loop
                # below offers it to the next one (no call per abandoned waiter).
                self._offering = None
                return
            while waiters:
                cb = waiters.popleft()
                conn.resume_reading()
                self._offering = conn
                cb(conn, None)
                if self._offering is conn:  # taken
                    self._offering = None
                    return
        if len(self._idle) >= self.size or self.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _forget(self, conn: UpstreamProtocol) -> None:
        """Account for a closed connection (once, whichever side closed first)."""
        if conn._forgotten:
            return
        conn._forgotten = True
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.transport is not None:
            self._open -= 1
            self.metrics.connections.dec()
        if conn.stream:
            conn.stream = False
            self._streams -= 1
        if self._waiters and not self.closed and self._open + self._connecting - self._streams < self.max_connections:
            self._connect(self._waiters.popleft())

    def sweep(self, now: float) -> None:
        """Close idle connections past their idle timeout (called by the gateway's tick)."""
        if not self._idle:
            return
        limit = now - self.idle_timeout
        for conn in [c for c in self._idle if c.idle_since < limit]:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
        while self._waiters:
            self._waiters.popleft()(None, UpstreamError("upstream_unavailable", "gateway is shutting down", 503))
