"""What session binding costs on an authenticated passthrough route.

Run: ``pytest bench/test_bench_sessions.py --benchmark-group-by=group``.

``seal`` takes the pieces apart: sealing a backend's session id (once per ``initialize``),
opening a sealed id from the cache (what a client's second and later requests cost),
opening it without the cache (first sight in this process, or after eviction: one
HMAC-SHA256), and refusing a forged one (also one HMAC; never cached).

``pipeline-sealed`` drives one authenticated tools/call through the real pipeline
(``ClientProtocol``, ``Exchange``, the upstream pool, ``UpstreamProtocol``; transports
that only count bytes, as in ``test_bench_pipeline.py``) with an API key, the backend
echoing its session id in the answer as SDK servers do -- once with the sealed id
(the default) and once with ``auth.bind_sessions = false``.  Their difference is what
sealing adds per request: open the id (a cache hit), write the backend's id into the
upstream head, and show the client its sealed id again in the answer.  The ``no-auth``
row is the same session on a route without authentication (nothing sealed).
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from test_bench_pipeline import _BODY, _JSON_ANSWER, _RESULT, _CountingTransport

from mcpfast.config import build_config
from mcpfast.app import build_gateway
from mcpfast.pipeline.gateway import Gateway
from mcpfast.policy.sessions import SessionSeal
from mcpfast.transport.listener import ClientProtocol
from mcpfast.transport.pool import UpstreamProtocol

_KEY = b"\x07" * 32
_PKEY = "jwt:https://idp.example.com|alice"
_SID = b"3f0c1d2e4b5a69788796a5b4c3d2e1f0"  # what the Python SDK mints: 32 hex digits
_API_KEY = "mk_bench_0123456789abcdef0123456789"


@pytest.mark.benchmark(group="seal")
def test_seal(benchmark):
    s = SessionSeal((_KEY,), "/mcp", max_cache=0)
    benchmark(s.seal, _SID, _PKEY)


@pytest.mark.benchmark(group="seal")
def test_open_cached(benchmark):
    s = SessionSeal((_KEY,), "/mcp")
    sealed = s.seal(_SID, _PKEY)
    assert s.open(sealed, _PKEY) == _SID
    benchmark(s.open, sealed, _PKEY)


@pytest.mark.benchmark(group="seal")
def test_open_uncached(benchmark):
    s = SessionSeal((_KEY,), "/mcp", max_cache=0)
    sealed = s.seal(_SID, _PKEY)
    assert s.open(sealed, _PKEY) == _SID
    benchmark(s.open, sealed, _PKEY)


@pytest.mark.benchmark(group="seal")
def test_open_forged(benchmark):
    s = SessionSeal((_KEY,), "/mcp")
    forged = _SID + b"." + b"A" * 22
    assert s.open(forged, _PKEY) is None
    benchmark(s.open, forged, _PKEY)


_REQUEST = (
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Accept: application/json, text/event-stream\r\nX-API-Key: " + _API_KEY.encode() + b"\r\n"
    b"Mcp-Session-Id: @SID@\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: %d\r\n\r\n%s"
)
_ANSWER = _JSON_ANSWER.replace(b"\r\n\r\n", b"\r\nmcp-session-id: " + _SID + b"\r\n\r\n", 1)


def _gateway(mode: str) -> Gateway:
    raw = {
        "server": {"listen": "127.0.0.1:0"},
        "log": {"access_log": os.devnull},
        "backends": {"bench": {"url": "http://127.0.0.1:9/mcp"}},
    }
    if mode != "no-auth":
        raw["auth"] = {
            "bind_sessions": mode == "sealed",
            "api_keys": {"keys": [{"sha256": hashlib.sha256(_API_KEY.encode()).hexdigest(), "subject": "ci"}]},
        }
        raw["audit"] = {"sink": "off"}
    return build_gateway(build_config(raw))


def _round(benchmark, mode: str) -> None:
    benchmark.group = "pipeline-sealed"
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        gw = _gateway(mode)
        route = gw.routes[b"/mcp"]
        bind = mode == "sealed"
        assert (route.seal is not None) == bind
        gw.session_opened(route, _SID)  # the session is open: each answer refreshes it
        client = ClientProtocol(gw)
        ct = _CountingTransport()
        client.connection_made(ct)
        up = UpstreamProtocol(gw.pools["bench"], 65536)
        ut = _CountingTransport()
        up.connection_made(ut)
        gw.pools["bench"].release(up)
        principal_key = "apikey:ci"
        sid = route.seal.seal(_SID, principal_key) if bind else _SID
        request = _REQUEST.replace(b"@SID@", sid)
        counter = {"id": 0}

        def one() -> None:
            i = counter["id"] = counter["id"] + 1
            b = _BODY % i
            client.data_received(request % (len(b), b))
            result = _RESULT % i
            up.data_received(_ANSWER % (len(result), result))

        one()
        before = ct.written
        one()
        assert ct.written > before and client.active is None and not client.closed
        assert len(gw.pools["bench"]._idle) == 1
        row = dict(zip(gw.access.FIELDS, gw.access.rows[-1]))
        assert row["status"] == 200 and row["outcome"] == "ok", row
        benchmark.pedantic(one, rounds=60, iterations=256, warmup_rounds=2)
        gw.access.flush()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("mode", ["sealed", "unsealed", "no-auth"])
def test_pipeline_session_tools_call(benchmark, mode):
    """One tools/call in a session: authenticated with the sealed id, authenticated
    with the backend's own id (``bind_sessions = false``), and without authentication."""
    _round(benchmark, mode)
