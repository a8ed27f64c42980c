"""Identifier mapping without lookup tables: request ids, progress tokens, SSE event ids.

Theory of operation.  Several backends share one client session, and each numbers its
own messages: two backends may both send a ``sampling/createMessage`` with id 0.  The
client must see distinct ids, and its reply -- which may reach *any* gateway process --
must find its way back to the right backend with the right original id.  So the id the
client sees *is* the routing information: a string that carries the backend's name and
the original JSON id, reversibly.  No table, nothing to expire, nothing to share.

Request ids and progress tokens (JSON-RPC allows a string or an integer)::

    <backend> "~" "n" <decimal integer>     original was a number
    <backend> "~" "s" <string>              original was a string (verbatim)

Backend names are ``[A-Za-z0-9_.-]`` (config), so the first ``~`` ends the name.  The
integer form is canonical (no ``+``, no leading zeros, no ``-0``) so every accepted
string decodes to exactly one id and ``encode(decode(x)) == x``.

Where they are used (MCP basic/utilities): server→client requests' ``id``; the
``progressToken`` a server→client request may carry in ``params._meta`` (the client
then sends ``notifications/progress`` with it); ``requestId`` of a backend's
``notifications/cancelled`` (it cancels a server→client request, whose id the client
only knows encoded).  Ids and tokens that the *client* chose pass through unchanged:
a client request goes to exactly one backend, and ids are unique per sender per session,
so they cannot collide on the way back.

SSE event ids (Streamable HTTP "Resumability and Redelivery"): an event id the client
sees names which backend stream(s) it continues::

    "p" "!" <entry>                  an event of one backend's POST response stream
    "g" *( "!" <entry> )             the merged GET stream: every backend's last id
    entry = <backend> "~" <raw id>   raw id made of [A-Za-z0-9_.-] (UUIDs, "12", "s_3")
          / <backend> "*" <base64url(id bytes), no padding>     any other id
                                   (one that fits a header field value, RFC 9110 §5.5)

A client resuming with ``Last-Event-ID`` therefore tells the gateway, in one header,
where every backend stream broke: for ``p`` the gateway resumes that one backend stream
(a POST stream belongs to one backend); for ``g`` it resumes each listed backend with
its own id and opens the unlisted ones fresh (they had sent nothing with an id yet).
Carrying the whole vector in every event id costs bytes on the merged stream but is
what makes resumption stateless: the client keeps only the last id it saw.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping

import orjson

from ..wire.heads import is_field_value

__all__ = [
    "encode_request_id",
    "decode_request_id",
    "encode_progress_token",
    "decode_progress_token",
    "json_id",
    "STREAM_POST",
    "STREAM_GET",
    "encode_event_id",
    "decode_event_id",
    "MergedStreamIds",
    "MAX_EVENT_ID_BYTES",
]

_BACKEND = re.compile(r"[A-Za-z0-9_.-]+\Z")
_CANON_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")


def encode_request_id(backend: str, rid: int | str) -> str:
    """The id the client sees for backend ``backend``'s request id ``rid``."""
    if type(rid) is int:
        return f"{backend}~n{rid}"
    if type(rid) is str:
        return f"{backend}~s{rid}"
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        raise TypeError(f"JSON-RPC ids are strings or integers, got {type(rid).__name__}")
    return encode_request_id(backend, int(rid) if isinstance(rid, int) else str(rid))


def decode_request_id(value: int | str | None) -> tuple[str, int | str] | None:
    """``(backend, original id)`` for an id made by ``encode_request_id``, else None."""
    if type(value) is not str:
        return None
    i = value.find("~")
    if i <= 0 or i + 1 >= len(value):
        return None
    backend = value[:i]
    if not _BACKEND.match(backend):
        return None
    tag = value[i + 1]
    rest = value[i + 2 :]
    if tag == "s":
        return backend, rest
    if tag == "n" and _CANON_INT.match(rest) and rest != "-0":
        return backend, int(rest)
    return None


# Progress tokens share the format: a token is "a string or integer" like an id.
encode_progress_token = encode_request_id
decode_progress_token = decode_request_id


def json_id(value: int | str | None) -> bytes:
    """``value`` as a JSON token, for splicing (integers of any size stay exact)."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return str(value).encode("ascii")
    return orjson.dumps(value)


# ---------------------------------------------------------------------------------
# SSE event ids

STREAM_POST = "p"
STREAM_GET = "g"
#: Longest ``Last-Event-ID`` the gateway will try to decode.
MAX_EVENT_ID_BYTES = 16384
_SAFE_ID = re.compile(rb"[A-Za-z0-9_.-]+\Z")


def _entry(backend: str, raw: bytes) -> bytes:
    if _SAFE_ID.match(raw):
        return backend.encode("ascii") + b"~" + raw
    return backend.encode("ascii") + b"*" + base64.urlsafe_b64encode(raw).rstrip(b"=")


def encode_event_id(kind: str, positions: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> bytes:
    """The client-facing event id for a stream of ``kind`` (``STREAM_POST``: exactly one
    backend; ``STREAM_GET``: any number) whose backends last sent ``positions``
    (backend → original event id bytes, non-empty)."""
    items = list(positions.items()) if isinstance(positions, Mapping) else list(positions)
    if kind == STREAM_POST:
        if len(items) != 1:
            raise ValueError("a POST stream event id names exactly one backend")
    elif kind != STREAM_GET:
        raise ValueError(f"unknown stream kind {kind!r}")
    parts = [kind.encode("ascii")]
    for backend, raw in items:
        if not _BACKEND.match(backend):
            raise ValueError(f"bad backend name {backend!r}")
        if not raw:
            raise ValueError("an event id position must not be empty")
        parts.append(_entry(backend, bytes(raw)))
    return b"!".join(parts)


def decode_event_id(value: bytes | str) -> tuple[str, dict[str, bytes]] | None:
    """``(kind, {backend: original event id})`` for an id made by ``encode_event_id``,
    else None (the gateway then treats the resumption as unknown: 400, or a fresh
    stream, as it prefers)."""
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    if not value or len(value) > MAX_EVENT_ID_BYTES:
        return None
    parts = value.split(b"!")
    kind = parts[0]
    if kind == b"p":
        if len(parts) != 2:
            return None
    elif kind != b"g":
        return None
    out: dict[str, bytes] = {}
    for p in parts[1:]:
        t = p.find(b"~")
        s = p.find(b"*")
        if t < 0 and s < 0:
            return None
        cut = t if s < 0 or (0 <= t < s) else s
        try:
            backend = p[:cut].decode("ascii")
        except UnicodeDecodeError:
            return None
        if not _BACKEND.match(backend) or backend in out:
            return None
        body = p[cut + 1 :]
        if p[cut] == 0x7E:  # "~": raw
            if not _SAFE_ID.match(body):
                return None
            raw = body
        else:
            if not re.fullmatch(rb"[A-Za-z0-9_-]+", body) or len(body) % 4 == 1:
                return None
            try:
                raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
            except (binascii.Error, ValueError):
                return None
            if base64.urlsafe_b64encode(raw).rstrip(b"=") != body or _SAFE_ID.match(raw):
                return None  # not the canonical spelling
            if not is_field_value(raw):
                # It goes back to the backend as a Last-Event-ID field (RFC 9110 §5.5):
                # no CR, LF, NUL or other control character, ever.
                return None
        out[backend] = raw
    return kind.decode("ascii"), out


class MergedStreamIds:
    """Event ids of one client-facing stream fed by one or more backend streams.

    ``see(backend, event_id)`` records the backend's newest event id and returns the id
    to put on the event sent to the client (None when the backend event had no id:
    send it without one, the client's last id stays valid).  Start from a decoded
    ``Last-Event-ID`` when resuming, so the vector keeps the positions of backends that
    have not sent anything since.
    """

    __slots__ = ("kind", "positions")

    def __init__(self, kind: str = STREAM_GET, resume: Mapping[str, bytes] | None = None) -> None:
        if kind not in (STREAM_GET, STREAM_POST):
            raise ValueError(f"unknown stream kind {kind!r}")
        self.kind = kind
        self.positions: dict[str, bytes] = dict(resume or {})

    def see(self, backend: str, event_id: bytes | None) -> bytes | None:
        if not event_id or not is_field_value(bytes(event_id)):
            # No id, or one the backend could not be sent back in Last-Event-ID: the
            # event goes on without one and the client's last id stays valid.
            return None
        pos = self.positions
        if self.kind == STREAM_POST and pos and backend not in pos:
            raise ValueError("a POST stream carries one backend's events")
        pos[backend] = bytes(event_id)
        return encode_event_id(self.kind, pos)

    def current(self) -> bytes | None:
        """The id naming the present position (for a priming event), or None."""
        if not self.positions:
            return None if self.kind == STREAM_POST else b"g"
        return encode_event_id(self.kind, self.positions)
