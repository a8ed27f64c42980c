# C declarations for the compiled build of listener.py (see setup.py).  The .py stays the
# source; these only give the hot classes C-typed attributes and C-callable methods.
# Every attribute is public so plain Python code (tests, the multiplexer) still reads it.
from mcpfast.wire._core cimport RequestParser as _CRequestParser
cdef class ClientProtocol:
    cdef public _CRequestParser parser
    cdef public object gateway, transport, peer, reading, active, queue, timeouts, xff_peer, held
    cdef public int state
    cdef public double deadline, write_stalled
    cdef public bint closed, write_paused, read_paused, keep_alive, eof, starting
    cpdef send(self, data)
    cpdef _feed(self, data)
    cpdef send_many(self, parts)
    cpdef exchange_done(self, ex, bint keep_alive)
    cpdef close(self)
