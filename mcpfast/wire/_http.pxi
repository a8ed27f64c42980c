# HTTP/1.1 request and response parsers (RFC 9110, RFC 9112), compiled.
#
# Theory of operation.  A connection's bytes arrive in ``feed`` calls cut at arbitrary
# points.  Each parser is a state machine (``HTTPState``, see _http_decl.pxi) over one
# message at a time: line states (start line, header fields, chunk-size line, trailer
# fields) consume whole lines found with memchr, body states consume counted runs.
# Input is read in place through ``const unsigned char*``; only an *unfinished line*
# is copied, into ``_buf``, and the next ``feed`` searches just its own new bytes for
# the LF that finishes it -- ``_buf`` never holds an LF, so its length is the
# "searched up to" mark and no byte is searched twice.  A field line makes at most one
# ``bytes`` for its value and one (name, value) tuple: names come from a small intern
# cache, and a field equal to the previous head's field at the same position (the
# common case on a kept-alive connection) is that previous tuple again.  Body runs
# lying in a ``bytes`` given to ``feed`` go out as that very object or, when at least
# COPY_BELOW bytes long, a ``memoryview`` of it (never a view of ``_buf``, which must
# stay resizable); shorter runs and runs from other input are copied.
#
# Errors are checked so that the outcome cannot depend on where input was cut: a
# finished line is held to its size bound before anything else, an unfinished one
# only to that same bound.  The pure-Python twin (_http_py.py) runs the same
# algorithm step for step; the differential tests compare the two event by event.
#
# A ProtocolError or an exception from a handler callback propagates out of
# ``feed`` (Cython carries it through the ``except -1`` frames; nothing is swallowed)
# and leaves the parser in HTTP_DEAD: later ``feed``/``feed_eof`` raise RuntimeError.

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_CheckExact
from cpython.list cimport PyList_GET_SIZE
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp

# Borrowed-reference access for the hot comparisons (no reference counting).
cdef extern from "Python.h":
    Py_ssize_t _size_of "PyBytes_GET_SIZE" (PyObject* b)
    const char* _data_of "PyBytes_AS_STRING" (PyObject* b)
    PyObject* _item_of "PyTuple_GET_ITEM" (PyObject* t, Py_ssize_t i)
    PyObject* _list_item "PyList_GET_ITEM" (object l, Py_ssize_t i)

# Character classes, one table lookup per byte.
cdef enum:
    CC_TCHAR = 1    # RFC 9110 §5.6.2 tchar
    CC_FIELD = 2    # RFC 9110 §5.5 field-value byte: HTAB, SP, VCHAR, obs-text
    CC_TARGET = 4   # request-target byte: visible ASCII 0x21-0x7E (RFC 9112 §3.2)
    CC_HEX = 8      # HEXDIG
    CC_QDTEXT = 16  # RFC 9110 §5.6.4 qdtext
    CC_QPAIR = 32   # what may follow a backslash in a quoted-pair

cdef unsigned char _CC[256]


cdef void _init_char_classes() noexcept:
    cdef int c
    cdef bytes tchar_punct = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        _CC[c] = 0
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in tchar_punct:
            _CC[c] |= CC_TCHAR
        if c == 9 or c == 32 or (0x21 <= c <= 0x7E) or c >= 0x80:
            _CC[c] |= CC_FIELD | CC_QPAIR
        if 0x21 <= c <= 0x7E:
            _CC[c] |= CC_TARGET
        if (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102):
            _CC[c] |= CC_HEX
        if c == 9 or c == 32 or c == 0x21 or (0x23 <= c <= 0x5B) or (0x5D <= c <= 0x7E) or c >= 0x80:
            _CC[c] |= CC_QDTEXT


_init_char_classes()

# Field names the parsers look at (RFC 9110 §5.1: case-insensitive).
cdef enum:
    F_OTHER = 0
    F_HOST
    F_CONTENT_TYPE
    F_ACCEPT
    F_AUTHORIZATION
    F_ORIGIN
    F_CONNECTION
    F_TRANSFER_ENCODING
    F_SESSION_ID
    F_PROTOCOL_VERSION
    F_MCP_METHOD
    F_MCP_NAME
    F_LAST_EVENT_ID
    F_CONTENT_LENGTH
    F_EXPECT

# Transfer-Encoding list facts (see _codings).
cdef enum:
    TE_LAST_CHUNKED = 1
    TE_EARLIER_CHUNKED = 2
    TE_EARLIER_OTHER = 4

cdef enum:
    MAX_CHUNK_HEX = 16                                  # digits of a chunk-size
    MAX_CHUNK_EXT = 4096                                # bytes of chunk-ext
    MAX_CHUNK_LINE = MAX_CHUNK_HEX + MAX_CHUNK_EXT + 2  # longest valid chunk-size line, CRLF included
    MAX_LENGTH_DIGITS = 18                              # Content-Length digits that fit any limit we take
    COPY_BELOW = 512                                    # body runs shorter than this are copied, not viewed

# The response parser has no body limit; this keeps every size within 63 bits.
cdef long long NO_BODY_LIMIT = (<long long>1) << 62


cdef inline bint _ieq(const unsigned char* p, const char* lower, Py_ssize_t n) noexcept:
    # Case-insensitive compare against a lowercase literal by OR-ing 0x20.  Exact for
    # the bytes it is used on: tchars (names) and valid field values, where the only
    # other byte that ORs onto a letter or '-' or a digit is a control character,
    # which validation has already refused.
    cdef Py_ssize_t i
    for i in range(n):
        if (p[i] | 0x20) != <unsigned char>lower[i]:
            return False
    return True


cdef inline int _field_id(const unsigned char* p, Py_ssize_t n) noexcept:
    # A switch on length and first letter leaves at most one candidate to compare,
    # so unknown names cost a few compares and known ones one memcmp-like pass.
    cdef unsigned char c0 = p[0] | 0x20
    if n == 4:
        if c0 == b'h' and _ieq(p, b"host", 4):
            return F_HOST
    elif n == 6:
        if c0 == b'a':
            if _ieq(p, b"accept", 6):
                return F_ACCEPT
        elif c0 == b'o':
            if _ieq(p, b"origin", 6):
                return F_ORIGIN
        elif c0 == b'e':
            if _ieq(p, b"expect", 6):
                return F_EXPECT
    elif n == 8:
        if c0 == b'm' and _ieq(p, b"mcp-name", 8):
            return F_MCP_NAME
    elif n == 10:
        if c0 == b'c':
            if _ieq(p, b"connection", 10):
                return F_CONNECTION
        elif c0 == b'm':
            if _ieq(p, b"mcp-method", 10):
                return F_MCP_METHOD
    elif n == 12:
        if c0 == b'c' and _ieq(p, b"content-type", 12):
            return F_CONTENT_TYPE
    elif n == 13:
        if c0 == b'a':
            if _ieq(p, b"authorization", 13):
                return F_AUTHORIZATION
        elif c0 == b'l':
            if _ieq(p, b"last-event-id", 13):
                return F_LAST_EVENT_ID
    elif n == 14:
        if c0 == b'c':
            if _ieq(p, b"content-length", 14):
                return F_CONTENT_LENGTH
        elif c0 == b'm':
            if _ieq(p, b"mcp-session-id", 14):
                return F_SESSION_ID
    elif n == 17:
        if c0 == b't' and _ieq(p, b"transfer-encoding", 17):
            return F_TRANSFER_ENCODING
    elif n == 20:
        if c0 == b'm' and _ieq(p, b"mcp-protocol-version", 20):
            return F_PROTOCOL_VERSION
    return F_OTHER


cdef inline bint _next_element(const unsigned char* v, Py_ssize_t n, Py_ssize_t* pos,
                               Py_ssize_t* start, Py_ssize_t* end) noexcept:
    # Next non-empty, OWS-trimmed element of a comma list at *pos (RFC 9110 §5.6.1:
    # empty elements are ignored).  False when the list is exhausted.
    cdef Py_ssize_t i = pos[0], s, e
    while i < n:
        s = i
        while i < n and v[i] != 44:
            i += 1
        e = i
        if i < n:
            i += 1  # the comma
        while s < e and (v[s] == 32 or v[s] == 9):
            s += 1
        while e > s and (v[e - 1] == 32 or v[e - 1] == 9):
            e -= 1
        if e > s:
            pos[0] = i
            start[0] = s
            end[0] = e
            return True
    pos[0] = i
    return False


cdef int _codings(bytes te) noexcept:
    # TE_* facts about a Transfer-Encoding list: is the final coding chunked, does
    # chunked or another coding come before the final one.
    cdef const unsigned char* v = <const unsigned char*>PyBytes_AS_STRING(te)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(te), pos = 0, s = 0, e = 0
    cdef int flags = 0
    cdef bint have_prev = False, prev_chunked = False, is_chunked
    while _next_element(v, n, &pos, &s, &e):
        is_chunked = e - s == 7 and _ieq(v + s, b"chunked", 7)
        if have_prev:
            flags |= TE_EARLIER_CHUNKED if prev_chunked else TE_EARLIER_OTHER
        have_prev = True
        prev_chunked = is_chunked
    if have_prev and prev_chunked:
        flags |= TE_LAST_CHUNKED
    return flags


cdef bint _keep_alive(int version, bytes connection) noexcept:
    # RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
    cdef const unsigned char* v
    cdef Py_ssize_t n, pos = 0, s = 0, e = 0
    cdef bint close = False, keep = False
    if connection is not None:
        v = <const unsigned char*>PyBytes_AS_STRING(connection)
        n = PyBytes_GET_SIZE(connection)
        while _next_element(v, n, &pos, &s, &e):
            if e - s == 5 and _ieq(v + s, b"close", 5):
                close = True
            elif e - s == 10 and _ieq(v + s, b"keep-alive", 10):
                keep = True
    if close:
        return False
    return version == 11 or keep


cdef inline bytes _joined(bytes old, bytes value):
    # RFC 9110 §5.3: repeated list fields combine in order with ", ".
    if old is None:
        return value
    return old + b", " + value


cdef inline bint _field_value_ok(const unsigned char* p, Py_ssize_t n) noexcept:
    # Every byte a field-value byte (CC_FIELD)?  Eight bytes at a time: a word is
    # checked byte by byte only when it holds a byte below 0x20 (HTAB is one, and is
    # allowed) or a DEL.  Both word tests are exact as "is there any such byte": a
    # borrow that could flag a neighbour only starts at a byte that is flagged itself.
    cdef Py_ssize_t k = 0, j
    cdef uint64_t w, x
    while k + 8 <= n:
        memcpy(&w, p + k, 8)
        x = w ^ <uint64_t>0x7F7F7F7F7F7F7F7F
        if (((w - <uint64_t>0x2020202020202020) & ~w) | ((x - <uint64_t>0x0101010101010101) & ~x)) & <uint64_t>0x8080808080808080:
            for j in range(k, k + 8):
                if not (_CC[p[j]] & CC_FIELD):
                    return False
        k += 8
    for j in range(k, n):
        if not (_CC[p[j]] & CC_FIELD):
            return False
    return True


cdef inline bint _equal(const char* a, const unsigned char* b, Py_ssize_t n) noexcept:
    # a[0:n] == b[0:n] for the short strings compared per field line, inline: word
    # compares (the last one overlapping) rather than a call into memcmp.
    cdef uint64_t x, y
    cdef uint32_t u, v
    cdef Py_ssize_t k = 0
    if n >= 8:
        while k + 8 < n:
            memcpy(&x, a + k, 8)
            memcpy(&y, b + k, 8)
            if x != y:
                return False
            k += 8
        memcpy(&x, a + n - 8, 8)
        memcpy(&y, b + n - 8, 8)
        return x == y
    if n >= 4:
        memcpy(&u, a, 4)
        memcpy(&v, b, 4)
        if u != v:
            return False
        memcpy(&u, a + n - 4, 4)
        memcpy(&v, b + n - 4, 4)
        return u == v
    for k in range(n):
        if <unsigned char>a[k] != b[k]:
            return False
    return True


cdef inline bint _same_bytes(PyObject* b, const unsigned char* p, Py_ssize_t n) noexcept:
    return _size_of(b) == n and _equal(_data_of(b), p, n)


# Interned field names (and methods, reason phrases): the same few dozen names come in
# every message, so a small direct-mapped cache of ``bytes`` objects, keyed by a hash
# of the bytes and compared in full on a hit, saves allocating and freeing one object per
# field.  Process-wide and bounded (NAME_CACHE_SLOTS entries of at most
# NAME_CACHE_MAX bytes); a slot that collides is simply replaced.  Only ever touched
# with the GIL held.
cdef enum:
    NAME_CACHE_SLOTS = 512     # a power of two
    NAME_CACHE_MAX = 32

cdef PyObject* _name_cache[NAME_CACHE_SLOTS]


cdef inline bytes _interned(const unsigned char* p, Py_ssize_t n):
    # The slot comes from a hash of the length and the first and last (up to) eight
    # bytes, loaded as words: one multiply chain instead of one per byte.  Names that
    # agree there but differ in the middle just share a slot (the full compare tells).
    cdef uint64_t a = 0, b = 0
    cdef uint32_t a4, b4
    cdef size_t h
    cdef PyObject* hit
    cdef bytes obj
    if n > NAME_CACHE_MAX or n < 1:
        return PyBytes_FromStringAndSize(<const char*>p, n)
    if n >= 8:
        memcpy(&a, p, 8)
        memcpy(&b, p + n - 8, 8)
    elif n >= 4:
        memcpy(&a4, p, 4)
        memcpy(&b4, p + n - 4, 4)
        a = a4
        b = b4
    else:
        a = p[0] | (<uint64_t>p[n >> 1] << 8) | (<uint64_t>p[n - 1] << 16)
    a = (a * <uint64_t>0x9E3779B97F4A7C15) ^ b ^ <uint64_t>n
    a *= <uint64_t>0xC2B2AE3D27D4EB4F
    h = <size_t>(a >> 55) & (NAME_CACHE_SLOTS - 1)  # the top 9 bits
    hit = _name_cache[h]
    if hit != NULL and _same_bytes(hit, p, n):
        return <bytes>hit
    obj = PyBytes_FromStringAndSize(<const char*>p, n)
    Py_INCREF(obj)
    _name_cache[h] = <PyObject*>obj
    Py_XDECREF(hit)
    return obj


@cython.freelist(64)
cdef class RequestHead:
    """A parsed request line and header section (RFC 9112 §3, §5)."""

    def __repr__(self):
        return (f"<RequestHead {self.method!r} {self.target!r} "
                f"HTTP/{self.version // 10}.{self.version % 10} headers={self.headers!r}>")


@cython.freelist(64)
cdef class ResponseHead:
    """A parsed status line and header section (RFC 9112 §4)."""

    def __repr__(self):
        return (f"<ResponseHead HTTP/{self.version // 10}.{self.version % 10} "
                f"{self.status} {self.reason!r} headers={self.headers!r}>")


cdef class _HTTPParser:
    """What request and response parsing share: lines, fields, bodies, chunked framing."""

    def __cinit__(self):
        self._buf = bytearray()
        self._state = HTTP_START
        self._fields = None
        self._prev_fields = []

    cdef int _init_limits(self, Py_ssize_t max_header_bytes, Py_ssize_t max_headers,
                          long long max_body) except -1:
        if max_header_bytes < 1 or max_headers < 0 or max_body < 0:
            raise ValueError("limits must be positive")
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_body = max_body
        return 0

    cdef int _fail(self, int status, str message) except -1:
        raise ProtocolError(message, self._fault_status or status)

    cdef int _refuse(self) except -1:
        if self._state == HTTP_CLOSED:
            raise RuntimeError("feed after feed_eof")
        raise RuntimeError("the parser failed earlier and takes no more input")

    @property
    def in_message(self):
        if self._state >= HTTP_CLOSED:
            return False
        return self._state != HTTP_START or PyByteArray_GET_SIZE(self._buf) > 0

    cpdef feed(self, data):
        cdef Py_buffer view
        if self._state >= HTTP_CLOSED:
            self._refuse()
        if PyBytes_CheckExact(data):
            try:
                self._feed(data, <const unsigned char*>PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data), True)
            except BaseException:
                self._state = HTTP_DEAD
                raise
            finally:
                self._view = None  # do not keep the caller's bytes alive
        else:
            # Not retained (contract): body runs from it are copied.
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._feed(data, <const unsigned char*>view.buf, view.len, False)
            except BaseException:
                self._state = HTTP_DEAD
                raise
            finally:
                PyBuffer_Release(&view)

    cdef int _append(self, const unsigned char* p, Py_ssize_t k) except -1:
        cdef Py_ssize_t old = PyByteArray_GET_SIZE(self._buf)
        if k > 0:
            PyByteArray_Resize(self._buf, old + k)
            memcpy(PyByteArray_AS_STRING(self._buf) + old, p, k)
        return 0

    cdef object _chunk(self, object data, const unsigned char* p, Py_ssize_t n,
                       Py_ssize_t a, Py_ssize_t b, bint zero_copy):
        # The whole fed ``bytes``: itself.  A long run inside one: a view of it.  A
        # short run (under COPY_BELOW bytes, where a copy is cheaper than a view) or a
        # run from a mutable buffer: a new ``bytes``.
        if zero_copy:
            if a == 0 and b == n:
                return data
            if b - a >= COPY_BELOW:
                if self._view is None:
                    self._view = memoryview(data)
                return self._view[a:b]
        return PyBytes_FromStringAndSize(<const char*>p + a, b - a)

    cdef int _feed(self, object data, const unsigned char* p, Py_ssize_t n, bint zero_copy) except -1:
        cdef Py_ssize_t pos = 0, take, end
        cdef const unsigned char* lf
        cdef HTTPState st
        cdef object chunk
        cdef bint done
        while pos < n:
            st = self._state
            if MCPFAST_DEBUG:
                if not (0 <= pos < n) or st > HTTP_DEAD:
                    raise AssertionError(f"http: bad position {pos}/{n} or state {st}")
                if PyByteArray_GET_SIZE(self._buf) and not (
                        st == HTTP_START or st == HTTP_HEADERS or st == HTTP_CHUNK_SIZE or st == HTTP_TRAILERS):
                    raise AssertionError(f"http: line buffer not empty in state {st}")
            if st == HTTP_BODY or st == HTTP_CHUNK_DATA:
                if MCPFAST_DEBUG:
                    if self._remaining <= 0:
                        raise AssertionError(f"http: body state with {self._remaining} bytes to go")
                take = n - pos
                if take > self._remaining:
                    take = <Py_ssize_t>self._remaining
                chunk = self._chunk(data, p, n, pos, pos + take, zero_copy)
                pos += take
                self._remaining -= take
                done = self._remaining == 0
                if done:
                    self._state = HTTP_START if st == HTTP_BODY else HTTP_CHUNK_CR
                self._on_body(chunk)
                if done and st == HTTP_BODY:
                    self._message_end(None)
            elif st == HTTP_CHUNK_CR:
                # RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
                if p[pos] != 13:
                    self._fail(400, "chunk-data not followed by CRLF")
                pos += 1
                self._state = HTTP_CHUNK_LF
            elif st == HTTP_CHUNK_LF:
                if p[pos] != 10:
                    self._fail(400, "chunk-data not followed by CRLF")
                pos += 1
                self._state = HTTP_CHUNK_SIZE
            elif st == HTTP_UNTIL_CLOSE:
                chunk = self._chunk(data, p, n, pos, n, zero_copy)
                pos = n
                self._on_body(chunk)
            elif st == HTTP_START or st == HTTP_HEADERS or st == HTTP_CHUNK_SIZE or st == HTTP_TRAILERS:
                lf = <const unsigned char*>memchr(p + pos, 10, <size_t>(n - pos))
                if lf == NULL:
                    self._append(p + pos, n - pos)
                    self._check_partial_line()
                    return 0
                end = (lf - p) + 1
                if PyByteArray_GET_SIZE(self._buf) == 0:
                    self._line(p + pos, end - pos)
                else:
                    self._append(p + pos, end - pos)
                    self._line(<const unsigned char*>PyByteArray_AS_STRING(self._buf),
                               PyByteArray_GET_SIZE(self._buf))
                    PyByteArray_Resize(self._buf, 0)
                pos = end
            else:  # a handler called feed_eof() from inside a callback
                self._refuse()
        return 0

    cdef int _check_partial_line(self) except -1:
        # The bounds a finished line is held to, so a cut line fails exactly when the
        # whole one would.
        cdef Py_ssize_t b = PyByteArray_GET_SIZE(self._buf)
        cdef HTTPState st = self._state
        if st == HTTP_START:
            if b > self._max_header_bytes:
                self._start_line_too_long(<const unsigned char*>PyByteArray_AS_STRING(self._buf), b)
        elif st == HTTP_HEADERS or st == HTTP_TRAILERS:
            if self._section_bytes + b > self._max_header_bytes:
                self._fail(431, "header section too large")
        elif st == HTTP_CHUNK_SIZE:
            if b > MAX_CHUNK_LINE:
                self._fail(400, "chunk-size line too long")
        return 0

    cdef int _line(self, const unsigned char* p, Py_ssize_t size) except -1:
        cdef HTTPState st = self._state
        cdef list trailers
        if MCPFAST_DEBUG:
            if size < 1 or p[size - 1] != 10:
                raise AssertionError("http: _line without its LF")
        if st == HTTP_HEADERS or st == HTTP_TRAILERS:
            self._section_bytes += size
            if self._section_bytes > self._max_header_bytes:
                self._fail(431, "header section too large")
            if size < 2 or p[size - 2] != 13:
                # RFC 9112 §2.2: a bare LF (or CR) as line end is refused.
                self._fail(400, "line not ended by CRLF")
            if size == 2:
                if st == HTTP_HEADERS:
                    # _prev_fields holds exactly this head's fields, in order (see
                    # _field_line), once an older head's extra ones are dropped: the
                    # head's list is made from it in one go.
                    if PyList_GET_SIZE(self._prev_fields) > self._nfields:
                        del self._prev_fields[self._nfields:]
                    self._fields = self._prev_fields[:]
                    self._head_done()
                else:
                    trailers = self._fields
                    self._fields = None
                    self._state = HTTP_START
                    self._message_end(trailers)
                return 0
            self._field_line(p, size - 2, st == HTTP_HEADERS)
        elif st == HTTP_START:
            self._start_line(p, size)
        else:
            self._chunk_size_line(p, size)
        return 0

    cdef int _field_line(self, const unsigned char* p, Py_ssize_t n, bint in_head) except -1:
        cdef Py_ssize_t i = 0, vs, ve, idx = 0, k
        cdef PyObject* prev = NULL
        cdef PyObject* prev_name
        cdef object field
        cdef bytes value
        cdef int fid
        # RFC 9112 §5.2: obs-fold is refused; RFC 9112 §2.2: so is whitespace between
        # the start line and the first field (same test: a line starting with SP/HTAB).
        if p[0] == 32 or p[0] == 9:
            self._fail(400, "obs-fold or leading whitespace in a field line")
        self._nfields += 1
        if self._nfields > self._max_headers:
            self._fail(431, "too many header fields")
        if in_head:
            # A client on a kept-alive connection sends mostly the same fields in the
            # same order every time.  The previous head's field at this position tells
            # what to expect: if this line starts with its name and a colon, the name is
            # known to be a valid token without scanning it, and if the value is equal
            # too, the field is that very (name, value) tuple again -- validated already
            # and immutable, so sharing it is safe.  Either way the field ends up at this
            # position of _prev_fields, where a head's fields are collected.
            idx = self._nfields - 1
            if idx < PyList_GET_SIZE(self._prev_fields):
                prev = _list_item(self._prev_fields, idx)
                prev_name = _item_of(prev, 0)
                k = _size_of(prev_name)
                if k < n and p[k] == 58 and _equal(_data_of(prev_name), p, k):
                    i = k
                else:
                    prev = NULL
        if prev == NULL:
            # RFC 9112 §5.1: field-name ":" OWS field-value OWS; no whitespace before ":".
            while i < n and (_CC[p[i]] & CC_TCHAR):
                i += 1
            if i == 0 or i == n or p[i] != 58:
                self._fail(400, "bad field name")
        vs = i + 1
        while vs < n and (p[vs] == 32 or p[vs] == 9):
            vs += 1
        ve = n
        while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
            ve -= 1
        if prev != NULL and _same_bytes(_item_of(prev, 1), p + vs, ve - vs):
            field = <object>prev
            value = <bytes>_item_of(prev, 1)
        else:
            if not _field_value_ok(p + vs, ve - vs):
                self._fail(400, "invalid character in field value")
            value = PyBytes_FromStringAndSize(<const char*>p + vs, ve - vs)
            if prev != NULL:
                field = (<object>_item_of(prev, 0), value)
            else:
                field = (_interned(p, i), value)
            if in_head:
                if idx < PyList_GET_SIZE(self._prev_fields):
                    self._prev_fields[idx] = field  # drops the tuple prev pointed to: not used below
                else:
                    self._prev_fields.append(field)
        if in_head:
            fid = _field_id(p, i)
            if fid != F_OTHER:
                self._on_field(fid, value, p + vs, ve - vs)
        else:
            self._fields.append(field)  # a trailer
        return 0

    cdef int _content_length(self, const unsigned char* v, Py_ssize_t n, long long* current) except -1:
        # RFC 9110 §8.6: Content-Length = 1*DIGIT.  A comma list of identical values
        # (what a proxy makes of duplicates) means that value; differing values are
        # the smuggling case and are refused.  Elements are judged in order, each for
        # syntax, then size, then agreement.
        cdef Py_ssize_t i = 0, start, significant
        cdef long long value
        while True:
            while i < n and (v[i] == 32 or v[i] == 9):
                i += 1
            start = i
            significant = 0
            value = 0
            while i < n and 48 <= v[i] <= 57:
                if significant or v[i] != 48:
                    significant += 1
                    if significant <= MAX_LENGTH_DIGITS:
                        value = value * 10 + (v[i] - 48)
                i += 1
            if i == start:
                self._fail(400, "bad Content-Length")
            while i < n and (v[i] == 32 or v[i] == 9):
                i += 1
            if i < n and v[i] != 44:
                self._fail(400, "bad Content-Length")
            if significant > MAX_LENGTH_DIGITS:
                self._fail(413, "Content-Length too large")
            if current[0] >= 0 and value != current[0]:
                self._fail(400, "conflicting Content-Length values")
            current[0] = value
            if i == n:
                return 0
            i += 1  # the comma; an element must follow

    cdef int _chunk_size_line(self, const unsigned char* p, Py_ssize_t size) except -1:
        # RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF.  Size checks come first so a cut
        # line and a whole one fail alike.
        cdef Py_ssize_t n, digits = 0, i, n_ws
        cdef unsigned long long chunk = 0
        cdef unsigned char c
        if size > MAX_CHUNK_LINE:
            self._fail(400, "chunk-size line too long")
        if size < 2 or p[size - 2] != 13:
            self._fail(400, "line not ended by CRLF")
        n = size - 2
        while digits < n and (_CC[p[digits]] & CC_HEX):
            c = p[digits]
            if digits < MAX_CHUNK_HEX:
                chunk = (chunk << 4) | (c - 48 if c <= 57 else (c | 0x20) - 87)
            digits += 1
        if digits == 0 or digits > MAX_CHUNK_HEX:
            self._fail(400, "bad chunk-size")
        if n - digits > MAX_CHUNK_EXT:
            self._fail(400, "chunk-ext too long")
        # RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
        # ext-val = token / quoted-string (RFC 9110 §5.6.4).  Validated, not kept.
        i = digits
        while i < n:
            while i < n and (p[i] == 32 or p[i] == 9):
                i += 1
            if i == n or p[i] != 59:
                self._fail(400, "bad chunk-ext")
            i += 1
            while i < n and (p[i] == 32 or p[i] == 9):
                i += 1
            if i == n or not (_CC[p[i]] & CC_TCHAR):
                self._fail(400, "bad chunk-ext")
            while i < n and (_CC[p[i]] & CC_TCHAR):
                i += 1
            n_ws = i
            while n_ws < n and (p[n_ws] == 32 or p[n_ws] == 9):
                n_ws += 1
            if n_ws < n and p[n_ws] == 61:
                i = n_ws + 1
                while i < n and (p[i] == 32 or p[i] == 9):
                    i += 1
                if i < n and p[i] == 34:
                    i += 1
                    while True:
                        if i == n:
                            self._fail(400, "bad chunk-ext")
                        if p[i] == 34:
                            i += 1
                            break
                        if p[i] == 92:
                            if i + 1 == n or not (_CC[p[i + 1]] & CC_QPAIR):
                                self._fail(400, "bad chunk-ext")
                            i += 2
                        elif _CC[p[i]] & CC_QDTEXT:
                            i += 1
                        else:
                            self._fail(400, "bad chunk-ext")
                elif i < n and (_CC[p[i]] & CC_TCHAR):
                    while i < n and (_CC[p[i]] & CC_TCHAR):
                        i += 1
                else:
                    self._fail(400, "bad chunk-ext")
        if chunk == 0:
            # RFC 9112 §7.1.2: last-chunk, then the trailer section.
            self._state = HTTP_TRAILERS
            self._section_bytes = 0
            self._nfields = 0
            self._fields = []
            return 0
        if chunk > <unsigned long long>(self._max_body - self._body_count):
            self._fail(413, "chunked body too large")
        self._body_count += <long long>chunk
        self._remaining = <long long>chunk
        self._state = HTTP_CHUNK_DATA
        return 0

    cdef int _start_line(self, const unsigned char* p, Py_ssize_t size) except -1:
        raise NotImplementedError

    cdef int _start_line_too_long(self, const unsigned char* p, Py_ssize_t avail) except -1:
        raise NotImplementedError

    cdef int _on_field(self, int fid, bytes value, const unsigned char* v, Py_ssize_t vlen) except -1:
        raise NotImplementedError

    cdef int _head_done(self) except -1:
        raise NotImplementedError

    cdef int _message_end(self, object trailers) except -1:
        raise NotImplementedError


cdef class RequestParser(_HTTPParser):
    """Incremental HTTP/1.1 request parser for one client connection (see ``_core.pyi``)."""

    def __init__(self, handler, *, Py_ssize_t max_header_bytes=65536, Py_ssize_t max_headers=128,
                 Py_ssize_t max_target_bytes=8192, long long max_body_bytes=4 * 1024 * 1024):
        self._init_limits(max_header_bytes, max_headers, max_body_bytes)
        if max_target_bytes < 1:
            raise ValueError("limits must be positive")
        self._max_target = max_target_bytes
        self._fault_status = 0
        # Bound once: the handler's callbacks are looked up per connection, not per event.
        self._on_request = handler.on_request
        self._on_body = handler.on_body
        self._on_request_end = handler.on_request_end

    def feed_eof(self):
        if self._state == HTTP_CLOSED:
            return
        if self._state == HTTP_DEAD:
            self._refuse()
        if self.in_message:
            self._state = HTTP_DEAD
            self._fail(400, "connection closed inside a request")
        self._state = HTTP_CLOSED

    cdef int _start_line_too_long(self, const unsigned char* p, Py_ssize_t avail) except -1:
        # Judge only the first max_header_bytes + 1 bytes -- all a cut line is sure to
        # have -- so whole and cut input get the same status: 414 when the target alone
        # is over its limit (RFC 9112 §3), else 431.
        cdef Py_ssize_t n = self._max_header_bytes + 1, i = 0, t0
        if avail < n:
            n = avail
        while i < n and (_CC[p[i]] & CC_TCHAR):
            i += 1
        if 0 < i < n and p[i] == 32:
            t0 = i + 1
            i = t0
            while i < n and (_CC[p[i]] & CC_TARGET):
                i += 1
            if i - t0 > self._max_target:
                self._fail(414, "request-target too long")
        self._fail(431, "request line too long")

    cdef int _start_line(self, const unsigned char* p, Py_ssize_t size) except -1:
        cdef Py_ssize_t n, i = 0, m_end, t0, t_end
        cdef int version = 0
        cdef RequestHead head
        if size > self._max_header_bytes:
            self._start_line_too_long(p, size)
        if size < 2 or p[size - 2] != 13:
            self._fail(400, "line not ended by CRLF")
        if size == 2:
            return 0  # RFC 9112 §2.2: empty lines before the request-line are ignored
        n = size - 2
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
        while i < n and (_CC[p[i]] & CC_TCHAR):
            i += 1
        if i == 0 or i == n or p[i] != 32:
            self._fail(400, "bad method")
        m_end = i
        t0 = i + 1
        i = t0
        while i < n and (_CC[p[i]] & CC_TARGET):
            i += 1
        t_end = i
        if t_end - t0 > self._max_target:
            self._fail(414, "request-target too long")
        if t_end == t0 or t_end == n or p[t_end] != 32:
            self._fail(400, "bad request-target")
        # RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive.
        i = t_end + 1
        if (n - i != 8 or memcmp(p + i, b"HTTP/", 5) != 0 or p[i + 6] != 46
                or not (48 <= p[i + 5] <= 57 and 48 <= p[i + 7] <= 57)):
            self._fail(400, "bad HTTP version")
        if p[i + 5] == 49 and p[i + 7] == 49:
            version = 11
        elif p[i + 5] == 49 and p[i + 7] == 48:
            version = 10
        else:
            self._fail(505, "HTTP version not supported")
        head = RequestHead.__new__(RequestHead)
        head.method = _interned(p, m_end)
        # Same target as the previous request on this connection: the same object.
        if self._prev_target is not None and _same_bytes(<PyObject*>self._prev_target, p + t0, t_end - t0):
            head.target = self._prev_target
        else:
            head.target = self._prev_target = PyBytes_FromStringAndSize(<const char*>p + t0, t_end - t0)
        head.version = version
        head.content_length = -1
        self._head = head
        self._section_bytes = size
        self._nfields = 0
        self._expect = False
        self._state = HTTP_HEADERS
        return 0

    cdef int _on_field(self, int fid, bytes value, const unsigned char* v, Py_ssize_t vlen) except -1:
        # RFC 9112 §3.2: more than one Host is a 400, as are repeats of the other
        # singletons we expose (an ambiguous session id or credential is unsafe).
        cdef RequestHead head = self._head
        if fid == F_CONTENT_LENGTH:
            self._content_length(v, vlen, &head.content_length)
        elif fid == F_EXPECT:
            # RFC 9110 §10.1.1: the only expectation defined is 100-continue.
            if not (vlen == 12 and _ieq(v, b"100-continue", 12)):
                self._fail(417, "unsupported expectation")
            self._expect = True
        elif fid == F_ACCEPT:
            head.accept = _joined(head.accept, value)
        elif fid == F_CONNECTION:
            head.connection = _joined(head.connection, value)
        elif fid == F_TRANSFER_ENCODING:
            head.transfer_encoding = _joined(head.transfer_encoding, value)
        elif fid == F_HOST:
            if head.host is not None:
                self._fail(400, "duplicate host field")
            head.host = value
        elif fid == F_CONTENT_TYPE:
            if head.content_type is not None:
                self._fail(400, "duplicate content_type field")
            head.content_type = value
        elif fid == F_AUTHORIZATION:
            if head.authorization is not None:
                self._fail(400, "duplicate authorization field")
            head.authorization = value
        elif fid == F_ORIGIN:
            if head.origin is not None:
                self._fail(400, "duplicate origin field")
            head.origin = value
        elif fid == F_SESSION_ID:
            if head.session_id is not None:
                self._fail(400, "duplicate session_id field")
            head.session_id = value
        elif fid == F_PROTOCOL_VERSION:
            if head.protocol_version is not None:
                self._fail(400, "duplicate protocol_version field")
            head.protocol_version = value
        elif fid == F_MCP_METHOD:
            if head.mcp_method is not None:
                self._fail(400, "duplicate mcp_method field")
            head.mcp_method = value
        elif fid == F_MCP_NAME:
            if head.mcp_name is not None:
                self._fail(400, "duplicate mcp_name field")
            head.mcp_name = value
        elif fid == F_LAST_EVENT_ID:
            if head.last_event_id is not None:
                self._fail(400, "duplicate last_event_id field")
            head.last_event_id = value
        return 0

    cdef int _head_done(self) except -1:
        cdef RequestHead head = self._head
        cdef int flags
        head.headers = self._fields
        if head.version == 11 and head.host is None:
            self._fail(400, "missing Host")  # RFC 9112 §3.2
        if head.transfer_encoding is not None:
            if head.version == 10:
                # RFC 9112 §6.1: TE in 1.0 means faulty framing.
                self._fail(400, "Transfer-Encoding in an HTTP/1.0 request")
            if head.content_length >= 0:
                # RFC 9112 §6.1, §6.3 rule 3: both present is the smuggling pattern.
                self._fail(400, "Transfer-Encoding with Content-Length")
            flags = _codings(head.transfer_encoding)
            if not (flags & TE_LAST_CHUNKED):
                self._fail(400, "chunked is not the final transfer coding")  # §6.3 rule 4
            if flags & TE_EARLIER_CHUNKED:
                self._fail(400, "chunked applied more than once")  # §7.1
            if flags & TE_EARLIER_OTHER:
                self._fail(501, "unsupported transfer coding")  # §6.1
            head.chunked = True
        if head.content_length > self._max_body:
            self._fail(413, "body too large")
        head.keep_alive = _keep_alive(head.version, head.connection)
        # RFC 9110 §10.1.1: a 100-continue expectation in HTTP/1.0 is ignored.
        head.expect_continue = self._expect and head.version == 11
        self._head = None
        if head.chunked:
            self._state = HTTP_CHUNK_SIZE
            self._body_count = 0
            self._on_request(head)
        elif head.content_length > 0:
            self._state = HTTP_BODY
            self._remaining = head.content_length
            self._on_request(head)
        else:
            # RFC 9112 §6.3 rule 7: a request without framing fields has no body.
            self._state = HTTP_START
            self._on_request(head)
            self._message_end(None)
        return 0

    cdef int _message_end(self, object trailers) except -1:
        self._on_request_end(trailers)
        return 0


cdef class ResponseParser(_HTTPParser):
    """Incremental HTTP/1.1 response parser for one upstream connection (see ``_core.pyi``).

    Every ``ProtocolError`` it raises has status 502: a malformed upstream answer is
    the gateway's bad gateway, whatever rule it broke.
    """

    def __init__(self, handler, *, Py_ssize_t max_header_bytes=65536, Py_ssize_t max_headers=128):
        self._init_limits(max_header_bytes, max_headers, NO_BODY_LIMIT)
        self._fault_status = 502
        self._on_interim = handler.on_interim
        self._on_response = handler.on_response
        self._on_body = handler.on_body
        self._on_response_end = handler.on_response_end

    def expect_head_response(self):
        self._head_request = True

    def feed_eof(self):
        if self._state == HTTP_CLOSED:
            return
        if self._state == HTTP_DEAD:
            self._refuse()
        if self._state == HTTP_UNTIL_CLOSE:
            # RFC 9112 §6.3 rule 8: the close is the end of this body.
            self._state = HTTP_CLOSED
            try:
                self._on_response_end(None)
            except BaseException:
                self._state = HTTP_DEAD
                raise
            return
        if self.in_message:
            self._state = HTTP_DEAD
            self._fail(502, "connection closed inside a response")
        self._state = HTTP_CLOSED

    cdef int _start_line_too_long(self, const unsigned char* p, Py_ssize_t avail) except -1:
        self._fail(431, "status line too long")

    cdef int _start_line(self, const unsigned char* p, Py_ssize_t size) except -1:
        # RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ].
        # A missing SP before an empty reason is tolerated (many servers omit it).
        cdef Py_ssize_t n, k
        cdef ResponseHead head
        cdef int status
        if size > self._max_header_bytes:
            self._start_line_too_long(p, size)
        if size < 2 or p[size - 2] != 13:
            self._fail(502, "line not ended by CRLF")
        n = size - 2
        if (n < 12 or memcmp(p, b"HTTP/", 5) != 0 or not (48 <= p[5] <= 57) or p[6] != 46
                or not (48 <= p[7] <= 57) or p[8] != 32 or not (49 <= p[9] <= 57)
                or not (48 <= p[10] <= 57) or not (48 <= p[11] <= 57) or (n > 12 and p[12] != 32)):
            self._fail(502, "bad status line")
        if p[5] != 49 or not (p[7] == 48 or p[7] == 49):
            self._fail(502, "unsupported HTTP version")
        status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if status == 101:
            self._fail(502, "unexpected protocol switch")  # we never ask to upgrade
        for k in range(13, n):
            if not (_CC[p[k]] & CC_FIELD):
                self._fail(502, "invalid character in reason phrase")
        head = ResponseHead.__new__(ResponseHead)
        head.version = 10 if p[7] == 48 else 11
        head.status = status
        head.reason = _interned(p + 13, n - 13) if n > 13 else b""
        head.content_length = -1
        self._head = head
        self._section_bytes = size
        self._nfields = 0
        self._state = HTTP_HEADERS
        return 0

    cdef int _on_field(self, int fid, bytes value, const unsigned char* v, Py_ssize_t vlen) except -1:
        cdef ResponseHead head = self._head
        if fid == F_CONTENT_LENGTH:
            self._content_length(v, vlen, &head.content_length)
        elif fid == F_CONNECTION:
            head.connection = _joined(head.connection, value)
        elif fid == F_TRANSFER_ENCODING:
            head.transfer_encoding = _joined(head.transfer_encoding, value)
        elif fid == F_CONTENT_TYPE:
            if head.content_type is not None:
                self._fail(400, "duplicate content_type field")
            head.content_type = value
        elif fid == F_SESSION_ID:
            if head.session_id is not None:
                self._fail(400, "duplicate session_id field")
            head.session_id = value
        return 0

    cdef int _head_done(self) except -1:
        cdef ResponseHead head = self._head
        cdef int status = head.status
        head.headers = self._fields
        self._head = None
        head.keep_alive = _keep_alive(head.version, head.connection)
        if status < 200:
            # RFC 9110 §15.2: interim; the final response follows on this connection.
            head.content_length = -1
            self._state = HTTP_START
            self._on_interim(head)
            return 0
        # RFC 9112 §6.3 rule 1: HEAD, 204 and 304 responses end with their head.
        if self._head_request or status == 204 or status == 304:
            self._head_request = False
            head.content_length = -1
            self._state = HTTP_START
            self._on_response(head)
            self._message_end(None)
            return 0
        if head.transfer_encoding is not None:
            if head.content_length >= 0:
                self._fail(502, "Transfer-Encoding with Content-Length")  # §6.3 rule 3
            if head.version == 10:
                head.keep_alive = False  # §6.1: framing of a 1.0 message with TE is suspect
            if _codings(head.transfer_encoding) & TE_LAST_CHUNKED:
                head.chunked = True
                self._state = HTTP_CHUNK_SIZE
                self._body_count = 0
            else:
                head.keep_alive = False  # §6.3 rule 3: read until close
                self._state = HTTP_UNTIL_CLOSE
            self._on_response(head)
        elif head.content_length >= 0:
            if head.content_length > 0:
                self._state = HTTP_BODY
                self._remaining = head.content_length
                self._on_response(head)
            else:
                self._state = HTTP_START
                self._on_response(head)
                self._message_end(None)
        else:
            head.keep_alive = False  # §6.3 rule 8: read until close
            self._state = HTTP_UNTIL_CLOSE
            self._on_response(head)
        return 0

    cdef int _message_end(self, object trailers) except -1:
        self._on_response_end(trailers)
        return 0


# ---------------------------------------------------------------------------------
# Forwarding a header section
# ---------------------------------------------------------------------------------

def join_fields(list headers, object classes, object listed):
    """The header lines of ``headers`` that a proxy passes on, as one bytes object, and
    the last ``X-Forwarded-For`` value (or None).

    ``classes`` maps a field name (as the parser handed it out) to 0 (forward), 1 (drop)
    or 2 (``X-Forwarded-For``: dropped here, its value returned); it is indexed with
    ``classes[name]``, so a dict subclass may classify unseen names in ``__missing__``.
    ``listed`` is None or a set of lower-case names that a ``Connection`` header made
    hop-by-hop (RFC 9110 §7.6.1): those are dropped too.  Lines are ``name: value\\r\\n``
    in the order received."""
    cdef Py_ssize_t n = PyList_GET_SIZE(headers), i, total = 0, k = 0
    cdef Py_ssize_t ln, lv
    cdef tuple field
    cdef bytes name, value
    cdef object code
    cdef object xff = None
    cdef list keep = []
    cdef bytes out
    cdef char* p
    for i in range(n):
        field = headers[i]
        name = field[0]
        value = field[1]
        if name is None or value is None:
            raise TypeError("header fields are (bytes, bytes) pairs")
        code = classes[name]
        if code:
            if code == 2:
                xff = value
            continue
        if listed is not None and name.lower() in listed:
            continue
        keep.append(field)
        total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    out = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(out)
    for field in keep:
        name = field[0]
        value = field[1]
        ln = PyBytes_GET_SIZE(name)
        lv = PyBytes_GET_SIZE(value)
        memcpy(p + k, PyBytes_AS_STRING(name), ln)
        k += ln
        p[k] = 58  # ':'
        p[k + 1] = 32  # ' '
        k += 2
        memcpy(p + k, PyBytes_AS_STRING(value), lv)
        k += lv
        p[k] = 13
        p[k + 1] = 10
        k += 2
    return out, xff
