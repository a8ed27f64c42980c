"""The backend seam: what a terminating route needs from a backend, in MCP messages.

Theory of operation.  A terminating route (``mux/virtual.py``: several backends, or one
that does not speak Streamable HTTP) is the MCP server to its clients and an MCP client
to each backend.  It reaches a backend only through an object with this interface,
whatever carries the messages -- Streamable HTTP (``transport/http_mcp.py``: a pooled HTTP
connection per exchange, the answer relayed as bytes), a child process over stdio
(``transport/stdio.py``: one JSON-RPC message per line), or the 2024-11-05 HTTP+SSE
transport (``transport/sse_legacy.py``: POSTs to an endpoint, answers on one stream).

A backend session is named by a ``session_id`` string (or None for a backend without
sessions) and the protocol version agreed with it; both travel inside the client's
session token, so any gateway process can read them.  A backend whose sessions live in
one process (a per-session child) says so with ``local_sessions = True`` and raises
``SessionLost`` for a session id it cannot serve here: the client gets 404 and opens a
new session.  A session it merely forgot (the child crashed or was reaped) is answered
with status 404 instead, and the route opens a new backend session for the same client
session, as it does for an HTTP backend that restarted.

The methods:

``await ask(session_id, version, data, on_message=None, calls=None) -> Reply``
    One message of the gateway's own (``initialize``, a list page, ``ping``, a
    notification, a fan-out).  A request waits for its response: ``Reply.status`` 200 and
    ``Reply.message`` the response bytes; messages the backend sends before it
    (progress, logging, server→client requests) go to ``on_message(bytes, envelope)`` or
    are dropped.  A notification or response is acknowledged with status 202.
    ``initialize`` with ``session_id`` None opens a session: ``Reply.session_id`` names it.
    Status 404: the backend does not know the session.  Raises ``UpstreamError`` when the
    backend cannot be reached or fails, ``SessionLost`` as said above.
``send(bs, body, handler, paused=False, now=0.0, resumable=False) -> call``
    A client's routed message (``bs``: its ``BackendSession``; ``body``: the message with
    names already spliced back; ``resumable``: the client can resume an event stream, so a
    message-level backend numbers and records the answer, ``transport/messages.py``).  The answer is delivered to ``handler`` (a
    ``transport.http_mcp.CallHandler``) as for an HTTP call: ``on_head(call, head)`` once with a
    ``ResponseHead`` (``answer_head`` makes one: status 200 and ``text/event-stream`` for
    a streamed answer, ``application/json`` with its length for a single message, 202 for
    a notification or response, 404 for an unknown session), then ``on_event(call,
    Message)`` per message of a streamed answer, or ``on_body(call, bytes)`` for the one
    message of a JSON answer (``call.stream`` is set by the handler), ``on_flush(call)``
    after each batch of deliveries when ``call.queued`` was set, and ``on_end(call,
    None)`` or ``on_error(call, UpstreamError)``.  The returned object is a subclass of
    ``transport.http_mcp.Call`` (the compiled handlers take that type) and supports
    ``pause_reading``/``resume_reading``/``detach`` (the client left: stop delivering).
    ``transport/messages.py``'s ``MessageCall`` does all of this for a message-level
    backend: it is given messages and makes the answer's shape.
``listen(bs, handler, position) -> call``
    The server→client stream of a session (messages not tied to a client request), to
    the same handler interface; ``position`` is the backend's last event id, if any (for
    a message-level backend: an id of one of its recorded answers, whose rest it replays
    and follows, or 400).
``await end(session_id, version)``
    End a session (Streamable HTTP DELETE; a per-session child is stopped).
``await probe() -> str | None``
    Readiness: None when the backend can take work now, else why not.
``await close()``
    Gateway stop or reload: release everything (stop every child, close streams).
"""

from __future__ import annotations

import os
import secrets

from ..wire.core import ResponseParser, encode_sse_event

__all__ = ["BackendSession", "Message", "SessionLost", "answer_head", "instance_id"]

_instance = (0, "")


def instance_id() -> str:
    """This gateway process's random name, which begins the ids of backend sessions that
    live in one process (made anew in a forked child)."""
    global _instance
    pid = os.getpid()
    if _instance[0] != pid:
        _instance = (pid, secrets.token_hex(6))
    return _instance[1]


class BackendSession:
    """One backend's side of a virtual session.  ``session_id`` is None for a backend
    that gave none (stateless server, or one that was down at initialize)."""

    __slots__ = ("name", "session_id", "protocol_version", "post_pre", "post_link")

    def __init__(self, name: str, session_id: str | None, protocol_version: str | None) -> None:
        self.name = name
        self.session_id = session_id
        self.protocol_version = protocol_version
        # Kept by ``BackendLink.session_head``: the POST head (to Content-Length) of this
        # session on that link.  Not part of the session's value (``__eq__``).
        self.post_pre: bytes | None = None
        self.post_link = None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BackendSession)
            and self.name == other.name
            and self.session_id == other.session_id
            and self.protocol_version == other.protocol_version
        )

    def __hash__(self) -> int:
        return hash((self.name, self.session_id, self.protocol_version))

    def __repr__(self) -> str:
        return f"BackendSession({self.name!r}, {self.session_id!r}, {self.protocol_version!r})"


class SessionLost(Exception):
    """This process cannot serve the backend session (it lives in another gateway
    process, or was ended here): the client's session is gone (404), never revived."""


class Message:
    """One parsed message from a message-level backend, shaped like the core's
    ``SSEEvent`` (``data``, ``id``, ``event``, ``retry``, ``raw``) so handlers relay it
    as they relay an event of a Streamable HTTP answer."""

    __slots__ = ("data", "id", "event", "retry", "_raw")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.id = None
        self.event = None
        self.retry = None
        self._raw = None

    @property
    def raw(self) -> bytes:
        raw = self._raw
        if raw is None:
            raw = self._raw = encode_sse_event(self.data)
        return raw


class _Heads:
    """Collects the head the response parser hands out."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head = None

    def on_interim(self, head) -> None:
        pass

    def on_response(self, head) -> None:
        self.head = head

    def on_body(self, chunk) -> None:
        pass

    def on_response_end(self, trailers=None) -> None:
        pass


_CACHE: dict[tuple[int, bytes | None, int], object] = {}
_CACHE_MAX = 4096


def answer_head(status: int, content_type: bytes | None = None, length: int = -1):
    """A ``ResponseHead`` for an answer that did not come over HTTP (a message-level
    backend's answer to ``send``).  Each is made once and shared (answers of one tool
    tend to have one length)."""
    key = (status, content_type, length)
    head = _CACHE.get(key)
    if head is not None:
        return head
    lines = [b"HTTP/1.1 %d X\r\n" % status]
    if content_type is not None:
        lines.append(b"Content-Type: %s\r\n" % content_type)
    if length >= 0:
        lines.append(b"Content-Length: %d\r\n" % length)
    sink = _Heads()
    p = ResponseParser(sink)
    p.feed(b"".join(lines) + b"\r\n")
    head = sink.head
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()  # lengths come from backends: bounded
    _CACHE[key] = head  # heads are read, never changed: one serves every answer alike
    return head
