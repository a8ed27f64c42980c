# C declarations for the compiled build of client.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
cdef class BackendLink:
    cdef public object name, pool, target, host_line, extra, sweeper, max_body
    cdef public double response_timeout
    cdef public dict waiting, heads
    cpdef bytes post_head(self, session_id, version, Py_ssize_t body_length)
    cpdef watch(self, call)

cdef class Call:
    cdef public BackendLink link
    cdef public object data, handler, timeout, conn, head, sse, buf, pending, timer
    cdef public bint whole, done, retried, paused, watched, stream
    cdef public Py_ssize_t size
    cdef public int status
    cpdef start(self)
    cpdef _cancel_timer(self)
    cpdef upstream_head(self, head)
    cpdef upstream_body(self, chunk)
    cpdef _events(self, events)
    cpdef upstream_end(self)
    cpdef flush_head(self)
