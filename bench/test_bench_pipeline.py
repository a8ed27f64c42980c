"""The gateway's own per-request work, without sockets.

Run: ``pytest bench/test_bench_pipeline.py --benchmark-group-by=group``.

The load harness (``load.py``) measures the whole machine: kernel, backend and load
generator included, which on 2 shared cores makes a 1 µs change in the gateway hard to
see.  This benchmark drives the real pipeline -- ``ClientProtocol`` with the compiled
parser, ``Exchange``, the upstream pool and ``UpstreamProtocol`` -- with transports that
only count what they are given.  One round is what the gateway does for one proxied
``tools/call`` (``test_pipeline_tools_call``; ``test_pipeline_routed_tools_call`` does the
same on a multiplexed route): parse the request, scan the envelope, build the upstream head, "write"
it, parse the backend's answer, build the client head, "write" it, record metrics and
the access-log row, return the connection to the pool.  The access log is formatted and
written to ``/dev/null`` in its batches, as in production.

The figure is CPU per request spent in Python and the core; the kernel's part (the
reads and writes themselves, roughly half the gateway's cost under load) is not in it.
Compare builds with ``--benchmark-save`` / ``--benchmark-compare``.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from mcpfast.config import build_config
from mcpfast.app import build_gateway
from mcpfast.transport.listener import ClientProtocol
from mcpfast.transport.pool import UpstreamProtocol

_BODY = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
_REQUEST = (
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Accept: application/json, text/event-stream\r\nMcp-Session-Id: 3f0c1d2e4b5a69788796a5b4c3d2e1f0\r\n"
    b"MCP-Protocol-Version: 2025-06-18\r\nContent-Length: %d\r\n\r\n%s"
)
_RESULT = b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}'
_JSON_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
_SSE_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
)


class _CountingTransport:
    """Stands in for a socket: keeps the byte count of what is written."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data) -> None:
        self.written += len(data)

    def writelines(self, parts) -> None:
        for p in parts:
            self.written += len(p)

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _wire(gw, backend: str, request: bytes, body: bytes, sse: bool):
    """A client connection and one pooled connection to ``backend``, both on counting
    transports, and ``one()``: a request in (``request`` and ``body`` are %-templates
    taking the length and the id), the backend's answer back."""
    client = ClientProtocol(gw)
    ct = _CountingTransport()
    client.connection_made(ct)
    pool = gw.pools[backend]
    up = UpstreamProtocol(pool, 65536)
    up.connection_made(_CountingTransport())
    pool.release(up)
    counter = {"id": 0}

    def one() -> None:
        i = counter["id"] = counter["id"] + 1
        b = body % i
        client.data_received(request % (len(b), b))
        result = _RESULT % i
        if sse:
            event = b"event: message\ndata: %s\n\n" % result
            up.data_received(_SSE_ANSWER % (len(event), event))
        else:
            up.data_received(_JSON_ANSWER % (len(result), result))

    return client, ct, one


def _pipeline(sse: bool, loop=None):
    raw = {
        "server": {"listen": "127.0.0.1:0"},
        "log": {"access_log": os.devnull},
        "backends": {"bench": {"url": "http://127.0.0.1:9/mcp"}},
    }
    gw = build_gateway(build_config(raw))
    client, ct, one = _wire(gw, "bench", _REQUEST, _BODY, sse)
    return gw, client, ct, one


def _routed_pipeline(sse: bool, loop):
    """The same round on a multiplexed route over three backends: the call
    names ``b2__echo``; the gateway opens the session token (from its cache after the
    first request), splits the name, splices ``echo`` into the body and sends it on
    b2's pooled connection under b2's own session id.  The answer is relayed as on a
    passthrough route (an SSE answer event by event, each scanned for ids to map)."""
    from mcpfast.mux.token import SessionState, new_key_text
    from mcpfast.transport.base import BackendSession

    names = ("b1", "b2", "b3")
    raw = {
        "server": {"listen": "127.0.0.1:0"},
        "log": {"access_log": os.devnull},
        "backends": {n: {"url": f"http://127.0.0.1:{9 + i}/mcp"} for i, n in enumerate(names)},
        "routes": [{"path": "/mcp", "backends": list(names)}],
        "sessions": {"key": new_key_text()},
    }
    gw = build_gateway(build_config(raw))
    vr = gw.routes[b"/mcp"].virtual
    state = SessionState(
        subject="", protocol_version="2025-06-18",
        backends=[BackendSession(n, f"backend-session-{n}", "2025-06-18") for n in names],
    )  # fmt: skip
    token = vr.codec.encode(state, "/mcp").encode()
    gw.pools["b2"]._loop = loop  # the routed call's answer deadline is a loop timer
    request = _REQUEST.replace(b"3f0c1d2e4b5a69788796a5b4c3d2e1f0", token)
    client, ct, one = _wire(gw, "b2", request, _BODY.replace(b'"echo"', b'"b2__echo"'), sse)
    return gw, client, ct, one


def _measure(benchmark, make, sse: bool, backend: str, expect: dict) -> None:
    """Check two rounds end as they should (``expect``: access-log fields of the last
    one), then time 60 rounds of 256 requests: the access log formats its rows in
    batches of 256, so every round carries one batch and the figure is amortized."""
    benchmark.group = "pipeline"
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        gw, client, ct, one = make(sse, loop)
        one()
        before = ct.written
        one()
        assert ct.written > before, "the answer reached the client transport"
        assert client.active is None and not client.closed, "the exchange finished and the connection is kept"
        assert len(gw.pools[backend]._idle) == 1, "the upstream connection went back to the pool"
        row = dict(zip(gw.access.FIELDS, gw.access.rows[-1]))
        assert {k: row[k] for k in expect} == expect, row
        benchmark.pedantic(one, rounds=60, iterations=256, warmup_rounds=2)
        gw.access.flush()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_pipeline_tools_call(benchmark, sse):
    """One proxied tools/call through the real pipeline (no sockets)."""
    _measure(benchmark, _pipeline, sse, "bench", {"status": 200, "backend": "bench", "outcome": "ok"})


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_pipeline_routed_tools_call(benchmark, sse):
    """One routed tools/call on a multiplexed route (no sockets): compare with
    ``test_pipeline_tools_call`` of the same run."""
    expect = {"status": 200, "backend": "b2", "tool": "b2__echo", "outcome": "ok"}
    _measure(benchmark, _routed_pipeline, sse, "b2", expect)
