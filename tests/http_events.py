"""Shared helpers for the HTTP parser tests: a recording handler and event normalisers.

``Recorder`` serves as handler for both ``RequestParser`` and ``ResponseParser`` and
keeps every callback in order, with the objects exactly as they were passed (so tests
can check body chunk types and zero-copy views).  ``normal`` turns a recording into
plain comparable values: heads become dicts of every contract attribute, body chunks
become ``bytes``, and consecutive body chunks are merged (how body bytes are grouped
into calls follows the ``feed`` pieces, everything else does not).
"""

from __future__ import annotations

REQUEST_ATTRS = (
    "method", "target", "version", "headers", "keep_alive", "content_length", "chunked",
    "expect_continue", "host", "content_type", "accept", "authorization", "origin",
    "connection", "transfer_encoding", "session_id", "protocol_version", "mcp_method",
    "mcp_name", "last_event_id",
)  # fmt: skip
RESPONSE_ATTRS = (
    "version", "status", "reason", "headers", "keep_alive", "content_length", "chunked",
    "content_type", "session_id", "connection", "transfer_encoding",
)  # fmt: skip


class HeadList:
    """Handler for ``RequestParser`` that keeps only the request heads, in order
    (``heads``): what a backend received, as the strict parser read it."""

    def __init__(self) -> None:
        self.heads: list = []

    def on_request(self, head) -> None:
        self.heads.append(head)

    def on_body(self, chunk) -> None:
        pass

    def on_request_end(self, trailers) -> None:
        pass


class Recorder:
    """Handler for either parser; ``events`` lists ``(kind, payload)`` in call order.

    kinds: ``head`` (on_request / on_response), ``interim``, ``body`` (the chunk object
    as passed), ``end`` (the trailers, ``None`` or a list).
    """

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_request(self, head) -> None:
        self.events.append(("head", head))

    on_response = on_request

    def on_interim(self, head) -> None:
        self.events.append(("interim", head))

    def on_body(self, chunk) -> None:
        self.events.append(("body", chunk))

    def on_request_end(self, trailers) -> None:
        self.events.append(("end", trailers))

    on_response_end = on_request_end


def attrs_of(head) -> dict:
    """Every contract attribute of a request or response head."""
    names = REQUEST_ATTRS if hasattr(head, "target") else RESPONSE_ATTRS
    return {name: getattr(head, name) for name in names}


def normal(events) -> list[tuple]:
    """Comparable form of a recording: heads as dicts, body runs merged into bytes."""
    out: list[tuple] = []
    for kind, payload in events:
        if kind in ("head", "interim"):
            out.append((kind, attrs_of(payload)))
        elif kind == "body":
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + bytes(payload))
            else:
                out.append(("body", bytes(payload)))
        else:
            out.append((kind, payload))
    return out


def messages(events) -> list[tuple]:
    """Group a normalised recording into messages: ``(interims, head, body, trailers)``.

    Every message must be complete (its ``end`` seen); interim heads are those that
    came before the message's head.
    """
    out = []
    interims: list[dict] = []
    head = None
    body = b""
    for kind, payload in events:
        if kind == "interim":
            assert head is None, "interim head inside a message"
            interims.append(payload)
        elif kind == "head":
            assert head is None, "head inside a message"
            head, body = payload, b""
        elif kind == "body":
            assert head is not None, "body outside a message"
            body += payload
        else:
            assert head is not None, "end outside a message"
            out.append((interims, head, body, payload))
            interims, head = [], None
    assert head is None and not interims, "unfinished message"
    return out
