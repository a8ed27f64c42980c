"""Server-Sent Events: incremental parser and writer (pure-Python twin of ``_sse.pxi``).

Theory of operation.  An upstream MCP server answers with ``text/event-stream``; the
gateway relays that stream event by event and needs, for each event, both its exact
bytes (to forward it untouched) and its meaning (``event``/``data``/``id``/``retry``, to
route the JSON-RPC message inside ``data``).  Bytes flow into ``SSEParser.feed`` in
whatever pieces the transport delivers; out come ``SSEEvent`` blocks, each carrying its
verbatim ``raw`` bytes and absolute ``start``/``end`` offsets, so the blocks tile the
stream.  Unfinished bytes wait in a ``bytearray`` whose first byte is the start of the
current block; line ends are found with ``find`` and the positions of the next CR and
next LF are remembered, so no byte is searched twice however the stream is split.  The
rules are those of WHATWG HTML §9.2.6 "Interpreting an event stream", applied to bytes:
a UTF-8 decoder never folds an ASCII byte into a replacement character, so splitting on
the CR, LF and ``:`` bytes before decoding finds the same lines and fields as decoding
first would.  ``encode_sse_event`` is the inverse for the events the gateway writes.

This module is the readable reference: ``_sse.pxi`` follows the same steps with the same
state, and the differential tests demand identical events and errors from both.
"""

from __future__ import annotations

from operator import index as _as_index

from .errors import ProtocolError

__all__ = ["SSEEvent", "SSEParser", "encode_sse_event", "sse_passable"]

_BOM = b"\xef\xbb\xbf"  # §9.2.6: one leading U+FEFF is ignored
_CR = 13
_LF = 10
_COLON = 58
_SPACE = 32
# ``retry`` values are kept as exact integers only below 10**18 (they fit a C int64 and
# int() of a huge digit string is quadratic -- an upstream must not be able to make us
# spin on one line).  Larger all-digit values are ignored like invalid ones.
_RETRY_MAX_DIGITS = 18
_OVERSIZED = "SSE event exceeds max_event_bytes ({} bytes)"


class SSEEvent:
    """One block of an event stream (see ``_core.pyi``)."""

    __slots__ = ("raw", "start", "end", "event", "data", "id", "retry", "comments")

    def __init__(
        self,
        raw: bytes = b"",
        start: int = 0,
        end: int = 0,
        event: bytes | None = None,
        data: bytes | None = None,
        id: bytes | None = None,
        retry: int | None = None,
        comments: int = 0,
    ) -> None:
        self.raw = raw
        self.start = start
        self.end = end
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry
        self.comments = comments

    def __repr__(self) -> str:
        return (
            f"SSEEvent(start={self.start}, end={self.end}, event={self.event!r}, "
            f"data={_preview(self.data)}, id={self.id!r}, retry={self.retry!r}, comments={self.comments})"
        )


def _preview(data: bytes | None) -> str:
    if data is None or len(data) <= 60:
        return repr(data)
    return f"{data[:60]!r}...({len(data)} bytes)"


class SSEParser:
    """Incremental event-stream parser (see ``_core.pyi`` for the contract)."""

    def __init__(self, *, max_event_bytes: int = 16 * 1024 * 1024, stream_start: bool = True) -> None:
        self._max = max_event_bytes
        # Stream bytes from the start of the current block on; _buf[0] is at absolute
        # offset _base, which is also the number of bytes handed out in blocks.
        self._buf = bytearray()
        self._base = 0
        # Index in _buf of the next line to interpret.  Bytes before it belong to the
        # current block and have been interpreted already.
        self._line = 0
        # Search memo: no CR in _buf[_line:_cr] and _cr is a CR or len(_buf) (all of the
        # buffer searched).  Same for _lf.  This is what keeps a long line from being
        # rescanned each time another piece of it arrives.
        self._cr = 0
        self._lf = 0
        self._bom_pending = stream_start  # at offset 0 until 3 bytes (or EOF) settle the BOM
        self._closed = False
        self._error: str | None = None  # set once; every later call raises it
        self._reset_block()

    @property
    def offset(self) -> int:
        return self._base

    def feed(self, data: bytes | bytearray | memoryview) -> list[SSEEvent]:
        self._check_usable()
        if self._closed:
            raise RuntimeError("SSEParser.feed() after feed_eof()")
        self._buf += data
        return self._finish(self._run(at_eof=False))

    def feed_eof(self) -> list[SSEEvent]:
        self._check_usable()
        if self._closed:
            return []
        self._closed = True
        events = self._run(at_eof=True)
        if self._error is None:
            buf = self._buf
            end = len(buf)
            # §9.2.6 says a browser drops an unfinished event at EOF; a gateway must
            # still pass its bytes on, so it is reported -- but a last line without a
            # line end is not a line yet (it may be cut mid-JSON), so it is raw only.
            if self._has_line or self._line < end:
                if end > self._max:
                    self._error = _OVERSIZED.format(self._max)
                else:
                    events.append(self._emit(end))
            self._buf = bytearray()
            self._line = self._cr = self._lf = 0
        return self._finish(events)

    # -- internals -------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ProtocolError(self._error, status=502)

    def _finish(self, events: list[SSEEvent]) -> list[SSEEvent]:
        # Blocks completed before a fault are still handed out; the fault is raised now
        # if there are none, else by the next call.  That makes the outcome independent
        # of how the stream was split into feed() calls.
        if self._error is not None and not events:
            raise ProtocolError(self._error, status=502)
        return events

    def _reset_block(self) -> None:
        self._has_line = False  # a non-empty line was seen: the next empty line ends the block
        self._event: bytes | None = None
        self._data: list[bytes] | None = None
        self._id: bytes | None = None
        self._retry: int | None = None
        self._comments = 0

    def _run(self, at_eof: bool) -> list[SSEEvent]:
        """Interpret every complete line in the buffer; return the blocks they finish."""
        events: list[SSEEvent] = []
        buf = self._buf
        end = len(buf)
        pos = self._line
        held = 0  # 1 when the last buffered byte is a CR whose line end is undecided
        if self._bom_pending:
            # Fewer than 3 bytes that may still grow into a BOM: no line can start yet.
            if end >= 3 or at_eof or not _BOM.startswith(buf):
                self._bom_pending = False
                if buf.startswith(_BOM):
                    pos = 3  # part of the first block's raw, never of a line
        if not self._bom_pending:
            cr, lf = self._cr, self._lf
            while True:
                # Line ends (§9.2.5 end-of-line = CRLF / CR / LF): the nearer of the next
                # CR and the next LF, each found at most once.
                if cr < pos:
                    cr = pos
                if cr < end and buf[cr] != _CR:
                    cr = buf.find(b"\r", cr)
                    if cr < 0:
                        cr = end
                if lf < pos:
                    lf = pos
                if lf < end and buf[lf] != _LF:
                    lf = buf.find(b"\n", lf)
                    if lf < 0:
                        lf = end
                eol = cr if cr < lf else lf
                if eol == end:
                    break
                if eol == lf:
                    nxt = eol + 1
                elif eol + 1 < end:
                    nxt = eol + 2 if buf[eol + 1] == _LF else eol + 1
                elif at_eof:
                    nxt = eol + 1
                else:
                    # A CR ending the buffered data: only the next byte tells whether an
                    # LF follows and belongs to this line end (and to this block's raw),
                    # so the line waits.  A block ended by a CR blank line is therefore
                    # reported when the next byte or EOF arrives -- a CR-only stream is
                    # always one event behind; CRLF and LF streams lose nothing.
                    held = 1
                    break
                if eol == pos:  # empty line: §9.2.6 "dispatch the event"
                    if self._has_line:
                        if pos > self._max:  # block bytes before its blank line
                            self._error = _OVERSIZED.format(self._max)
                            break
                        events.append(self._emit(nxt))
                        # _emit dropped the block from the front of buf: shift our
                        # indices so that they stay relative to the new block's start.
                        end -= nxt
                        cr -= nxt
                        lf -= nxt
                        nxt = 0
                    # Empty lines before the first field line stay in the block's raw.
                else:
                    self._has_line = True
                    self._field(buf, pos, eol)
                pos = nxt
            self._cr, self._lf = cr, lf
        self._line = pos
        # max_event_bytes bounds what we hold for one block.  The held CR is not counted:
        # it may be the blank line that ends the block, whose size is what lies before it.
        if self._error is None and end - held > self._max:
            self._error = _OVERSIZED.format(self._max)
        return events

    def _field(self, buf: bytearray, a: int, b: int) -> None:
        """Interpret the non-empty line buf[a:b] (§9.2.6 field parsing)."""
        if buf[a] == _COLON:  # "If the line starts with a U+003A COLON character": comment
            self._comments += 1
            return
        colon = buf.find(b":", a, b)
        if colon < 0:  # no colon: the whole line is the name, the value is empty
            name = bytes(buf[a:b])
            value = b""
        else:
            name = bytes(buf[a:colon])
            v = colon + 1
            if v < b and buf[v] == _SPACE:  # one leading space of the value is dropped
                v += 1
            value = bytes(buf[v:b])
        # §9.2.6 "process the field"; names are case-sensitive, unknown ones ignored.
        if name == b"data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:  # an id containing NULL is ignored
                self._id = value
        elif name == b"retry":
            # Only ASCII digits (bytes.isdigit is ASCII-only; empty is not digits).
            if value.isdigit():
                significant = value.lstrip(b"0")
                if len(significant) <= _RETRY_MAX_DIGITS:
                    self._retry = int(significant or b"0")

    def _emit(self, stop: int) -> SSEEvent:
        """Cut the current block, buf[:stop], out as an event and start the next one."""
        buf = self._buf
        raw = bytes(buf[:stop])
        data = self._data
        ev = SSEEvent(
            raw,
            self._base,
            self._base + stop,
            self._event,
            None if data is None else (data[0] if len(data) == 1 else b"\n".join(data)),
            self._id,
            self._retry,
            self._comments,
        )
        del buf[:stop]  # bytearray drops a prefix without moving the rest
        self._base += stop
        self._reset_block()
        return ev


def encode_sse_event(
    data: bytes | None = None,
    *,
    event: bytes | None = None,
    id: bytes | None = None,
    retry: int | None = None,
) -> bytes:
    """One event block (see ``_core.pyi``): event, id, retry, then one data line per line."""
    parts: list[bytes] = []
    if event is not None:
        event = _as_bytes(event)
        if b"\r" in event or b"\n" in event:
            raise ValueError("SSE event type must not contain CR or LF")
        parts += (b"event: ", event, b"\n")
    if id is not None:
        id = _as_bytes(id)
        if b"\r" in id or b"\n" in id or b"\x00" in id:
            raise ValueError("SSE id must not contain CR, LF or NUL")
        parts += (b"id: ", id, b"\n")
    if retry is not None:
        retry = _as_index(retry)
        if not 0 <= retry < 10**_RETRY_MAX_DIGITS:
            raise ValueError("SSE retry must be in 0 .. 10**18 - 1")
        parts.append(b"retry: %d\n" % retry)
    if data is not None:
        data = _as_bytes(data)
        # Any of CRLF, CR, LF separates lines (§9.2.5), so each becomes a new data line.
        for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            parts += (b"data: ", line, b"\n")
    if not parts:
        # A lone blank line is not an event to any reader.
        raise ValueError("an SSE event needs data, event, id or retry")
    parts.append(b"\n")
    return b"".join(parts)


def sse_passable(data) -> bool:
    """Whole events a JSON-RPC relay may pass on unparsed (see ``_core.pyi``)."""
    b = _as_bytes(data)
    return (
        b.endswith((b"\n\n", b"\r\n\r\n"))
        and not b.startswith((b"\xef\xbb\xbf", b"id"))
        and b"\nid" not in b
        and b"\rid" not in b
        and b'"method"' not in b
        and b"\\u" not in b
    )


def _as_bytes(value: object) -> bytes:
    if type(value) is bytes:
        return value
    return bytes(memoryview(value))  # bytes-like only: bytes(5) would be five NULs
