# Declarations of the HTTP/1.1 parsers (implementation: _http.pxi; twin: _http_py.py).
# Each attribute and cdef method carries its contract.

# Where a parser stands in the message it is reading.  Line states (START, HEADERS,
# CHUNK_SIZE, TRAILERS) consume whole lines; the others consume counted bytes.
ctypedef enum HTTPState:
    HTTP_START = 0          # expecting a request-line / status-line
    HTTP_HEADERS = 1        # inside the header section
    HTTP_BODY = 2           # Content-Length body; _remaining > 0 bytes to go
    HTTP_CHUNK_SIZE = 3     # expecting a chunk-size line
    HTTP_CHUNK_DATA = 4     # inside chunk-data; _remaining > 0 bytes to go
    HTTP_CHUNK_CR = 5       # expecting the CR that ends chunk-data
    HTTP_CHUNK_LF = 6       # expecting the LF that ends chunk-data
    HTTP_TRAILERS = 7       # inside the trailer section
    HTTP_UNTIL_CLOSE = 8    # response body delimited by the connection closing
    HTTP_CLOSED = 9         # feed_eof() was called; feed raises RuntimeError
    HTTP_DEAD = 10          # an exception left the parser; feed/feed_eof raise RuntimeError


cdef class RequestHead:
    cdef readonly bytes method              # token, case kept
    cdef readonly bytes target              # request-target as sent
    cdef readonly int version               # 10 or 11
    cdef readonly list headers              # [(name, value)], names case kept, values OWS-stripped
    cdef readonly bint keep_alive           # set when the head completes
    cdef readonly long long content_length  # -1 when absent
    cdef readonly bint chunked              # Transfer-Encoding: chunked (validated)
    cdef readonly bint expect_continue      # Expect: 100-continue on an HTTP/1.1 request
    cdef readonly bytes host                # fast-access fields: None when absent; list
    cdef readonly bytes content_type        # fields (accept, connection, transfer_encoding)
    cdef readonly bytes accept              # joined with b", ", the others singletons
    cdef readonly bytes authorization
    cdef readonly bytes origin
    cdef readonly bytes connection
    cdef readonly bytes transfer_encoding
    cdef readonly bytes session_id          # Mcp-Session-Id
    cdef readonly bytes protocol_version    # MCP-Protocol-Version
    cdef readonly bytes mcp_method          # Mcp-Method
    cdef readonly bytes mcp_name            # Mcp-Name
    cdef readonly bytes last_event_id       # Last-Event-ID


cdef class ResponseHead:
    cdef readonly int version               # 10 or 11
    cdef readonly int status                # 100..999 (never 101)
    cdef readonly bytes reason              # b"" when absent
    cdef readonly list headers              # as RequestHead.headers
    cdef readonly bint keep_alive           # False for read-until-close bodies
    cdef readonly long long content_length  # -1 when absent or not applicable
    cdef readonly bint chunked
    cdef readonly bytes content_type        # fast-access fields as in RequestHead
    cdef readonly bytes session_id
    cdef readonly bytes connection
    cdef readonly bytes transfer_encoding


cdef class _HTTPParser:
    # Shared machinery of both parsers: line assembly, field lines, bodies, chunked framing.
    cdef bytearray _buf                 # the unfinished line carried between feeds; never holds an LF
    cdef object _view                   # memoryview of the bytes being fed (lazily made, dropped after feed)
    cdef HTTPState _state
    cdef Py_ssize_t _max_header_bytes   # limit on a header/trailer section, start line included
    cdef Py_ssize_t _max_headers        # limit on fields per section
    cdef long long _max_body            # limit on a declared or chunked body
    cdef Py_ssize_t _section_bytes      # bytes of the current header/trailer section so far
    cdef Py_ssize_t _nfields            # fields in the current section so far
    cdef long long _remaining           # body or chunk-data bytes still to come
    cdef long long _body_count          # chunk-data bytes declared so far in this message
    cdef list _fields                   # the list the current section's (name, value) pairs go to:
                                        # a trailer list as they come, a head's headers when it ends
    cdef list _prev_fields              # the fields of the head being read (then of the latest head),
                                        # by position; one equal to the next head's field at the same
                                        # position is reused for it
    cdef int _fault_status              # 0: each rule's own status; else every error gets this one
    cdef object _on_body                # the handler's bound on_body

    # Consume ``data`` (bytes or any buffer); a C call from the compiled gateway modules.
    cpdef feed(self, data)
    # Set and check the limits (ValueError when not positive).
    cdef int _init_limits(self, Py_ssize_t max_header_bytes, Py_ssize_t max_headers, long long max_body) except -1
    # Consume all of p[0:n]; `data` is the object p points into (handed out as body
    # when zero_copy, i.e. it is an immutable bytes).  Raises ProtocolError / handler errors.
    cdef int _feed(self, object data, const unsigned char* p, Py_ssize_t n, bint zero_copy) except -1
    # One body run p[a:b] as an object that stays valid after feed returns: data itself,
    # a view of it (zero_copy and at least COPY_BELOW bytes) or a new bytes.
    cdef object _chunk(self, object data, const unsigned char* p, Py_ssize_t n, Py_ssize_t a, Py_ssize_t b, bint zero_copy)
    # Append p[0:k] to _buf (k may be 0).
    cdef int _append(self, const unsigned char* p, Py_ssize_t k) except -1
    # _buf holds an unfinished line: raise if it is already longer than any valid one.
    cdef int _check_partial_line(self) except -1
    # Handle one complete line p[0:size] (ends with LF, size >= 1) in the current line state.
    cdef int _line(self, const unsigned char* p, Py_ssize_t size) except -1
    # Parse the field line p[0:n] (CRLF removed, n >= 1): a head's into _prev_fields at its
    # position, then _on_field for the names parsers look at; a trailer's onto _fields.
    cdef int _field_line(self, const unsigned char* p, Py_ssize_t n, bint in_head) except -1
    # Parse a Content-Length value into the head's content_length (RFC 9110 §8.6).
    cdef int _content_length(self, const unsigned char* v, Py_ssize_t n, long long* current) except -1
    # Parse the chunk-size line p[0:size] (LF included) and move to CHUNK_DATA or TRAILERS.
    cdef int _chunk_size_line(self, const unsigned char* p, Py_ssize_t size) except -1
    # Raise ProtocolError(message, _fault_status or status); always returns -1 by raising.
    cdef int _fail(self, int status, str message) except -1
    # Raise the RuntimeError for feed after feed_eof / after a failure.
    cdef int _refuse(self) except -1
    # Subclass hooks.
    cdef int _start_line(self, const unsigned char* p, Py_ssize_t size) except -1   # LF included
    cdef int _start_line_too_long(self, const unsigned char* p, Py_ssize_t avail) except -1  # always raises
    cdef int _on_field(self, int fid, bytes value, const unsigned char* v, Py_ssize_t vlen) except -1
    cdef int _head_done(self) except -1
    cdef int _message_end(self, object trailers) except -1   # state is already START


cdef class RequestParser(_HTTPParser):
    cdef Py_ssize_t _max_target         # limit on the request-target (414)
    cdef bytes _prev_target             # the previous request's target, reused when equal
    cdef RequestHead _head              # the head being read; None outside a header section
    cdef bint _expect                   # an "Expect: 100-continue" field was seen
    cdef object _on_request             # the handler's bound callbacks
    cdef object _on_request_end


cdef class ResponseParser(_HTTPParser):
    cdef ResponseHead _head             # the head being read; None outside a header section
    cdef bint _head_request             # the next final response answers a HEAD request
    cdef object _on_interim             # the handler's bound callbacks
    cdef object _on_response
    cdef object _on_response_end
