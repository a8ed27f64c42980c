"""The security bounds that hold on Streamable HTTP backends hold on every backend kind:
a stdio child (its own per session, or one shared) and a legacy HTTP+SSE backend.

For each kind, behind a real gateway with API keys and per-tool rules: a session belongs
to the caller that opened it (another caller's requests in it get 404 and reach nothing),
and a tool policy denies never reaches the backend, while the owner's session keeps
working.  Judged by what the backend itself received: every line a child read
(``stdio_raw.py --record``), every POST a legacy backend got (``backend_kinds.py``)."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from backend_kinds import KINDS, backend
from gwutil import INIT, MCP_HEADERS as BASE, GatewayThread

pytestmark = pytest.mark.e2e

KEYS = {"alice": "mk_alice_kinds_0123456789abcdef0123", "bob": "mk_bob_kinds_0123456789abcdef012345"}
POLICY = {
    "auth": {"api_keys": {"keys": [{"sha256": hashlib.sha256(k.encode()).hexdigest(), "subject": s} for s, k in KEYS.items()]}},
    "authz": {"default": "deny", "rules": [
        {"id": "alice-everything", "effect": "allow", "subjects": ["alice"]},
        {"id": "bob-echo-only", "effect": "allow", "subjects": ["bob"], "tools": ["echo"]},
    ]},
    "audit": {"sink": "off"},
}  # fmt: skip


def _as(who: str, sid: str | None = None) -> dict:
    h = {**BASE, "Authorization": f"Bearer {KEYS[who]}"}
    if sid is not None:
        h.update({"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"})
    return h


def _tool(rid: int, name: str, marker: str) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": {"m": marker}}}


@pytest.fixture(params=KINDS)
def setup(request, tmp_path):
    """(gateway, a function giving every message the backend received as text)."""
    cfg, got = backend(request.param, tmp_path)
    try:
        with GatewayThread({"backends": {"b": cfg}, **POLICY}) as gt:
            yield gt, got.text
    finally:
        if got.legacy is not None:
            got.legacy.close()


def _open(h: httpx.Client, url: str, who: str) -> str:
    r = h.post(url, json=INIT, headers=_as(who))
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    r = h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=_as(who, sid))
    assert r.status_code == 202
    return sid


def test_another_callers_requests_in_a_session_get_404_and_reach_nothing(setup):
    gt, received = setup
    url = gt.url()
    with httpx.Client(timeout=20) as h:
        alice = _open(h, url, "alice")
        r = h.post(url, json=_tool(2, "echo", "alice-first"), headers=_as("alice", alice))
        assert r.status_code == 200 and "alice-first" in r.text
        # bob, with his own valid key, in alice's session: every method is refused.
        r = h.post(url, json=_tool(3, "echo", "bob-in-alices-session"), headers=_as("bob", alice))
        assert r.status_code == 404, r.text
        r = h.get(url, headers={**_as("bob", alice), "Accept": "text/event-stream"})
        assert r.status_code == 404
        r = h.delete(url, headers=_as("bob", alice))
        assert r.status_code == 404
        # alice's session is untouched and still hers.
        r = h.post(url, json=_tool(4, "echo", "alice-after"), headers=_as("alice", alice))
        assert r.status_code == 200 and "alice-after" in r.text
    got = received()
    assert "alice-first" in got and "alice-after" in got
    assert "bob-in-alices-session" not in got


def test_a_denied_tool_never_reaches_the_backend(setup):
    gt, received = setup
    url = gt.url()
    with httpx.Client(timeout=20) as h:
        bob = _open(h, url, "bob")
        r = h.post(url, json=_tool(2, "secret", "bob-wants-secret"), headers=_as("bob", bob))
        assert r.status_code in (200, 403), r.text
        assert "error" in r.json() and "bob-wants-secret" not in r.text
        r = h.post(url, json=_tool(3, "echo", "bob-may-echo"), headers=_as("bob", bob))
        assert r.status_code == 200 and "bob-may-echo" in r.text
    got = received()
    assert "bob-may-echo" in got
    assert "bob-wants-secret" not in got and '"secret"' not in got


def _twice(rid: int, first: str, second: str, marker: str) -> bytes:
    """A tools/call naming its tool twice: parsers disagree on which name counts."""
    return (
        b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":{"m":"%s"},"name":"%s"}}'
        % (rid, first.encode(), marker.encode(), second.encode())
    )


def _duplicates_refused(h: httpx.Client, url: str, headers: dict) -> None:
    for i, (first, second) in enumerate((("secret", "echo"), ("echo", "secret"))):
        r = h.post(url, content=_twice(10 + i, first, second, f"twice-{i}"), headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == -32700 and "duplicate member name" in r.json()["error"]["message"]
    r = h.post(url, json=_tool(12, "echo", "bob-once"), headers=headers)
    assert r.status_code == 200 and '"id":12' in r.text.replace(" ", "")


def test_a_tool_named_twice_is_refused_before_any_backend(setup):
    """Policy judges one name; a backend whose parser keeps the first of two would run the
    other.  A message naming a member the gateway acts on twice reaches no backend."""
    gt, received = setup
    url = gt.url()
    with httpx.Client(timeout=20) as h:
        _duplicates_refused(h, url, _as("bob", _open(h, url, "bob")))
    got = received()
    assert "bob-once" in got and "twice-" not in got


def test_a_tool_named_twice_is_refused_on_a_passthrough_route():
    from rawbackend import RawBackend

    backend = RawBackend("mux")  # sessions, as a Streamable HTTP server has them
    try:
        with GatewayThread({"backends": {"b": {"url": backend.url}}, **POLICY}) as gt, httpx.Client(timeout=20) as h:
            _duplicates_refused(h, gt.url(), _as("bob", _open(h, gt.url(), "bob")))
    finally:
        backend.close()
    bodies = b"\n".join(body for _, body in backend.requests)
    assert b"bob-once" in bodies and b"twice-" not in bodies
