"""Request heads for backends: the one place where they are put together.

Theory of operation.  Everything the gateway writes to a backend before a body is an
HTTP/1.1 request head (RFC 9112 §3, §5), and a head is only as safe as the values put
into it: a CR or LF inside a value ends the field, and the bytes after it become fields
-- or whole requests -- of the sender's choosing.  So no head is joined anywhere else,
and the builders here accept only values that fit the grammar:

* field names are tokens (RFC 9110 §5.1, §5.6.2);
* field values are ``field-value`` (RFC 9110 §5.5): visible characters, SP and HTAB
  inside, obs-text, nothing else -- no CR, LF, NUL or other control character, and no
  whitespace at either end;
* the request target is origin-form made of visible ASCII (RFC 9112 §3.2.1).

Values reach a head from three places, and each is checked where it enters:

* configuration (backend URL, ``headers``, ``bearer_token``): at load, by ``config.py``
  through the checks below, and once more when a route is built (``fixed_fields``);
* the client's own request on a passthrough route: the method, the target and the
  header fields as the strict request parser accepted them -- it refuses anything
  outside the same grammar (400) before a byte is forwarded, so ``passthrough_head``
  only joins them;
* values the gateway carries on a client's behalf on a multiplexed route (a backend's
  session id and protocol version, a decoded ``Last-Event-ID``): checked again by
  ``request_head`` at every use, after the multiplexer has refused a client value that
  fails (400) and a backend value that fails (at ``initialize``).

A value that fails raises ``HeadError``: nothing is written.
"""

from __future__ import annotations

import re

__all__ = [
    "HeadError",
    "field_name",
    "field_value",
    "visible",
    "is_field_value",
    "is_visible",
    "origin_target",
    "host_line",
    "fixed_fields",
    "request_head",
    "passthrough_head",
]


class HeadError(ValueError):
    """A value that may not go into a request head."""


# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 §5.5: field-vchar = VCHAR / obs-text; field-value allows SP and HTAB between
# them.  ``bytes.translate`` deletes these; what is left is what is not allowed.
_VALUE_CHARS = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_VISIBLE_CHARS = bytes(range(0x21, 0x7F))
_OWS = (9, 32)
_SID = b"Mcp-Session-Id: "
_XFF = b"X-Forwarded-For: "
_XFP = b"\r\nX-Forwarded-Proto: http\r\n"


def is_field_value(value: bytes) -> bool:
    """``value`` is an RFC 9110 field-value (the empty value included)."""
    if value.translate(None, _VALUE_CHARS):
        return False
    return not value or (value[0] not in _OWS and value[-1] not in _OWS)


def is_visible(value: bytes) -> bool:
    """``value`` is one or more visible ASCII characters (0x21-0x7E): the MCP rule for
    session ids, and what protocol versions and event ids are made of."""
    return len(value) > 0 and not value.translate(None, _VISIBLE_CHARS)


def _bytes(value, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise HeadError(f"{what}: characters outside Latin-1") from None
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise HeadError(f"{what}: expected text, got {type(value).__name__}")


def field_name(name, what: str = "header name") -> bytes:
    """``name`` as bytes if it is a token, else ``HeadError``."""
    b = _bytes(name, what)
    if _TOKEN.match(b) is None:
        raise HeadError(f"{what}: not a valid header name")
    return b


def field_value(value, what: str = "header value") -> bytes:
    """``value`` as bytes if it is a field-value, else ``HeadError``."""
    b = _bytes(value, what)
    if not is_field_value(b):
        raise HeadError(f"{what}: control character (CR, LF, NUL, ...) or surrounding whitespace")
    return b


def visible(value, what: str = "value") -> bytes:
    """``value`` as bytes if it is visible ASCII only (see ``is_visible``), else ``HeadError``."""
    b = _bytes(value, what)
    if not is_visible(b):
        raise HeadError(f"{what}: must be visible ASCII characters (0x21-0x7E)")
    return b


def origin_target(target, what: str = "request target") -> bytes:
    """A request target in origin-form (``/path[?query]``) of visible ASCII."""
    b = _bytes(target, what)
    if not b.startswith(b"/") or not is_visible(b):
        raise HeadError(f"{what}: must start with '/' and hold only visible ASCII characters")
    return b


def host_line(host: bytes) -> bytes:
    """The end of the request line and the Host field: put after method and target."""
    return b" HTTP/1.1\r\nHost: " + visible(host, "Host") + b"\r\n"


def fixed_fields(pairs) -> bytes:
    """The configured fields sent with every request to a backend, as one block."""
    return b"".join(
        b"%s: %s\r\n" % (field_name(k, f"header {k!r}"), field_value(v, f"header {k!r}")) for k, v in pairs
    )


def request_head(method: bytes, target: bytes, host: bytes, fixed: bytes, fields: tuple, body_length: int) -> bytes:
    """A request head the gateway makes on a client's behalf.

    ``method``: a token; ``target``: origin-form; ``host``: from ``host_line``;
    ``fixed``: from ``fixed_fields`` and constants of the caller; ``fields``: pairs of
    (name, value) whose values came from elsewhere -- each checked here, a None value
    leaves its field out; ``body_length`` >= 0 adds Content-Length."""
    if _TOKEN.match(method) is None:
        raise HeadError("method: not a token")
    parts = [method, b" ", origin_target(target), host, fixed]
    for name, value in fields:
        if value is not None:
            parts += (field_name(name), b": ", field_value(value, name.decode("latin-1")), b"\r\n")
    if body_length >= 0:
        parts.append(b"Content-Length: %d\r\n" % body_length)
    parts.append(b"\r\n")
    return b"".join(parts)


def passthrough_head(
    method: bytes, target: bytes, host: bytes, block: bytes, session_id: bytes | None, forwarded_for: bytes | None,
    fixed: bytes, body_length: int,
) -> bytes:
    """The head of a client request forwarded on a passthrough route.

    ``method``, ``target`` and the field ``block`` are what the strict request parser
    accepted (tokens, visible ASCII, field-values) with hop-by-hop fields left out;
    ``session_id``: the backend's own session id behind the client's sealed one (None:
    not added), as the strict response parser accepted it from that backend and the
    gateway sealed it; ``forwarded_for``: the X-Forwarded-For value (None: not added),
    a parsed field value and the peer address; ``host`` and ``fixed``: checked when the
    route was built.  Nothing here comes from anywhere else, so nothing is checked again
    per request.  ``body_length`` < 0: no body and no Content-Length."""
    parts = [method, b" ", target, host, block]
    if session_id is not None:
        parts += (_SID, session_id, b"\r\n")
    if forwarded_for is not None:
        parts += (_XFF, forwarded_for, _XFP)
    if fixed:
        parts.append(fixed)
    parts.append(b"Content-Length: %d\r\n\r\n" % body_length if body_length >= 0 else b"\r\n")
    return b"".join(parts)
