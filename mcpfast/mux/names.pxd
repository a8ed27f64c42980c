# C declarations for the compiled build of names.py (see setup.py): the hot classes become
# extension types with C attributes and C-callable methods; the .py stays the source.
# Every attribute is public so plain Python code and tests still read and set it.
cdef class Namespace:
    cdef public object backends, separator, mode, scheme, single, _set, _scheme_l, tools, prompts, resources
    cdef public bint prefixed
    cdef public dict _splits
    cpdef split_name(self, exposed)
    cpdef resolve_name(self, kind, exposed)
