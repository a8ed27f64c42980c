"""Newline-delimited JSON framing (the stdio transport): the pure-Python twin.

A stdio MCP server writes one JSON-RPC message per line on its stdout (UTF-8, no
embedded newline).  ``NDJSONFramer`` is fed the bytes as they are read and hands out
each complete line, without its LF and without a CR before it; a line that is empty
(or only a CR) is skipped.  Nothing is parsed here: a line is a message candidate, and
the envelope scanner judges it.

A line may not grow past ``max_line`` bytes: the framer raises ``ProtocolError``
(status 502, the fault is the backend's) as soon as the unfinished line is longer, so a
child that prints a 100 MB line costs at most ``max_line`` bytes of memory.  After that
the framer is dead and every later call raises again: the stream has lost its framing.
"""

from __future__ import annotations

from .errors import ProtocolError

__all__ = ["NDJSONFramer"]


class NDJSONFramer:
    __slots__ = ("max_line", "_buf", "_dead")

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._buf = bytearray()  # the unfinished line
        self._dead = False

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished line held."""
        return len(self._buf)

    def feed(self, data) -> list[bytes]:
        if self._dead:
            raise ProtocolError("line framing lost after an over-long line", 502)
        out: list[bytes] = []
        mv = memoryview(data)
        n = len(mv)
        start = 0
        buf = self._buf
        limit = self.max_line
        while start < n:
            nl = bytes(mv[start:]).find(b"\n")
            if nl < 0:
                if len(buf) + (n - start) > limit:
                    self._fail()
                buf += mv[start:]
                break
            end = start + nl
            if len(buf) + (end - start) > limit + (1 if end > start and mv[end - 1] == 13 else 0):
                self._fail()
            buf += mv[start:end]
            start = end + 1
            if buf and buf[-1] == 13:
                del buf[-1]
            if buf:
                out.append(bytes(buf))
                buf.clear()
        return out

    def feed_eof(self) -> list[bytes]:
        """The stream ended: a last line without LF, if any."""
        if self._dead:
            return []
        buf = self._buf
        if buf and buf[-1] == 13:
            del buf[-1]
        line = bytes(buf)
        buf.clear()
        return [line] if line else []

    def _fail(self) -> None:
        self._dead = True
        self._buf = bytearray()
        raise ProtocolError(f"line longer than {self.max_line} bytes", 502)
