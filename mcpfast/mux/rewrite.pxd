# C declarations for the compiled build of rewrite.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
from mcpfast.mux.names cimport Namespace

cdef class Action:
    cdef public int kind
    cdef public object backend, body, method, name

cpdef bytes _str_json(s)
cpdef Action route_client_message(body, env, Namespace ns)
cpdef Action _route(body, env, Namespace ns)
cpdef tuple rewrite_sse_event(ev, backend, Namespace ns, stream_ids=*)
