"""Session binding: an MCP session belongs to the principal that opened it.

Theory of operation.  The MCP authorization spec says a session never authenticates
anything: every request is verified on its own, and a session id presented by another
principal must be refused (a leaked ``Mcp-Session-Id`` must not let someone else ride
an existing session).  The gateway records, for each session id, the ``key`` of the
principal that created it -- bound when the backend's ``initialize`` answer hands out
the id -- and refuses a request whose principal key differs.

Unknown ids are allowed through: the backend answers 404 for ids it does not know.
After a gateway restart the table is empty while backends still hold live sessions; so
a session id that is unbound when a request succeeds with it is bound then, to the
principal that used it (``seen``).  The table is bounded: past ``max_entries`` the
oldest binding is dropped (and re-bound on its next successful use); idle bindings are
dropped by ``sweep`` after the same idle time the gateway uses for sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .principal import Principal

__all__ = ["SessionBindings"]


class SessionBindings:
    __slots__ = ("_table", "max_entries", "_clock", "evicted")

    def __init__(self, max_entries: int = 100000, clock: Callable[[], float] = time.monotonic) -> None:
        self._table: dict[bytes, list] = {}  # session id → [principal key, last seen]
        self.max_entries = max_entries
        self._clock = clock
        self.evicted = 0

    def allows(self, session_id: bytes, principal: Principal) -> bool:
        """False when the session is bound to another principal."""
        entry = self._table.get(session_id)
        if entry is None:
            return True
        if entry[0] != principal.key:
            return False
        entry[1] = self._clock()
        return True

    def bind(self, session_id: bytes, principal: Principal) -> None:
        """Bind a new session (the backend just created it for ``principal``)."""
        table = self._table
        if session_id not in table and len(table) >= self.max_entries:
            del table[next(iter(table))]
            self.evicted += 1
        table[session_id] = [principal.key, self._clock()]

    def seen(self, session_id: bytes, principal: Principal) -> None:
        """A request with this session succeeded: bind it if it is not bound yet."""
        if session_id not in self._table:
            self.bind(session_id, principal)

    def unbind(self, session_id: bytes) -> None:
        self._table.pop(session_id, None)

    def owner(self, session_id: bytes) -> str | None:
        entry = self._table.get(session_id)
        return entry[0] if entry is not None else None

    def sweep(self, idle: float, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        cutoff = now - idle
        dead = [sid for sid, (_, seen) in self._table.items() if seen < cutoff]
        for sid in dead:
            del self._table[sid]
        return len(dead)

    def __len__(self) -> int:
        return len(self._table)
