# C declarations for the compiled build of heads.py (see setup.py).  The .py stays the
# source; these only make the per-request builders C functions with typed arguments.
cpdef bint is_field_value(bytes value)
cpdef bint is_visible(bytes value)
cpdef bytes request_head(bytes method, bytes target, bytes host, bytes fixed, tuple fields, Py_ssize_t body_length)
cpdef bytes passthrough_head(bytes method, bytes target, bytes host, bytes block, bytes session_id, bytes forwarded_for, bytes fixed, Py_ssize_t body_length)
