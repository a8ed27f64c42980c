"""Prometheus collectors, the JSON access log and the process log.

The hot path never calls ``labels()``: each backend gets a ``BackendMetrics`` whose
children are resolved when the route is built, and request counters are cached per
(method, tool, outcome) in a bounded dict, so counting a request is one dict lookup and
one ``inc``.  Tool names come from clients, so the number of distinct tool label values
is capped (the rest count as ``other``): a client inventing names cannot grow the
metrics without bound.

The access log is JSON lines, buffered in memory and written when the buffer passes
64 KiB or on the gateway's once-a-second tick, so a request never waits on a write.

What a client chose reaches a label or a log line only in a bounded, secret-free form,
and the functions below are the one place that form is decided: a method label is a
known MCP method or ``other``; a tool label is a name of the MCP tool-name grammar
(1-128 characters of ``A-Za-z0-9_.-``), given by the gateway only once the caller is
authenticated, at most ``MAX_TOOL_LABELS`` per route and backend; a logged path keeps
its query keys but not their values and is cut at ``MAX_LOGGED_PATH`` bytes; a session
id is logged as a short keyed hash (``session_tag``) that lets lines be correlated but
is useless as a credential.  All of it is worked out when a line is formatted or a
metric child is first made (both cached), not per request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from typing import IO, Any

import orjson

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = [
    "Metrics", "BackendMetrics", "AccessLog", "LineSink", "setup_logging", "method_label", "tool_label",
    "session_tag", "log_path", "MAX_METHOD_CHARS", "MAX_NAME_CHARS",
]  # fmt: skip

# Latency buckets in seconds, dense where a proxy lives (tens of µs to tens of ms).
_GATEWAY_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip
_UPSTREAM_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

MAX_TOOL_LABELS = 512
# Distinct (method, tool, outcome) keys remembered per route and backend; past it a new
# key still counts, under its labels, without being remembered.
_MAX_REQ_KEYS = 4 * MAX_TOOL_LABELS

# --- what a client chose, as labels and log fields ----------------------------------------
#: Longest JSON-RPC method the gateway accepts.  MCP's methods are short words; 128
#: leaves room for extensions and none for a flood.
MAX_METHOD_CHARS = 128
#: Longest tool or prompt name (MCP: tool names are 1-128 characters).
MAX_NAME_CHARS = 128
#: Bytes of a request target the access log keeps (after its query values are removed).
MAX_LOGGED_PATH = 256

# The methods of the MCP specification (both directions), and the gateway's own words for
# what is not one JSON-RPC request: any other method is labelled "other".
METHOD_LABELS = frozenset((
    "initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get", "resources/list",
    "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
    "completion/complete", "logging/setLevel", "server/discover", "tasks/get", "tasks/result", "tasks/list",
    "tasks/cancel", "sampling/createMessage", "roots/list", "elicitation/create",
    "notifications/initialized", "notifications/cancelled", "notifications/progress", "notifications/message",
    "notifications/roots/list_changed", "notifications/resources/updated", "notifications/resources/list_changed",
    "notifications/tools/list_changed", "notifications/prompts/list_changed", "notifications/elicitation/complete",
    "notifications/tasks/status",
    "-", "other", "invalid", "batch", "response", "response:error", "GET", "DELETE", "OPTIONS", "HEAD", "POST",
))  # fmt: skip
_HTTP_METHODS = frozenset((b"GET", b"POST", b"DELETE", b"OPTIONS", b"HEAD", b"PUT", b"PATCH", b"CONNECT", b"TRACE"))
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,%d}" % MAX_NAME_CHARS)


def method_label(method: str) -> str:
    """The label of a JSON-RPC method: itself when MCP defines it, else ``other``."""
    return method if method in METHOD_LABELS else "other"


def tool_label(name: str | None) -> str | None:
    """A tool or prompt name as a label: itself when it is a valid MCP name, else ``other``."""
    if not name:
        return None
    return name if _TOOL_NAME.fullmatch(name) else "other"


# A per-process key: forked workers share it (it is drawn when this module is imported,
# before they fork), so their lines correlate; it is never written anywhere.
_TAG_KEY = os.urandom(32)


def session_tag(sid: bytes | str | None) -> str | None:
    """A session id as the logs show it: 12 hex digits of a keyed BLAKE2b hash.  Equal
    ids give equal tags within one process; the tag cannot be turned back into the id."""
    if sid is None:
        return None
    if type(sid) is str:
        sid = sid.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(bytes(sid), key=_TAG_KEY, digest_size=6).hexdigest()


def log_path(target: bytes) -> bytes:
    """A request target as the logs show it: each query parameter keeps its name and
    loses its value (``?api_key=<redacted>``; a parameter without ``=`` is all value),
    and the result is cut at ``MAX_LOGGED_PATH`` bytes."""
    q = target.find(b"?")
    if q >= 0:
        out = []
        for part in target[q + 1 :].split(b"&"):
            key, eq, _ = part.partition(b"=")
            out.append(key + b"=<redacted>" if eq else (b"<redacted>" if part else b""))
        target = target[: q + 1] + b"&".join(out)
    if len(target) > MAX_LOGGED_PATH:
        target = target[: MAX_LOGGED_PATH - 3] + b"..."
    return target


# --- per-request collectors -----------------------------------------------------------
# prometheus_client's Counter and Histogram take a lock and check their state on every
# update (~0.5 µs for a counter, ~1.5 µs for a histogram).  The two families updated on
# every request live on the event loop's thread only -- the admin listener that scrapes
# them runs on the same loop -- so plain attribute updates suffice; the families are
# exposed through the same registry as custom collectors, in the same text format.


class _LoopCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _LoopGaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _LoopHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value (le), else +Inf.  A scan of at most
        # ~20 bounds: compiled, a C loop that beats calling bisect with a boxed float.
        i = 0
        for b in self.bounds:
            if value <= b:
                break
            i += 1
        self.counts[i] += 1
        self.sum += value


class _LoopFamily:
    """A counter or histogram family for the event loop thread (see above)."""

    def __init__(self, kind: str, name: str, doc: str, labelnames: list[str], registry, buckets=()) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            if self.kind == "counter":
                child = _LoopCounterChild()
            elif self.kind == "gauge":
                child = _LoopGaugeChild()
            else:
                child = _LoopHistogramChild(self.bounds)
            self._children[values] = child
        return child

    def describe(self):
        return [self._family()]

    def _family(self):
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self):
        fam = self._family()
        for values, child in list(self._children.items()):
            if self.kind != "histogram":
                fam.add_metric(list(values), child.value)
            else:
                cum = 0
                points = []
                for le, n in zip(self._le, child.counts):
                    cum += n
                    points.append((le, cum))
                fam.add_metric(list(values), points, sum_value=child.sum)
        yield fam


class Metrics:
    """All collectors of one gateway, in their own registry (tests run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = _LoopFamily(
            "counter",
            "mcpfast_requests",
            "Requests to MCP routes by backend, JSON-RPC method, tool and outcome.",
            ["route", "backend", "method", "tool", "outcome"],
            r,
        )
        self.gateway_seconds = _LoopFamily(
            "histogram",
            "mcpfast_gateway_duration_seconds",
            "Time a request spent inside the gateway itself (total minus upstream).",
            ["backend"],
            r,
            _GATEWAY_BUCKETS,
        )
        self.upstream_seconds = _LoopFamily(
            "histogram",
            "mcpfast_upstream_duration_seconds",
            "Time from sending a request upstream to the end of the upstream response "
            "(for a stream: its end).",
            ["backend"],
            r,
            _UPSTREAM_BUCKETS,
        )
        self.sessions_open = Gauge(
            "mcpfast_sessions_open", "MCP sessions seen and not ended or expired.", ["backend"], registry=r
        )
        self.sse_streams_open = _LoopFamily(
            "gauge", "mcpfast_sse_streams_open", "SSE responses being relayed right now.", ["backend"], r
        )
        self.upstream_connections = Gauge(
            "mcpfast_upstream_connections", "Open connections to a backend.", ["backend"], registry=r
        )
        self.client_connections = Gauge(
            "mcpfast_client_connections", "Open client connections.", registry=r
        )
        self.errors = Counter(
            "mcpfast_errors", "Errors by kind (client protocol, upstream, timeouts...).", ["kind"], registry=r
        )
        self._errors: dict[str, Any] = {}

    def error(self, kind: str) -> None:
        child = self._errors.get(kind)
        if child is None:
            child = self._errors[kind] = self.errors.labels(kind)
        child.inc()

    def for_backend(self, route: str, backend: str) -> "BackendMetrics":
        return BackendMetrics(self, route, backend)


class BackendMetrics:
    """Children of every collector for one (route, backend), resolved once."""

    __slots__ = (
        "_metrics", "route", "backend", "gateway", "upstream", "sessions", "sse", "connections", "_req", "_tools",
    )  # fmt: skip

    def __init__(self, m: Metrics, route: str, backend: str) -> None:
        self._metrics = m
        self.route = route
        self.backend = backend
        self.gateway = m.gateway_seconds.labels(backend)
        self.upstream = m.upstream_seconds.labels(backend)
        self.sessions = m.sessions_open.labels(backend)
        self.sse = m.sse_streams_open.labels(backend)
        self.connections = m.upstream_connections.labels(backend)
        self._req: dict[tuple, Any] = {}
        self._tools: set[str] = set()

    def count(self, method: str, tool: str, outcome: str) -> None:
        key = (method, tool, outcome)
        child = self._req.get(key)
        if child is None:
            child = self._child(method, tool, outcome)
        child.inc()

    def _child(self, method: str, tool: str, outcome: str):
        """The counter of a (method, tool, outcome) not seen yet: labels made bounded
        (see the module notes), at most ``MAX_TOOL_LABELS`` tool labels, the rest ``other``."""
        t = tool_label(tool) or ""
        if t and t not in self._tools:
            if len(self._tools) >= MAX_TOOL_LABELS:
                t = "other"
            else:
                self._tools.add(t)
        child = self._metrics.requests.labels(self.route, self.backend, method_label(method), t, outcome)
        if len(self._req) < _MAX_REQ_KEYS:
            self._req[(method, tool, outcome)] = child
        return child


class LineSink:
    """Where a line log goes: ``"-"`` (stdout), a file path (appended; ``reopen`` after
    logrotate moved it), ``"off"``, or a given binary stream.  Write errors are
    swallowed: a full disk or a closed stdout must not take the gateway down."""

    __slots__ = ("_out", "_own", "_path", "enabled")

    def __init__(self, sink: str, stream: IO[bytes] | None = None) -> None:
        self._out: IO[bytes] | None = None
        self._own = False
        self._path: str | None = None
        self.enabled = stream is not None or sink not in ("off", "", None)
        if stream is not None:
            self._out = stream
        elif self.enabled:
            if sink == "-":
                self._out = sys.stdout.buffer
            else:
                self._out = open(sink, "ab")
                self._own = True
                self._path = sink

    def write(self, data: bytes) -> None:
        if self._out is None or not data:
            return
        try:
            self._out.write(data)
            self._out.flush()
        except (OSError, ValueError):
            pass

    def reopen(self) -> None:
        if not self._own or self._out is None:
            return
        try:
            new = open(self._path, "ab")
        except OSError:
            return  # keep writing to the old file rather than lose lines
        old, self._out = self._out, new
        old.close()

    def close(self) -> None:
        if self._own and self._out is not None:
            self._out.close()
        self._out = None


# A line is the time, then the fields that repeat from request to request (client,
# request, session, method, tool, backend, status, outcome: formatted once per distinct
# combination), then the three numbers.
_LINE = b'{"time":"%s",%s"bytes":%d,"gateway_us":%d,"upstream_us":%d}'
_MIDDLE = b'"client":%s,"http":%s,"path":%s,"session":%s,"method":%s,"tool":%s,"backend":%s,"status":%d,"outcome":%s,'
# Bytes that need no escaping in a JSON string: printable ASCII but '"' and '\\'.
_PLAIN = bytes(sorted(set(range(0x20, 0x7F)) - {0x22, 0x5C}))


def _json_str(v: Any) -> bytes:
    """A JSON string (or null) for ``v``; bytes are read as latin-1 text.  Printable
    ASCII without quote or backslash -- nearly every value -- is quoted as it is;
    anything else goes through orjson, which escapes it."""
    if v is None:
        return b"null"
    if type(v) is str:
        b = v.encode("latin-1") if v.isascii() else None
        if b is not None and not b.translate(None, _PLAIN):
            return b'"%s"' % b
        return orjson.dumps(v)
    if not v.translate(None, _PLAIN):
        return b'"%s"' % v
    return orjson.dumps(v.decode("latin-1"))


class BufferedLog:
    """A line log that buffers and writes to a ``LineSink`` (``self._sink``) in
    ``flush``: reopening and closing are the same for every such log."""

    __slots__ = ()

    def reopen(self) -> None:
        """Write what is pending, then reopen the file by name (after logrotate)."""
        self.flush()
        self._sink.reopen()

    def close(self) -> None:
        self.flush()
        self._sink.close()


class AccessLog(BufferedLog):
    """JSON-lines access log.  ``sink`` is "-" (stdout), a file path, or "off".

    The request path only appends a tuple to ``rows`` (see ``FIELDS``); ``flush`` -- on
    the gateway's tick, or when ``FLUSH_ROWS`` are waiting -- turns them into JSON lines
    and writes them in one call.  Formatting in a batch costs a fraction of formatting
    per request, and a request never waits on the log."""

    __slots__ = ("_sink", "rows", "enabled", "_sec", "_prefix", "_middles", "wall")

    FLUSH_ROWS = 256  # a batch costs ~0.2 ms: short enough not to show in p99
    FIELDS = ("time", "client", "http", "path", "session", "method", "tool", "backend", "status", "outcome",
              "bytes", "gateway_us", "upstream_us")  # fmt: skip

    def __init__(self, sink: str) -> None:
        self.rows: list[tuple] = []
        self._sec = -1
        self._prefix = ""
        self._middles: dict[tuple, bytes] = {}  # see format
        self._sink = LineSink(sink)
        self.enabled = self._sink.enabled
        # Wall-clock time minus monotonic time, renewed at each flush: a row's time is
        # its monotonic end plus this, so the request path reads one clock, not two.
        self.wall = time.time() - time.monotonic()

    def _time(self, ms: int) -> bytes:
        sec = ms // 1000
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        return b"%s.%03dZ" % (self._prefix, ms - sec * 1000)

    def _middle(self, key: tuple) -> bytes:
        client, http, path, sid, method, tool, backend, status, outcome = key
        js = _json_str
        if http not in _HTTP_METHODS:
            http = b"other"
        return _MIDDLE % (js(client), js(http), js(log_path(path)), js(session_tag(sid)), js(method_label(method)),
                          js(tool_label(tool)), js(backend), status, js(outcome))  # fmt: skip

    def format(self, rows: list[tuple]) -> bytes:
        """The JSON lines of ``rows``: one object per row, keys in ``FIELDS`` order."""
        cache = self._middles
        if len(cache) > 4096:  # sessions and client-chosen names must not grow it without bound
            cache.clear()
        middle = self._middle
        last_ms = -1
        ts = b""
        out = []
        add = out.append
        for row in rows:
            # Consecutive rows mostly share their millisecond, and their strings repeat
            # (peer, path, session, method, tool, backend): each distinct combination is
            # escaped and formatted once.
            ms = int(row[0] * 1000)
            if ms != last_ms:
                last_ms = ms
                ts = self._time(ms)
            key = row[1:10]
            m = cache.get(key)
            if m is None:
                m = middle(key)
                sid = key[3]
                # Long values are not kept as keys: the cache stays small whatever clients send.
                if len(key[2]) <= MAX_LOGGED_PATH and (sid is None or len(sid) <= 256):
                    cache[key] = m
            add(_LINE % (ts, m, row[10], row[11], row[12]))
        add(b"")
        return b"\n".join(out)

    def flush(self) -> None:
        self.wall = time.time() - time.monotonic()
        rows = self.rows
        if not rows:
            return
        self.rows = []
        if self.enabled:
            self._sink.write(self.format(rows))


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": os.getpid(),
        }
        extra = getattr(record, "fields", None)
        if extra:
            d.update(extra)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(d, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure the ``mcpfast`` logger on stderr (stdout carries the access log)."""
    logger = logging.getLogger("mcpfast")
    logger.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(
        _JSONFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(h)
    logger.setLevel(level.upper())
    logger.propagate = False
