# C declarations for the compiled build of virtual.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
cimport cython
from mcpfast.transport.http_mcp cimport BackendLink, Call, CallHandler
from mcpfast.mux.names cimport Namespace
from mcpfast.mux.rewrite cimport Action, rewrite_sse_event, route_client_message
from mcpfast.transport.base cimport BackendSession
from mcpfast.mux.token cimport SessionState, TokenCodec
from mcpfast.pipeline.gateway cimport Exchange as _CExchange
from mcpfast.wire._core cimport ResponseHead as _CResponseHead

cdef class VirtualRoute:
    cdef public object gw, route, path, path_b, mc, backends, cache, server_info, local_view, resessions
    cdef public TokenCodec codec
    cdef public Namespace ns
    cdef public bint per_session, fail_open
    cdef public dict links, ends, views, down, reopening
    cdef public dict epochs, fingerprints, caps_keys
    cdef public long long _ids
    cpdef handle(self, _CExchange ex)
    cpdef _post(self, _CExchange ex)
    cpdef _open_token(self, _CExchange ex)
    @cython.locals(action=Action)
    cpdef _dispatch(self, _CExchange ex, body, env, SessionState state, token, bint may_refresh)
    cpdef _admit(self, _CExchange ex, Action action, env)
    cpdef refusal(self, _CExchange ex, action, env)
    @cython.locals(bs=BackendSession)
    cpdef _forward(self, _CExchange ex, SessionState state, token, Action action, env)
    @cython.locals(link=BackendLink, call=Call)
    cpdef _send(self, _CExchange ex, SessionState state, token, Action action, env, BackendSession bs, bint retried)
    cpdef BackendSession _session(self, token, SessionState state, b)

cdef class _Relay(CallHandler):
    cdef public VirtualRoute vr
    cdef public _CExchange ex
    cdef public SessionState state
    cdef public Action action
    cdef public BackendSession bs
    cdef public object token, env, ids
    cdef public bint retried, started, expired
    cpdef on_head(self, Call call, _CResponseHead head)
    cpdef on_body(self, Call call, chunk)
    cpdef on_event(self, Call call, ev)
    cpdef on_flush(self, Call call)
    cpdef on_end(self, Call call, body)
    cpdef on_error(self, Call call, err)
