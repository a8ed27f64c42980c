"""The pure-Python twin of the compiled core: same classes, same functions, same events.

It is the readable reference that ``_core.pyx`` is tested against, and the core that
runs when ``MCPFAST_NO_EXTENSIONS=1`` is set (or the extension is not built).  Each
component lives in its own module; this one only gathers them under the core's names.
"""

from ._http_py import RequestHead, RequestParser, ResponseHead, ResponseParser, join_fields
from ._jsonrpc_py import (
    KIND_ERROR,
    KIND_NOTIFICATION,
    KIND_REQUEST,
    KIND_RESPONSE,
    Envelope,
    scan_jsonrpc,
    splice,
    splice_many,
)
from ._ndjson_py import NDJSONFramer
from ._sse_py import SSEEvent, SSEParser, encode_sse_event, sse_passable
from .errors import ProtocolError

DEBUG_BUILD = False  # the twin has no build; the compiled core says True in a debug build

__all__ = [
    "DEBUG_BUILD",
    "ProtocolError",
    "RequestHead",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "join_fields",
    "SSEEvent",
    "SSEParser",
    "encode_sse_event",
    "sse_passable",
    "Envelope",
    "scan_jsonrpc",
    "splice",
    "splice_many",
    "KIND_REQUEST",
    "KIND_NOTIFICATION",
    "KIND_RESPONSE",
    "KIND_ERROR",
    "NDJSONFramer",
]
