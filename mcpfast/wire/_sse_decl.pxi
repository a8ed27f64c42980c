# Server-Sent Events (WHATWG HTML §9.2.5-9.2.6): declarations and their contracts.
# Implementation in _sse.pxi; the readable reference is _sse_py.py (same state, same steps).

cdef enum SSEState:
    SSE_BOM      # nothing interpreted yet: waiting for 3 bytes (or EOF) to settle a leading BOM
    SSE_LINES    # interpreting lines
    SSE_FAILED   # a ProtocolError was found; every later call raises it (_error holds the text)
    SSE_CLOSED   # feed_eof() has run; feed() is a RuntimeError, feed_eof() returns []


cdef class SSEEvent:
    cdef readonly bytes raw            # exact block bytes; raw of all blocks tile the stream
    cdef readonly Py_ssize_t start     # absolute stream offset of raw[0]
    cdef readonly Py_ssize_t end       # start + len(raw)
    cdef readonly object event         # bytes | None: last ``event`` value
    cdef readonly object data          # bytes | None: ``data`` values joined with LF
    cdef readonly object id            # bytes | None: last ``id`` value without NUL
    cdef readonly object retry         # int | None: last valid ``retry``
    cdef readonly Py_ssize_t comments  # number of ``:`` lines


cdef class SSEParser:
    cdef SSEState _state
    cdef Py_ssize_t _max               # max_event_bytes: bound on a block's bytes before its blank line
    cdef bytearray _buf                # stream bytes [_base, _base + _len) kept between feeds; its size is capacity
    cdef Py_ssize_t _len               # bytes of _buf in use; 0 between feeds that end on a block boundary
    cdef Py_ssize_t _base              # absolute offset of _buf[0] (of the next byte fed when _len is 0)
    # All positions below are absolute stream offsets, so they survive moving the
    # unfinished tail from the caller's buffer into _buf.
    cdef Py_ssize_t _block             # start of the current block == bytes handed out (``offset``)
    cdef Py_ssize_t _line              # start of the next line to interpret
    cdef Py_ssize_t _cr                # no CR in [_line, _cr); _cr is at a CR or at the end of data searched
    cdef Py_ssize_t _lf                # same for LF: together they make every byte searched at most once
    cdef bint _has_line                # current block has a non-empty line: the next empty line ends it
    # Field values are kept as spans into the buffered block (which stays buffered until
    # the block ends) and become bytes once, when the block is emitted.
    cdef Py_ssize_t _event_a, _event_b # last ``event`` value; _event_a < 0 when none
    cdef Py_ssize_t _id_a, _id_b       # last NUL-free ``id`` value; _id_a < 0 when none
    cdef Py_ssize_t _data_a, _data_b   # the block's first ``data`` value; _data_a < 0 when none
    cdef char* _acc                    # joined data (PyMem) once a block has two data lines
    cdef Py_ssize_t _acc_len           # bytes used in _acc
    cdef Py_ssize_t _acc_cap           # bytes allocated for _acc
    cdef bint _acc_on                  # _acc, not the _data span, holds this block's data
    cdef long long _retry              # last valid ``retry`` (< 10**18); -1 when none
    cdef Py_ssize_t _comments          # comment lines in the current block
    cdef str _error                    # message of the fault once _state is SSE_FAILED
    cdef bytes _last_event             # last event type handed out, reused when the next one matches
    # Consume the next bytes of the stream; the finished events (a C call from the compiled
    # multiplexer).
    cpdef feed(self, data)

    # Interpret every complete line in p[_line - base : end - base] (p holds stream bytes
    # [base, end) and at least [_block, end)); return the blocks finished.  A fault sets
    # _state = SSE_FAILED and _error and stops.  ``src``: the exact ``bytes`` object p
    # points into, or None; a block spanning all of it is handed out as that object.
    cdef list _run(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t end, bint at_eof, object src)
    # Interpret the non-empty line [a, b) as a comment or field (§9.2.6).
    cdef int _field(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t a, Py_ssize_t b) except -1
    # Append LF (unless first) and [a, b) to the data of this block, switching to _acc at the second line.
    cdef int _add_data(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t a, Py_ssize_t b) except -1
    # Grow _buf's capacity to at least ``need`` bytes, geometrically, keeping its contents.
    cdef int _reserve(self, Py_ssize_t need) except -1
    # Grow _acc to hold at least ``need`` bytes (MemoryError when it cannot).
    cdef int _acc_reserve(self, Py_ssize_t need) except -1
    # Forget the current block's fields (a new block starts at _block).
    cdef void _reset_block(self)
    # Make bytes [_block, stop) into an SSEEvent with the block's fields; start the next block at stop.
    cdef SSEEvent _emit(self, const unsigned char* p, Py_ssize_t base, Py_ssize_t stop, object src)
    # Record a max_event_bytes fault.
    cdef void _fail_oversized(self)
