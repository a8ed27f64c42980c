# Declarations of the compiled core's classes and helpers.  Each include holds one
# component's contracts (attributes and cdef methods, each with a comment on what it
# promises); the implementations are in the matching .pxi included by _core.pyx.

include "_http_decl.pxi"
include "_sse_decl.pxi"
include "_jsonrpc_decl.pxi"
include "_ndjson_decl.pxi"
