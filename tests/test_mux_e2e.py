"""The virtual server end to end: three real SDK servers behind one multiplexed route,
real SDK clients in front of it.

alpha and beta both offer ``whoami`` and ``steps`` (same names: only the namespace
tells them apart); gamma answers in JSON mode.  Every backend has ``mem://info``, the
template ``mem://item/{item_id}`` and the prompt ``hello``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import httpx
import pytest

from gwutil import ROOT, GatewayThread, backend_process, free_port
from mcp import Client, types
from mcp.shared.exceptions import MCPError
from mcpfast.demo_backend import wait_ready
from mcpfast.mux.token import TokenCodec, new_key_text, parse_key

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "mux_server.py")
KEY = new_key_text()
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def backends():
    with (
        backend_process(SERVER, "--name", "alpha", "--tools", "add,steps,ask_model,grow") as (_, a),
        backend_process(SERVER, "--name", "beta", "--tools", "steps,ask_user") as (_, b),
        backend_process(SERVER, "--name", "gamma", "--json-response") as (_, g),
    ):
        yield {"alpha": a, "beta": b, "gamma": g}


def _config(urls: dict, **route) -> dict:
    return {
        "backends": {n: {"url": u, "response_timeout": 10.0} for n, u in urls.items()},
        "routes": [{"path": "/mcp", "backends": list(urls), "server_name": "mux-test", **route}],
        "sessions": {"key": KEY},
    }


@pytest.fixture(scope="module")
def gateway(backends):
    with GatewayThread(_config(backends)) as gt:
        yield gt


@pytest.fixture(scope="module")
def gateway2(backends):
    """A second gateway process sharing the key (as a restarted one would)."""
    with GatewayThread(_config(backends)) as gt:
        yield gt


async def _sampling(ctx, params):
    q = params.messages[0].content.text
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"answer to {q}"), model="test-model"
    )


async def _elicit(ctx, params):
    return types.ElicitResult(action="accept", content={"colour": "green"})


def _client(url: str, **kw) -> Client:
    return Client(url, mode="legacy", sampling_callback=_sampling, elicitation_callback=_elicit, **kw)


def _text(result) -> str:
    return result.content[0].text


def test_initialize_merged(gateway):
    async def run():
        async with _client(gateway.url()) as c:
            assert c.server_info.name == "mux-test"
            caps = c.server_capabilities
            assert caps.tools is not None and caps.prompts is not None and caps.resources is not None
            assert caps.experimental is None
            # Each backend's instructions under its own heading, with its naming rule.
            for b in ("alpha", "beta", "gamma"):
                assert f"## {b}" in c.instructions and f"The {b} test server." in c.instructions
            assert "`alpha__<name>`" in c.instructions

    anyio.run(run)


def test_namespaced_union_and_calls(gateway):
    async def run():
        async with _client(gateway.url()) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {
                "alpha__whoami", "alpha__add", "alpha__steps", "alpha__ask_model", "alpha__grow",
                "beta__whoami", "beta__steps", "beta__ask_user", "gamma__whoami",
            } <= names  # fmt: skip
            assert not any(n == "whoami" for n in names)
            for b in ("alpha", "beta", "gamma"):
                assert _text(await c.call_tool(f"{b}__whoami", {})) == b
            assert _text(await c.call_tool("alpha__add", {"a": 2, "b": 3})) == "5"
            with pytest.raises(MCPError) as ei:
                await c.call_tool("delta__whoami", {})
            assert "Unknown tool" in str(ei.value)

    anyio.run(run)


def test_resources_and_prompts(gateway):
    async def run():
        async with _client(gateway.url()) as c:
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert {"mcpfast:alpha/mem://info", "mcpfast:beta/mem://info", "mcpfast:gamma/mem://info"} <= uris
            for b in ("alpha", "beta", "gamma"):
                res = await c.read_resource(f"mcpfast:{b}/mem://info")
                assert res.contents[0].text == f"info from {b}"
            templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
            assert "mcpfast:beta/mem://item/{item_id}" in templates
            res = await c.read_resource("mcpfast:beta/mem://item/7")
            assert res.contents[0].text == "beta item 7"
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            assert {"alpha__hello", "beta__hello", "gamma__hello"} <= prompts
            p = await c.get_prompt("gamma__hello", {"who": "Ann"})
            assert p.messages[0].content.text == "gamma says hello to Ann"

    anyio.run(run)


def test_sampling_and_elicitation_round_trip(gateway):
    async def run():
        async with _client(gateway.url()) as c:
            assert _text(await c.call_tool("alpha__ask_model", {"question": "2+2?"})) == "alpha: model said answer to 2+2?"
            assert _text(await c.call_tool("beta__ask_user", {})) == "beta: user chose green"

    anyio.run(run)


def test_progress_from_two_concurrent_calls(gateway):
    async def run():
        seen: dict[str, list] = {"alpha": [], "beta": []}
        results = {}

        def progress_for(b):
            async def cb(p, total, message):
                seen[b].append((p, total, message))

            return cb

        async with _client(gateway.url()) as c:

            async def call(b):
                results[b] = _text(await c.call_tool(f"{b}__steps", {"n": 3}, progress_callback=progress_for(b)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "alpha")
                tg.start_soon(call, "beta")
        for b in ("alpha", "beta"):
            assert results[b] == f"{b} done 3"
            assert seen[b] == [(float(i), 3.0, f"{b} step {i}") for i in range(1, 4)]

    anyio.run(run)


def test_list_changed_reaches_client_and_next_list_shows_it(gateway):
    async def run():
        changed = anyio.Event()

        async def on_message(msg):
            if isinstance(msg, types.ToolListChangedNotification):
                changed.set()

        async with _client(gateway.url(), message_handler=on_message) as c:
            before = {t.name for t in (await c.list_tools()).tools}
            await c.call_tool("alpha__grow", {})
            with anyio.fail_after(5):
                await changed.wait()
            after = {t.name for t in (await c.list_tools(cache_mode="bypass")).tools}
            assert "alpha__grown" in after
            assert before - {"alpha__grown"} <= after
            assert _text(await c.call_tool("alpha__grown", {})) == "alpha grew"

    anyio.run(run)


# --- raw HTTP: tokens, sessions across gateways -------------------------------------------


def _init(h: httpx.Client, url: str) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = h.post(url, json=body, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["serverInfo"]["name"] == "mux-test"
    return r.headers["mcp-session-id"]


def _hdrs(sid: str) -> dict:
    return {**HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}


def _rpc(result_response: httpx.Response) -> dict:
    ct = result_response.headers.get("content-type", "")
    if ct.startswith("text/event-stream"):
        for line in result_response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                import json

                return json.loads(line[5:])
        raise AssertionError(result_response.text)
    return result_response.json()


def _call(h, url, sid, name, args, rid=2):
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args}}
    return h.post(url, json=body, headers=_hdrs(sid))


def test_tampered_truncated_foreign_tokens_get_404(gateway):
    url = gateway.url()
    with httpx.Client(timeout=10) as h:
        sid = _init(h, url)
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        assert h.post(url, json=listing, headers=_hdrs(sid)).status_code == 200
        flipped = sid[:10] + ("A" if sid[10] != "A" else "B") + sid[11:]
        foreign_codec = TokenCodec(parse_key(new_key_text()))
        state = TokenCodec(parse_key(KEY)).decode(sid, "/mcp")
        foreign = foreign_codec.encode(state, "/mcp")
        for bad in (flipped, sid[:-3], sid + "AAAA", foreign, "x"):
            r = h.post(url, json=listing, headers=_hdrs(bad))
            assert r.status_code == 404, bad
        r = h.post(url, json=listing, headers=HEADERS)
        assert r.status_code == 400


def test_session_served_by_second_gateway_then_deleted(gateway, gateway2, backends):
    with httpx.Client(timeout=10) as h:
        sid = _init(h, gateway.url())
        assert h.post(gateway.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=_hdrs(sid)).status_code == 202
        # The other process knows nothing of this session but the key.
        r = _call(h, gateway2.url(), sid, "beta__whoami", {})
        assert r.status_code == 200
        assert _rpc(r)["result"]["content"][0]["text"] == "beta"
        r = _call(h, gateway2.url(), sid, "alpha__add", {"a": 40, "b": 2}, rid=3)
        assert _rpc(r)["result"]["content"][0]["text"] == "42"
        r = h.post(gateway2.url(), json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, headers=_hdrs(sid))
        assert any(t["name"] == "gamma__whoami" for t in _rpc(r)["result"]["tools"])
        state = TokenCodec(parse_key(KEY)).decode(sid, "/mcp")
        r = h.delete(gateway2.url(), headers=_hdrs(sid))
        assert r.status_code == 200
        # Every backend session is gone.
        for bs in state.backends:
            direct = h.post(
                backends[bs.name],
                json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                headers={**HEADERS, "Mcp-Session-Id": bs.session_id, "MCP-Protocol-Version": bs.protocol_version},
            )
            assert direct.status_code == 404, bs.name


def test_bad_cursor_and_unknown_resource(gateway):
    url = gateway.url()
    with httpx.Client(timeout=10) as h:
        sid = _init(h, url)
        r = h.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"cursor": "nope"}}, headers=_hdrs(sid))
        assert _rpc(r)["error"]["code"] == -32602
        r = h.post(
            url, json={"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": "mcpfast:zeta/x"}}, headers=_hdrs(sid)
        )
        assert _rpc(r)["error"]["code"] == -32002
        r = h.post(url, json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=_hdrs(sid))
        assert _rpc(r) == {"jsonrpc": "2.0", "id": 7, "result": {}}
        r = h.post(url, json={"jsonrpc": "2.0", "id": 8, "method": "no/such"}, headers=_hdrs(sid))
        assert _rpc(r)["error"]["code"] == -32601
        h.delete(url, headers=_hdrs(sid))


# --- failure isolation ------------------------------------------------------------------------




def _start(name: str, port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--name", name, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    if wait_ready(proc, 30) is None:
        proc.kill()
        raise RuntimeError("backend did not start")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(5)


def test_fail_open_backend_killed_then_back(backends):
    port = free_port()
    delta = _start("delta", port, "--tools", "add")
    urls = {"alpha": backends["alpha"], "delta": f"http://127.0.0.1:{port}/mcp"}
    try:
        with GatewayThread(_config(urls)) as gt:

            async def run():
                nonlocal delta
                async with _client(gt.url()) as c:
                    names = {t.name for t in (await c.list_tools()).tools}
                    assert {"alpha__whoami", "delta__whoami", "delta__add"} <= names
                    assert _text(await c.call_tool("delta__whoami", {})) == "delta"
                    _stop(delta)
                    with pytest.raises(MCPError) as ei:
                        await c.call_tool("delta__whoami", {})
                    assert "backend delta unavailable" in str(ei.value)
                    assert _text(await c.call_tool("alpha__whoami", {})) == "alpha"
                    names = {t.name for t in (await c.list_tools(cache_mode="bypass")).tools}
                    assert "alpha__whoami" in names and not any(n.startswith("delta__") for n in names)
                    # It comes back (a new process: our backend session is unknown to it).
                    delta = _start("delta", port, "--tools", "add")
                    names = {t.name for t in (await c.list_tools(cache_mode="bypass")).tools}
                    assert {"delta__whoami", "delta__add"} <= names
                    assert _text(await c.call_tool("delta__add", {"a": 1, "b": 1})) == "2"

            anyio.run(run)
    finally:
        if delta.poll() is None:
            _stop(delta)


def test_backend_that_forgets_sessions_is_reinitialized(backends):
    port = free_port()
    delta = _start("delta", port)
    urls = {"alpha": backends["alpha"], "delta": f"http://127.0.0.1:{port}/mcp"}
    try:
        with GatewayThread(_config(urls)) as gt:

            async def run():
                nonlocal delta
                async with _client(gt.url()) as c:
                    assert _text(await c.call_tool("delta__whoami", {})) == "delta"
                    _stop(delta)
                    delta = _start("delta", port)  # restarted: every session forgotten
                    assert _text(await c.call_tool("delta__whoami", {})) == "delta"
                    res = await c.read_resource("mcpfast:delta/mem://info")
                    assert res.contents[0].text == "info from delta"

            anyio.run(run)
    finally:
        if delta.poll() is None:
            _stop(delta)


def test_fail_closed_refuses_initialize_when_a_backend_is_down(backends):
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    with GatewayThread(_config({"alpha": backends["alpha"], "dead": dead}, fail_mode="closed")) as gt:
        with httpx.Client(timeout=10) as h:
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            }
            r = h.post(gt.url(), json=body, headers=HEADERS)
            assert r.status_code == 502
            assert "dead" in r.json()["error"]["message"]
    with GatewayThread(_config({"alpha": backends["alpha"], "dead": dead})) as gt:

        async def run():
            async with _client(gt.url()) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert "alpha__whoami" in names and not any(n.startswith("dead__") for n in names)

        anyio.run(run)


def test_server_request_id_encoded_and_reply_taken_by_another_gateway(gateway, gateway2):
    """The sampling request reaches the client with an id naming its backend; the reply,
    sent to a different gateway process, still finds alpha and its original id."""
    import json

    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"sampling": {}},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    with httpx.Client(timeout=10) as h, httpx.Client(timeout=10) as h2:
        r = h.post(gateway.url(), json=body, headers=HEADERS)
        sid = r.headers["mcp-session-id"]
        h.post(gateway.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=_hdrs(sid))
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "alpha__ask_model", "arguments": {"question": "q?"}}}
        result = None
        with h.stream("POST", gateway.url(), json=call, headers=_hdrs(sid)) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("method") == "sampling/createMessage":
                    assert isinstance(msg["id"], str) and msg["id"].startswith("alpha~")
                    reply = {
                        "jsonrpc": "2.0",
                        "id": msg["id"],
                        "result": {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"},
                    }
                    rr = h2.post(gateway2.url(), json=reply, headers=_hdrs(sid))
                    assert rr.status_code == 202, rr.text
                elif msg.get("id") == 7:
                    result = msg
                    break
        assert result["result"]["content"][0]["text"] == "alpha: model said 42"
        # A reply naming no backend of the route cannot be delivered.
        bogus = {"jsonrpc": "2.0", "id": "zeta~n1", "result": {}}
        assert h.post(gateway.url(), json=bogus, headers=_hdrs(sid)).status_code == 400
        h.delete(gateway.url(), headers=_hdrs(sid))


# --- DELETE revokes -----------------------------------------------------------------------


def test_deleted_session_is_not_revived(gateway):
    """After DELETE every backend answers 404 for its session; transparent
    re-initialization must not bring the session back: the client gets 404."""
    url = gateway.url()
    with httpx.Client(timeout=10) as h:
        sid = _init(h, url)
        assert _rpc(_call(h, url, sid, "beta__whoami", {}))["result"]["content"][0]["text"] == "beta"
        assert h.delete(url, headers=_hdrs(sid)).status_code == 200
        for r in (
            _call(h, url, sid, "beta__whoami", {}, 3),
            _call(h, url, sid, "alpha__whoami", {}, 4),
            h.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, headers=_hdrs(sid)),
            h.get(url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}),
            h.delete(url, headers=_hdrs(sid)),
        ):
            assert r.status_code == 404, r.text
        # A new session works as ever.
        r = _call(h, url, _init(h, url), "alpha__whoami", {})
        assert _rpc(r)["result"]["content"][0]["text"] == "alpha"


def test_session_deleted_by_another_process_is_not_revived(gateway, gateway2):
    """gateway2 shares the key but not gateway's revocation table.  When the backend it
    routes to answers 404, it asks the session's other backends: all of them forgot it
    too, so the session was ended (DELETE), not a backend restarted -- 404, and from then
    on gateway2 remembers."""
    with httpx.Client(timeout=10) as h:
        sid = _init(h, gateway.url())
        assert _rpc(_call(h, gateway2.url(), sid, "alpha__whoami", {}))["result"]["content"][0]["text"] == "alpha"
        assert h.delete(gateway.url(), headers=_hdrs(sid)).status_code == 200
        r = _call(h, gateway2.url(), sid, "alpha__whoami", {}, 3)
        assert r.status_code == 404, r.text
        r = h.post(gateway2.url(), json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, headers=_hdrs(sid))
        assert r.status_code == 404


# --- stateless clients (2026-07-28) ----------------------------------------------------------


def test_auto_client_falls_back_to_a_session(gateway):
    async def run():
        with anyio.fail_after(15):
            async with Client(gateway.url(), mode="auto") as c:
                assert c.server_info.name == "mux-test"
                assert _text(await c.call_tool("beta__whoami", {})) == "beta"

    anyio.run(run)


def test_stateless_client_gets_unsupported_version(gateway):
    """A 2026-07-28-only client is told which versions the virtual server speaks
    (-32022, the spec's UnsupportedProtocolVersionError), at once: no hang, no 500."""

    async def run():
        with anyio.fail_after(15):
            async with Client(gateway.url(), mode="2026-07-28") as c:
                with pytest.raises(MCPError) as ei:
                    await c.list_tools()
                assert ei.value.error.code == -32022

    anyio.run(run)
    with httpx.Client(timeout=10) as h:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "server/discover",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
        }
        r = h.post(gateway.url(), json=body, headers={**HEADERS, "MCP-Protocol-Version": "2026-07-28"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == -32022
        assert err["data"] == {"supported": ["2025-11-25", "2025-06-18", "2025-03-26"], "requested": "2026-07-28"}
