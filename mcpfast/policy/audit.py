"""Audit events: one JSON line per authentication failure, denial or rate-limit hit.

Theory of operation.  Policy code calls ``AuditLog.event(...)`` with facts it already
holds -- never a credential: the event has slots for the principal's *subject*, kind and
issuer, the client address, the session id (written as the same short keyed hash as in
the access log, ``observe.session_tag``), the JSON-RPC method, the tool (or prompt
name, or resource URI), the backend the message was for (on a multiplexed route, the
one it was routed to; null when no single backend was meant), the rule or limit that
decided and a reason code from a closed set.  There is no free-form field a token could
slip into, and the writer takes only these arguments.

Each event increments ``mcpfast_policy_events_total{event, reason}`` (both label sets
are closed, so the series count is bounded) and is appended to an in-memory buffer that
is written when it passes 64 KiB or on the gateway's once-a-second ``flush()``, so a
refused request never waits on the disk.  A flood of failures could still fill a disk,
so at most ``max_per_second`` events are written each second; the rest are counted
(``mcpfast_policy_events_total`` is always exact) and one ``audit_suppressed`` line per
second says how many were dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from ..observe import BufferedLog, LineSink, session_tag
from .principal import Principal

__all__ = ["AuditLog", "AUTH_FAILURE", "DENIED", "RATE_LIMITED", "SESSION_REFUSED"]

AUTH_FAILURE = "auth_failure"
DENIED = "denied"
RATE_LIMITED = "rate_limited"
SESSION_REFUSED = "session_refused"


# Longest method, tool name or URI written as it is; longer ones are cut (a URI may be
# long, and an event must stay a short line).
_MAX_FIELD = 256


def _cut(v: str | None) -> str | None:
    if v is None or len(v) <= _MAX_FIELD:
        return v
    return v[: _MAX_FIELD - 3] + "..."


def _iso(now: float) -> str:
    sec = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((now - sec) * 1000):03d}Z"


class AuditLog(BufferedLog):
    """Buffered JSON-lines audit sink.  ``sink``: "-" (stdout), a file path, or "off"
    (events are still counted)."""

    FLUSH_AT = 65536

    def __init__(
        self,
        sink: str = "-",
        *,
        registry: CollectorRegistry | None = None,
        counter: Counter | None = None,
        max_per_second: int = 1000,
        clock: Callable[[], float] = time.time,
        stream: IO[bytes] | None = None,
    ) -> None:
        self._buf: list[bytes] = []
        self._size = 0
        self._sink = LineSink(sink, stream)
        self.enabled = sink not in ("off", "")
        if counter is None:
            counter = Counter(
                "mcpfast_policy_events",
                "Policy events (authentication failures, denials, rate-limit hits, refused sessions) by reason.",
                ["event", "reason"],
                registry=registry if registry is not None else CollectorRegistry(),
            )
        self.counter = counter
        self._children: dict[tuple[str, str], Any] = {}
        self.max_per_second = max_per_second
        self._clock = clock
        self._second = -1
        self._written = 0
        self._suppressed = 0

    def count(self, event: str, reason: str) -> None:
        child = self._children.get((event, reason))
        if child is None:
            child = self._children[(event, reason)] = self.counter.labels(event, reason)
        child.inc()

    def event(
        self,
        event: str,
        reason: str,
        *,
        client: str | None,
        principal: Principal | None = None,
        session: bytes | str | None = None,
        method: str | None = None,
        tool: str | None = None,
        rule: str | None = None,
        route: str | None = None,
        status: int | None = None,
        backend: str | None = None,
    ) -> None:
        self.count(event, reason)
        if not self.enabled:
            return
        now = self._clock()
        sec = int(now)
        if sec != self._second:
            self._roll(sec, now)
        if self.max_per_second and self._written >= self.max_per_second:
            self._suppressed += 1
            return
        self._written += 1
        rec = {
            "time": _iso(now),
            "event": event,
            "reason": reason,
            "client": client,
            "principal": principal.audit_view() if principal is not None else None,
            "session": session_tag(session),
            "method": _cut(method),
            "tool": _cut(tool),
            "backend": backend,
            "rule": rule,
            "route": route,
            "status": status,
        }
        self._append(orjson.dumps(rec) + b"\n")

    def _roll(self, sec: int, now: float) -> None:
        dropped = self._suppressed
        self._second = sec
        self._written = 0
        self._suppressed = 0
        if dropped:
            self._append(orjson.dumps({"time": _iso(now), "event": "audit_suppressed", "count": dropped}) + b"\n")

    def _append(self, line: bytes) -> None:
        self._buf.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._suppressed:
            now = self._clock()
            if int(now) != self._second:
                self._roll(int(now), now)
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        self._sink.write(data)
