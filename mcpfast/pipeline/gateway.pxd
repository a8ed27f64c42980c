# C declarations for the compiled build of gateway.py (see setup.py).  The .py stays the
# source; these only give the hot classes C-typed attributes and C-callable methods.
# Every attribute is public so plain Python code (tests, the multiplexer) still reads it.
from mcpfast.transport.listener cimport ClientProtocol
from mcpfast.observe cimport BackendMetrics
from mcpfast.wire._core cimport RequestHead as _CRequestHead, ResponseHead as _CResponseHead
from mcpfast.wire.heads cimport passthrough_head
cdef class Route:
    cdef public object path, name, backend, pool, target, prefix, extra, policy, virtual, host_line, fields
    cdef public object seal, pinned, cors, rfields, sessions
    cdef public BackendMetrics bm
    cdef public double response_timeout
cdef class Exchange:
    cdef public object gw, chunks, body
    cdef public _CRequestHead head
    cdef public ClientProtocol conn
    cdef public Route route
    cdef public double t0, t_sent, t_up_end, t_end, deadline
    cdef public object method, tool, rpc_id, upstream, queued, outcome, out, principal, env, lfilter, stream
    cdef public object upstream_sid
    cdef public int status, phase
    cdef public long long bytes_out, flushed
    cdef public bint chunked, keep_alive, sse, retried, is_head
    cpdef flush(self)
    cpdef bint alive(self)
    cpdef begin_answer(self, int status, bytes head)
    cpdef upstream_head(self, _CResponseHead head)
    cpdef upstream_body(self, chunk)
    cpdef relay(self, chunk)
    cpdef upstream_end(self)
    cpdef finish(self, outcome)
    cpdef phase_done(self, outcome)
    cpdef forward(self)
    cpdef _dispatch(self, Route route)
    cpdef begin(self, Route route)
    cdef _name_tool(self)
    cpdef bytes framed_head(self, list parts, long long content_length, int status)
