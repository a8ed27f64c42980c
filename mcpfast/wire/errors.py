"""The one exception hierarchy the protocol core raises.

Both cores (the compiled ``_core`` and the pure-Python ``_core_py``) raise these very
classes, so callers and tests catch one type whichever core is loaded.  An error
carries what the gateway should answer with: an HTTP status for transport-level
faults and a JSON-RPC error code for body-level ones (JSON-RPC 2.0 §5.1).
"""

from __future__ import annotations

__all__ = ["ProtocolError", "PARSE_ERROR", "INVALID_REQUEST"]

#: JSON-RPC 2.0 §5.1 codes the core can produce.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600


class ProtocolError(Exception):
    """Input that does not follow the protocol.

    ``status`` is the HTTP status to answer with (400, 413, 414, 417, 431, 501, 505;
    502 is the caller's choice for upstream faults).  ``code`` is the JSON-RPC error
    code when the fault is in a JSON-RPC body (-32700 parse error, -32600 invalid
    request), else ``None``.
    """

    __slots__ = ("status", "code")

    def __init__(self, message: str, status: int = 400, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __reduce__(self):  # keep status/code across pickling (multi-process workers)
        return (type(self), (str(self), self.status, self.code))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status={self.status}, code={self.code})"
