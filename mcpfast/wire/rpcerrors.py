"""JSON-RPC error codes and error bodies, defined once for the whole gateway.

Every module that answers a JSON-RPC error takes its code and its body from here, and
every module that writes an HTTP status line takes its reason phrase from here.  Pure
functions and constants: no I/O, nothing of asyncio, and nothing of mcpfast but the
core's error module (whose two codes the core itself raises).

Codes.  JSON-RPC 2.0 §5.1 defines -32700 and -32600..-32603 and leaves -32000..-32099 to
the implementation.  MCP already uses -32000 (connection closed), -32001 (request
timeout; the Python SDK also sends it with its 404 for an unknown session), -32002
(resource not found), -32020..-32022 and -32042, so the gateway's own refusals take
-32030..-32032.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import INVALID_REQUEST, PARSE_ERROR

__all__ = [
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "SERVER_ERROR", "SESSION_NOT_FOUND", "RESOURCE_NOT_FOUND", "UNSUPPORTED_VERSION",
    "UNAUTHORIZED", "FORBIDDEN", "RATE_LIMITED", "jsonrpc_error_body", "status_reason",
]  # fmt: skip

# JSON-RPC 2.0 §5.1 (PARSE_ERROR -32700 and INVALID_REQUEST -32600 come from the core).
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: A server error: the backend or the gateway cannot serve the request (unreachable
#: backend, timeout, shutting down, over a limit).
SERVER_ERROR = -32000
#: What MCP servers (the Python SDK) send with their 404 for an unknown session.
SESSION_NOT_FOUND = -32001
#: MCP resources: "Resource not found", with ``data.uri``.
RESOURCE_NOT_FOUND = -32002
#: MCP 2026-07-28: UnsupportedProtocolVersionError.
UNSUPPORTED_VERSION = -32022
#: The gateway's own policy refusals.
UNAUTHORIZED = -32030
FORBIDDEN = -32031
RATE_LIMITED = -32032

_REASONS = {
    100: b"Continue", 200: b"OK", 202: b"Accepted", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 421: b"Misdirected Request",
    406: b"Not Acceptable", 408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    415: b"Unsupported Media Type", 417: b"Expectation Failed", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}  # fmt: skip


def status_reason(status: int) -> bytes:
    """The reason phrase for an HTTP status line (``b"Unknown"`` for one not listed)."""
    return _REASONS.get(status, b"Unknown")


def jsonrpc_error_body(code: int, message: str, rpc_id: Any = None, data: Any = None) -> bytes:
    """A JSON-RPC 2.0 error response, encoded (``data`` left out when ``None``)."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    msg = {"jsonrpc": "2.0", "id": rpc_id, "error": err}
    try:
        return orjson.dumps(msg)
    except TypeError:
        # A string holding a lone surrogate (a decoded "\ud800" escape) is not UTF-8:
        # answer with U+FFFD in its place rather than fail to answer at all.
        return orjson.dumps(_scrub(msg))


def _scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD
    (a high and a low surrogate in a row are joined into the character they spell)."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value
