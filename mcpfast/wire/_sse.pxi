# Server-Sent Events: incremental parser and writer (compiled).  Contracts of the
# attributes and cdef methods: _sse_decl.pxi.  Reference twin: _sse_py.py.
#
# Theory of operation.  The gateway relays an upstream's text/event-stream to its client
# event by event; for each event it needs the exact bytes (forwarded untouched) and the
# fields (the JSON-RPC message in ``data`` is routed on).  ``SSEParser.feed`` takes the
# bytes as the transport delivers them and returns the blocks they complete, each with
# its verbatim ``raw`` and absolute ``start``/``end``, so the blocks tile the stream.
# When nothing is left over from the previous feed -- the usual case, since a read
# normally ends on an event boundary -- lines are found in the caller's own buffer and
# each event's ``raw`` is one slice of it (the caller's ``bytes`` object itself when it
# is exactly one event); only an unfinished tail is copied into the ``bytearray``.  Line
# ends are found with memchr, and the positions of the next CR and next LF are
# remembered across feeds, so a 1 MB line arriving in 64 KB pieces is searched once.
# Field values are not copied as lines are read: they are kept as spans of the block
# (which stays buffered until it ends) and become ``bytes`` once, when the event is
# made.  Rules: WHATWG HTML §9.2.5 (grammar) and §9.2.6 (interpretation), applied to
# bytes -- a UTF-8 decoder never folds an ASCII byte into a replacement character, so
# CR, LF and ``:`` split the raw bytes exactly where they split the decoded text.

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from libc.string cimport memcmp, memmove

cdef enum:
    # retry values are kept only below 10**18: they fit a long long, and an upstream
    # cannot make us convert a megabyte of digits.  Larger all-digit values are ignored.
    _SSE_RETRY_MAX_DIGITS = 18
    # _acc grown beyond this for one block is released when the block ends, so one huge
    # multi-line event does not pin its size for the life of the stream.
    _SSE_ACC_KEEP = 65536
    # Same for the stream buffer, released when it empties.
    _SSE_BUF_KEEP = 1048576

_SSE_RETRY_LIMIT = 10 ** 18  # the writer refuses what the parser would ignore

cdef str _SSE_OVERSIZED = "SSE event exceeds max_event_bytes ({} bytes)"


cdef inline Py_ssize_t _sse_next_eol(const unsigned char* p, Py_ssize_t base, Py_ssize_t pos,
                                     Py_ssize_t end, Py_ssize_t* cr, Py_ssize_t* lf) noexcept nogil:
    # The nearer of the next CR and the next LF in [pos, end), or end (§9.2.5
    # end-of-line = CRLF / CR / LF).  *cr and *lf are the search memo described in
    # _sse_decl.pxi: a memo at or past pos that does not point at its byte means "not
    # found up to here", so memchr resumes there instead of searching from pos again.
    cdef const void* hit
    cdef Py_ssize_t c = cr[0]
    cdef Py_ssize_t l = lf[0]
    if c < pos:
        c = pos
    if c < end and p[c - base] != 13:
        hit = memchr(p + (c - base), 13, <size_t>(end - c))
        c = end if hit == NULL else (<const unsigned char*>hit - p) + base
    if l < pos:
        l = pos
    if l < end and p[l - base] != 10:
        hit = memchr(p + (l - base), 10, <size_t>(end - l))
        l = end if hit == NULL else (<const unsigned char*>hit - p) + base
    cr[0] = c
    lf[0] = l
    return c if c < l else l


cdef inline bint _sse_bom_prefix(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # s[:n] (n < 3) could still be the start of a UTF-8 BOM EF BB BF.
    return (n < 1 or s[0] == 0xEF) and (n < 2 or s[1] == 0xBB)


@cython.freelist(64)
cdef class SSEEvent:
    """One block of an event stream (see ``_core.pyi``)."""

    def __init__(self, raw=b"", start=0, end=0, event=None, data=None, id=None, retry=None, comments=0):
        self.raw = raw
        self.start = start
        self.end = end
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry
        self.comments = comments

    def __repr__(self):
        data = self.data
        if data is not None and len(data) > 60:
            shown = f"{data[:60]!r}...({len(data)} bytes)"
        else:
            shown = repr(data)
        return (
            f"SSEEvent(start={self.start}, end={self.end}, event={self.event!r}, "
            f"data={shown}, id={self.id!r}, retry={self.retry!r}, comments={self.comments})"
        )


cdef class SSEParser:
    """Incremental event-stream parser (see ``_core.pyi`` for the contract)."""

    def __cinit__(self):
        self._acc = NULL
        self._acc_cap = 0

    def __init__(self, *, Py_ssize_t max_event_bytes=16 * 1024 * 1024, bint stream_start=True):
        self._state = SSE_BOM if stream_start else SSE_LINES
        self._max = max_event_bytes
        self._buf = bytearray()
        self._len = 0
        self._base = 0
        self._block = 0
        self._line = 0
        self._cr = 0
        self._lf = 0
        self._error = None
        self._last_event = None
        self._reset_block()

    def __dealloc__(self):
        PyMem_Free(self._acc)

    @property
    def offset(self):
        return self._block

    cpdef feed(self, data):
        cdef Py_buffer view
        cdef list events
        cdef const unsigned char* p
        cdef Py_ssize_t n, held_len, keep
        if self._state == SSE_FAILED:
            raise ProtocolError(self._error, 502)
        if self._state == SSE_CLOSED:
            raise RuntimeError("SSEParser.feed() after feed_eof()")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = view.len
            held_len = self._len
            if held_len == 0:
                # Nothing left over: read the caller's buffer in place and copy only the
                # unfinished tail, which must outlive this call.
                p = <const unsigned char*>view.buf
                events = self._run(p, self._base, self._base + n, False,
                                   data if type(data) is bytes else None)
                if self._state != SSE_FAILED:
                    keep = self._base + n - self._block
                    if keep > 0:
                        self._reserve(keep)
                        memcpy(PyByteArray_AS_STRING(self._buf), p + (self._block - self._base), <size_t>keep)
                        self._len = keep
                    self._base = self._block
            else:
                self._reserve(held_len + n)
                memcpy(PyByteArray_AS_STRING(self._buf) + held_len, view.buf, <size_t>n)
                self._len = held_len + n
                p = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
                events = self._run(p, self._base, self._base + self._len, False, None)
                keep = self._block - self._base  # bytes handed out in blocks
                if self._state != SSE_FAILED and keep > 0:
                    # Move the unfinished block to the front.  Its start is then at 0
                    # until it is handed out, so no byte is moved twice.
                    self._len -= keep
                    if self._len > 0:
                        memmove(PyByteArray_AS_STRING(self._buf), PyByteArray_AS_STRING(self._buf) + keep, <size_t>self._len)
                    elif PyByteArray_GET_SIZE(self._buf) > _SSE_BUF_KEEP:
                        self._buf = bytearray()  # one huge event should not pin its size
                    self._base = self._block
        finally:
            PyBuffer_Release(&view)
        # Blocks completed before a fault are handed out first; the fault is raised now
        # if there are none, else by the next call -- so the outcome does not depend on
        # how the stream was split into feed() calls.
        if self._state == SSE_FAILED and not events:
            raise ProtocolError(self._error, 502)
        return events

    def feed_eof(self):
        cdef list events
        cdef const unsigned char* p
        cdef Py_ssize_t end
        if self._state == SSE_FAILED:
            raise ProtocolError(self._error, 502)
        if self._state == SSE_CLOSED:
            return []
        p = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
        end = self._base + self._len
        events = self._run(p, self._base, end, True, None)
        if self._state != SSE_FAILED:
            self._state = SSE_CLOSED
            # §9.2.6 has a browser drop an unfinished event at EOF; a gateway must still
            # pass its bytes on, so it is reported -- but a last line without a line end
            # is not a line yet (it may be cut mid-JSON): it is in raw, not interpreted.
            if self._has_line or self._line < end:
                if end - self._block > self._max:
                    self._fail_oversized()
                else:
                    events.append(self._emit(p, self._base, end, None))
            self._buf = bytearray()
            self._len = 0
        if self._state == SSE_FAILED and not events:
            raise ProtocolError(self._error, 502)
        return events

    cdef int _reserve(self, Py_ssize_t need) except -1:
        # bytearray itself grows to the exact size asked for when that is well past its
        # allocation, which would copy a block arriving in 64 KiB pieces again on every
        # piece; doubling here keeps the copies to a handful per block.
        cdef Py_ssize_t cap = PyByteArray_GET_SIZE(self._buf)
        if need > cap:
            PyByteArray_Resize(self._buf, need if need > 2 * cap else 2 * cap)
        return 0

    cdef list _run(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t end, bint at_eof, object src):
        cdef list events = []
        cdef Py_ssize_t pos = self._line
        cdef Py_ssize_t eol, nxt
        cdef Py_ssize_t held = 0  # 1 when the last byte is a CR whose line end is undecided
        if MCPFAST_DEBUG:
            if not (base <= self._block <= self._line <= end and self._len <= PyByteArray_GET_SIZE(self._buf)):
                raise AssertionError(f"SSE positions out of order: {base} {self._block} {self._line} {end}")
        if self._state == SSE_BOM:
            # Fewer than 3 bytes that may still grow into a BOM: no line can start yet.
            if end - pos >= 3 or at_eof or not _sse_bom_prefix(p + (pos - base), end - pos):
                self._state = SSE_LINES
                if end - pos >= 3 and p[pos - base] == 0xEF and p[pos + 1 - base] == 0xBB and p[pos + 2 - base] == 0xBF:
                    pos += 3  # §9.2.6: ignored; part of the first block's raw, never of a line
        if self._state == SSE_LINES:
            while True:
                eol = _sse_next_eol(p, base, pos, end, &self._cr, &self._lf)
                if eol == end:
                    break
                if p[eol - base] == 10:
                    nxt = eol + 1
                elif eol + 1 < end:
                    nxt = eol + 2 if p[eol + 1 - base] == 10 else eol + 1
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
                        if pos - self._block > self._max:  # block bytes before its blank line
                            self._fail_oversized()
                            break
                        events.append(self._emit(p, base, nxt, src))
                    # Empty lines before a block's first line stay in its raw.
                else:
                    self._has_line = True
                    self._field(p, base, pos, eol)
                pos = nxt
        self._line = pos
        # max_event_bytes bounds what is held for one block.  The held CR is not counted:
        # it may be the blank line ending the block, whose size is what lies before it.
        if self._state != SSE_FAILED and end - held - self._block > self._max:
            self._fail_oversized()
        return events

    cdef int _field(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t a, Py_ssize_t b) except -1:
        cdef const unsigned char* s = p + (a - base)
        cdef Py_ssize_t name_len, v, q
        cdef const void* hit
        cdef long long r
        cdef unsigned char c
        if s[0] == 58:  # "If the line starts with a U+003A COLON character": comment
            self._comments += 1
            return 0
        hit = memchr(s, 58, <size_t>(b - a))
        if hit == NULL:  # no colon: the whole line is the name, the value is empty
            name_len = b - a
            v = b
        else:
            name_len = <const unsigned char*>hit - s
            v = a + name_len + 1
            if v < b and p[v - base] == 32:  # one leading space of the value is dropped
                v += 1
        # §9.2.6 "process the field"; names are case-sensitive, unknown ones ignored.
        if name_len == 4:
            if memcmp(s, <const char*>b"data", 4) == 0:
                self._add_data(p, base, v, b)
        elif name_len == 5:
            if memcmp(s, <const char*>b"event", 5) == 0:
                self._event_a = v
                self._event_b = b
            elif memcmp(s, <const char*>b"retry", 5) == 0:
                # Only ASCII digits count; empty is not a number.
                q = v
                while q < b and p[q - base] == 48:
                    q += 1
                if b > v and b - q <= _SSE_RETRY_MAX_DIGITS:
                    r = 0
                    while q < b:
                        c = p[q - base]
                        if c < 48 or c > 57:
                            break
                        r = r * 10 + (c - 48)
                        q += 1
                    if q == b:
                        self._retry = r
        elif name_len == 2:
            if s[0] == 105 and s[1] == 100:  # "id"
                if memchr(p + (v - base), 0, <size_t>(b - v)) == NULL:  # an id with NULL is ignored
                    self._id_a = v
                    self._id_b = b
        return 0

    cdef int _add_data(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t a, Py_ssize_t b) except -1:
        # "append the field value to the data buffer, then a single U+000A LF"; the
        # trailing LF is removed at dispatch, so values joined by LF are the same thing.
        cdef Py_ssize_t n = b - a
        cdef Py_ssize_t first
        if not self._acc_on:
            if self._data_a < 0:
                self._data_a = a  # most events have one data line: no copy until emit
                self._data_b = b
                return 0
            first = self._data_b - self._data_a
            self._acc_reserve(first + 1 + n)
            memcpy(self._acc, p + (self._data_a - base), <size_t>first)
            self._acc_len = first
            self._acc_on = True
        else:
            self._acc_reserve(self._acc_len + 1 + n)
        self._acc[self._acc_len] = 10
        memcpy(self._acc + self._acc_len + 1, p + (a - base), <size_t>n)
        self._acc_len += 1 + n
        return 0

    cdef int _acc_reserve(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef char* grown
        if need <= self._acc_cap:
            return 0
        cap = self._acc_cap * 2
        if cap < need:
            cap = need
        if cap < 256:
            cap = 256
        grown = <char*>PyMem_Realloc(self._acc, <size_t>cap)
        if grown == NULL:
            raise MemoryError()
        self._acc = grown
        self._acc_cap = cap
        return 0

    cdef void _reset_block(self):
        self._has_line = False
        self._event_a = -1
        self._event_b = -1
        self._id_a = -1
        self._id_b = -1
        self._data_a = -1
        self._data_b = -1
        self._acc_on = False
        self._acc_len = 0
        self._retry = -1
        self._comments = 0
        if self._acc_cap > _SSE_ACC_KEEP:
            PyMem_Free(self._acc)
            self._acc = NULL
            self._acc_cap = 0

    cdef SSEEvent _emit(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t stop, object src):
        cdef SSEEvent ev = SSEEvent.__new__(SSEEvent)
        cdef Py_ssize_t start = self._block
        cdef Py_ssize_t n
        cdef const char* v
        if src is not None and start == base and stop - base == PyBytes_GET_SIZE(src):
            ev.raw = <bytes>src  # the caller's object is exactly this block: no copy at all
        else:
            ev.raw = PyBytes_FromStringAndSize(<const char*>p + (start - base), stop - start)
        ev.start = start
        ev.end = stop
        if self._event_a >= 0:
            # Streams repeat one or two event types ("message"): reuse the last object.
            n = self._event_b - self._event_a
            v = <const char*>p + (self._event_a - base)
            if (self._last_event is None or PyBytes_GET_SIZE(self._last_event) != n
                    or memcmp(PyBytes_AS_STRING(self._last_event), v, <size_t>n) != 0):
                self._last_event = PyBytes_FromStringAndSize(v, n)
            ev.event = self._last_event
        if self._acc_on:
            ev.data = PyBytes_FromStringAndSize(self._acc, self._acc_len)
        elif self._data_a >= 0:
            ev.data = PyBytes_FromStringAndSize(<const char*>p + (self._data_a - base), self._data_b - self._data_a)
        if self._id_a >= 0:
            ev.id = PyBytes_FromStringAndSize(<const char*>p + (self._id_a - base), self._id_b - self._id_a)
        if self._retry >= 0:
            ev.retry = self._retry
        ev.comments = self._comments
        self._block = stop
        self._reset_block()
        return ev

    cdef void _fail_oversized(self):
        self._state = SSE_FAILED
        self._error = _SSE_OVERSIZED.format(self._max)


cdef extern from "string.h":
    const void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen)


def sse_passable(data):
    """Whole events a JSON-RPC relay may pass on unparsed (see ``_core.pyi``)."""
    cdef Py_buffer view
    cdef const unsigned char* s
    cdef size_t n
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char*>view.buf
        n = <size_t>view.len
        # Ends with the blank line of its last event, and no CR a next read could pair with.
        if n < 2 or s[n - 1] != 10:
            return False
        if s[n - 2] != 10 and not (n >= 4 and s[n - 2] == 13 and s[n - 3] == 10 and s[n - 4] == 13):
            return False
        if n >= 3 and s[0] == 0xEF and s[1] == 0xBB and s[2] == 0xBF:
            return False  # a BOM: only the parser knows whether it starts the stream
        if s[0] == 105 and s[1] == 100:  # "id": an event id field
            return False
        return (memmem(s, n, b"\nid", 3) == NULL and memmem(s, n, b"\rid", 3) == NULL
                and memmem(s, n, b'"method"', 8) == NULL and memmem(s, n, b"\\u", 2) == NULL)
    finally:
        PyBuffer_Release(&view)


cdef bytes _sse_as_bytes(object value):
    if type(value) is bytes:
        return <bytes>value
    return bytes(memoryview(value))  # bytes-like only: bytes(5) would be five NULs


def encode_sse_event(data=None, *, event=None, id=None, retry=None):
    """One event block (see ``_core.pyi``): event, id, retry, then one data line per line."""
    cdef bytes event_b = None
    cdef bytes id_b = None
    cdef bytes retry_b = None
    cdef bytes out
    cdef Py_buffer view
    cdef bint have_data = False
    cdef const unsigned char* s
    cdef char* w
    cdef Py_ssize_t total = 1  # the blank line ending the block
    cdef Py_ssize_t n = 0, lines, breaks, i, e, k, cr, lf
    if event is not None:
        event_b = _sse_as_bytes(event)
        n = PyBytes_GET_SIZE(event_b)
        if memchr(PyBytes_AS_STRING(event_b), 13, <size_t>n) != NULL or memchr(PyBytes_AS_STRING(event_b), 10, <size_t>n) != NULL:
            raise ValueError("SSE event type must not contain CR or LF")
        total += 8 + n  # "event: " value "\n"
    if id is not None:
        id_b = _sse_as_bytes(id)
        n = PyBytes_GET_SIZE(id_b)
        if (memchr(PyBytes_AS_STRING(id_b), 13, <size_t>n) != NULL or memchr(PyBytes_AS_STRING(id_b), 10, <size_t>n) != NULL
                or memchr(PyBytes_AS_STRING(id_b), 0, <size_t>n) != NULL):
            raise ValueError("SSE id must not contain CR, LF or NUL")
        total += 5 + n  # "id: " value "\n"
    if retry is not None:
        retry = PyNumber_Index(retry)
        if not 0 <= retry < _SSE_RETRY_LIMIT:
            raise ValueError("SSE retry must be in 0 .. 10**18 - 1")
        retry_b = b"%d" % retry
        total += 8 + PyBytes_GET_SIZE(retry_b)
    if data is None:
        if event_b is None and id_b is None and retry_b is None:
            raise ValueError("an SSE event needs data, event, id or retry")  # a lone blank line is no event
    else:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        have_data = True
    try:
        if have_data:
            # Pass 1: count lines (any of CRLF, CR, LF separates them, §9.2.5) to size
            # the result exactly, so it is built in place with no second copy.
            s = <const unsigned char*>view.buf
            n = view.len
            lines = 1
            breaks = 0
            i = cr = lf = 0
            while True:
                e = _sse_next_eol(s, 0, i, n, &cr, &lf)
                if e == n:
                    break
                k = 2 if s[e] == 13 and e + 1 < n and s[e + 1] == 10 else 1
                lines += 1
                breaks += k
                i = e + k
            total += 7 * lines + n - breaks  # "data: " line "\n"
        out = PyBytes_FromStringAndSize(NULL, total)
        w = PyBytes_AS_STRING(out)
        if event_b is not None:
            memcpy(w, <const char*>b"event: ", 7)
            memcpy(w + 7, PyBytes_AS_STRING(event_b), <size_t>PyBytes_GET_SIZE(event_b))
            w += 7 + PyBytes_GET_SIZE(event_b)
            w[0] = 10
            w += 1
        if id_b is not None:
            memcpy(w, <const char*>b"id: ", 4)
            memcpy(w + 4, PyBytes_AS_STRING(id_b), <size_t>PyBytes_GET_SIZE(id_b))
            w += 4 + PyBytes_GET_SIZE(id_b)
            w[0] = 10
            w += 1
        if retry_b is not None:
            memcpy(w, <const char*>b"retry: ", 7)
            memcpy(w + 7, PyBytes_AS_STRING(retry_b), <size_t>PyBytes_GET_SIZE(retry_b))
            w += 7 + PyBytes_GET_SIZE(retry_b)
            w[0] = 10
            w += 1
        if have_data:
            # Pass 2: copy each line behind its "data: ".
            i = cr = lf = 0
            while True:
                e = _sse_next_eol(s, 0, i, n, &cr, &lf)
                memcpy(w, <const char*>b"data: ", 6)
                memcpy(w + 6, s + i, <size_t>(e - i))
                w += 6 + (e - i)
                w[0] = 10
                w += 1
                if e == n:
                    break
                i = e + (2 if s[e] == 13 and e + 1 < n and s[e + 1] == 10 else 1)
        w[0] = 10
    finally:
        if have_data:
            PyBuffer_Release(&view)
    return out
