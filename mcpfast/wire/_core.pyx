# cython: language_level=3
"""The compiled protocol core: HTTP/1.1 request and response parsers, an SSE parser and
writer, a JSON-RPC envelope scanner with a splice helper, and a newline-delimited JSON
framer.

Theory of operation.  Bytes flow in through ``feed``; parsed facts flow out as handler
callbacks (HTTP), returned lists (SSE, NDJSON lines) or one ``Envelope`` (JSON-RPC).  Nothing here
knows about sockets or asyncio, so the same code is driven by the gateway's protocols,
by unit tests that split input at every possible point, and by fuzzers.  Input is read
through ``const unsigned char*`` with explicit offsets; a Python ``bytes`` is created
at most once per header value or body chunk, and body bytes that arrive in an immutable
``bytes`` object are handed on as a view of it rather than copied.

The contract (names, fields, error statuses) is ``_core.pyi``; the pure-Python twin
``_core_py`` implements the same contract and is the reference in differential tests.
Each component lives in its own include file so that it can be read on its own.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy, memchr

from mcpfast.wire.errors import ProtocolError

include "_debug.pxi"
include "_http.pxi"
include "_sse.pxi"
include "_jsonrpc.pxi"
include "_ndjson.pxi"
