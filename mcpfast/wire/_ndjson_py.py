"""Newline-delimited JSON framing (the stdio transport): the pure-Python twin.

A stdio MCP server writes one JSON-RPC message per line on its stdout (UTF-8, no
embedded newline).  ``NDJSONFramer`` is fed the bytes as they are read and hands out
each complete line, without its LF and without one CR before it; a line left empty by
that is skipped.  Nothing is parsed here: a line is a message candidate, and the
envelope scanner judges it.  The exact rules are in ``_core.pyi``; the compiled twin is
``_ndjson.pxi``.

Theory of operation.  Only the unfinished line is kept between feeds.  A fed buffer is
searched for LF from where the last line ended, so a buffer of many lines costs one pass
and one copy per line.  A line may not grow past ``max_line`` bytes (its LF and a CR
before it not counted): the framer fails as soon as the unfinished line is longer --
counting a last CR only once the next byte shows it is no CRLF -- so a child that prints
a 100 MB line costs at most ``max_line`` bytes of memory.  Lines completed before the
fault are still handed out; the fault (``ProtocolError``, status 502: the backend broke
the framing) is raised by the first call that has no line to give, and by every call
after it.
"""

from __future__ import annotations

import operator

from ._jsonrpc_py import _as_bytes  # a C-contiguous buffer's bytes, as the compiled core reads it
from .errors import ProtocolError

__all__ = ["NDJSONFramer"]

CR = 13


def _content(n: int, last: int) -> int:
    """Bytes of a line of ``n`` bytes ending in ``last`` that count against the limit:
    a last CR belongs to the line end (CRLF), or may still turn out to."""
    return n - 1 if n and last == CR else n


class NDJSONFramer:
    __slots__ = ("_max", "_buf", "_error", "_closed")

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        max_line = operator.index(max_line)
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._max = max_line
        self._buf = bytearray()  # the unfinished line
        self._error: str | None = None
        self._closed = False

    @property
    def max_line(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished line held."""
        return len(self._buf)

    def feed(self, data) -> list[bytes]:
        if self._error is not None:
            raise ProtocolError(self._error, 502)
        if self._closed:
            raise RuntimeError("NDJSONFramer.feed() after feed_eof()")
        data = _as_bytes(data)  # the very object when it is bytes already
        out: list[bytes] = []
        buf = self._buf
        n = len(data)
        start = 0
        while start < n:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if buf:  # the held line ends here
                last = data[nl - 1] if nl > start else buf[-1]
                size = _content(len(buf) + nl - start, last)
                if size > self._max:
                    self._fail()
                    break
                buf += memoryview(data)[start:nl]
                line = bytes(memoryview(buf)[:size])
                self._buf = buf = bytearray()
            else:
                size = _content(nl - start, data[nl - 1] if nl > start else 0)
                if size > self._max:
                    self._fail()
                    break
                line = data[start : start + size]
            start = nl + 1
            if line:
                out.append(line)
        if self._error is None and start < n:
            if _content(len(buf) + n - start, data[-1]) > self._max:
                self._fail()
            else:
                buf += memoryview(data)[start:]
        if self._error is not None and not out:
            raise ProtocolError(self._error, 502)
        return out

    def feed_eof(self) -> list[bytes]:
        """The stream ended: a last line without LF, if any (as if an LF followed)."""
        if self._error is not None:
            raise ProtocolError(self._error, 502)
        if self._closed:
            return []
        self._closed = True
        buf = self._buf
        line = bytes(buf[: _content(len(buf), buf[-1] if buf else 0)])
        self._buf = bytearray()
        return [line] if line else []

    def _fail(self) -> None:
        self._error = f"NDJSON line longer than {self._max} bytes"
        self._buf = bytearray()
