# C declarations for the compiled build of base.py (see setup.py): the backend session
# record is an extension type, read on every routed request.
cdef class BackendSession:
    cdef public object name, session_id, protocol_version, post_pre, post_link
