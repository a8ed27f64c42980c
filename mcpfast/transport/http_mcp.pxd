# C declarations for the compiled build of http_mcp.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
from mcpfast.wire._core cimport ResponseHead as _CResponseHead, SSEParser as _CSSEParser
from mcpfast.transport.pool cimport UpstreamPool as _CUpstreamPool, UpstreamProtocol as _CUpstreamProtocol
from mcpfast.transport.base cimport BackendSession

cdef class Call

cdef class CallHandler:
    cpdef on_head(self, Call call, _CResponseHead head)
    cpdef on_body(self, Call call, chunk)
    cpdef on_event(self, Call call, ev)
    cpdef on_flush(self, Call call)
    cpdef on_end(self, Call call, body)
    cpdef on_error(self, Call call, err)

cdef class BackendLink:
    cdef public _CUpstreamPool pool
    cdef public object name, target, host_line, extra, sweeper, max_body
    cdef public double response_timeout
    cdef public dict waiting
    cpdef bytes post_head(self, session_id, version, Py_ssize_t body_length)
    cpdef bytes session_head(self, BackendSession bs, Py_ssize_t body_length)
    cpdef watch(self, call, double now=*)

cdef class Call:
    cdef public BackendLink link
    cdef public CallHandler handler
    cdef public object data, timeout, buf, queued, timer
    cdef public _CSSEParser sse
    cdef public _CUpstreamProtocol conn
    cdef public _CResponseHead head
    cdef public bint whole, done, retried, paused, watched, stream, events, plain, listen
    cdef public Py_ssize_t size
    cdef public int status
    cpdef start(self, double now=*)
    cpdef _cancel_timer(self)
    cpdef upstream_head(self, _CResponseHead head)
    cpdef upstream_body(self, chunk)
    cpdef _feed(self, chunk)
    cpdef _collect(self, chunk)
    cpdef _events(self, events)
    cpdef upstream_end(self)
    cpdef flush(self)
