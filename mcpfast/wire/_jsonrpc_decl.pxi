# Declarations of the JSON-RPC envelope scanner (implementation: _jsonrpc.pxi; contract:
# the JSON-RPC section of _core.pyi; readable reference: _jsonrpc_py.py).
#
# Offsets are Py_ssize_t indexes into the scanned body.  Every scanning helper takes the
# offset of the first byte of its token and returns the offset just past it, or -1 after
# recording the first fault in JrScan (the caller turns that into ProtocolError -32700).
# They never raise and never touch Python objects, so the walk is plain C.  The lexical
# layer and the skipper of uninteresting containers are C functions (mcpfast_jr_*) in the
# verbatim block of _jsonrpc.pxi; the cdef helpers below wrap them for the walk.

cdef enum:
    JR_MAX_DEPTH = 512  # containers open at once; the top-level value counts as 1
    JR_NSPANS = 10  # spans an Envelope reports (JrSpan)

cdef enum JsonTag:  # the JSON type of a recorded value; JT_ABSENT = key not seen
    JT_ABSENT = 0
    JT_STRING = 1
    JT_INT = 2
    JT_FLOAT = 3
    JT_TRUE = 4
    JT_FALSE = 5
    JT_NULL = 6
    JT_OBJECT = 7
    JT_ARRAY = 8

cdef enum JrKey:  # member names we act on, decided by their unescaped value
    K_OTHER
    K_JSONRPC
    K_METHOD
    K_ID
    K_PARAMS
    K_RESULT
    K_ERROR
    K_NAME
    K_URI
    K_CURSOR
    K_META
    K_REQUEST_ID
    K_PROGRESS_TOKEN
    K_PROTOCOL_VERSION
    K_CODE

cdef enum JrLevel:  # which object of a message is being walked: decides which keys count
    LV_TOP  # the message object: jsonrpc, method, id, params, result, error
    LV_PARAMS  # params: name, uri, cursor, requestId, _meta
    LV_META  # params._meta: progressToken, io.modelcontextprotocol/protocolVersion
    LV_ERROR  # error: code

cdef enum JrSpan:  # slot of each reported span in Envelope._span (pairs start, end)
    SP_ID
    SP_PARAMS
    SP_NAME
    SP_URI
    SP_CURSOR
    SP_PROGRESS_TOKEN
    SP_REQUEST_ID
    SP_PROTOCOL_VERSION
    SP_RESULT
    SP_ERROR

ctypedef struct JrVal:  # where one member value is: [start, end), its JSON type, escapes
    Py_ssize_t start
    Py_ssize_t end
    int tag  # JsonTag; JT_ABSENT when the key was not seen (start/end meaningless)
    int escaped  # JT_STRING only: the string holds at least one backslash escape

ctypedef struct JrFound:  # the walk's record of one message (last duplicate key wins)
    Py_ssize_t start  # span of the message object
    Py_ssize_t end
    Py_ssize_t index  # position in the batch (0 for a lone message)
    JrVal jsonrpc
    JrVal method
    JrVal id
    JrVal params
    JrVal result
    JrVal error
    JrVal name
    JrVal uri
    JrVal cursor
    JrVal request_id
    JrVal progress_token
    JrVal protocol_version
    JrVal error_code

ctypedef struct JrScan:  # one walk over one body
    const unsigned char* p  # the body, read-only, valid for the whole walk
    Py_ssize_t n  # its length
    Py_ssize_t err_pos  # offset of the first fault (valid once err is set)
    const char* err  # static text of the first fault, NULL while none
    int escaped  # set by _jr_string: the string just skipped had escapes
    int is_int  # set by _jr_number: the number just skipped had no fraction/exponent


cdef class Envelope:
    cdef readonly int kind  # KIND_*
    cdef readonly Py_ssize_t start  # span of the message object in the body
    cdef readonly Py_ssize_t end
    cdef readonly object method  # str or None
    cdef readonly object id  # int, str or None
    cdef readonly object name  # params.name when a string
    cdef readonly object uri  # params.uri when a string
    cdef readonly object cursor  # params.cursor when a string
    cdef readonly object progress_token  # params._meta.progressToken, str or int
    cdef readonly object request_id  # params.requestId, str or int
    cdef readonly object protocol_version  # params._meta["io.modelcontextprotocol/protocolVersion"]
    cdef readonly object error_code  # error.code when an integer
    cdef Py_ssize_t _span[2 * JR_NSPANS]  # JrSpan pairs; start -1 = absent; tuples built on access


# Record the first fault at pos; always returns -1 (so `return _jr_fail(...)` reads well).
cdef Py_ssize_t _jr_fail(JrScan* s, Py_ssize_t pos, const char* why) noexcept
# First offset >= i that is not JSON whitespace (RFC 8259 §2), or n.
cdef Py_ssize_t _jr_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil
# p[i] is '"': offset after the closing quote of a valid string, or -1; sets s.escaped.
cdef Py_ssize_t _jr_string(JrScan* s, Py_ssize_t i) noexcept
# p[i] is '-' or a digit: offset after a valid number (RFC 8259 §6), or -1; sets s.is_int.
cdef Py_ssize_t _jr_number(JrScan* s, Py_ssize_t i) noexcept
# p[i] is '{' or '[' whose own depth is `depth`: offset after the whole container, or -1.
cdef Py_ssize_t _jr_container(JrScan* s, Py_ssize_t i, int depth) noexcept
# Skip any value at p[i] inside a container of depth `depth`; fill *out (if not NULL).
cdef Py_ssize_t _jr_value(JrScan* s, Py_ssize_t i, int depth, JrVal* out) noexcept
# Unescape the validated string contents p[a:b] as UTF-8 into out (room for b - a bytes); its length.
cdef Py_ssize_t _jr_unescape(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, unsigned char* out) noexcept nogil
# Which JrKey the key string p[start:end] (quotes included) names; s.escaped tells if it has escapes.
cdef int _jr_key(JrScan* s, Py_ssize_t start, Py_ssize_t end) noexcept
# The field of f that key records at level, or NULL when that key does not matter there.
cdef JrVal* _jr_slot(JrFound* f, int level, int key) noexcept nogil
# Walk the object at p[i] (own depth `depth`) at `level`, recording members into f; end or -1.
cdef Py_ssize_t _jr_object(JrScan* s, Py_ssize_t i, int depth, int level, JrFound* f) noexcept
# Forget all fields of f (a new message starts at `start`, element `index` of a batch).
cdef void _jr_found_init(JrFound* f, Py_ssize_t start, Py_ssize_t index) noexcept nogil
# Decode the recorded string v of body p to str (escapes resolved).
cdef object _jr_text(const unsigned char* p, JrVal* v)
# Decode the recorded integer v of body p to int, exactly.
cdef object _jr_int(const unsigned char* p, JrVal* v)
# The value of v if its tag is JT_STRING (with_string) / JT_INT (with_int), else None; sets span slot.
cdef object _jr_report(Envelope env, int slot, const unsigned char* p, JrVal* v, bint with_string, bint with_int)
# Judge the walked message f against JSON-RPC 2.0 and build its Envelope; raises -32600.
cdef Envelope _jr_envelope(const unsigned char* p, JrFound* f, object element)
# ProtocolError(400, -32600) naming the broken rule (and the batch element, if not None).
cdef object _jr_invalid(str why, object element)
# True if v is the string "2.0" (escapes resolved) -- JSON-RPC 2.0 §4 "jsonrpc".
cdef bint _jr_is_version(const unsigned char* p, JrVal* v)
# ProtocolError(400, -32700) for the fault recorded in s (there must be one).
cdef object _jr_parse_error(JrScan* s)
# Stores start, end in *a, *b if 0 <= start <= end <= n, else ValueError; TypeError if not integers.
cdef int _jr_range(object start, object end, Py_ssize_t n, Py_ssize_t* a, Py_ssize_t* b) except -1
# The span tuple in slot (a JrSpan) of env, or None when absent.
cdef object _jr_span(Envelope env, int slot)
# A bytes copy of the C-contiguous buffer obj (BufferError if it is not contiguous).
cdef bytes _jr_copy(object obj)
# Scan a whole body (one message or a batch): Envelope or list; raises ProtocolError.
cdef object _jr_scan(const unsigned char* p, Py_ssize_t n)
