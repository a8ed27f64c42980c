"""JSON-RPC envelope scanner and splice helpers, pure-Python twin of ``_jsonrpc.pxi``.

Theory of operation.  A JSON-RPC body flows in as bytes; one ``Envelope`` per message
flows out, holding the few facts a gateway routes on (kind, method, id, params.name,
params.uri, ...) as decoded values plus ``[start, end)`` byte spans into the body.  The
body is walked once, left to right, as bytes: every byte is validated as JSON (RFC 8259)
but no Python object is built for anything except the reported values, so a 1 MB
``tools/call`` whose ``arguments`` we never look at costs one pass over its bytes.  The
walk records *where* interesting values are (``_Found``); only after the whole text has
proved to be valid JSON are those records checked against JSON-RPC 2.0 and decoded,
so a broken text always yields -32700 and never a -32600 that depends on where the
damage was.  A value the gateway must change is rewritten with ``splice``: the new bytes
go between the untouched pieces, in one copy.

This module is the readable reference: the compiled scanner in ``_jsonrpc.pxi`` walks
the same grammar in the same order with the same rules, and the differential tests hold
both to identical outcomes.  It uses ``re`` to find the next interesting byte and Python's
strict UTF-8 codec to validate string contents (that codec implements RFC 3629 exactly:
no overlongs, no encoded surrogates, nothing above U+10FFFF), which keeps it short and
fast enough to be useful; it never calls a JSON parser.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Sequence

from .errors import INVALID_REQUEST, PARSE_ERROR, ProtocolError

__all__ = [
    "KIND_REQUEST",
    "KIND_NOTIFICATION",
    "KIND_RESPONSE",
    "KIND_ERROR",
    "Envelope",
    "scan_jsonrpc",
    "splice",
    "splice_many",
]

KIND_REQUEST = 1
KIND_NOTIFICATION = 2
KIND_RESPONSE = 3
KIND_ERROR = 4

#: Containers open at once (the top-level object or batch array counts as 1).
MAX_DEPTH = 512

# The JSON type of a recorded value (same numbering as the C enum ``JsonTag``).
T_STRING, T_INT, T_FLOAT, T_TRUE, T_FALSE, T_NULL, T_OBJECT, T_ARRAY = range(1, 9)

# Objects whose members we look at, and the members that matter in each.  Any other key
# is skipped (its value still validated).  Keys are compared by their *unescaped* value:
# ``"meth\u006fd"`` is the key ``method`` (RFC 8259 §7: escapes denote the character).
_TOP_KEYS = {b"jsonrpc": "jsonrpc", b"method": "method", b"id": "id", b"params": "params", b"result": "result", b"error": "error"}
_PARAMS_KEYS = {b"name": "name", b"uri": "uri", b"cursor": "cursor", b"requestId": "request_id", b"_meta": "_meta"}
_META_KEYS = {b"progressToken": "progress_token", b"io.modelcontextprotocol/protocolVersion": "protocol_version"}
_ERROR_KEYS = {b"code": "error_code"}
_PARAMS_FIELDS = ("name", "uri", "cursor", "request_id", "progress_token", "protocol_version")

_WS = re.compile(rb"[ \t\n\r]*")  # RFC 8259 §2: ws = *( %x20 / %x09 / %x0A / %x0D )
_STRING_STOP = re.compile(rb'["\\\x00-\x1f]')  # RFC 8259 §7: quote, escape, or a forbidden raw control char
# RFC 8259 §6: number = [ minus ] int [ frac ] [ exp ];  int = zero / ( digit1-9 *DIGIT )
# The fraction and exponent digits are matched as optional so that "1." and "1e+" are
# refused here as a bad number (as the compiled scanner does), not at the next byte.
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]*)?([eE][+-]?[0-9]*)?")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x62: "\b", 0x66: "\f", 0x6E: "\n", 0x72: "\r", 0x74: "\t"}


class Envelope:
    """What the scanner found in one JSON-RPC message (see ``_core.pyi``)."""

    __slots__ = (
        "kind", "start", "end", "method", "id", "id_span", "params_span",
        "name", "name_span", "uri", "uri_span", "cursor", "cursor_span",
        "progress_token", "progress_token_span", "request_id", "request_id_span",
        "protocol_version", "protocol_version_span", "result_span", "error_span", "error_code",
    )  # fmt: skip

    def __init__(self) -> None:
        for slot in self.__slots__:
            setattr(self, slot, None)

    def __repr__(self) -> str:
        return f"Envelope(kind={self.kind}, method={self.method!r}, id={self.id!r}, start={self.start}, end={self.end})"


def _parse_error(pos: int, why: str) -> ProtocolError:
    return ProtocolError(f"invalid JSON at byte {pos}: {why}", 400, PARSE_ERROR)


def _invalid(why: str, element: int | None) -> ProtocolError:
    where = "" if element is None else f" (batch element {element})"
    return ProtocolError(f"invalid JSON-RPC message{where}: {why}", 400, INVALID_REQUEST)


class _Found:
    """Where the interesting values of one message are: field -> (tag, start, end, escaped)."""

    __slots__ = ("start", "end", "index", "jsonrpc", "method", "id", "params", "result", "error", "error_code") + _PARAMS_FIELDS

    def __init__(self, start: int, index: int) -> None:
        self.start, self.end, self.index = start, -1, index
        for field in self.__slots__[3:]:
            setattr(self, field, None)


class _Walker:
    """One left-to-right pass over ``buf``; every method takes and returns byte offsets."""

    __slots__ = ("buf", "n")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.n = buf, len(buf)

    def ws(self, i: int) -> int:
        return _WS.match(self.buf, i).end()

    def byte(self, i: int) -> int:
        return self.buf[i] if i < self.n else -1

    # -- scalars ---------------------------------------------------------------------

    def hex4(self, i: int) -> int:
        quad = self.buf[i : i + 4]
        if len(quad) != 4 or not all(c in _HEX for c in quad):
            raise _parse_error(i, "bad \\u escape")
        return int(quad, 16)

    def escape(self, j: int) -> int:
        """Validate the escape at ``j`` (a backslash); return the offset after it."""
        c = self.byte(j + 1)
        if c in _SIMPLE_ESCAPES:
            return j + 2
        if c != 0x75:  # 'u'
            raise _parse_error(j, "bad escape")
        unit = self.hex4(j + 2)
        # RFC 8259 §7 lets a lone surrogate escape through ("\ud800"), but it names no
        # Unicode character; orjson rejects it ("no low surrogate"), and so do we: a high
        # surrogate must be followed at once by an escaped low one, a low one never
        # stands alone.
        if 0xD800 <= unit <= 0xDBFF:
            if self.buf[j + 6 : j + 8] == b"\\u" and 0xDC00 <= self.hex4(j + 8) <= 0xDFFF:
                return j + 12
            raise _parse_error(j, "lone surrogate escape")
        if 0xDC00 <= unit <= 0xDFFF:
            raise _parse_error(j, "lone surrogate escape")
        return j + 6

    def utf8(self, a: int, b: int) -> None:
        """Raise if ``buf[a:b]`` (string contents) is not valid UTF-8 (RFC 8259 §8.1)."""
        raw = self.buf[a:b]
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _parse_error(a + exc.start, "invalid UTF-8") from None

    def string(self, i: int) -> tuple[int, bool]:
        """``i`` at an opening quote; return (offset after the closing quote, had escapes).

        Faults are reported in text order, as the compiled scanner finds them: before a
        complaint about a byte at ``j`` (control char, bad escape, missing quote) the
        contents before ``j`` are checked for bad UTF-8.  Escapes are ASCII, so checking
        the whole prefix at once finds the same first fault as a byte-by-byte walk."""
        buf, j, escaped = self.buf, i + 1, False
        while True:
            m = _STRING_STOP.search(buf, j)
            if m is None:
                self.utf8(i + 1, self.n)
                raise _parse_error(self.n, "unterminated string")
            j = m.start()
            c = buf[j]
            if c == 0x22:
                break
            if c == 0x5C:
                try:
                    j = self.escape(j)
                except ProtocolError:
                    self.utf8(i + 1, j)
                    raise
                escaped = True
                continue
            self.utf8(i + 1, j)
            raise _parse_error(j, "raw control character in string")  # RFC 8259 §7
        self.utf8(i + 1, j)
        return j + 1, escaped

    def number(self, i: int) -> tuple[int, bool]:
        """Return (offset after the number at ``i``, is an integer)."""
        m = _NUMBER.match(self.buf, i)
        if m is None:
            raise _parse_error(i, "bad number")
        frac, exp = m.group(1), m.group(2)
        if (frac is not None and len(frac) == 1) or (exp is not None and not exp[-1:].isdigit()):
            raise _parse_error(i, "bad number")
        is_int = frac is None and exp is None
        end = m.end()
        # RFC 8259 §6 lets an implementation limit the range of numbers.  orjson refuses
        # any number that is infinite as a double (1e400, a 310-digit integer), so we do
        # too: a body the scanner passes must not be refused by the next JSON parser.
        # (Plain integers shorter than 309 digits are always below 1e308.)
        if (not is_int or end - i >= 309) and math.isinf(float(self.buf[i:end])):
            raise _parse_error(i, "number out of range")
        return end, is_int

    def literal(self, i: int) -> tuple[int, int]:
        for word, tag in ((b"true", T_TRUE), (b"false", T_FALSE), (b"null", T_NULL)):
            if self.buf.startswith(word, i):
                return i + len(word), tag
        raise _parse_error(i, "expected a value")

    # -- values we skip ---------------------------------------------------------------

    def value(self, i: int, depth: int) -> tuple[int, int, bool]:
        """Skip the value at ``i`` inside a container at ``depth``; (end, tag, escaped)."""
        c = self.byte(i)
        if c == 0x22:
            end, escaped = self.string(i)
            return end, T_STRING, escaped
        if c == 0x7B or c == 0x5B:
            return self.container(i, depth + 1), (T_OBJECT if c == 0x7B else T_ARRAY), False
        if c == 0x2D or 0x30 <= c <= 0x39:
            end, is_int = self.number(i)
            return end, (T_INT if is_int else T_FLOAT), False
        end, tag = self.literal(i)
        return end, tag, False

    def container(self, i: int, depth: int) -> int:
        """Skip the object or array at ``i`` whose own depth is ``depth``, iteratively.

        RFC 8259 §4 (objects) and §5 (arrays); a stack of open container kinds replaces
        recursion, so 512 levels cost no Python frames."""
        buf = self.buf
        stack: list[int] = []
        state = "open"
        while True:
            if state == "open":
                c = buf[i]
                if depth + len(stack) > MAX_DEPTH:
                    raise _parse_error(i, "nesting deeper than 512")
                stack.append(c)
                i = self.ws(i + 1)
                if self.byte(i) == c + 2:  # '{'+2 == '}', '['+2 == ']'
                    i += 1
                    stack.pop()
                    if not stack:
                        return i
                    state = "after"
                else:
                    state = "key" if c == 0x7B else "value"
            elif state == "key":
                if self.byte(i) != 0x22:
                    raise _parse_error(i, "expected a string key")
                i, _ = self.string(i)
                i = self.ws(i)
                if self.byte(i) != 0x3A:
                    raise _parse_error(i, "expected ':'")
                i = self.ws(i + 1)
                state = "value"
            elif state == "value":
                c = self.byte(i)
                if c == 0x7B or c == 0x5B:
                    state = "open"
                    continue
                i, _, _ = self.value(i, depth + len(stack) - 1)
                state = "after"
            else:  # "after": a member or element is complete
                i = self.ws(i)
                c = self.byte(i)
                if c == 0x2C:
                    i = self.ws(i + 1)
                    state = "key" if stack[-1] == 0x7B else "value"
                elif c == stack[-1] + 2:
                    i += 1
                    stack.pop()
                    if not stack:
                        return i
                else:
                    raise _parse_error(i, "expected ',' or a closing bracket")

    # -- objects we look into ---------------------------------------------------------

    def key(self, start: int, end: int, escaped: bool, keys: dict) -> str | None:
        raw = self.buf[start + 1 : end - 1]
        if escaped:
            raw = _unescape(raw).encode("utf-8")
        return keys.get(raw)

    def obj(self, i: int, depth: int, keys: dict, found: _Found) -> int:
        """Walk the object at ``i`` (own depth ``depth``), recording members named in ``keys``."""
        if depth > MAX_DEPTH:
            raise _parse_error(i, "nesting deeper than 512")
        i = self.ws(i + 1)
        if self.byte(i) == 0x7D:
            return i + 1
        seen: set[str] = set()
        while True:
            if self.byte(i) != 0x22:
                raise _parse_error(i, "expected a string key")
            kstart = i
            i, escaped = self.string(i)
            field = self.key(kstart, i, escaped, keys)
            i = self.ws(i)
            if self.byte(i) != 0x3A:
                raise _parse_error(i, "expected ':'")
            i = self.ws(i + 1)
            if field is not None:
                # A member acted on, named twice: parsers disagree on which counts.
                if field in seen:
                    raise _parse_error(kstart, "duplicate member name")
                seen.add(field)
            i = self.member(i, depth, field, found)
            i = self.ws(i)
            c = self.byte(i)
            if c == 0x2C:
                i = self.ws(i + 1)
            elif c == 0x7D:
                return i + 1
            else:
                raise _parse_error(i, "expected ',' or '}'")

    def member(self, i: int, depth: int, field: str | None, found: _Found) -> int:
        """Record (or descend into) the value at ``i`` of member ``field`` (named once
        in its object: ``obj`` refuses a repeated one)."""
        inner = None
        if field == "params":
            inner = _PARAMS_KEYS
        elif field == "_meta":
            inner = _META_KEYS
        elif field == "error":
            inner = _ERROR_KEYS
        if inner is not None and self.byte(i) == 0x7B:
            end, tag, escaped = self.obj(i, depth + 1, inner, found), T_OBJECT, False
        else:
            end, tag, escaped = self.value(i, depth)
        if field is not None and field != "_meta":
            setattr(found, field, (tag, i, end, escaped))
        return end


def _unescape(raw: bytes) -> str:
    """Decode the (already validated) contents of a JSON string (RFC 8259 §7)."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        j = raw.find(b"\\", i)
        if j < 0:
            out.append(raw[i:].decode("utf-8"))
            break
        out.append(raw[i:j].decode("utf-8"))
        c = raw[j + 1]
        if c != 0x75:
            out.append(_SIMPLE_ESCAPES[c])
            i = j + 2
            continue
        unit = int(raw[j + 2 : j + 6], 16)
        i = j + 6
        if 0xD800 <= unit <= 0xDBFF:  # validated: an escaped low surrogate follows
            unit = 0x10000 + ((unit - 0xD800) << 10) + (int(raw[j + 8 : j + 12], 16) - 0xDC00)
            i = j + 12
        out.append(chr(unit))
    return "".join(out)


def _text(buf: bytes, rec: tuple) -> str:
    _, start, end, escaped = rec
    raw = buf[start + 1 : end - 1]
    return _unescape(raw) if escaped else raw.decode("utf-8")


def _decoded(buf: bytes, rec: tuple | None, tags: tuple) -> tuple[object, tuple[int, int] | None]:
    """(value, span) of a recorded field if its JSON type is one of ``tags``, else (None, None)."""
    if rec is None or rec[0] not in tags:
        return None, None
    tag, start, end, _ = rec
    if tag == T_STRING:
        return _text(buf, rec), (start, end)
    if tag == T_INT:
        return int(buf[start:end]), (start, end)
    return None, (start, end)  # T_NULL, T_OBJECT, T_ARRAY: span only


def _envelope(buf: bytes, f: _Found, element: int | None) -> Envelope:
    """Check one walked message against JSON-RPC 2.0 (§4 request, §4.1 notification,
    §5 response) and decode the reported fields.  The checks run in this order in both
    implementations so that the first complaint is the same."""
    if f.jsonrpc is None or f.jsonrpc[0] != T_STRING or _text(buf, f.jsonrpc) != "2.0":
        raise _invalid('"jsonrpc" must be "2.0"', element)
    if f.method is not None and f.method[0] != T_STRING:
        raise _invalid('"method" must be a string', element)
    if f.id is not None and f.id[0] not in (T_STRING, T_INT, T_NULL):
        raise _invalid('"id" must be a string, an integer or null', element)
    if f.result is not None and f.error is not None:
        raise _invalid('both "result" and "error"', element)
    if f.method is not None:
        if f.result is not None or f.error is not None:
            raise _invalid('a request cannot carry "result" or "error"', element)
        kind = KIND_REQUEST if f.id is not None else KIND_NOTIFICATION
    elif f.result is None and f.error is None:
        raise _invalid('no "method", "result" or "error"', element)
    elif f.id is None:
        raise _invalid('a response needs an "id"', element)
    else:
        kind = KIND_RESPONSE if f.result is not None else KIND_ERROR

    env = Envelope()
    env.kind, env.start, env.end = kind, f.start, f.end
    if f.method is not None:
        env.method = _text(buf, f.method)
    env.id, env.id_span = _decoded(buf, f.id, (T_STRING, T_INT, T_NULL))
    if f.params is not None and f.params[0] in (T_OBJECT, T_ARRAY):  # JSON-RPC §4.2: structured
        env.params_span = (f.params[1], f.params[2])
    env.name, env.name_span = _decoded(buf, f.name, (T_STRING,))
    env.uri, env.uri_span = _decoded(buf, f.uri, (T_STRING,))
    env.cursor, env.cursor_span = _decoded(buf, f.cursor, (T_STRING,))
    env.progress_token, env.progress_token_span = _decoded(buf, f.progress_token, (T_STRING, T_INT))
    env.request_id, env.request_id_span = _decoded(buf, f.request_id, (T_STRING, T_INT))
    env.protocol_version, env.protocol_version_span = _decoded(buf, f.protocol_version, (T_STRING,))
    if f.result is not None:
        env.result_span = (f.result[1], f.result[2])
    if f.error is not None:
        env.error_span = (f.error[1], f.error[2])
        env.error_code, _ = _decoded(buf, f.error_code, (T_INT,))
    return env


def _as_bytes(body) -> bytes:
    if type(body) is bytes:
        return body
    with memoryview(body) as view:
        if not view.c_contiguous:
            raise BufferError("body must be a C-contiguous buffer")
        return view.tobytes()


def scan_jsonrpc(body) -> Envelope | list[Envelope]:
    """See ``_core.pyi``.  Walk the whole text first (-32700), then judge it (-32600)."""
    buf = _as_bytes(body)
    w = _Walker(buf)
    i = w.ws(0)
    c = w.byte(i)
    found: list[_Found] = []
    not_object = -1  # index of the first batch element that is not an object
    batch = c == 0x5B
    if c == -1:
        raise _parse_error(i, "no JSON value")
    if c == 0x7B:
        f = _Found(i, 0)
        f.end = end = w.obj(i, 1, _TOP_KEYS, f)
        found.append(f)
    elif batch:  # JSON-RPC 2.0 §6: an array of message objects
        end = w.ws(i + 1)
        if w.byte(end) == 0x5D:
            end += 1
        else:
            index = 0
            while True:
                if w.byte(end) == 0x7B:
                    f = _Found(end, index)
                    f.end = w.obj(end, 2, _TOP_KEYS, f)
                    found.append(f)
                    end = f.end
                else:
                    end, _, _ = w.value(end, 1)
                    if not_object < 0:
                        not_object = index
                end = w.ws(end)
                c = w.byte(end)
                if c == 0x2C:
                    end = w.ws(end + 1)
                    index += 1
                elif c == 0x5D:
                    end += 1
                    break
                else:
                    raise _parse_error(end, "expected ',' or ']'")
    else:
        end, _, _ = w.value(i, 0)
    tail = w.ws(end)
    if tail != w.n:  # RFC 8259 §2: JSON-text = ws value ws
        raise _parse_error(tail, "data after the JSON value")

    if not batch:
        if not found:
            raise _invalid("not an object", None)
        return _envelope(buf, found[0], None)
    if not found and not_object < 0:
        raise _invalid("empty batch", None)
    out = []
    for f in found:
        if 0 <= not_object < f.index:
            break
        out.append(_envelope(buf, f, f.index))
    if not_object >= 0:
        raise _invalid("not an object", not_object)
    return out


# -- splicing ----------------------------------------------------------------------------


def _byte_view(obj) -> memoryview:
    view = memoryview(obj)
    if not view.c_contiguous:
        raise BufferError("a C-contiguous buffer is required")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _checked_range(start, end, n: int) -> tuple[int, int]:
    start, end = operator.index(start), operator.index(end)
    if not 0 <= start <= end <= n:
        raise ValueError(f"bad range [{start}, {end}) for a body of {n} bytes")
    return start, end


def splice(body, start: int, end: int, replacement) -> bytes:
    """``body[:start] + replacement + body[end:]`` in one copy."""
    view = _byte_view(body)
    start, end = _checked_range(start, end, len(view))
    return b"".join((view[:start], _byte_view(replacement), view[end:]))


def splice_many(body, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Apply non-overlapping edits, given in any order, in one copy.  Two edits that
    overlap or start at the same offset (whose order would be ambiguous) are refused."""
    view = _byte_view(body)
    n = len(view)
    checked = []
    for start, end, replacement in edits:
        start, end = _checked_range(start, end, n)
        checked.append((start, end, _byte_view(replacement)))
    checked.sort(key=operator.itemgetter(0))
    pieces, pos, prev_start = [], 0, -1
    for start, end, replacement in checked:
        if start < pos or start == prev_start:
            raise ValueError(f"edit at [{start}, {end}) overlaps another edit")
        pieces.append(view[pos:start])
        pieces.append(replacement)
        pos, prev_start = end, start
    pieces.append(view[pos:])
    return b"".join(pieces)
