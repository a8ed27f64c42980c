# C declarations for the compiled build of rewrite.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
cdef class Action:
    cdef public int kind
    cdef public object backend, body, method, name
