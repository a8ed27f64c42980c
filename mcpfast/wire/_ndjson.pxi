# Newline-delimited JSON framing (compiled).  Contracts of the attributes and cdef
# methods: _ndjson_decl.pxi.  Reference twin: _ndjson_py.py; rules: _core.pyi.
#
# Theory of operation.  A stdio MCP server writes one JSON-RPC message per line.  The
# framer is fed its stdout as the pipe delivers it and hands out each complete line as
# ``bytes`` (without the LF and one CR before it), judging nothing else.  When no part of
# a line is left over from the previous feed -- the usual case -- lines are found with
# memchr in the caller's own buffer and each becomes ``bytes`` with one copy; only an
# unfinished tail is copied into the ``bytearray``.  A line arriving in many pieces is
# appended piece by piece into a buffer grown geometrically (so each byte is copied a
# bounded number of times) and capped at max_line + 1 bytes: a line that passes the
# limit is refused as soon as its bytes show it, so a child printing 100 MB costs at most
# max_line of memory.  Each byte is searched for LF once: the held part has none.

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

cdef enum:
    # A buffer grown beyond this for one long line is released once the line is out, so
    # one huge message does not pin its size for the life of the child.
    _NDJ_BUF_KEEP = 1048576

cdef str _NDJ_TOO_LONG = "NDJSON line longer than {} bytes"


cdef inline Py_ssize_t _ndj_content(Py_ssize_t n, unsigned char last) noexcept nogil:
    # The bytes that count against max_line in a line of n bytes whose last byte is
    # ``last``: a last CR is the line end's (CRLF), or may still become it.
    return n - 1 if n > 0 and last == 13 else n


cdef class NDJSONFramer:
    """Splits a byte stream into newline-delimited lines (see ``_core.pyi``)."""

    def __init__(self, Py_ssize_t max_line=16 * 1024 * 1024):
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._state = NDJ_OPEN
        self._buf = bytearray()
        self._len = 0
        self._error = None

    @property
    def buffered(self):
        return self._len

    cpdef list feed(self, data):
        cdef Py_buffer view
        cdef list out = []
        cdef const unsigned char* p
        cdef const unsigned char* hit
        cdef unsigned char* held
        cdef Py_ssize_t n, pos, e, b, total, k
        cdef bytes line
        if self._state == NDJ_FAILED:
            raise ProtocolError(self._error, 502)
        if self._state == NDJ_CLOSED:
            raise RuntimeError("NDJSONFramer.feed() after feed_eof()")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const unsigned char*>view.buf
            n = view.len
            pos = 0
            if self._len > 0 and n > 0:
                # The line held from earlier feeds goes on into this data.
                held = <unsigned char*>PyByteArray_AS_STRING(self._buf)
                hit = <const unsigned char*>memchr(p, 10, <size_t>n)
                e = n if hit == NULL else hit - p
                total = _ndj_content(self._len + e, p[e - 1] if e > 0 else held[self._len - 1])
                if hit == NULL:
                    if total > self.max_line:
                        self._fail()
                    else:
                        self._reserve(self._len + n)
                        memcpy(PyByteArray_AS_STRING(self._buf) + self._len, p, <size_t>n)
                        self._len += n
                    pos = n
                elif total > self.max_line:
                    self._fail()
                else:
                    if total > 0:
                        line = PyBytes_FromStringAndSize(NULL, total)
                        k = self._len if self._len < total else total
                        memcpy(PyBytes_AS_STRING(line), held, <size_t>k)
                        if total > k:
                            memcpy(PyBytes_AS_STRING(line) + k, p, <size_t>(total - k))
                        out.append(line)
                    self._len = 0
                    if PyByteArray_GET_SIZE(self._buf) > _NDJ_BUF_KEEP:
                        self._buf = bytearray()
                    pos = e + 1
            # Whole lines in the caller's buffer, read in place.
            while self._state == NDJ_OPEN and pos < n:
                hit = <const unsigned char*>memchr(p + pos, 10, <size_t>(n - pos))
                if hit == NULL:
                    break
                e = hit - p
                b = e - 1 if e > pos and p[e - 1] == 13 else e
                if b - pos > self.max_line:
                    self._fail()
                    break
                if b > pos:
                    out.append(PyBytes_FromStringAndSize(<const char*>p + pos, b - pos))
                pos = e + 1
            if self._state == NDJ_OPEN and pos < n:
                # An unfinished line starts here (nothing is held: the held line ended
                # at an LF before pos, or pos would be n).
                if _ndj_content(n - pos, p[n - 1]) > self.max_line:
                    self._fail()
                else:
                    self._reserve(n - pos)
                    memcpy(PyByteArray_AS_STRING(self._buf), p + pos, <size_t>(n - pos))
                    self._len = n - pos
        finally:
            PyBuffer_Release(&view)
        if MCPFAST_DEBUG:
            if not (0 <= self._len <= PyByteArray_GET_SIZE(self._buf) and self._held_content() <= self.max_line):
                raise AssertionError(f"NDJSON framer holds {self._len} bytes (max_line {self.max_line})")
        # Lines completed before a fault are handed out first; the fault is raised now if
        # there are none, else by the next call -- so the outcome does not depend on how
        # the stream was split into feed() calls.
        if self._state == NDJ_FAILED and not out:
            raise ProtocolError(self._error, 502)
        return out

    def feed_eof(self):
        cdef Py_ssize_t k
        cdef bytes line
        if self._state == NDJ_FAILED:
            raise ProtocolError(self._error, 502)
        if self._state == NDJ_CLOSED:
            return []
        self._state = NDJ_CLOSED
        # The last line, without LF: it ends as if an LF followed (so a last CR goes).
        k = self._held_content()
        line = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._buf), k) if k else None
        self._buf = bytearray()
        self._len = 0
        return [line] if k else []

    cdef Py_ssize_t _held_content(self) noexcept:
        if self._len == 0:
            return 0
        return _ndj_content(self._len, (<unsigned char*>PyByteArray_AS_STRING(self._buf))[self._len - 1])

    cdef int _reserve(self, Py_ssize_t need) except -1:
        # bytearray grows to the exact size asked for once that is well past its
        # allocation, which would copy a line arriving in 64 KiB pieces again on every
        # piece; doubling keeps the copies to a handful per line.
        cdef Py_ssize_t cap = PyByteArray_GET_SIZE(self._buf)
        if need > cap:
            cap = 2 * cap
            if cap < need:
                cap = need
            if cap - 1 > self.max_line:  # (written so that max_line + 1 cannot overflow)
                cap = need if need - 1 > self.max_line else self.max_line + 1
            PyByteArray_Resize(self._buf, cap)
        return 0

    cdef void _fail(self):
        self._state = NDJ_FAILED
        self._error = _NDJ_TOO_LONG.format(self.max_line)
        self._buf = bytearray()
        self._len = 0
