# C declarations for the compiled build of virtual.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
from mcpfast.mux.client cimport BackendLink, Call
from mcpfast.mux.names cimport Namespace
from mcpfast.gateway cimport Exchange as _CExchange
from mcpfast._core cimport ResponseHead as _CResponseHead

cdef class VirtualRoute:
    cdef public object gw, route, path, path_b, mc, backends, codec, cache, server_info, local_view, resessions
    cdef public Namespace ns
    cdef public bint per_session, fail_open
    cdef public dict links, views, down, reopening
    cdef public long long _ids
    cpdef handle(self, _CExchange ex)
    cpdef _post(self, _CExchange ex)
    cpdef _open_token(self, _CExchange ex)
    cpdef _dispatch(self, _CExchange ex, body, env, state, token, bint may_refresh)
    cpdef _admit(self, _CExchange ex, action, env)
    cpdef refusal(self, _CExchange ex, action, env)
    cpdef _forward(self, _CExchange ex, state, token, action, env)
    cpdef _send(self, _CExchange ex, state, token, action, env, bs, bint retried)
    cpdef _session(self, token, state, b)

cdef class _Relay:
    cdef public VirtualRoute vr
    cdef public _CExchange ex
    cdef public object state, token, action, env, bs, ids
    cdef public bint retried, started, expired
    cpdef on_head(self, Call call, _CResponseHead head)
    cpdef on_body(self, Call call, chunk)
    cpdef on_event(self, Call call, ev)
    cpdef on_flush(self, call)
    cpdef on_end(self, Call call, body)
    cpdef on_error(self, call, err)
