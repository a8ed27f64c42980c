# C declarations for the compiled build of token.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
from mcpfast.transport.base cimport BackendSession

cdef class SessionState:
    cdef public object subject, created, protocol_version, backends, client_capabilities_json, client_info_json, _caps
    cdef public dict _by_name
    cpdef BackendSession backend(self, name)

cdef class TokenCodec:
    cdef public object _kid, _seal, max_age
    cdef public dict _open, _cache, _revoked
    cdef public Py_ssize_t _cache_size, max_revoked
    cpdef tuple open_sid(self, bytes sid, bytes route_b, subject)
    cpdef tuple _lookup(self, key, str token, bytes route_b)
    cpdef _accept(self, tuple entry, subject, now)
