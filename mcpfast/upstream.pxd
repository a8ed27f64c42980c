# C declarations for the compiled build of upstream.py (see setup.py).  The .py stays the
# source; these only give the hot classes C-typed attributes and C-callable methods.
# Every attribute is public so plain Python code (tests, the multiplexer) still reads it.
cdef class UpstreamProtocol:
    cdef public object pool, transport, parser, sink
    cdef public bint closed, reused, got_bytes, keep_alive, _paused, _write_paused, _forgotten
    cdef public double idle_since
    cpdef send(self, sink, list data, bint head_request=*)
    cpdef pause_reading(self)
    cpdef close(self)
