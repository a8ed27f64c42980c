"""Type stub and contract of the protocol core.

Both ``mcpfast._core`` (Cython) and ``mcpfast._core_py`` (pure Python) implement exactly
this API; ``mcpfast.core`` picks one.  Everything raised for bad input is
``mcpfast.errors.ProtocolError`` (with ``.status`` and ``.code``); exceptions raised by
a handler callback propagate out of ``feed`` unchanged and leave the parser unusable.

Byte-valued results are ``bytes`` unless a field says "bytes-like": those may be a
``memoryview`` over an immutable ``bytes`` object the caller passed in (never over a
mutable internal buffer), so they stay valid after ``feed`` returns.  Compare them with
``bytes(x)``.  Both implementations produce the same events at the same boundaries for
the same sequence of ``feed`` calls.
"""

from typing import Container, Mapping, Protocol, Sequence

from .errors import ProtocolError as ProtocolError

DEBUG_BUILD: bool  # True in a core built with MCPFAST_DEBUG_BUILD=1 (invariant checks, tracing)

# ---------------------------------------------------------------------------------
# HTTP/1.1 (RFC 9110, RFC 9112)
# ---------------------------------------------------------------------------------

class RequestHead:
    """A parsed request line and header section (RFC 9112 §3, §5)."""

    method: bytes  # b"POST" (token chars, case kept)
    target: bytes  # request-target as sent: b"/mcp?x=1"
    version: int  # 10 or 11
    headers: list[tuple[bytes, bytes]]  # in order, names case kept, values OWS-stripped
    keep_alive: bool  # 1.1 unless "Connection: close"; 1.0 only with "keep-alive"
    content_length: int  # -1 when absent
    chunked: bool  # Transfer-Encoding: chunked
    expect_continue: bool  # "Expect: 100-continue" (case-insensitive)
    # Fast access, ``None`` when absent.  List-valued headers (Accept, Connection,
    # Transfer-Encoding) seen on several lines are joined with b", ".  All others here
    # are singletons: a second occurrence is a 400 (Content-Length: see parser rules).
    host: bytes | None
    content_type: bytes | None
    accept: bytes | None
    authorization: bytes | None
    origin: bytes | None
    connection: bytes | None
    transfer_encoding: bytes | None
    session_id: bytes | None  # Mcp-Session-Id
    protocol_version: bytes | None  # MCP-Protocol-Version
    mcp_method: bytes | None  # Mcp-Method
    mcp_name: bytes | None  # Mcp-Name
    last_event_id: bytes | None  # Last-Event-ID

class ResponseHead:
    """A parsed status line and header section (RFC 9112 §4)."""

    version: int  # 10 or 11
    status: int  # 100..999
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool  # False for read-until-close bodies, 1.0 without keep-alive, "close"
    content_length: int  # -1 when absent or not applicable
    chunked: bool
    content_type: bytes | None
    session_id: bytes | None  # Mcp-Session-Id
    connection: bytes | None
    transfer_encoding: bytes | None

class RequestHandler(Protocol):
    def on_request(self, head: RequestHead) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...  # bytes-like, see module doc
    def on_request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None: ...

class ResponseHandler(Protocol):
    def on_interim(self, head: ResponseHead) -> None: ...  # 1xx other than 101
    def on_response(self, head: ResponseHead) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...  # bytes-like
    def on_response_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None: ...

class RequestParser:
    """Incremental HTTP/1.1 request parser for one client connection.

    ``feed(data)`` consumes all of ``data`` (bytes, bytearray or memoryview; it is not
    retained unless it is ``bytes``), calling the handler as parts complete:
    ``on_request(head)`` once per request, ``on_body(chunk)`` zero or more times (each
    maximal run of body bytes inside one ``feed`` call -- one chunk-data run for chunked
    bodies -- is one call; an empty body gives no call), ``on_request_end(trailers)``
    (trailers: list for chunked bodies, possibly empty; ``None`` otherwise).  Pipelined
    requests in the same data are parsed one after another.  ``feed_eof()`` says the
    client closed: fine between requests, ``ProtocolError(400)`` inside one.

    Rules (each a ``ProtocolError`` with the status shown):
    - request-line ``method SP target SP HTTP/x.y CRLF``; method a token (RFC 9110 §5.6.2);
      target visible ASCII 0x21-0x7E, non-empty (400); target longer than
      ``max_target_bytes`` (414); version HTTP/1.0 or HTTP/1.1, any other well-formed
      ``HTTP/d.d`` (505), anything else (400).  Empty lines (CRLF) before the request
      line are skipped (RFC 9112 §2.2).  Lines end with CRLF; a bare CR or bare LF is 400.
    - header field ``name ":" OWS value OWS CRLF``; name a non-empty token, no whitespace
      before the colon (400); value bytes HTAB, SP, 0x21-0x7E, 0x80-0xFF only (400);
      obs-fold, i.e. a line starting with SP/HTAB (400) (RFC 9112 §5.1-5.2).
    - header section larger than ``max_header_bytes`` (request line included) or with more
      than ``max_headers`` fields (431); same limits for a trailer section.
    - Content-Length: 1*DIGIT (leading zeros allowed, OWS around list elements);
      repeated or comma-listed identical values are accepted, differing ones or a
      non-number (sign, empty element, ...) are 400 (RFC 9110 §8.6); more than 18
      significant digits is a declared body over any limit: 413.
    - Transfer-Encoding: only ``chunked`` (case-insensitive) is supported.  The final
      coding not chunked (``gzip`` alone, ``chunked, gzip``, an empty list) 400, since
      the length cannot be known (RFC 9112 §6.3); chunked listed twice 400 (§7.1); any
      other coding before the final chunked 501 (§6.1); TE with Content-Length 400
      (§6.1, §6.3); TE in an HTTP/1.0 request 400.  Values of fields repeated on
      several lines are joined first.
    - Host: more than one 400 (RFC 9112 §3.2); an HTTP/1.1 request without Host 400.
    - ``Expect`` other than 100-continue: 417.
    - body larger than ``max_body_bytes`` (declared, or counted for chunked): 413, raised
      before any byte of that body is handed out when the length is declared.
    - chunked framing (RFC 9112 §7.1): hex chunk-size (at most 16 digits), optional
      chunk-ext (``;name[=token|quoted-string]`` repeated, BWS allowed before ``;`` and
      around ``=``, none at the end; at most 4096 bytes), CRLF after data; violations
      400.  Trailer fields are listed as sent, not interpreted.
    """

    def __init__(
        self,
        handler: RequestHandler,
        *,
        max_header_bytes: int = 65536,
        max_headers: int = 128,
        max_target_bytes: int = 8192,
        max_body_bytes: int = 4 * 1024 * 1024,
    ) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def feed_eof(self) -> None: ...
    @property
    def in_message(self) -> bool: ...  # a request has started and not ended

class ResponseParser:
    """Incremental HTTP/1.1 response parser for one upstream connection.

    Same shape as ``RequestParser``.  Before each request is sent the owner may call
    ``expect_head_response()`` so that the next response is read without a body.
    Framing (RFC 9112 §6.3): 1xx, 204, 304 and responses to HEAD have no body; chunked
    when TE's final coding is chunked; read-until-close when TE is present but not
    chunked, or when neither TE nor Content-Length is present -- such a body ends at
    ``feed_eof()`` (``keep_alive`` is False).  TE together with Content-Length, a bad or
    conflicting Content-Length, bad chunk framing, a malformed status line or header,
    an exceeded limit: ``ProtocolError`` with status 502 whatever the rule (the owner
    answers 502).  ``101`` is a ``ProtocolError``.  The status line is ``HTTP/1.x SP
    3DIGIT [SP reason]`` (100..999; the SP before an empty reason may be missing), with
    no empty lines before it.  A 1xx head goes to ``on_interim`` (its framing fields are
    ignored, ``content_length`` -1) and parsing continues with the final response.
    ``feed_eof()`` inside a Content-Length or chunked body is a ``ProtocolError``.
    """

    def __init__(
        self,
        handler: ResponseHandler,
        *,
        max_header_bytes: int = 65536,
        max_headers: int = 128,
    ) -> None: ...
    def expect_head_response(self) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def feed_eof(self) -> None: ...
    @property
    def in_message(self) -> bool: ...

def join_fields(
    headers: list[tuple[bytes, bytes]], classes: Mapping[bytes, int], listed: Container[bytes] | None
) -> tuple[bytes, bytes | None]:
    """The header lines a proxy forwards, joined as ``name: value\\r\\n`` in the order
    received, and the last ``X-Forwarded-For`` value (None without one).

    ``classes[name]`` (indexed, so a dict subclass may classify unseen names in
    ``__missing__``) says what to do with a field: 0 forward, 1 drop, 2 drop and return
    its value as the X-Forwarded-For.  ``listed`` is None or the lower-case names a
    ``Connection`` header made hop-by-hop (RFC 9110 §7.6.1); those are dropped too.  A
    field that is not a pair of ``bytes`` is a ``TypeError``."""

# ---------------------------------------------------------------------------------
# Server-Sent Events (WHATWG HTML §9.2 "Server-sent events", event stream format)
# ---------------------------------------------------------------------------------

class SSEEvent:
    """One block of an event stream: the lines up to and including a blank line.

    ``raw`` is the exact bytes of the block as received -- including any empty lines
    that preceded it, the leading BOM for the first block, comments, and the terminating
    blank line -- so that concatenating ``raw`` of every event reproduces the stream.
    ``start``/``end`` are the absolute stream offsets of ``raw``.

    Fields describe this block only (a browser's "last event ID" carries over between
    events; ``id`` here does not).  Only lines ended by a line end are interpreted: the
    final block ``feed_eof`` may report can end in an unterminated line that is part of
    ``raw`` but of no field.  Field values are bytes as sent (not UTF-8 decoded).
    """

    raw: bytes
    start: int
    end: int
    event: bytes | None  # last ``event`` field value; None when absent
    data: bytes | None  # ``data`` values joined with b"\n"; None when no data line
    id: bytes | None  # last ``id`` field value (ids containing NUL are ignored per spec)
    retry: int | None  # last valid ``retry`` value: 1+ ASCII digits, value < 10**18
    comments: int  # number of comment lines (``:``-prefixed)

class SSEParser:
    """Incremental event-stream parser.

    ``feed(data)`` returns the list of blocks completed by this data (possibly empty).
    Field lines ``name[:[ SP]value]`` with any of CRLF, LF or CR as line end; a CR that
    ends the buffered data is held until the next byte shows whether LF follows (so a
    block ended by a bare-CR blank line is reported one ``feed`` later, or at EOF).  A
    block made only of empty lines is not reported; its bytes go to the next block's
    ``raw``.  Unknown field names are ignored (still part of ``raw``).  A ``retry``
    value of 10**18 or more is ignored like an invalid one.

    ``max_event_bytes`` bounds a block's bytes before its terminating blank line
    (leading empty lines and BOM included; for the final block of ``feed_eof``, all of
    it).  A block that grows past it raises ``ProtocolError(502)`` as soon as that is
    known.  Blocks completed before the fault are returned first: the error is raised
    by the same call if it completed no block, else by the next call; after that every
    call raises it.  So events and error do not depend on how the stream is split.

    ``stream_start=False`` makes a parser for a stream read from some point after its
    start (after whole blocks): a leading BOM is then not dropped but read like any
    other bytes (only the stream's first bytes may be a BOM, §9.2.6).

    ``feed_eof()`` returns the final block if the stream ended after at least one
    non-empty line (field or comment) or inside a line, but before its blank line (it
    is *not* dispatched by browsers, but a gateway must see it), else an empty list; a
    held CR counts as a line end.  Empty lines after the last block are in no block:
    after ``feed_eof`` the concatenated ``raw`` is the stream up to ``offset``, and only
    line ends (and a lone BOM) follow.  ``feed`` after ``feed_eof`` is a RuntimeError;
    a second ``feed_eof`` returns ``[]``.
    """

    def __init__(self, *, max_event_bytes: int = 16 * 1024 * 1024, stream_start: bool = True) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[SSEEvent]: ...
    def feed_eof(self) -> list[SSEEvent]: ...
    @property
    def offset(self) -> int: ...  # stream bytes consumed into reported blocks

def encode_sse_event(
    data: bytes | None = None,
    *,
    event: bytes | None = None,
    id: bytes | None = None,
    retry: int | None = None,
) -> bytes:
    """One event block: ``event``, ``id``, ``retry`` then one ``data:`` line per line of
    data (split on CRLF, LF or CR), each ``name: value\\n``, ended by ``\\n``.  ``id`` or
    ``event`` containing CR/LF, or ``id`` containing NUL, raise ``ValueError``; so do a
    ``retry`` outside ``0 <= retry < 10**18`` and a call with no field at all (a lone
    blank line is not an event).  ``data`` may be any bytes-like object; ``data=b""``
    gives one empty data line.  ``parse(encode(...))`` gives back the fields, with
    line ends inside ``data`` normalised to LF."""

def sse_passable(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` -- read from the start of an event stream or right after
    whole events -- is itself whole events that a relay rewriting JSON-RPC messages
    (``mux.rewrite``) would pass on byte for byte, so it need not be parsed: it ends
    with the blank line of its last event (``\\n\\n`` or ``\\r\\n\\r\\n``), does not
    start with a BOM, has no line starting with ``id`` (no event id to encode), and
    contains neither ``"method"`` (no request or notification) nor a ``\\u`` escape
    (which could spell that key).  False says nothing: parse the data."""

# ---------------------------------------------------------------------------------
# JSON-RPC 2.0 envelopes (RFC 8259 JSON; JSON-RPC 2.0 §4-§6)
# ---------------------------------------------------------------------------------

KIND_REQUEST: int  # 1: has method and id
KIND_NOTIFICATION: int  # 2: has method, no id
KIND_RESPONSE: int  # 3: has result
KIND_ERROR: int  # 4: has error

Span = tuple[int, int]  # [start, end) offsets into the scanned body

class Envelope:
    """What the scanner found in one JSON-RPC message.

    Spans cover the whole JSON value token (strings include their quotes) and are
    offsets into the scanned body (for a batch too).  Decoded values are given where a
    caller decides on them: strings unescaped to ``str``, integers to ``int`` (exact, any
    size -- orjson would give a float beyond 64 bits).  Member names are matched by their
    unescaped value, as a JSON parser reads them: ``"\\u006dethod"`` is ``method`` and
    ``"io.modelcontextprotocol\\/protocolVersion"`` is the protocol version key.

    When a key appears twice in one object the last one wins, as in ``orjson``: a later
    ``params``, ``_meta`` or ``error`` replaces everything the earlier one reported (a
    later ``"params": null`` leaves no ``name``), a later ``"name": 1`` makes ``name``
    absent.  A field whose JSON type is not the one listed is reported as absent (value
    and span ``None``); ``params_span`` is set only for an object or array (JSON-RPC
    §4.2), ``result_span``/``error_span`` for any value.
    """

    kind: int
    start: int  # span of the whole message object within the body
    end: int
    method: str | None
    id: int | str | None  # None when absent or null
    id_span: Span | None  # None when absent (set for null)
    params_span: Span | None  # params when an object or an array
    name: str | None  # params.name when a string
    name_span: Span | None
    uri: str | None  # params.uri when a string
    uri_span: Span | None
    cursor: str | None  # params.cursor when a string
    cursor_span: Span | None
    progress_token: int | str | None  # params._meta.progressToken (string or integer)
    progress_token_span: Span | None
    request_id: int | str | None  # params.requestId (notifications/cancelled)
    request_id_span: Span | None
    protocol_version: str | None  # params._meta["io.modelcontextprotocol/protocolVersion"]
    protocol_version_span: Span | None
    result_span: Span | None
    error_span: Span | None
    error_code: int | None  # error.code when error is an object and code an integer

def scan_jsonrpc(body: bytes | bytearray | memoryview) -> Envelope | list[Envelope]:
    """Scan one JSON text holding a JSON-RPC message (an object) or a batch (a non-empty
    array of objects; each element gives one Envelope, in order).  ``body`` is any
    C-contiguous buffer (else ``BufferError``; ``str`` is a ``TypeError``); the Envelope
    keeps no reference to it.

    The whole text is validated as JSON while it is walked -- RFC 8259 grammar; only
    space, tab, LF and CR as whitespace (no BOM); only whitespace around the value;
    strings with valid escapes, no raw control characters (< 0x20) and valid UTF-8 (RFC
    3629: no overlongs, no encoded surrogates, nothing above U+10FFFF); numbers by the
    §6 grammar; nesting at most 512 containers deep, counting the message object and a
    batch array.  Like orjson (what we pass, the next parser accepts) it also refuses a
    ``\\u`` escape of a lone surrogate (a high one must be followed at once by an escaped
    low one) and a number that is infinite as a double (``1e400``, a 310-digit integer).
    "Validated" means exactly this for every byte, also inside values the scanner does
    not report (``arguments``, ``result``, unknown keys): they are skipped without
    building objects, not without checking.  Any fault raises ``ProtocolError(status=400,
    code=-32700)`` whose message names the byte offset and the fault; it is the first
    fault in text order, so both implementations report the same one.

    A valid JSON text that is not a JSON-RPC message raises ``ProtocolError(status=400,
    code=-32600)``: not an object (or empty batch / non-object element), ``"jsonrpc"`` not
    exactly ``"2.0"``, ``method`` not a string, ``id`` not a string, an integer or null,
    neither ``method`` nor ``result`` nor ``error``, both ``result`` and ``error``, a
    request/notification that also has ``result``/``error``, or a response/error without
    ``id``.  A JSON fault anywhere in the text takes precedence over these; in a batch
    the first offending element (by position) is named.  Wrong-typed optional fields of
    interest (``params.name`` a number, say) are reported as absent, not errors.
    ``params`` is descended into only for the keys listed in ``Envelope``; everything
    else is skipped (but validated).
    """

def splice(body: bytes | bytearray | memoryview, start: int, end: int, replacement: bytes) -> bytes:
    """``body[:start] + replacement + body[end:]`` built with one copy.  ``body`` and
    ``replacement`` may be any C-contiguous buffers; ``start``/``end`` anything
    ``operator.index`` takes (else ``TypeError``).  ``0 <= start <= end <= len(body)``
    else ``ValueError``."""

def splice_many(body: bytes | bytearray | memoryview, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Apply several non-overlapping edits ``(start, end, replacement)`` (any order given,
    any iterable; applied by position) in one copy.  Out-of-range edits, edits that
    overlap, and two edits starting at the same offset (two insertions there would have
    no defined order) raise ``ValueError``; an edit may start where another ends.  No
    edits gives a copy of ``body`` as ``bytes``."""

# ---------------------------------------------------------------------------------
# Newline-delimited JSON (the MCP stdio transport: one message per line, no embedded
# newline)
# ---------------------------------------------------------------------------------

class NDJSONFramer:
    """Splits a byte stream into lines; nothing in a line is interpreted.

    A line is the bytes before an LF.  One CR right before the LF is dropped with it
    (CRLF); any other CR stays in the line.  A line left empty (``\\n``, ``\\r\\n``) is
    skipped.  ``feed(data)`` (any C-contiguous buffer) returns the lines the data
    completes, as ``bytes``.  ``feed_eof()`` returns the last line if the stream ended
    without LF, ended as if an LF followed (a last CR goes), unless it is empty;
    ``feed`` after ``feed_eof`` is a RuntimeError, a second ``feed_eof`` returns ``[]``.

    ``max_line`` (at least 1, else ``ValueError``) bounds a line's bytes, its LF and the
    CR before the LF not counted.  The fault ``ProtocolError(502)`` is known as soon as
    the unfinished line is longer than that, counting a last CR only when the next byte
    shows it is no CRLF.  Lines completed before the fault are returned first: the error
    is raised by the same call if it completed no line, else by the next call; after
    that every call (``feed_eof`` too) raises it.  So lines and error do not depend on
    how the stream is split.  ``buffered`` -- the bytes of the unfinished line held -- is
    never more than ``max_line`` (``max_line + 1`` while the last byte is a CR); after
    the fault it is 0.
    """

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]: ...
    def feed_eof(self) -> list[bytes]: ...
    @property
    def max_line(self) -> int: ...
    @property
    def buffered(self) -> int: ...
