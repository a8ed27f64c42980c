# Newline-delimited JSON framing (the stdio transport): declarations and their contracts.
# Implementation in _ndjson.pxi; the readable reference is _ndjson_py.py (same rules).

cdef enum NDJState:
    NDJ_OPEN     # framing lines
    NDJ_FAILED   # a line grew past max_line; every later call raises (_error holds the text)
    NDJ_CLOSED   # feed_eof() has run; feed() is a RuntimeError, feed_eof() returns []


cdef class NDJSONFramer:
    cdef readonly Py_ssize_t max_line  # bound on a line's bytes, LF and the CR before it not counted
    cdef NDJState _state
    cdef bytearray _buf                # the unfinished line in [0, _len); its size is capacity
    cdef Py_ssize_t _len               # bytes of _buf in use: at most max_line, plus 1 for a
                                       # last byte CR whose LF may still come
    cdef str _error                    # message of the fault once _state is NDJ_FAILED
    # Consume the next bytes of the stream; the lines they complete.
    cpdef list feed(self, data)
    # The held line's bytes that count against max_line (a last CR does not).
    cdef Py_ssize_t _held_content(self) noexcept
    # Grow _buf's capacity to at least ``need`` bytes (geometrically, never past
    # max_line + 1), keeping its contents.
    cdef int _reserve(self, Py_ssize_t need) except -1
    # Record the over-long line fault and drop the held bytes.
    cdef void _fail(self)
