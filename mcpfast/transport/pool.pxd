# C declarations for the compiled build of upstream.py (see setup.py).  The .py stays the
# source; these only give the hot classes C-typed attributes and C-callable methods.
# Every attribute is public so plain Python code (tests, the multiplexer) still reads it.
from mcpfast.wire._core cimport ResponseParser as _CResponseParser
cdef class UpstreamPool
cdef class UpstreamProtocol:
    cdef public _CResponseParser parser
    cdef public UpstreamPool pool
    cdef public object transport, sink, _write_buffer_size
    cdef public bint closed, reused, got_bytes, keep_alive, ended, _paused, _write_paused, _forgotten, stream
    cdef public double idle_since
    cpdef send(self, sink, list data, bint head_request=*)
    cpdef pause_reading(self)
    cpdef close(self)
cdef class UpstreamPool:
    cdef public object backend, metrics, host, port, connect_timeout, _waiters, _loop, _offering, tls, server_hostname
    cdef public list _idle
    cdef public Py_ssize_t size, max_header_bytes, max_connections, max_streams, _open, _connecting, _streams
    cdef public double idle_timeout
    cdef public bint closed
    cpdef UpstreamProtocol take_idle(self)
    cpdef release(self, UpstreamProtocol conn)
    cpdef _forget(self, UpstreamProtocol conn)
