# C declarations for the compiled build of observe.py (see setup.py).  The .py stays the
# source; these only give the hot classes C-typed attributes and C-callable methods.
# Every attribute is public so plain Python code (tests, the multiplexer) still reads it.
cimport cython

cdef class _LoopCounterChild:
    cdef public double value
    cpdef inc(self, double amount=*)
cdef class _LoopGaugeChild:
    cdef public double value
    cpdef inc(self, double amount=*)
    cpdef dec(self, double amount=*)
cdef class _LoopHistogramChild:
    cdef public tuple bounds
    cdef public list counts
    cdef public double sum
    @cython.locals(i=Py_ssize_t, b=double)
    cpdef observe(self, double value)
cdef class BackendMetrics:
    cdef public object _metrics, route, backend, sessions, connections
    cdef public _LoopHistogramChild gateway, upstream
    cdef public _LoopGaugeChild sse
    cdef public dict _req
    cdef public set _tools
    cpdef count(self, method, tool, outcome)
    cdef _child(self, method, tool, outcome)
