"""Picks the protocol core: the compiled ``_core`` unless ``MCPFAST_NO_EXTENSIONS=1`` or
the build is older than the core's source (``mcpfast/__init__.py`` checks and warns).

The pure-Python twin ``_core_py`` has the same API and is the reference the compiled
core is tested against.  If the extension is missing (a source checkout that was never
built) we fall back to the twin with a warning rather than failing to start; the test
suite asserts that the compiled core is what loads in a normal install.
"""

from __future__ import annotations

import os
import warnings

from .. import FROM_SOURCE
from .errors import ProtocolError  # noqa: F401  (re-exported)

IMPLEMENTATION: str

if os.environ.get("MCPFAST_NO_EXTENSIONS", "") not in ("", "0") or "wire._core" in FROM_SOURCE:
    from . import _core_py as _impl

    IMPLEMENTATION = "py"
else:
    try:
        from . import _core as _impl  # type: ignore[attr-defined]

        IMPLEMENTATION = "c"
    except ImportError as exc:  # pragma: no cover - only in unbuilt checkouts
        warnings.warn(
            f"mcpfast: compiled core not available ({exc}); using the pure-Python core",
            RuntimeWarning,
            stacklevel=2,
        )
        from . import _core_py as _impl

        IMPLEMENTATION = "py"

RequestParser = _impl.RequestParser
ResponseParser = _impl.ResponseParser
RequestHead = _impl.RequestHead
ResponseHead = _impl.ResponseHead
join_fields = _impl.join_fields
SSEParser = _impl.SSEParser
SSEEvent = _impl.SSEEvent
encode_sse_event = _impl.encode_sse_event
sse_passable = _impl.sse_passable
scan_jsonrpc = _impl.scan_jsonrpc
Envelope = _impl.Envelope
splice = _impl.splice
splice_many = _impl.splice_many
KIND_REQUEST = _impl.KIND_REQUEST
KIND_NOTIFICATION = _impl.KIND_NOTIFICATION
KIND_RESPONSE = _impl.KIND_RESPONSE
KIND_ERROR = _impl.KIND_ERROR
NDJSONFramer = _impl.NDJSONFramer
