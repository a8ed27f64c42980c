"""End to end over every backend transport: the real MCP Python SDK server run as a
child process over stdio (a child per session, and one shared child), as a 2024-11-05
HTTP+SSE server, and a multiplexed route mixing Streamable HTTP, stdio and legacy SSE,
each driven through the gateway by the real SDK client.  Progress, logging, sampling
and elicitation must round-trip mid-call on every one of them, as they do against a
Streamable HTTP backend (test_e2e_sdk.py)."""

from __future__ import annotations

import os
import sys

import anyio
import httpx
import pytest

from gwutil import INIT, MCP_HEADERS as HEADERS, ROOT, GatewayThread, backend_process
from mcp import Client, types

pytestmark = pytest.mark.e2e


SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")
KINDS = ["stdio", "stdio-shared", "sse", "mixed"]


def _stdio(name: str = "e2e", mode: str = "per_session") -> dict:
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": [SERVER, "--transport", "stdio", "--name", name],
        "cwd": ROOT,
        "mode": mode,
        "idle_timeout": 60.0,
    }


@pytest.fixture(scope="module")
def sse_backend():
    with backend_process(SERVER, "--transport", "sse", "--port", "0", "--name", "legacy") as (_, url):
        yield url


@pytest.fixture(scope="module")
def http_backend():
    with backend_process(SERVER, "--port", "0", "--name", "web") as (_, url):
        yield url


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def gateway(kind, request):
    if kind == "stdio":
        cfg = {"backends": {"e2e": _stdio()}}
    elif kind == "stdio-shared":
        cfg = {"backends": {"e2e": _stdio(mode="shared")}}
    elif kind == "sse":
        cfg = {"backends": {"e2e": {"transport": "sse", "url": request.getfixturevalue("sse_backend")}}}
    else:
        cfg = {
            "backends": {
                "web": {"url": request.getfixturevalue("http_backend")},
                "e2e": _stdio(),
                "legacy": {"transport": "sse", "url": request.getfixturevalue("sse_backend")},
            },
            "routes": [{"path": "/mcp", "backends": ["web", "e2e", "legacy"]}],
        }
    with GatewayThread(cfg) as gt:
        yield gt


def _name(kind: str, tool: str) -> str:
    """The tool's name as the client sees it (a mixed route prefixes it with the stdio
    backend's name)."""
    return f"e2e__{tool}" if kind == "mixed" else tool


async def _sampling(ctx, params):
    q = params.messages[0].content.text
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"answer to {q}"), model="test-model"
    )


async def _elicit(ctx, params):
    return types.ElicitResult(action="accept", content={"colour": "blue"})


def _client(url: str, **kw) -> Client:
    return Client(url, mode="legacy", sampling_callback=_sampling, elicitation_callback=_elicit, **kw)


def _text(result) -> str:
    return result.content[0].text


def test_lists_calls_resources_prompts(gateway, kind):
    async def run():
        async with _client(gateway.url()) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {_name(kind, t) for t in ("echo", "steps", "ask_model", "ask_user", "big")} <= tools
            if kind == "mixed":
                assert {"web__echo", "legacy__echo"} <= tools
                assert _text(await c.call_tool("web__echo", {"text": "via http"})) == "via http"
                assert _text(await c.call_tool("legacy__echo", {"text": "via sse"})) == "via sse"
            assert _text(await c.call_tool(_name(kind, "echo"), {"text": "héllo ✓"})) == "héllo ✓"
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            assert _name(kind, "greet") in prompts
            p = await c.get_prompt(_name(kind, "greet"), {"who": "Ann"})
            assert p.messages[0].content.text == "Hello, Ann!"
            resources = (await c.list_resources()).resources
            static = [r for r in resources if str(r.uri).endswith("static")]
            assert static, resources
            res = await c.read_resource(static[0].uri)
            assert res.contents[0].text == "static content"

    anyio.run(run)


def test_progress_and_logging_mid_call(gateway, kind):
    async def run():
        seen: list = []
        logs: list = []

        async def progress(p, total, message):
            seen.append((p, total, message))

        async def logging_cb(params):
            logs.append(params.data)

        async with _client(gateway.url(), logging_callback=logging_cb) as c:
            res = await c.call_tool(_name(kind, "steps"), {"n": 4}, progress_callback=progress)
            assert _text(res) == "done 4"
        assert seen == [(float(i), 4.0, f"step {i}") for i in range(1, 5)]
        assert logs == [f"step {i}" for i in range(1, 5)]

    anyio.run(run)


def test_sampling_and_elicitation_mid_call(gateway, kind):
    async def run():
        async with _client(gateway.url()) as c:
            assert _text(await c.call_tool(_name(kind, "ask_model"), {"question": "2+2?"})) == "model said: answer to 2+2?"
            assert _text(await c.call_tool(_name(kind, "ask_user"), {})) == "user chose blue"

    anyio.run(run)


def test_two_clients_at_once_keep_apart(gateway, kind):
    """Concurrent sessions (on a shared child too) get their own answers and progress."""

    async def one(i: int, out: dict):
        seen = []

        async def progress(p, total, message):
            seen.append(p)

        async with _client(gateway.url()) as c:
            texts = []
            for j in range(3):
                texts.append(_text(await c.call_tool(_name(kind, "echo"), {"text": f"c{i}-{j}"})))
            res = await c.call_tool(_name(kind, "steps"), {"n": 3}, progress_callback=progress)
            out[i] = (texts, _text(res), seen)

    async def run():
        out: dict = {}
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i, out)
        for i in range(4):
            assert out[i] == ([f"c{i}-{j}" for j in range(3)], "done 3", [1.0, 2.0, 3.0])

    anyio.run(run)


def test_large_result(gateway, kind):
    async def run():
        async with _client(gateway.url()) as c:
            res = await c.call_tool(_name(kind, "big"), {"size": 400_000})
            assert len(_text(res)) == 400_000

    anyio.run(run)


def test_delete_then_404_and_get_stream(gateway, kind):
    with httpx.Client(timeout=10) as h:
        r = h.post(gateway.url(), json=INIT, headers=HEADERS)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        hdrs = {**HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        r = h.post(gateway.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
        assert r.status_code == 202
        with h.stream("GET", gateway.url(), headers={**hdrs, "Accept": "text/event-stream"}) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
        r = h.post(gateway.url(), json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=hdrs)
        assert r.status_code == 200 and "echo" in r.text
        r = h.delete(gateway.url(), headers=hdrs)
        assert r.status_code in (200, 204)
        r = h.post(gateway.url(), json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=hdrs)
        assert r.status_code == 404
