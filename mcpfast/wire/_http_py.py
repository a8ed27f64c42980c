"""HTTP/1.1 request and response parsing: the pure-Python twin of ``_http.pxi``.

Theory of operation.  A connection's bytes arrive in ``feed`` calls cut at arbitrary
points.  The parser is a state machine over one message at a time: line states
(start line, header fields, chunk-size line, trailer fields) consume whole lines, body
states consume counted runs of bytes.  Only an *unfinished line* is ever copied: when a
``feed`` ends inside a line, its bytes go to ``_buf`` and the next ``feed`` searches
only its own new bytes for the LF that finishes the line, so no byte is searched twice
(the buffer's length is the "searched up to" mark, since it never holds an LF).
Everything else is read in place, and body runs that lie in a ``bytes`` object handed
to ``feed`` go out as that object or, when at least ``_COPY_BELOW`` bytes long, a
``memoryview`` of it; shorter runs, where a copy is cheaper than a view, are copied.

Limits and errors are checked so that the outcome does not depend on where the input
was cut: a finished line is checked for size before anything else, and an unfinished
one only for size, against the same bound.  So feeding a message whole, byte by byte
or in random pieces gives the same events (up to how body bytes are grouped into
chunks, which follows the ``feed`` calls) and the same ``ProtocolError`` status.  The
compiled core implements this very algorithm, and the differential tests hold the two
to it.

Failure: a ``ProtocolError`` (bad input) or any exception from a handler callback
leaves the parser dead; later ``feed``/``feed_eof`` calls raise ``RuntimeError``, as
does ``feed`` after ``feed_eof``.  The owner closes the connection instead.
"""

from __future__ import annotations

import re

from .errors import ProtocolError

__all__ = ["RequestHead", "RequestParser", "ResponseHead", "ResponseParser", "join_fields"]

# Parser states; the compiled core's HTTPState enum has the same members.
_START = 0  # expecting a request-line / status-line
_HEADERS = 1  # inside the header section
_BODY = 2  # Content-Length body, ``_remaining`` bytes to go
_CHUNK_SIZE = 3  # expecting a chunk-size line
_CHUNK_DATA = 4  # inside chunk-data, ``_remaining`` bytes to go
_CHUNK_CR = 5  # expecting the CR that ends chunk-data
_CHUNK_LF = 6  # expecting the LF that ends chunk-data
_TRAILERS = 7  # inside the trailer section
_UNTIL_CLOSE = 8  # response body delimited by the connection closing
_CLOSED = 9  # feed_eof() was called
_DEAD = 10  # an exception left the parser; it takes no more input

_LINE_STATES = (_START, _HEADERS, _CHUNK_SIZE, _TRAILERS)

# RFC 9110 §5.6.2: tchar.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# RFC 9112 §3: method SP request-target; the target is matched greedily over visible
# ASCII so that its length can be judged (414) before the rest of the line.
_REQUEST_LINE_HEAD = re.compile(rb"[" + _TCHAR + rb"]+ ([\x21-\x7e]*)")
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
# RFC 9110 §5.5: field-value is HTAB, SP, VCHAR and obs-text; anything else (NUL,
# CR, LF, other controls, DEL) is refused rather than replaced.
_BAD_FIELD_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 §4: HTTP-version SP 3DIGIT [SP reason-phrase].  A missing SP before an
# empty reason is tolerated (many servers omit it).
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([1-9][0-9][0-9])(?: (.*))?\Z", re.S)
_HEX = re.compile(rb"[0-9A-Fa-f]*")
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
# ext-val = token / quoted-string (RFC 9110 §5.6.4).
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*[" + _TCHAR + rb"]+(?:[ \t]*=[ \t]*(?:[" + _TCHAR + rb"]+"
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*\Z'
)

#: chunk-size is at most 16 hex digits; chunk-ext at most this many bytes.
_MAX_CHUNK_HEX = 16
_MAX_CHUNK_EXT = 4096
#: a chunk-size line longer than this (CRLF included) cannot be valid.
_MAX_CHUNK_LINE = _MAX_CHUNK_HEX + _MAX_CHUNK_EXT + 2
#: Content-Length with more significant digits than this exceeds any body we take.
_MAX_LENGTH_DIGITS = 18
#: the body limit of the response parser (which has none); keeps sizes in 63 bits.
_NO_BODY_LIMIT = 1 << 62
#: body runs shorter than this are handed out as copies (cheaper than a view).
_COPY_BELOW = 512

# Field names the parsers look at, matched case-insensitively (RFC 9110 §5.1).
_F_OTHER = 0
_F_HOST = 1
_F_CONTENT_TYPE = 2
_F_ACCEPT = 3
_F_AUTHORIZATION = 4
_F_ORIGIN = 5
_F_CONNECTION = 6
_F_TRANSFER_ENCODING = 7
_F_SESSION_ID = 8
_F_PROTOCOL_VERSION = 9
_F_MCP_METHOD = 10
_F_MCP_NAME = 11
_F_LAST_EVENT_ID = 12
_F_CONTENT_LENGTH = 13
_F_EXPECT = 14
_FIELD_IDS = {
    b"host": _F_HOST,
    b"content-type": _F_CONTENT_TYPE,
    b"accept": _F_ACCEPT,
    b"authorization": _F_AUTHORIZATION,
    b"origin": _F_ORIGIN,
    b"connection": _F_CONNECTION,
    b"transfer-encoding": _F_TRANSFER_ENCODING,
    b"mcp-session-id": _F_SESSION_ID,
    b"mcp-protocol-version": _F_PROTOCOL_VERSION,
    b"mcp-method": _F_MCP_METHOD,
    b"mcp-name": _F_MCP_NAME,
    b"last-event-id": _F_LAST_EVENT_ID,
    b"content-length": _F_CONTENT_LENGTH,
    b"expect": _F_EXPECT,
}
# Request fields with an attribute on RequestHead: id -> (attribute, joined as a list).
_REQUEST_FIELDS = {
    _F_HOST: ("host", False),
    _F_CONTENT_TYPE: ("content_type", False),
    _F_ACCEPT: ("accept", True),
    _F_AUTHORIZATION: ("authorization", False),
    _F_ORIGIN: ("origin", False),
    _F_CONNECTION: ("connection", True),
    _F_TRANSFER_ENCODING: ("transfer_encoding", True),
    _F_SESSION_ID: ("session_id", False),
    _F_PROTOCOL_VERSION: ("protocol_version", False),
    _F_MCP_METHOD: ("mcp_method", False),
    _F_MCP_NAME: ("mcp_name", False),
    _F_LAST_EVENT_ID: ("last_event_id", False),
}
_RESPONSE_FIELDS = {
    _F_CONTENT_TYPE: ("content_type", False),
    _F_SESSION_ID: ("session_id", False),
    _F_CONNECTION: ("connection", True),
    _F_TRANSFER_ENCODING: ("transfer_encoding", True),
}


def _elements(value: bytes) -> list[bytes]:
    """The non-empty, OWS-trimmed elements of a comma list (RFC 9110 §5.6.1: a
    recipient ignores empty elements)."""
    return [e for e in (x.strip(b" \t") for x in value.split(b",")) if e]


def _keep_alive(version: int, connection: bytes | None) -> bool:
    # RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
    close = keep = False
    if connection is not None:
        for e in _elements(connection):
            e = e.lower()
            if e == b"close":
                close = True
            elif e == b"keep-alive":
                keep = True
    if close:
        return False
    return version == 11 or keep


class RequestHead:
    """A parsed request line and header section (RFC 9112 §3, §5)."""

    __slots__ = (
        "method", "target", "version", "headers", "keep_alive", "content_length", "chunked",
        "expect_continue", "host", "content_type", "accept", "authorization", "origin",
        "connection", "transfer_encoding", "session_id", "protocol_version", "mcp_method",
        "mcp_name", "last_event_id",
    )  # fmt: skip

    def __init__(self, method: bytes, target: bytes, version: int) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.content_length = -1
        self.chunked = False
        self.expect_continue = False
        self.host = self.content_type = self.accept = self.authorization = None
        self.origin = self.connection = self.transfer_encoding = self.session_id = None
        self.protocol_version = self.mcp_method = self.mcp_name = self.last_event_id = None

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.target!r} HTTP/{self.version // 10}.{self.version % 10} headers={self.headers!r}>"


class ResponseHead:
    """A parsed status line and header section (RFC 9112 §4)."""

    __slots__ = (
        "version", "status", "reason", "headers", "keep_alive", "content_length", "chunked",
        "content_type", "session_id", "connection", "transfer_encoding",
    )  # fmt: skip

    def __init__(self, version: int, status: int, reason: bytes) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.content_length = -1
        self.chunked = False
        self.content_type = self.session_id = self.connection = self.transfer_encoding = None

    def __repr__(self) -> str:
        return f"<ResponseHead HTTP/{self.version // 10}.{self.version % 10} {self.status} {self.reason!r} headers={self.headers!r}>"


class _Parser:
    """What request and response parsing share: lines, fields, bodies, chunked framing."""

    _fault_status = 0  # 0: use each rule's own status; the response parser says 502

    def __init__(self, max_header_bytes: int, max_headers: int, max_body_bytes: int) -> None:
        if max_header_bytes < 1 or max_headers < 0 or max_body_bytes < 0:
            raise ValueError("limits must be positive")
        self._buf = bytearray()  # the unfinished line; never holds an LF
        self._state = _START
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_body = max_body_bytes
        self._section_bytes = 0  # bytes of the header/trailer section so far
        self._nfields = 0
        self._fields: list = []  # where the current section's fields go
        self._remaining = 0  # body or chunk-data bytes still to come
        self._body_count = 0  # chunk-data bytes declared so far in this message
        self._head = None

    def _fail(self, status: int, message: str):
        raise ProtocolError(message, self._fault_status or status)

    # -- input ------------------------------------------------------------------

    def feed(self, data) -> None:
        if self._state >= _CLOSED:
            self._refuse()
        zero_copy = type(data) is bytes
        if not zero_copy:
            data = bytes(data)  # not retained by contract: body runs will be copies
        try:
            self._feed(data, zero_copy)
        except BaseException:
            self._state = _DEAD
            raise

    def _refuse(self):
        if self._state == _CLOSED:
            raise RuntimeError("feed after feed_eof")
        raise RuntimeError("the parser failed earlier and takes no more input")

    @property
    def in_message(self) -> bool:
        st = self._state
        if st >= _CLOSED:
            return False
        return st != _START or len(self._buf) > 0

    def _feed(self, data: bytes, zero_copy: bool) -> None:
        pos = 0
        n = len(data)
        view = None
        while pos < n:
            st = self._state
            if st == _BODY or st == _CHUNK_DATA:
                take = min(n - pos, self._remaining)
                if zero_copy and take == n:
                    chunk = data
                elif zero_copy and take >= _COPY_BELOW:
                    if view is None:
                        view = memoryview(data)
                    chunk = view[pos : pos + take]
                else:
                    chunk = data[pos : pos + take]
                pos += take
                self._remaining -= take
                done = self._remaining == 0
                if done:
                    self._state = _START if st == _BODY else _CHUNK_CR
                self._on_body(chunk)
                if done and st == _BODY:
                    self._message_end(None)
            elif st == _CHUNK_CR:
                # RFC 9112 §7.1: chunk = chunk-size [chunk-ext] CRLF chunk-data CRLF
                if data[pos] != 13:
                    self._fail(400, "chunk-data not followed by CRLF")
                pos += 1
                self._state = _CHUNK_LF
            elif st == _CHUNK_LF:
                if data[pos] != 10:
                    self._fail(400, "chunk-data not followed by CRLF")
                pos += 1
                self._state = _CHUNK_SIZE
            elif st == _UNTIL_CLOSE:
                if pos == 0 and zero_copy:
                    chunk = data
                elif zero_copy and n - pos >= _COPY_BELOW:
                    chunk = memoryview(data)[pos:]
                else:
                    chunk = data[pos:]
                pos = n
                self._on_body(chunk)
            elif st in _LINE_STATES:
                lf = data.find(b"\n", pos)
                if lf < 0:
                    self._buf += memoryview(data)[pos:]
                    self._check_partial_line()
                    return
                end = lf + 1
                if self._buf:
                    self._buf += memoryview(data)[pos:end]
                    line = bytes(self._buf)
                    self._buf.clear()
                else:
                    line = data[pos:end]
                pos = end
                self._line(line)
            else:  # a handler called feed_eof() from inside a callback
                self._refuse()

    def _check_partial_line(self) -> None:
        """Refuse an unfinished line that is already too long; the bounds are those a
        finished line is held to, so the outcome does not depend on where input was cut."""
        b = len(self._buf)
        st = self._state
        if st == _START:
            if b > self._max_header_bytes:
                self._start_line_too_long(bytes(self._buf))
        elif st == _HEADERS or st == _TRAILERS:
            if self._section_bytes + b > self._max_header_bytes:
                self._fail(431, "header section too large")
        elif st == _CHUNK_SIZE:
            if b > _MAX_CHUNK_LINE:
                self._fail(400, "chunk-size line too long")

    def _line(self, line: bytes) -> None:
        st = self._state
        if st == _HEADERS or st == _TRAILERS:
            size = len(line)
            self._section_bytes += size
            if self._section_bytes > self._max_header_bytes:
                self._fail(431, "header section too large")
            if size < 2 or line[-2] != 13:
                # RFC 9112 §2.2: a bare LF (or CR) as line end is refused.
                self._fail(400, "line not ended by CRLF")
            if size == 2:
                if st == _HEADERS:
                    self._head_done()
                else:
                    trailers = self._fields
                    self._fields = []
                    self._state = _START
                    self._message_end(trailers)
                return
            self._field_line(line[:-2], st == _HEADERS)
        elif st == _START:
            self._start_line(line)
        else:
            self._chunk_size_line(line)

    def _field_line(self, c: bytes, in_head: bool) -> None:
        # RFC 9112 §5.2: obs-fold is refused; RFC 9112 §2.2: so is whitespace between
        # the start line and the first field (same test: a line starting with SP/HTAB).
        if c[0] in (32, 9):
            self._fail(400, "obs-fold or leading whitespace in a field line")
        self._nfields += 1
        if self._nfields > self._max_headers:
            self._fail(431, "too many header fields")
        # RFC 9112 §5.1: field-name ":" OWS field-value OWS; no whitespace before ":".
        m = _TOKEN.match(c)
        colon = m.end() if m else 0
        if colon == 0 or colon == len(c) or c[colon] != 58:
            self._fail(400, "bad field name")
        name = c[:colon]
        value = c[colon + 1 :].strip(b" \t")
        if _BAD_FIELD_CHAR.search(value):
            self._fail(400, "invalid character in field value")
        self._fields.append((name, value))
        if in_head:
            fid = _FIELD_IDS.get(name.lower(), _F_OTHER)
            if fid != _F_OTHER:
                self._on_field(fid, value)

    def _set_field(self, table: dict, fid: int, value: bytes) -> None:
        spec = table.get(fid)
        if spec is None:
            return
        attr, joined = spec
        head = self._head
        old = getattr(head, attr)
        if old is None:
            setattr(head, attr, value)
        elif joined:
            # RFC 9110 §5.3: repeated list fields combine in order with ", ".
            setattr(head, attr, old + b", " + value)
        else:
            self._fail(400, f"duplicate {attr} field")

    def _content_length(self, value: bytes) -> None:
        # RFC 9110 §8.6: Content-Length = 1*DIGIT.  A comma list of identical values
        # (what a proxy makes of duplicates) means that value; differing values are
        # the smuggling case and are refused.
        head = self._head
        for e in value.split(b","):
            e = e.strip(b" \t")
            if not e.isdigit():
                self._fail(400, "bad Content-Length")
            significant = e.lstrip(b"0")
            if len(significant) > _MAX_LENGTH_DIGITS:
                self._fail(413, "Content-Length too large")
            # Only the significant digits: int() refuses strings over 4300 digits, and
            # leading zeros may make up any part of a header line.
            n = int(significant or b"0")
            if head.content_length >= 0 and n != head.content_length:
                self._fail(400, "conflicting Content-Length values")
            head.content_length = n

    def _chunk_size_line(self, line: bytes) -> None:
        # RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF; size checks come first so a
        # cut line and a whole one fail alike.
        size = len(line)
        if size > _MAX_CHUNK_LINE:
            self._fail(400, "chunk-size line too long")
        if size < 2 or line[-2] != 13:
            self._fail(400, "line not ended by CRLF")
        c = line[:-2]
        digits = _HEX.match(c).end()
        if digits == 0 or digits > _MAX_CHUNK_HEX:
            self._fail(400, "bad chunk-size")
        ext_len = len(c) - digits
        if ext_len > _MAX_CHUNK_EXT:
            self._fail(400, "chunk-ext too long")
        if ext_len and not _CHUNK_EXT.match(c, digits):
            self._fail(400, "bad chunk-ext")
        n = int(c[:digits], 16)
        if n == 0:
            # RFC 9112 §7.1.2: last-chunk, then the trailer section.
            self._state = _TRAILERS
            self._section_bytes = 0
            self._nfields = 0
            self._fields = []
            return
        if n > self._max_body - self._body_count:
            self._fail(413, "chunked body too large")
        self._body_count += n
        self._remaining = n
        self._state = _CHUNK_DATA

    @staticmethod
    def _codings(te: bytes) -> tuple[bool, bool, bool]:
        """(final coding is chunked, chunked appears before the end, another coding
        appears before the end) for a Transfer-Encoding list."""
        codings = [e.lower() for e in _elements(te)]
        last = bool(codings) and codings[-1] == b"chunked"
        earlier = codings[:-1]
        return last, b"chunked" in earlier, any(c != b"chunked" for c in earlier)


class RequestParser(_Parser):
    """Incremental HTTP/1.1 request parser for one client connection (see ``_core.pyi``)."""

    def __init__(
        self,
        handler,
        *,
        max_header_bytes: int = 65536,
        max_headers: int = 128,
        max_target_bytes: int = 8192,
        max_body_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        super().__init__(max_header_bytes, max_headers, max_body_bytes)
        if max_target_bytes < 1:
            raise ValueError("limits must be positive")
        self._max_target = max_target_bytes
        # Bound once: the handler's callbacks are looked up per connection, not per event.
        self._on_request = handler.on_request
        self._on_body = handler.on_body
        self._on_request_end = handler.on_request_end
        self._expect = False

    def feed_eof(self) -> None:
        st = self._state
        if st == _CLOSED:
            return
        if st == _DEAD:
            self._refuse()
        if self.in_message:
            self._state = _DEAD
            self._fail(400, "connection closed inside a request")
        self._state = _CLOSED

    def _start_line_too_long(self, line: bytes) -> None:
        # Judge only the first max_header_bytes + 1 bytes -- all a cut line is sure to
        # have -- so that whole and cut input get the same status: 414 when the target
        # alone is over its limit (RFC 9112 §3), else 431.
        prefix = line[: self._max_header_bytes + 1]
        m = _REQUEST_LINE_HEAD.match(prefix)
        if m and len(m.group(1)) > self._max_target:
            self._fail(414, "request-target too long")
        self._fail(431, "request line too long")

    def _start_line(self, line: bytes) -> None:
        size = len(line)
        if size > self._max_header_bytes:
            self._start_line_too_long(line)
        if size < 2 or line[-2] != 13:
            self._fail(400, "line not ended by CRLF")
        if size == 2:
            return  # RFC 9112 §2.2: empty lines before the request-line are ignored
        c = line[:-2]
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
        m = _REQUEST_LINE_HEAD.match(c)
        if m is None:
            self._fail(400, "bad method")
        target = m.group(1)
        if len(target) > self._max_target:
            self._fail(414, "request-target too long")
        if not target:
            self._fail(400, "bad request-target")
        rest = c[m.end() :]
        if rest[:1] != b" ":
            self._fail(400, "bad request-target")
        # RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive.
        v = rest[1:]
        if len(v) != 8 or v[:5] != b"HTTP/" or v[6] != 46 or not (48 <= v[5] <= 57 and 48 <= v[7] <= 57):
            self._fail(400, "bad HTTP version")
        if v[5:] == b"1.1":
            version = 11
        elif v[5:] == b"1.0":
            version = 10
        else:
            self._fail(505, "HTTP version not supported")
        self._head = head = RequestHead(c[: m.start(1) - 1], target, version)
        self._fields = head.headers
        self._section_bytes = size
        self._nfields = 0
        self._expect = False
        self._state = _HEADERS

    def _on_field(self, fid: int, value: bytes) -> None:
        if fid == _F_CONTENT_LENGTH:
            self._content_length(value)
        elif fid == _F_EXPECT:
            # RFC 9110 §10.1.1: the only expectation defined is 100-continue.
            if value.lower() != b"100-continue":
                self._fail(417, "unsupported expectation")
            self._expect = True
        else:
            # RFC 9112 §3.2: more than one Host is a 400, as are repeats of the other
            # singletons we expose (an ambiguous session id or credential is unsafe).
            self._set_field(_REQUEST_FIELDS, fid, value)

    def _head_done(self) -> None:
        head = self._head
        if head.version == 11 and head.host is None:
            self._fail(400, "missing Host")  # RFC 9112 §3.2
        te = head.transfer_encoding
        if te is not None:
            if head.version == 10:
                # RFC 9112 §6.1: TE in 1.0 means faulty framing.
                self._fail(400, "Transfer-Encoding in an HTTP/1.0 request")
            if head.content_length >= 0:
                # RFC 9112 §6.1, §6.3 rule 3: both present is the smuggling pattern.
                self._fail(400, "Transfer-Encoding with Content-Length")
            last, chunked_earlier, other_earlier = self._codings(te)
            if not last:
                self._fail(400, "chunked is not the final transfer coding")  # §6.3 rule 4
            if chunked_earlier:
                self._fail(400, "chunked applied more than once")  # §7.1
            if other_earlier:
                self._fail(501, "unsupported transfer coding")  # §6.1
            head.chunked = True
        if head.content_length > self._max_body:
            self._fail(413, "body too large")
        head.keep_alive = _keep_alive(head.version, head.connection)
        # RFC 9110 §10.1.1: a 100-continue expectation in HTTP/1.0 is ignored.
        head.expect_continue = self._expect and head.version == 11
        self._head = None
        if head.chunked:
            self._state = _CHUNK_SIZE
            self._body_count = 0
            self._on_request(head)
        elif head.content_length > 0:
            self._state = _BODY
            self._remaining = head.content_length
            self._on_request(head)
        else:
            # RFC 9112 §6.3 rule 7: a request without framing fields has no body.
            self._state = _START
            self._on_request(head)
            self._message_end(None)

    def _message_end(self, trailers) -> None:
        self._on_request_end(trailers)


class ResponseParser(_Parser):
    """Incremental HTTP/1.1 response parser for one upstream connection (see ``_core.pyi``).

    Every ``ProtocolError`` it raises has status 502: a malformed upstream answer is
    the gateway's bad gateway, whatever rule it broke.
    """

    _fault_status = 502

    def __init__(self, handler, *, max_header_bytes: int = 65536, max_headers: int = 128) -> None:
        super().__init__(max_header_bytes, max_headers, _NO_BODY_LIMIT)
        self._on_interim = handler.on_interim
        self._on_response = handler.on_response
        self._on_body = handler.on_body
        self._on_response_end = handler.on_response_end
        self._head_request = False

    def expect_head_response(self) -> None:
        self._head_request = True

    def feed_eof(self) -> None:
        st = self._state
        if st == _CLOSED:
            return
        if st == _DEAD:
            self._refuse()
        if st == _UNTIL_CLOSE:
            # RFC 9112 §6.3 rule 8: the close is the end of this body.
            self._state = _CLOSED
            try:
                self._on_response_end(None)
            except BaseException:
                self._state = _DEAD
                raise
            return
        if self.in_message:
            self._state = _DEAD
            self._fail(502, "connection closed inside a response")
        self._state = _CLOSED

    def _start_line_too_long(self, line: bytes) -> None:
        self._fail(431, "status line too long")

    def _start_line(self, line: bytes) -> None:
        size = len(line)
        if size > self._max_header_bytes:
            self._start_line_too_long(line)
        if size < 2 or line[-2] != 13:
            self._fail(502, "line not ended by CRLF")
        m = _STATUS_LINE.match(line, 0, size - 2)
        if m is None:
            self._fail(502, "bad status line")
        if m.group(1) != b"1" or m.group(2) not in (b"0", b"1"):
            self._fail(502, "unsupported HTTP version")
        status = int(m.group(3))
        if status == 101:
            self._fail(502, "unexpected protocol switch")  # we never ask to upgrade
        reason = m.group(4) or b""
        if _BAD_FIELD_CHAR.search(reason):
            self._fail(502, "invalid character in reason phrase")
        self._head = head = ResponseHead(10 if m.group(2) == b"0" else 11, status, reason)
        self._fields = head.headers
        self._section_bytes = size
        self._nfields = 0
        self._state = _HEADERS

    def _on_field(self, fid: int, value: bytes) -> None:
        if fid == _F_CONTENT_LENGTH:
            self._content_length(value)
        else:
            self._set_field(_RESPONSE_FIELDS, fid, value)

    def _head_done(self) -> None:
        head = self._head
        self._head = None
        status = head.status
        head.keep_alive = _keep_alive(head.version, head.connection)
        if status < 200:
            # RFC 9110 §15.2: interim; the final response follows on this connection.
            head.content_length = -1
            self._state = _START
            self._on_interim(head)
            return
        # RFC 9112 §6.3 rule 1: HEAD, 204 and 304 responses end with their head.
        if self._head_request or status == 204 or status == 304:
            self._head_request = False
            head.content_length = -1
            self._state = _START
            self._on_response(head)
            self._message_end(None)
            return
        te = head.transfer_encoding
        if te is not None:
            if head.content_length >= 0:
                self._fail(502, "Transfer-Encoding with Content-Length")  # §6.3 rule 3
            if head.version == 10:
                head.keep_alive = False  # §6.1: framing of a 1.0 message with TE is suspect
            if self._codings(te)[0]:
                head.chunked = True
                self._state = _CHUNK_SIZE
                self._body_count = 0
            else:
                head.keep_alive = False  # §6.3 rule 3: read until close
                self._state = _UNTIL_CLOSE
            self._on_response(head)
        elif head.content_length >= 0:
            if head.content_length > 0:
                self._state = _BODY
                self._remaining = head.content_length
                self._on_response(head)
            else:
                self._state = _START
                self._on_response(head)
                self._message_end(None)
        else:
            head.keep_alive = False  # §6.3 rule 8: read until close
            self._state = _UNTIL_CLOSE
            self._on_response(head)

    def _message_end(self, trailers) -> None:
        self._on_response_end(trailers)


# ---------------------------------------------------------------------------------
# Forwarding a header section
# ---------------------------------------------------------------------------------


def join_fields(headers: list, classes, listed) -> tuple[bytes, bytes | None]:
    """The header lines a proxy passes on, joined, and the last ``X-Forwarded-For``
    value.  ``classes[name]``: 0 forward, 1 drop, 2 X-Forwarded-For (dropped, value
    returned); ``listed``: None or lower-case names a ``Connection`` header made
    hop-by-hop.  Same contract as the compiled core's."""
    out = []
    xff = None
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes:
            raise TypeError("header fields are (bytes, bytes) pairs")
        code = classes[name]
        if code:
            if code == 2:
                xff = value
            continue
        if listed is not None and name.lower() in listed:
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    return b"".join(out), xff
