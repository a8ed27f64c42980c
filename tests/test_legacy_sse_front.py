"""Legacy HTTP+SSE clients (2024-11-05) through the gateway: the MCP SDK's own legacy
client (``sse_client`` + ``ClientSession``) in front, real SDK Streamable HTTP servers
behind -- one on a passthrough route, two on a multiplexed one -- and the policy a
direct Streamable HTTP request meets, judged by what the backend actually got."""

from __future__ import annotations

import json
import os
import tempfile
import time

import anyio
import httpx
import jwt
import pytest

from gwutil import ROOT, GatewayThread, backend_process, wait_until
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from test_e2e_sdk import _elicit, _sampling  # the client's answers: "answer to <q>", colour blue
from test_policy_e2e import ISSUER, POLICY, PUBLIC, token  # bearer JWTs; alice may do anything, bob calls/steps

pytestmark = pytest.mark.e2e

SDK_SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")
MUX_SERVER = os.path.join(ROOT, "tests", "fixtures", "mux_server.py")
KEY = "ab" * 32
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# --- the real peers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_backend():
    with backend_process(SDK_SERVER, "--port", "0") as (_, url):
        yield url


@pytest.fixture(scope="module")
def mux_backends():
    with (
        backend_process(MUX_SERVER, "--name", "alpha", "--tools", "add,steps,ask_model,grow") as (_, a),
        backend_process(MUX_SERVER, "--name", "beta", "--tools", "steps,ask_user") as (_, b),
    ):
        yield {"alpha": a, "beta": b}


@pytest.fixture(scope="module")
def polling_backend():
    """A server that closes SSE streams early (2025-11-25 polling) and keeps its events."""
    with backend_process(MUX_SERVER, "--name", "alpha", "--tools", "notify,poll_get,poll_call", "--event-store",
                         "--retry-ms", "100") as (_, url):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def access_log():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, "access.log")


@pytest.fixture(scope="module")
def gateway(sdk_backend, mux_backends, polling_backend, access_log):
    """One gateway: the SDK server passthrough at /mcp (legacy at /sse, /messages) and
    the two mux servers multiplexed at /mcp/both (/mcp/both/sse, /mcp/both/messages)."""
    raw = {
        "backends": {
            "e2e": {"url": sdk_backend, "response_timeout": 10.0},
            **{n: {"url": u, "response_timeout": 10.0} for n, u in mux_backends.items()},
            "poll": {"url": polling_backend, "response_timeout": 10.0},
        },
        "routes": [
            {"path": "/mcp", "backend": "e2e"},
            {"path": "/mcp/both", "backends": ["alpha", "beta"]},
            {"path": "/poll", "backend": "poll"},
        ],
        "sessions": {"key": KEY},
        "log": {"access_log": access_log},
        "limits": {"max_body_bytes": 256 * 1024},
    }
    with GatewayThread(raw) as gt:
        yield gt


@pytest.fixture(scope="module")
def policy_gateway(sdk_backend):
    with GatewayThread({"backends": {"e2e": {"url": sdk_backend}}, **POLICY}) as gt:
        yield gt


def _text(result) -> str:
    return result.content[0].text


class Legacy:
    """An SDK legacy client session: ``async with Legacy(url) as (session, ids)``; ids
    receives the legacy session id the gateway handed out."""

    def __init__(self, url: str, tok: str | None = None, headers: dict | None = None, **kw) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {tok}"} if tok else headers
        self.kw = kw
        self.ids: list[str] = []

    async def __aenter__(self):
        self._sse = sse_client(self.url, headers=self.headers, on_session_created=self.ids.append)
        read, write = await self._sse.__aenter__()
        self._cs = ClientSession(
            read, write, sampling_callback=_sampling, elicitation_callback=_elicit, read_timeout_seconds=20, **self.kw
        )
        session = await self._cs.__aenter__()
        with anyio.fail_after(20):
            await session.initialize()
        return session

    async def __aexit__(self, *exc):
        await self._cs.__aexit__(*exc)
        await self._sse.__aexit__(*exc)


def _sessions(gt, path: str = "/mcp") -> dict:
    """The legacy sessions of a route, read on the gateway's loop."""
    front = gt.gw.fronts[b"/sse" if path == "/mcp" else (path + "/sse").encode()]
    return gt.call(lambda: dict(front.sessions))


# --- a passthrough route ----------------------------------------------------------------------


def test_passthrough_lists_calls_resources_prompts(gateway):
    async def run():
        async with Legacy(gateway.url("/sse")) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"echo", "steps", "ask_model", "ask_user", "big"} <= tools
            assert _text(await c.call_tool("echo", {"text": "héllo ✓"})) == "héllo ✓"
            assert (await c.read_resource("e2e://static")).contents[0].text == "static content"
            assert (await c.read_resource("e2e://item/42")).contents[0].text == "item 42"
            templates = (await c.list_resource_templates()).resource_templates
            assert any(t.uri_template == "e2e://item/{item_id}" for t in templates)
            assert "greet" in {p.name for p in (await c.list_prompts()).prompts}
            p = await c.get_prompt("greet", {"who": "Ann"})
            assert p.messages[0].content.text == "Hello, Ann!"

    anyio.run(run)


def test_passthrough_progress_logging_sampling_elicitation(gateway):
    async def run():
        seen, logs = [], []

        async def progress(p, total, message):
            seen.append((p, total, message))

        async def logging_cb(params):
            logs.append(params.data)

        async with Legacy(gateway.url("/sse"), logging_callback=logging_cb) as c:
            assert _text(await c.call_tool("steps", {"n": 4}, progress_callback=progress)) == "done 4"
            assert _text(await c.call_tool("ask_model", {"question": "2+2?"})) == "model said: answer to 2+2?"
            assert _text(await c.call_tool("ask_user", {})) == "user chose blue"
        assert seen == [(float(i), 4.0, f"step {i}") for i in range(1, 5)]
        assert logs == [f"step {i}" for i in range(1, 5)]

    anyio.run(run)


def test_closing_the_stream_ends_the_backend_session(gateway, sdk_backend):
    async def run():
        async with Legacy(gateway.url("/sse")) as c:
            await c.list_tools()
            (sid,) = list(_sessions(gateway))
            mcp_sid = _sessions(gateway)[sid].mcp_sid.decode()
            assert not mcp_sid.startswith(sid)
            # The backend knows the session while the legacy client holds its stream.
            hdrs = {**HEADERS, "Mcp-Session-Id": mcp_sid, "MCP-Protocol-Version": "2025-06-18"}
            async with httpx.AsyncClient(timeout=10) as h:
                r = await h.post(sdk_backend, json={"jsonrpc": "2.0", "id": 5, "method": "ping"}, headers=hdrs)
                assert r.status_code == 200
        # The client closed its stream: the gateway ended the session at the backend.
        assert wait_until(lambda: not _sessions(gateway))
        with httpx.Client(timeout=10) as h:

            def gone():
                r = h.post(sdk_backend, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers=hdrs)
                return r.status_code == 404

            assert wait_until(gone)

    anyio.run(run)


# --- a multiplexed route ----------------------------------------------------------------------


async def _steps_of(c, b: str, progress, results: dict) -> None:
    results[b] = _text(await c.call_tool(f"{b}__steps", {"n": 3}, progress_callback=progress))


def test_multiplexed_route_through_the_legacy_front(gateway):
    async def run():
        seen = {"alpha": [], "beta": []}
        changed = anyio.Event()

        def progress_for(b):
            async def cb(p, total, message):
                seen[b].append((p, total, message))

            return cb

        async def on_message(msg):
            if isinstance(msg, types.ToolListChangedNotification):
                changed.set()

        async with Legacy(gateway.url("/mcp/both/sse"), message_handler=on_message) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"alpha__add", "alpha__steps", "alpha__ask_model", "beta__steps", "beta__ask_user"} <= names
            assert _text(await c.call_tool("alpha__add", {"a": 2, "b": 3})) == "5"
            # Two calls at once, each with its own progress, from two backends.
            results = {}
            async with anyio.create_task_group() as tg:
                for b in seen:
                    tg.start_soon(_steps_of, c, b, progress_for(b), results)
            assert results == {b: f"{b} done 3" for b in seen}
            assert seen == {b: [(float(i), 3.0, f"{b} step {i}") for i in range(1, 4)] for b in seen}
            assert _text(await c.call_tool("alpha__ask_model", {"question": "2+2?"})) == "alpha: model said answer to 2+2?"
            assert _text(await c.call_tool("beta__ask_user", {})) == "beta: user chose blue"
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert {"mcpfast:alpha/mem://info", "mcpfast:beta/mem://info"} <= uris
            assert (await c.read_resource("mcpfast:beta/mem://info")).contents[0].text == "info from beta"
            assert "alpha__hello" in {p.name for p in (await c.list_prompts()).prompts}
            p = await c.get_prompt("beta__hello", {"who": "Ann"})
            assert p.messages[0].content.text == "beta says hello to Ann"
            # A notification outside any request comes over the route's GET stream.
            (legacy,) = _sessions(gateway, "/mcp/both").values()
            assert legacy.listener is not None and legacy.listener.head.status == 200
            await c.call_tool("alpha__grow", {})
            with anyio.fail_after(10):
                await changed.wait()
            token = _sessions(gateway, "/mcp/both")[next(iter(_sessions(gateway, "/mcp/both")))].mcp_sid.decode()
        assert wait_until(lambda: not _sessions(gateway, "/mcp/both"))
        # The session token was ended with a DELETE through the route: it is refused now.
        with httpx.Client(timeout=10) as h:
            r = h.post(
                gateway.url("/mcp/both"), json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={**HEADERS, "Mcp-Session-Id": token, "MCP-Protocol-Version": "2025-06-18"},
            )  # fmt: skip
            assert r.status_code == 404

    anyio.run(run)


# --- policy --------------------------------------------------------------------------------


def _post(h: httpx.Client, gt, sid: str, msg, tok: str | None = None, path: str = "/messages") -> httpx.Response:
    hdrs = {"Content-Type": "application/json"}
    if tok:
        hdrs["Authorization"] = f"Bearer {tok}"
    body = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    return h.post(gt.url(f"{path}?session_id={sid}"), content=body, headers=hdrs)


def _echo(text: str, rid: int = 77) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}


@pytest.mark.parametrize("tok", [None, "not-a-token", "wrong-key"])
def test_wrong_credentials_get_401_on_the_stream_and_on_messages(policy_gateway, tok):
    if tok == "wrong-key":
        tok = jwt.encode({"sub": "alice", "iss": ISSUER, "aud": PUBLIC + "/mcp", "exp": time.time() + 600},
                         "x" * 64, algorithm="HS256", headers={"kid": "k1"})  # fmt: skip
    hdrs = {"Authorization": f"Bearer {tok}"} if tok else {}
    with httpx.Client(timeout=10) as h:
        r = h.get(policy_gateway.url("/sse"), headers={**hdrs, "Accept": "text/event-stream"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer ")
        assert "resource_metadata=" in r.headers["www-authenticate"]
        r = _post(h, policy_gateway, "0" * 32, _echo("x"), tok)
        assert r.status_code == 401
        assert "resource_metadata=" in r.headers["www-authenticate"]
        assert r.json()["error"]["code"] < 0


def test_denied_tool_is_refused_and_never_reaches_the_backend(policy_gateway):
    async def run():
        async with Legacy(policy_gateway.url("/sse"), token("bob")) as c:
            before = int(_text(await c.call_tool("calls", {})))
            for _ in range(2):
                with pytest.raises(MCPError) as ei:
                    await c.call_tool("echo", {"text": "counted if it arrives"})
                assert "not allowed" in str(ei.value)
            # Refusals do not break the session: the next allowed call works.
            assert int(_text(await c.call_tool("calls", {}))) == before
            # bob's tools/list is cut to what he may call, as on the route itself.
            assert {t.name for t in (await c.list_tools()).tools} == {"calls", "steps"}
        async with Legacy(policy_gateway.url("/sse"), token("alice")) as c:
            await c.call_tool("echo", {"text": "counted"})
            assert int(_text(await c.call_tool("calls", {}))) == before + 1

    anyio.run(run)


def test_another_principal_cannot_post_into_a_session(policy_gateway):
    async def run():
        async with Legacy(policy_gateway.url("/sse"), token("alice")) as legacy:
            c = legacy
            before = int(_text(await c.call_tool("calls", {})))
            (sid,) = [s for s in _sessions(policy_gateway)]
            async with httpx.AsyncClient(timeout=10) as h:
                for tok in (token("bob"), token("carol")):
                    r = await h.post(
                        policy_gateway.url(f"/messages?session_id={sid}"), content=json.dumps(_echo("stolen")),
                        headers={"Content-Type": "application/json", "Authorization": f"Bearer {tok}"},
                    )  # fmt: skip
                    assert r.status_code == 404
                    assert r.json()["error"] == {"code": -32001, "message": "Session not found"}
            # Nothing reached the backend, and alice's session is untouched.
            assert int(_text(await c.call_tool("calls", {}))) == before
            assert _text(await c.call_tool("echo", {"text": "mine"})) == "mine"
            assert int(_text(await c.call_tool("calls", {}))) == before + 1

    anyio.run(run)


# --- hostile or broken input ------------------------------------------------------------------


def test_bad_messages_get_clear_errors_and_other_sessions_keep_working(gateway):
    async def run():
        async with Legacy(gateway.url("/sse")) as c:
            before = int(_text(await c.call_tool("calls", {})))
            (sid,) = list(_sessions(gateway))
            async with httpx.AsyncClient(timeout=10) as h:

                async def post(target: str, body: bytes, **hdrs) -> httpx.Response:
                    return await h.post(
                        gateway.url(target), content=body, headers={"Content-Type": "application/json", **hdrs}
                    )

                ok = json.dumps(_echo("must not arrive")).encode()
                for target in (
                    "/messages", "/messages?session_id=", f"/messages?session_id={sid.upper()}",
                    f"/messages?session_id={sid}0", f"/messages?session_id={sid[:-1]}",
                    f"/messages?session_id={sid}&session_id={sid}", f"/messages?sessionid={sid}",
                    f"/messages?session_id={sid[:-2]}%0d", "/messages?session_id=" + "a" * 4000,
                ):  # fmt: skip
                    r = await post(target, ok)
                    assert r.status_code == 400, target
                    assert r.json()["error"]["code"] == -32600
                    assert "session_id" in r.json()["error"]["message"]
                r = await post(f"/messages?session_id={'0' * 32}", ok)
                assert (r.status_code, r.json()["error"]["code"]) == (404, -32001)
                # Invalid JSON, an empty body, a body that is not JSON-RPC: the route's own
                # refusal, on the POST.
                r = await post(f"/messages?session_id={sid}", b'{"jsonrpc": "2.0", "id": 1, "method": ')
                assert (r.status_code, r.json()["error"]["code"]) == (400, -32700)
                r = await post(f"/messages?session_id={sid}", b"")
                assert (r.status_code, r.json()["error"]["code"]) == (400, -32700)
                r = await post(f"/messages?session_id={sid}", b'{"hello": "world"}')
                assert (r.status_code, r.json()["error"]["code"]) == (400, -32600)
                # A body over limits.max_body_bytes is refused before anything reads it.
                huge = json.dumps(_echo("x" * 300_000)).encode()
                r = await post(f"/messages?session_id={sid}", huge)
                assert r.status_code == 413
                # Other methods, and the stream path for messages.
                r = await h.get(gateway.url(f"/messages?session_id={sid}"))
                assert (r.status_code, r.headers["allow"]) == (405, "POST, OPTIONS")
                r = await post(f"/sse?session_id={sid}", ok)
                assert (r.status_code, r.headers["allow"]) == (405, "GET, OPTIONS")
                r = await h.request("OPTIONS", gateway.url("/messages"))
                assert (r.status_code, r.headers["allow"]) == (204, "POST, OPTIONS")
            # None of it reached the backend, and the session works on.
            assert int(_text(await c.call_tool("calls", {}))) == before
            assert _text(await c.call_tool("echo", {"text": "still here"})) == "still here"
            assert list(_sessions(gateway)) == [sid]

    anyio.run(run)


def test_requests_are_recorded_like_streamable_http_ones(gateway, access_log):
    from prometheus_client import generate_latest

    def echo_count() -> float:
        text = gateway.call(lambda: generate_latest(gateway.gw.metrics.registry)).decode()
        for line in text.splitlines():
            if line.startswith("mcpfast_requests_total{") and 'route="/mcp"' in line and 'tool="echo"' in line \
                    and 'method="tools/call"' in line and 'outcome="ok"' in line:  # fmt: skip
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = echo_count()
    with open(access_log) as f:
        logged_before = sum(1 for x in f if '"tool":"echo"' in x and '"path":"/mcp"' in x)

    async def run():
        async with Legacy(gateway.url("/sse")) as c:
            for i in range(3):
                await c.call_tool("echo", {"text": f"logged {i}"})

    anyio.run(run)
    # Counted once each, under the route (an exchange ends when the route's answer has,
    # which may be just after the client has its result).
    assert wait_until(lambda: echo_count() == before + 3)
    time.sleep(0.3)
    assert echo_count() == before + 3

    def lines() -> list[dict]:
        with open(access_log) as f:
            return [json.loads(x) for x in f if x.strip()]

    def calls() -> list[dict]:
        return [r for r in lines() if r["path"] == "/mcp" and r["method"] == "tools/call" and r["tool"] == "echo"]

    assert wait_until(lambda: len(calls()) >= logged_before + 3)
    rows = lines()
    mine = calls()[logged_before:]
    assert all(r["client"] == "127.0.0.1" and r["http"] == "POST" and r["status"] == 200 for r in mine)
    assert all(r["outcome"] == "ok" and r["backend"] == "e2e" for r in mine)
    assert all(r["session"] and len(r["session"]) == 12 for r in mine)
    assert any(r["path"] == "/sse" and r["http"] == "GET" and r["status"] == 200 for r in rows)
    acks = [r for r in rows if r["path"] == "/messages?session_id=<redacted>"]
    assert any(r["status"] == 202 and r["backend"] is None for r in acks)
    # The legacy session id is never written: only its redacted form is.
    raw = open(access_log).read()
    assert "session_id=" + "0" * 32 not in raw and not any(len(r["path"]) > 40 and "sse" in r["path"] for r in rows)


# --- streams: keep-alive, a client that stops reading -------------------------------------------


def _open_raw_stream(port: int, rcvbuf: int | None = None):
    """A raw legacy stream: (socket, session id, bytes read so far)."""
    import socket

    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    s.settimeout(10)
    got = b""
    while b"session_id=" not in got or b"\n\n" not in got[got.index(b"session_id=") :]:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    sid = got.split(b"session_id=", 1)[1][:32].decode()
    return s, sid, got


def test_a_quiet_stream_gets_keep_alive_comments(gateway, monkeypatch):
    from mcpfast.front import legacy_sse

    monkeypatch.setattr(legacy_sse, "PING_EVERY", 0.3)
    s, sid, got = _open_raw_stream(gateway.port)
    try:
        assert b"HTTP/1.1 200 OK" in got and b"text/event-stream" in got
        assert b"event: endpoint\ndata: /messages?session_id=" + sid.encode() + b"\n\n" in got
        while b": ping\n\n" not in got:
            chunk = s.recv(4096)
            assert chunk
            got += chunk
    finally:
        s.close()
    assert wait_until(lambda: sid not in _sessions(gateway))


@pytest.fixture(scope="module")
def stall_gateway(sdk_backend):
    raw = {"backends": {"e2e": {"url": sdk_backend, "response_timeout": 20.0}}, "timeouts": {"client_write": 2.0}}
    with GatewayThread(raw) as gt:
        yield gt


def test_a_client_that_stops_reading_is_paused_then_dropped(stall_gateway, sdk_backend):
    gt = stall_gateway
    s, sid, _ = _open_raw_stream(gt.port, rcvbuf=16384)
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
        with httpx.Client(timeout=10) as h:
            assert _post(h, gt, sid, init).status_code == 202
            assert wait_until(lambda: _sessions(gt)[sid].mcp_sid is not None)
            mcp_sid = _sessions(gt)[sid].mcp_sid.decode()
            assert _post(h, gt, sid, {"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
            big = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "big", "arguments": {"size": 400_000}}}
            for i in range(12):
                r = _post(h, gt, sid, {**big, "id": 10 + i})
                assert r.status_code in (202, 503), r.text  # 503: the stream's backlog is full
            # The stream is not read: the session pauses, and with it every request under way.
            assert wait_until(lambda: _sessions(gt)[sid].paused)
            legacy = _sessions(gt)[sid]
            backlog = gt.call(legacy.backlog)
            legs = gt.call(lambda: [leg.proto.write_paused for leg in legacy.legs])
            print(f"stalled stream: {backlog} bytes held, {len(legs)} requests paused")
            assert legs and all(legs)
            assert backlog < 8 * 1024 * 1024
            # After timeouts.client_write with nothing taken, the client is dropped and the
            # route's session ended.
            assert wait_until(lambda: sid not in _sessions(gt), timeout=15)
            hdrs = {**HEADERS, "Mcp-Session-Id": mcp_sid, "MCP-Protocol-Version": "2025-06-18"}
            assert wait_until(
                lambda: h.post(sdk_backend, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=hdrs).status_code
                == 404
            )
            # Every internal connection is released (the one left is this test's own).
            assert wait_until(lambda: gt.call(lambda: len(gt.gw.connections)) <= 1)
            assert wait_until(lambda: not gt.call(lambda: dict(gt.gw.quota.streams)))
    finally:
        s.close()


def test_origin_and_host_checks_apply_to_both_paths(gateway):
    before = set(_sessions(gateway))
    with httpx.Client(timeout=10) as h:
        evil = {"Origin": "https://evil.example"}
        r = h.get(gateway.url("/sse"), headers={**evil, "Accept": "text/event-stream"})
        assert (r.status_code, r.json()["error"]["message"]) == (403, "Origin not allowed")
        r = h.post(gateway.url(f"/messages?session_id={'0' * 32}"), content=b"{}", headers=evil)
        assert (r.status_code, r.json()["error"]["message"]) == (403, "Origin not allowed")
        r = h.get(gateway.url("/sse"), headers={"Host": "rebinding.example", "Accept": "text/event-stream"})
        assert r.status_code == 421
        assert set(_sessions(gateway)) <= before


def test_streams_the_route_closes_early_are_resumed(gateway):
    """A server that closes its SSE streams and expects clients to come back with
    Last-Event-ID: the front resumes them, so the legacy client misses nothing."""

    async def run():
        got = {types.PromptListChangedNotification: anyio.Event(), types.ResourceListChangedNotification: anyio.Event()}

        async def on_message(msg):
            if type(msg) in got:
                got[type(msg)].set()

        async with Legacy(gateway.url("/poll/sse"), message_handler=on_message) as c:
            assert _text(await c.call_tool("poll_call", {})) == "alpha answered after polling"
            # An event on the route's GET stream gives it a position to resume from.
            assert _text(await c.call_tool("notify", {})) == "sent"
            with anyio.fail_after(10):
                await got[types.PromptListChangedNotification].wait()
            assert _text(await c.call_tool("poll_get", {})) == "closed"
            with anyio.fail_after(10):
                await got[types.ResourceListChangedNotification].wait()
            # The continued answer of poll_call ended with it: only the route's GET stream
            # remains open for this session.
            (legacy,) = _sessions(gateway, "/poll").values()
            assert wait_until(lambda: gateway.call(lambda: len(legacy.legs)) == 1), gateway.call(
                lambda: [(leg.polling, leg.ids, leg is legacy.listener, leg.head and leg.head.status) for leg in legacy.legs])

    anyio.run(run)


def test_rate_limited_request_gets_its_error_on_the_stream(policy_gateway):
    """carol may call echo three times in a burst (test_policy_e2e's limit): the fourth
    is refused, and her session goes on."""

    async def run():
        async with Legacy(policy_gateway.url("/sse"), token("carol")) as c:
            for i in range(3):
                assert _text(await c.call_tool("echo", {"text": f"n{i}"})) == f"n{i}"
            with pytest.raises(MCPError) as ei:
                await c.call_tool("echo", {"text": "one too many"})
            assert "Too many requests" in str(ei.value)
            assert int(_text(await c.call_tool("calls", {}))) >= 3

    anyio.run(run)


class RawLegacy:
    """A legacy session by hand (httpx): the stream's events as (event, data) pairs."""

    def __init__(self, h: httpx.AsyncClient, url: str, headers: dict | None = None) -> None:
        self.h = h
        self.url = url
        self.headers = headers or {}

    async def __aenter__(self):
        self._cm = self.h.stream("GET", self.url, headers={**self.headers, "Accept": "text/event-stream"})
        self.resp = await self._cm.__aenter__()
        self.lines = self.resp.aiter_lines()
        event, data = await self.next()
        assert event == "endpoint"
        self.endpoint = data
        return self

    async def __aexit__(self, *exc):
        await self._cm.__aexit__(*exc)

    async def next(self) -> tuple[str | None, str]:
        event, data = None, []
        with anyio.fail_after(10):
            async for line in self.lines:
                if line.startswith(":"):
                    continue
                if not line:
                    if data:
                        return event, "\n".join(data)
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
        raise AssertionError("stream ended")

    async def post(self, msg, headers: dict | None = None) -> httpx.Response:
        origin = self.url.split("/", 3)
        return await self.h.post(f"{origin[0]}//{origin[2]}{self.endpoint}", content=json.dumps(msg),
                                 headers={**(headers or self.headers), "Content-Type": "application/json"})  # fmt: skip


def test_a_batch_on_a_multiplexed_route_is_answered_message_by_message(gateway):
    async def run():
        async with httpx.AsyncClient(timeout=10) as h, RawLegacy(h, gateway.url("/mcp/both/sse")) as s:
            assert s.endpoint.startswith("/mcp/both/messages?session_id=")
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
            assert (await s.post(init)).status_code == 202
            event, data = await s.next()
            assert event == "message" and json.loads(data)["id"] == 1
            assert json.loads(data)["result"]["protocolVersion"] == "2025-03-26"
            assert (await s.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
            batch = [
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alpha__add",
                                                                               "arguments": {"a": 1, "b": 2}}},
                {"jsonrpc": "2.0", "id": "three", "method": "tools/call", "params": {"name": "beta__whoami",
                                                                                     "arguments": {}}},
            ]  # fmt: skip
            assert (await s.post(batch)).status_code == 202
            answers = {}
            while len(answers) < 2:
                event, data = await s.next()
                msg = json.loads(data)
                assert event == "message" and isinstance(msg, dict)
                if "id" in msg:
                    answers[msg["id"]] = msg["result"]["content"][0]["text"]
            assert answers == {2: "3", "three": "beta"}

    anyio.run(run)


def test_api_key_header_on_a_multiplexed_route(mux_backends):
    """Credentials in a header of the operator's choosing go with every message, and a
    multiplexed route binds its sessions to the key's subject as for direct clients."""
    import hashlib

    raw = {
        "backends": {n: {"url": u, "response_timeout": 10.0} for n, u in mux_backends.items()},
        "routes": [{"path": "/mcp", "backends": ["alpha", "beta"]}],
        "sessions": {"key": KEY},
        "auth": {"mode": "required", "api_keys": {"header": "X-Team-Key", "keys": [
            {"sha256": hashlib.sha256(k.encode()).hexdigest(), "subject": k} for k in ("red-key", "blue-key")]}},
    }  # fmt: skip
    with GatewayThread(raw) as gt:

        async def run():
            async with Legacy(gt.url("/sse"), headers={"X-Team-Key": "red-key"}) as c:
                assert _text(await c.call_tool("alpha__add", {"a": 20, "b": 22})) == "42"
                (sid,) = list(_sessions(gt))
                async with httpx.AsyncClient(timeout=10) as h:
                    add = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                           "params": {"name": "alpha__add", "arguments": {"a": 1, "b": 1}}}  # fmt: skip
                    url = gt.url(f"/messages?session_id={sid}")
                    r = await h.post(url, json=add, headers={"X-Team-Key": "blue-key"})
                    assert (r.status_code, r.json()["error"]["code"]) == (404, -32001)
                    r = await h.post(url, json=add, headers={"X-Team-Key": "green-key"})
                    assert r.status_code == 401
                    r = await h.post(url, json=add)
                    assert r.status_code == 401
                assert _text(await c.call_tool("beta__whoami", {})) == "beta"

        anyio.run(run)
        with httpx.Client(timeout=10) as h:
            r = h.get(gt.url("/sse"), headers={"X-Team-Key": "green-key", "Accept": "text/event-stream"})
            assert r.status_code == 401


def test_legacy_clients_on_a_route_to_a_legacy_backend():
    """Both ends on the 2024-11-05 transport, the gateway between (a terminating route):
    the client's stream and the backend's are two different sessions, bridged."""
    server = os.path.join(ROOT, "tests", "fixtures", "sse_server.py")
    with (
        backend_process(server, "--name", "legacy", "--port", "0") as (_, url),
        GatewayThread({"backends": {"old": {"url": url, "transport": "sse", "response_timeout": 10.0}},
                       "sessions": {"key": KEY}}) as gt,  # fmt: skip
    ):

        async def run():
            seen = []

            async def progress(p, total, message):
                seen.append(p)

            async with Legacy(gt.url("/sse")) as c:
                tools = {t.name for t in (await c.list_tools()).tools}
                assert {"whoami", "steps", "ask_model"} <= tools
                assert _text(await c.call_tool("whoami", {})) == "legacy"
                assert _text(await c.call_tool("steps", {"n": 3}, progress_callback=progress)) == "done 3"
                assert _text(await c.call_tool("ask_model", {"question": "2+2?"})) == "model said: answer to 2+2?"
            assert seen == [1.0, 2.0, 3.0]

        anyio.run(run)


def test_legacy_sessions_count_against_the_stream_quotas(sdk_backend):
    raw = {"backends": {"e2e": {"url": sdk_backend}}, "limits": {"max_streams_per_address": 3}}
    with GatewayThread(raw) as gt:
        socks = []
        try:
            for _ in range(3):
                socks.append(_open_raw_stream(gt.port)[0])
            with httpx.Client(timeout=10) as h:
                r = h.get(gt.url("/sse"), headers={"Accept": "text/event-stream"})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert "too many open streams" in r.json()["error"]["message"]
            assert len(_sessions(gt)) == 3
            socks.pop().close()  # one leaves: its place is free again
            assert wait_until(lambda: len(_sessions(gt)) == 2)
            socks.append(_open_raw_stream(gt.port)[0])
            assert len(_sessions(gt)) == 3
        finally:
            for s in socks:
                s.close()
        assert wait_until(lambda: not _sessions(gt) and not gt.call(lambda: dict(gt.gw.quota.streams)))


def test_a_message_waits_for_a_key_fetch_then_goes_on(sdk_backend):
    """A POST signed with a key the gateway has not fetched yet waits for the JWKS fetch
    (without blocking anyone) and is then handled; an unpublished key gets 401."""
    from policyutil import ISSUER as P_ISSUER
    from policyutil import RESOURCE as P_RESOURCE
    from policyutil import JwksServer, make_rsa, sign

    old, new = make_rsa("old"), make_rsa("new")
    public = P_RESOURCE.rsplit("/", 1)[0]
    with JwksServer() as jwks:
        jwks.set_keys(old)
        cfg = {
            "backends": {"e2e": {"url": sdk_backend}},
            "auth": {"mode": "required", "public_url": public,
                     "jwt": {"issuer": P_ISSUER, "jwks_url": jwks.url, "algorithms": ["RS256"],
                             "jwks_min_refresh_seconds": 0}},
        }  # fmt: skip
        with GatewayThread(cfg) as gt:

            async def run():
                bearer = {"Authorization": f"Bearer {sign(old)}"}
                async with httpx.AsyncClient(timeout=10) as h, RawLegacy(h, gt.url("/sse"), bearer) as s:
                    jwks.set_keys(old, new)  # the issuer rotates in a new key
                    hits = jwks.hits
                    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "r", "version": "1"}}}  # fmt: skip
                    r = await s.post(init, {"Authorization": f"Bearer {sign(new)}"})
                    assert r.status_code == 202
                    assert jwks.hits == hits + 1
                    event, data = await s.next()
                    assert event == "message" and json.loads(data)["result"]["serverInfo"]["name"] == "e2e"
                    r = await s.post(init, {"Authorization": f"Bearer {sign(make_rsa('never-published'))}"})
                    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]

            anyio.run(run)
