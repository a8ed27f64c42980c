"""What each client holds at once: connections per client address, GET streams per
principal (or per address without credentials) and per MCP session.

Theory of operation.  The gateway keeps one ``ClientQuota``.  A client connection is
counted under its peer address when it is accepted and uncounted when it closes; a GET
stream is counted when its request has been admitted (after authentication, before any
backend is asked) and uncounted when its exchange ends, whatever the way.  Over a bound
the connection or the stream is refused at once, so one client cannot take what the
limits give every client together (``limits.max_connections``, a backend's
``max_streams``).  Counters are dicts of small integers: an entry lives only while its
count is above zero, so the tables are bounded by what is open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import LimitsConfig

__all__ = ["ClientQuota"]


class ClientQuota:
    __slots__ = ("per_address", "streams_principal", "streams_address", "streams_session", "connections", "streams")

    def __init__(self, limits: "LimitsConfig") -> None:
        self.per_address = limits.max_connections_per_address
        self.streams_principal = limits.max_streams_per_principal
        self.streams_address = limits.max_streams_per_address
        self.streams_session = limits.max_streams_per_session
        self.connections: dict[str, int] = {}  # client address -> open connections
        # ("p", principal key) / ("a", address) / ("s", route path, session id) -> open GET streams
        self.streams: dict[tuple, int] = {}

    # --- connections ---------------------------------------------------------------
    def connection_opened(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) when that
        address already holds its share."""
        n = self.connections.get(address, 0)
        if n >= self.per_address:
            return False
        self.connections[address] = n + 1
        return True

    def connection_closed(self, address: str) -> None:
        n = self.connections.get(address, 0) - 1
        if n > 0:
            self.connections[address] = n
        else:
            self.connections.pop(address, None)

    # --- GET streams -----------------------------------------------------------------
    def open_stream(self, principal, address: str, path: bytes, session_id: bytes | None) -> tuple | str:
        """Count a GET stream; returns the keys to give back to ``close_stream``, or the
        reason it is refused (then nothing is counted)."""
        if principal is not None and principal.kind != "anonymous":
            client, limit, who = ("p", principal.key), self.streams_principal, "this caller"
        else:
            client, limit, who = ("a", address), self.streams_address, "this address"
        streams = self.streams
        if streams.get(client, 0) >= limit:
            return f"too many open streams for {who} (at most {limit})"
        if session_id is None:
            keys: tuple = (client,)
        else:
            session = ("s", path, session_id)
            if streams.get(session, 0) >= self.streams_session:
                return f"too many open streams in this session (at most {self.streams_session})"
            keys = (client, session)
        for k in keys:
            streams[k] = streams.get(k, 0) + 1
        return keys

    def close_stream(self, keys: tuple) -> None:
        streams = self.streams
        for k in keys:
            n = streams.get(k, 0) - 1
            if n > 0:
                streams[k] = n
            else:
                streams.pop(k, None)
