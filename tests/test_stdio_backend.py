"""The stdio transport (``mcpfast/transport/stdio.py``) driven directly, on uvloop, with
real child processes: the real MCP SDK server of the end-to-end tests over stdio
(``fixtures/sdk_server.py --transport stdio``)
and a hand-written child that misbehaves on request (``fixtures/stdio_raw.py``).
Everything is judged by what the handlers got and by what the children received, and
child processes are checked in /proc."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

import anyio
import httpx
import orjson
import pytest
import uvloop
from click.testing import CliRunner
from gwutil import GatewayThread
from test_legacy_sse_front import Legacy  # an SDK 2024-11-05 client session

from mcpfast.cli import main as cli_main
from mcpfast.config import BackendConfig
from mcpfast.transport.base import BackendSession, SessionLost
from mcpfast.transport.http_mcp import CallHandler
from mcpfast.transport.pool import UpstreamError
from mcpfast.transport.stdio import SHARED, StdioBackend, instance_id, one_line
from mcpfast.wire.core import ProtocolError, scan_jsonrpc

HERE = os.path.dirname(os.path.abspath(__file__))
RAW = os.path.join(HERE, "fixtures", "stdio_raw.py")
SDK = os.path.join(HERE, "fixtures", "sdk_server.py")
PY = sys.executable
V = "2025-06-18"
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def make_cfg(args, name="kid", **kw) -> BackendConfig:
    return BackendConfig(name=name, url="", host="", port=0, path="/", transport="stdio", command=PY, args=tuple(args), **kw)


def raw_cfg(*flags, **kw) -> BackendConfig:
    kw.setdefault("shutdown_grace", 0.3)
    return make_cfg(["-I", "-S", RAW, *flags], **kw)


def sdk_cfg(**kw) -> BackendConfig:
    kw.setdefault("shutdown_grace", 1.0)
    return make_cfg(
        [SDK, "--transport", "stdio", "--name", "stdio-e2e"], name="sdk", cwd=os.path.dirname(HERE), inherit_env=True, **kw
    )


def backend(cfg, timeout=10.0, max_line=1 << 20) -> StdioBackend:
    return StdioBackend(cfg, response_timeout=timeout, max_line=max_line)


def run(coro, timeout=45):
    return uvloop.run(asyncio.wait_for(coro, timeout))


def rpc(rid, method, params=None) -> bytes:
    m = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        m["params"] = params
    return orjson.dumps(m)


def tool(rid, name, arguments=None, token=None) -> bytes:
    params = {"name": name, "arguments": arguments or {}}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return rpc(rid, "tools/call", params)


INIT = rpc(0, "initialize", {
    "protocolVersion": V, "capabilities": {"sampling": {}, "elicitation": {}},
    "clientInfo": {"name": "stdio-test", "version": "1"},
})  # fmt: skip


class Rec(CallHandler):
    """Records what a call delivers, as the route's handlers would take it."""

    def __init__(self, stream: bool = True) -> None:
        self.want_stream = stream
        self.heads: list = []
        self.bodies: list[bytes] = []
        self.events: list[bytes] = []
        self.flushes = 0
        self.end = None
        self.error = None
        self.fut = asyncio.get_running_loop().create_future()
        self.on_each = None

    def on_head(self, call, head) -> None:
        self.heads.append((head.status, head.content_type))
        call.stream = self.want_stream
        call.queued = True

    def on_body(self, call, chunk) -> None:
        self.bodies.append(bytes(chunk))
        call.queued = True

    def on_event(self, call, ev) -> None:
        self.events.append(bytes(ev.data))
        call.queued = True
        if self.on_each is not None:
            self.on_each(call, ev)

    def on_flush(self, call) -> None:
        self.flushes += 1

    def on_end(self, call, body) -> None:
        self.end = body
        if not self.fut.done():
            self.fut.set_result(None)

    def on_error(self, call, err) -> None:
        self.error = err
        if not self.fut.done():
            self.fut.set_result(None)

    def messages(self) -> list:
        out = [orjson.loads(b) for b in self.bodies + self.events]
        if isinstance(self.end, bytes) and self.end:
            out.append(orjson.loads(self.end))
        return out

    def response(self) -> dict:
        last = self.messages()[-1]
        assert "result" in last or "error" in last, last
        return last


async def opened(b: StdioBackend, name: str = "kid", init: bytes = INIT):
    r = await b.ask(None, V, init)
    assert r.status == 200 and r.error_text() is None, (r.status, r.message)
    ack = await b.ask(r.session_id, V, INITIALIZED)
    assert ack.status == 202
    return BackendSession(name, r.session_id, V), orjson.loads(r.result_bytes())


async def answer(b: StdioBackend, bs, body: bytes, stream: bool = True) -> Rec:
    rec = Rec(stream)
    b.send(bs, body, rec)
    await rec.fut
    return rec


def state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def gone(pid: int) -> bool:
    """Exited.  A process re-parented to init may linger as a zombie until init reaps
    it: that counts as gone (it runs nothing)."""
    return state(pid) in (None, "Z")


def my_children(marker: str) -> list[int]:
    """Live children of this process whose command line holds ``marker``."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == me and fields[0] != b"Z" and marker.encode() in cmd:
            out.append(int(d))
    return out


async def until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- one line per message ------------------------------------------------------------


BODIES = [
    b'{"jsonrpc":"2.0",\n"id":1,\r\n"method":"tools/call","params":{"name":"a\\nb","arguments":{"x":[1,\r2,\n3]}}}',
    b'\r\n{"jsonrpc":"2.0","id":"x\\r\\n","method":"ping"}\n',
    orjson.dumps({"jsonrpc": "2.0", "id": 5, "method": "m", "params": {"s": "line1\nline2\r\n", "n": [1, {"k": "\n"}]}},
                 option=orjson.OPT_INDENT_2),
    b'[{"jsonrpc":"2.0","id":1,"method":"a"},\n{"jsonrpc":"2.0","id":2,"method":"b"}]',
]


@pytest.mark.parametrize("body", BODIES)
def test_raw_line_breaks_are_only_whitespace(body):
    """The claim ``one_line`` rests on: in a valid JSON text a raw CR or LF can only be
    whitespace between tokens, so replacing each with a space changes nothing."""
    scan_jsonrpc(body)  # valid
    flat = one_line(body)
    assert b"\n" not in flat and b"\r" not in flat
    assert orjson.loads(flat) == orjson.loads(body)


def test_raw_line_break_inside_a_string_is_not_valid_json():
    for bad in (b'{"jsonrpc":"2.0","id":1,"method":"a\nb"}', b'{"jsonrpc":"2.0","id":"1\r","method":"ab"}'):
        with pytest.raises(ProtocolError):
            scan_jsonrpc(bad)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bad)


def test_injected_line_reaches_the_child_as_one_line(tmp_path):
    """A client body with raw newlines around a message-shaped value: the child reads it
    as exactly one line, and no hidden message of its own."""
    record = tmp_path / "seen.jsonl"

    async def main():
        b = backend(raw_cfg("--record", str(record)))
        bs, _ = await opened(b)
        hidden = b'{"jsonrpc":"2.0","id":99,"method":"tools/call","params":{"name":"denied"}}'
        body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"x":[1,\n'
                + hidden + b'\r\n]}}}')  # fmt: skip
        rec = await answer(b, bs, body)
        assert rec.error is None
        assert rec.response()["id"] == 1
        await b.close()

    run(main())
    lines = [orjson.loads(x) for x in record.read_text().splitlines()]
    msgs = [orjson.loads(x) for x in lines]
    assert [m.get("method") for m in msgs] == ["initialize", "notifications/initialized", "tools/call"]
    assert all(x.count("\n") == 1 and x.endswith("\n") for x in lines)  # each read was one line
    assert 99 not in [m.get("id") for m in msgs]
    assert msgs[2]["params"]["arguments"]["x"][1]["id"] == 99  # still inside, as data


# --- a real MCP SDK server -------------------------------------------------------------


def test_sdk_server_per_session():
    async def main():
        b = backend(sdk_cfg())
        assert b.local_sessions
        bs, result = await opened(b, "sdk")
        assert result["serverInfo"]["name"] == "stdio-e2e"
        assert bs.session_id.startswith(instance_id() + ".")

        # A plain answer: JSON, one body, flushed.
        rec = await answer(b, bs, rpc(1, "tools/list"))
        assert rec.heads == [(200, b"application/json")]
        assert len(rec.bodies) == 1 and rec.end is None
        assert {t["name"] for t in rec.response()["result"]["tools"]} >= {"echo", "steps", "ask_model", "ask_user"}
        assert rec.flushes == 1
        # The same without call.stream: the body comes with on_end.
        rec = await answer(b, bs, tool(2, "echo", {"text": "hi"}), stream=False)
        assert rec.bodies == [] and orjson.loads(rec.end)["result"]["content"][0]["text"] == "hi"

        # Progress and logging before the response: a streamed answer, response last.
        rec = await answer(b, bs, tool(3, "steps", {"n": 3}, token="tok"))
        assert rec.error is None and rec.heads == [(200, b"text/event-stream")]
        msgs = rec.messages()
        progress = [m for m in msgs if m.get("method") == "notifications/progress"]
        assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
        assert {p["params"]["progressToken"] for p in progress} == {"tok"}
        assert sum(1 for m in msgs if m.get("method") == "notifications/message") == 3
        assert msgs[-1]["id"] == 3 and msgs[-1]["result"]["content"][0]["text"] == "done 3"
        assert rec.flushes >= 1

        # Sampling: the server's request reaches its call; the client's answer goes back.
        replies = []

        def reply(call, ev):
            m = orjson.loads(ev.data)
            if m.get("method") == "sampling/createMessage":
                res = {"role": "assistant", "content": {"type": "text", "text": "forty-two"}, "model": "m"}
                r = Rec()
                replies.append(r)
                b.send(bs, orjson.dumps({"jsonrpc": "2.0", "id": m["id"], "result": res}), r)

        rec = Rec()
        rec.on_each = reply
        b.send(bs, tool(4, "ask_model", {"question": "meaning?"}), rec)
        await rec.fut
        assert rec.error is None, rec.error
        assert len(replies) == 1 and replies[0].heads == [(202, None)]
        assert rec.response()["result"]["content"][0]["text"] == "model said: forty-two"

        # Elicitation, the same way.
        def elicit(call, ev):
            m = orjson.loads(ev.data)
            if m.get("method") == "elicitation/create":
                r = Rec()
                b.send(bs, orjson.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"action": "accept", "content": {"colour": "blue"}}}), r)

        rec = Rec()
        rec.on_each = elicit
        b.send(bs, tool(5, "ask_user"), rec)
        await rec.fut
        assert rec.response()["result"]["content"][0]["text"] == "user chose blue"

        # Ending the session stops its child.
        pid = b.sessions[bs.session_id].pid
        assert state(pid) not in (None, "Z")
        await b.end(bs.session_id, V)
        assert gone(pid)
        assert (await b.ask(bs.session_id, V, rpc(7, "ping"))).status == 404
        await b.close()

    run(main())


def test_sdk_server_shared_keeps_sessions_apart():
    async def main():
        b = backend(sdk_cfg(mode="shared"))
        assert not b.local_sessions
        one, r1 = await opened(b, "sdk")
        two, r2 = await opened(b, "sdk")
        assert one.session_id.startswith(SHARED + ".") and two.session_id.startswith(SHARED + ".")
        assert one.session_id != two.session_id and r1 == r2
        # Both clients use id 7 and progress token "t" at the same time.
        a, c = Rec(), Rec()
        b.send(one, tool(7, "steps", {"n": 3}, token="t"), a)
        b.send(two, tool(7, "steps", {"n": 5}, token="t"), c)
        await asyncio.gather(a.fut, c.fut)
        for rec, n in ((a, 3), (c, 5)):
            assert rec.error is None
            msgs = rec.messages()
            progress = [m["params"] for m in msgs if m.get("method") == "notifications/progress"]
            assert [(p["progress"], p["total"], p["progressToken"]) for p in progress] == [(i, n, "t") for i in range(1, n + 1)]
            assert msgs[-1]["id"] == 7 and msgs[-1]["result"]["content"][0]["text"] == f"done {n}"
        # One call at a time: its log messages reach it.
        rec = await answer(b, one, tool("x", "steps", {"n": 2}))
        assert sum(1 for m in rec.messages() if m.get("method") == "notifications/message") == 2
        assert rec.response()["id"] == "x"
        await b.close()

    run(main())


# --- a misbehaving child -----------------------------------------------------------------


def test_shared_child_is_initialized_once(tmp_path):
    record = tmp_path / "seen.jsonl"

    async def main():
        b = backend(raw_cfg("--record", str(record), mode="shared"))
        mine, _ = await opened(b)
        r = await b.ask(None, V, rpc("second", "initialize", {"protocolVersion": V, "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}))
        assert r.session_id.startswith(SHARED + ".") and orjson.loads(r.message)["id"] == "second"
        assert (await b.ask(r.session_id, V, INITIALIZED)).status == 202
        other = BackendSession("kid", r.session_id, V)
        # Cancellation: the request id is mapped to its wire id, and only the session
        # that sent the request can cancel it.
        slow = Rec()
        b.send(mine, tool(7, "sleep", {"seconds": 0.3}), slow)
        cancel = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
        assert (await answer(b, other, cancel)).heads == [(202, None)]
        assert (await answer(b, mine, cancel)).heads == [(202, None)]
        await slow.fut
        assert slow.response()["id"] == 7
        reply = await b.ask(mine.session_id, V, rpc("s", "stats"))
        assert orjson.loads(reply.message)["id"] == "s"
        await b.close()
        return orjson.loads(reply.result_bytes())

    stats = run(main())
    assert stats == {"initialize": 1, "notifications/initialized": 1, "tools/call": 1, "notifications/cancelled": 1, "stats": 1}
    msgs = [orjson.loads(orjson.loads(x)) for x in record.read_text().splitlines()]
    ids = [m.get("id") for m in msgs]
    assert "second" not in ids and "s" not in ids and 7 not in ids  # the wire ids are the gateway's
    wire = next(m["id"] for m in msgs if m.get("method") == "tools/call")
    assert [m["params"]["requestId"] for m in msgs if m.get("method") == "notifications/cancelled"] == [wire]


def test_garbage_lines_are_dropped(caplog):
    caplog.set_level(logging.WARNING, "mcpfast.backend")

    async def main():
        b = backend(raw_cfg("--garbage"))
        bs, _ = await opened(b)
        rec = await answer(b, bs, tool(1, "echo", {"a": 1}))
        assert rec.error is None and rec.heads == [(200, b"application/json")]
        assert rec.response()["result"] == {"echo": {"a": 1}}
        await b.close()

    run(main())
    dropped = [r for r in caplog.records if "not a JSON-RPC message" in r.getMessage()]
    assert len(dropped) >= 3
    assert any("this is not json" in r.getMessage() for r in dropped)


def test_over_long_line_fails_the_call_and_the_backend_goes_on():
    async def main():
        b = backend(raw_cfg(), max_line=1 << 20)
        bs, info = await opened(b)
        rec = await answer(b, bs, tool(1, "long", {"size": 100 << 20}))
        assert rec.heads == [] and isinstance(rec.error, UpstreamError)
        assert "longer than" in str(rec.error) and rec.error.status == 502
        await until(lambda: gone(info["pid"]))
        assert (await b.ask(bs.session_id, V, rpc(2, "ping"))).status == 404
        bs2, info2 = await opened(b)
        rec = await answer(b, bs2, tool(3, "echo"))
        assert rec.error is None and info2["pid"] != info["pid"]
        await b.close()

    run(main())


def test_child_that_exits_at_once(caplog):
    caplog.set_level(logging.INFO, "mcpfast.backend")

    async def main():
        b = backend(raw_cfg("--exit-now", "3"))
        with pytest.raises(UpstreamError) as ei:
            await b.ask(None, V, INIT)
        assert ei.value.status == 502 and "exited (status 3)" in str(ei.value) and "kid" in str(ei.value)
        # Backoff: the next start fails at once, naming the wait.
        with pytest.raises(UpstreamError) as ei:
            await b.ask(None, V, INIT)
        assert ei.value.status == 503 and "next start in" in str(ei.value)
        assert "restarting" in (await b.probe())
        await until(lambda: time.monotonic() >= b.backoff_until)
        with pytest.raises(UpstreamError) as ei:
            await b.ask(None, V, INIT)
        assert ei.value.status == 502
        assert b.backoff == 0.5  # doubled
        await b.close()

    run(main())
    text = [r.getMessage() for r in caplog.records if r.name == "mcpfast.backend"]
    assert any("started" in t for t in text) and any("exited (status 3)" in t for t in text)
    assert any("exiting at once" in t for t in text)  # its stderr


def test_stderr_is_capped_and_truncated(caplog):
    caplog.set_level(logging.INFO, "mcpfast.backend")

    async def main():
        b = backend(raw_cfg("--chatty", "500"))
        await opened(b)
        await b.close()

    run(main())
    text = [r.getMessage() for r in caplog.records if r.name == "mcpfast.backend"]
    chatter = [t for t in text if "chatter" in t]
    assert 0 < len(chatter) <= 50
    assert any("stderr lines not logged" in t for t in text)
    assert all(len(t) < 4300 for t in text)


def test_hostile_stderr_cannot_forge_or_garble_log_lines(caplog):
    """A child's stderr is the child's to fill: a carriage return, an escape sequence, a
    NUL and a would-be log record reach the log escaped, inside the one record of the line
    they came on, never as raw control characters."""
    caplog.set_level(logging.INFO, "mcpfast.backend")
    hostile = 'sys.stderr.write("ok\\r{\\"level\\":\\"error\\",\\"msg\\":\\"forged\\"}\\x1b[2J\\x00end\\n"); sys.stderr.flush()'
    cfg = make_cfg(["-I", "-S", "-c", f"import sys; {hostile}"], shutdown_grace=0.3)

    async def main():
        b = backend(cfg)
        with pytest.raises(UpstreamError):
            await b.ask(None, V, INIT)  # it exits at once: its stderr is all there is
        await b.close()

    run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "mcpfast.backend" and "forged" in r.getMessage()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\\x0d" in line and "\\x1b[2J" in line and "\\x00end" in line, line
    assert not any(ch in line for ch in "\r\n\x1b\x00"), repr(line)


def test_stubborn_child_is_killed():
    async def main():
        b = backend(raw_cfg("--stubborn", shutdown_grace=0.3))
        bs, info = await opened(b)
        pid = info["pid"]
        assert state(pid) not in (None, "Z")
        await b.end(bs.session_id, V)
        assert state(pid) is None  # killed and reaped
        await b.close()

    run(main())


def test_grandchild_dies_with_its_group():
    async def main():
        b = backend(raw_cfg("--grandchild"))
        bs, info = await opened(b)
        grand = info["grandchild"]
        assert grand and not gone(grand)
        await b.end(bs.session_id, V)
        assert state(info["pid"]) is None
        await until(lambda: gone(grand), 5)
        await b.close()

    run(main())


def test_environment_is_explicit(monkeypatch):
    monkeypatch.setenv("MCPFAST_TEST_SECRET", "s3cret")

    async def env_of(**kw):
        b = backend(raw_cfg(**kw))
        bs, _ = await opened(b)
        rec = await answer(b, bs, tool(1, "env"))
        await b.close()
        return rec.response()["result"]["env"]

    async def main():
        plain = await env_of()
        assert "MCPFAST_TEST_SECRET" not in plain and plain.get("PATH") == os.environ["PATH"]
        given = await env_of(env=(("FOO", "bar"),))
        assert given["FOO"] == "bar" and "MCPFAST_TEST_SECRET" not in given
        passed = await env_of(env_passthrough=("MCPFAST_TEST_SECRET",))
        assert passed["MCPFAST_TEST_SECRET"] == "s3cret" and "PATH" not in passed
        inherited = await env_of(inherit_env=True, env=(("MCPFAST_TEST_SECRET", "override"),))
        assert inherited["MCPFAST_TEST_SECRET"] == "override" and "HOME" in inherited

    run(main())


def test_many_abandoned_sessions_stay_bounded_and_are_reaped():
    async def main():
        b = backend(raw_cfg(max_processes=4, idle_timeout=0.5, spawn_rate=1000.0, shutdown_grace=0.3))
        first = None
        most = 0
        for _ in range(200):
            r = await b.ask(None, V, INIT)
            assert r.status == 200
            first = first or r.session_id
            most = max(most, len(my_children(RAW)))
        assert most <= 4
        assert (await b.ask(first, V, rpc(1, "ping"))).status == 404  # evicted
        await until(lambda: not my_children(RAW) and not b.children, 10)
        await b.close()

    run(main())


def test_idle_reaping_spares_a_listened_child():
    async def main():
        b = backend(raw_cfg(idle_timeout=0.3))
        heard, info_heard = await opened(b)
        quiet, info_quiet = await opened(b)
        stream = Rec()
        b.listen(heard, stream, None)
        await until(lambda: gone(info_quiet["pid"]), 5)
        assert (await b.ask(quiet.session_id, V, rpc(1, "ping"))).status == 404
        await asyncio.sleep(0.6)
        assert not gone(info_heard["pid"])
        assert (await b.ask(heard.session_id, V, rpc(2, "ping"))).status == 200
        await b.close()

    run(main())


def test_close_leaves_no_child():
    async def main():
        b = backend(raw_cfg(max_processes=8))
        pids = []
        for _ in range(3):
            _, info = await opened(b)
            pids.append(info["pid"])
        stubborn = backend(raw_cfg("--stubborn", "--grandchild", shutdown_grace=0.2))
        _, info = await opened(stubborn)
        pids.append(info["pid"])
        grand = info["grandchild"]
        await asyncio.gather(b.close(), stubborn.close())
        assert all(state(p) is None for p in pids)
        await until(lambda: gone(grand), 5)
        assert not my_children(RAW)

    run(main())


def test_close_while_a_child_is_being_started():
    async def main():
        b = backend(raw_cfg())
        opening = asyncio.ensure_future(b.ask(None, V, INIT))
        await asyncio.sleep(0)
        assert len(b.children) == 1 and not b.children[0].pid  # its start is under way
        await b.close()
        assert not my_children(RAW) and not b.children  # close() waited for it
        with pytest.raises(UpstreamError) as ei:
            await opening
        assert ei.value.status == 503 and "stopping" in str(ei.value)

    run(main())


def test_sessions_of_another_process_and_forgotten_ones():
    async def main():
        b = backend(raw_cfg())
        with pytest.raises(SessionLost):
            await b.ask("0123456789ab.1", V, rpc(1, "ping"))
        with pytest.raises(SessionLost):
            b.send(BackendSession("kid", "elsewhere.3", V), rpc(1, "ping"), Rec())
        r = await b.ask(instance_id() + ".999", V, rpc(1, "ping"))
        assert r.status == 404
        rec = await answer(b, BackendSession("kid", instance_id() + ".999", V), rpc(1, "ping"))
        assert rec.heads == [(404, None)] and rec.error is None
        await b.close()

    run(main())


def test_duplicate_request_id_is_refused():
    async def main():
        b = backend(raw_cfg())
        bs, _ = await opened(b)
        first = Rec()
        b.send(bs, tool(5, "sleep", {"seconds": 0.3}), first)
        dup = await answer(b, bs, tool(5, "echo"))
        err = dup.response()
        assert dup.heads == [(200, b"application/json")] and err["error"]["code"] == -32600 and err["id"] == 5
        # The gateway's own request with that id is sent under another one.
        own = await b.ask(bs.session_id, V, rpc(5, "custom", {"k": 1}))
        assert orjson.loads(own.message) == {"jsonrpc": "2.0", "id": 5, "result": {"k": 1}}
        await first.fut
        assert first.response()["result"] == {"slept": True}
        await b.close()

    run(main())


def test_crash_mid_call_names_the_backend():
    async def main():
        b = backend(raw_cfg())
        bs, info = await opened(b)
        rec = Rec()
        b.send(bs, tool(1, "sleep", {"seconds": 30}), rec)
        await asyncio.sleep(0.1)
        os.kill(info["pid"], signal.SIGKILL)
        await rec.fut
        assert isinstance(rec.error, UpstreamError) and rec.error.status == 502
        assert str(rec.error) == f"backend kid: process {info['pid']} exited (status -9)"
        assert (await b.ask(bs.session_id, V, rpc(2, "ping"))).status == 404
        await b.close()

    run(main())


def test_input_the_child_does_not_read_is_bounded():
    """A child that stops reading: what waits for it is bounded, the call beyond is
    refused, and the child later gets only what was accepted."""

    async def main():
        b = backend(raw_cfg(), max_line=1 << 20)  # at most 2 MiB queued
        bs, _ = await opened(b)
        sleeper = Rec()
        b.send(bs, tool(1, "sleep", {"seconds": 0.5}), sleeper)
        big = "z" * 800_000
        recs = [Rec() for _ in range(3)]
        for i, rec in enumerate(recs):
            b.send(bs, tool(10 + i, "echo", {"big": big}), rec)
        await asyncio.gather(sleeper.fut, *(r.fut for r in recs))
        assert [r.error is None for r in recs] == [True, True, False]
        assert recs[2].error.status == 503 and "not reading" in str(recs[2].error)
        assert [r.response()["id"] for r in recs[:2]] == [10, 11]
        stats = await b.ask(bs.session_id, V, rpc(2, "stats"))
        assert orjson.loads(stats.result_bytes())["tools/call"] == 3  # sleep and two echoes
        await b.close()

    run(main())


def test_paused_call_stops_reading_the_child():
    """A slow client pauses its call: a per-session child's output waits in its pipe
    until the client reads again."""

    async def main():
        b = backend(raw_cfg())
        bs, _ = await opened(b)
        rec = Rec()
        call = b.send(bs, tool(1, "notify", {"text": "held"}), rec)
        call.pause_reading()
        call.pause_reading()  # idempotent
        await asyncio.sleep(0.3)
        assert rec.heads == [] and rec.events == [] and not rec.fut.done()
        call.resume_reading()
        await rec.fut
        assert [m.get("id") for m in rec.messages()] == [None, 1]
        # Sent paused (the client is not reading yet): held the same way.
        rec = Rec()
        call = b.send(bs, tool(3, "notify", {"text": "held"}), rec, True)
        await asyncio.sleep(0.3)
        assert rec.heads == [] and not rec.fut.done()
        call.resume_reading()
        await rec.fut
        assert [m.get("id") for m in rec.messages()] == [None, 3]
        # Another call is not held up by a resume of a call that never paused.
        other = Rec()
        b.send(bs, tool(2, "echo"), other).resume_reading()
        await other.fut
        assert other.response()["id"] == 2
        await b.close()

    run(main())


def test_spawn_rate_is_limited():
    async def main():
        b = backend(raw_cfg(max_processes=2, spawn_rate=0.5))
        await opened(b)
        await opened(b)
        with pytest.raises(UpstreamError) as ei:
            await b.ask(None, V, INIT)
        assert ei.value.status == 503 and "too many process starts" in str(ei.value)
        assert len(my_children(RAW)) == 2  # nobody was evicted for it
        await b.close()

    run(main())


def test_no_answer_in_time_is_504():
    async def main():
        b = backend(raw_cfg(), timeout=0.3)
        bs, _ = await opened(b)
        rec = await answer(b, bs, tool(1, "sleep", {"seconds": 2}))
        assert isinstance(rec.error, UpstreamError) and rec.error.status == 504
        await b.close()

    run(main())


def test_notification_without_its_call_goes_to_the_listen_stream():
    async def main():
        b = backend(raw_cfg())
        bs, _ = await opened(b)
        stream = Rec()
        call = b.listen(bs, stream, None)
        # With one call in flight and the stream open, the call takes it.
        rec = await answer(b, bs, tool(1, "notify", {"text": "to the call"}))
        assert [m.get("method") for m in rec.messages()] == ["notifications/message", None]
        assert stream.heads == [(200, b"text/event-stream")] and stream.events == []
        # Two calls in flight (the child reads the second before it answers the first):
        # neither is the one, the stream takes it.
        first, second = Rec(), Rec()
        b.send(bs, tool(3, "notify", {"text": "to the stream"}), first)
        b.send(bs, tool(4, "sleep", {"seconds": 0.1}), second)
        await asyncio.gather(first.fut, second.fut)
        assert [orjson.loads(e)["params"]["data"] for e in stream.events] == ["to the stream"]
        assert [m.get("id") for m in first.messages()] == [3]
        # Without a stream: the newest call in flight takes it.
        call.detach()
        first, second = Rec(), Rec()
        b.send(bs, tool(5, "notify", {"text": "to the newest"}), first)
        b.send(bs, tool(6, "sleep", {"seconds": 0.1}), second)
        await asyncio.gather(first.fut, second.fut)
        assert [m.get("id") for m in first.messages()] == [5]
        assert [m.get("params", {}).get("data") for m in second.messages()] == ["to the newest", None]
        assert len(stream.events) == 1
        await b.close()

    run(main())


def test_shared_child_never_leaks_one_sessions_messages():
    """Two calls in flight on a shared child: a log message belongs to one of them but
    nobody can tell which, so nobody gets it; a list change concerns everyone, so every
    listen stream gets it."""

    async def main():
        b = backend(raw_cfg(mode="shared"))
        one, _ = await opened(b)
        two, _ = await opened(b)
        s1, s2 = Rec(), Rec()
        b.listen(one, s1, None)
        b.listen(two, s2, None)
        for name in ("notify", "changed"):
            first, second = Rec(), Rec()
            b.send(one, tool(1, name), first)
            b.send(two, tool(1, "sleep", {"seconds": 0.1}), second)
            await asyncio.gather(first.fut, second.fut)
            assert [m.get("id") for m in first.messages()] == [1]
            assert [m.get("id") for m in second.messages()] == [1]
        for stream in (s1, s2):
            assert [orjson.loads(e)["method"] for e in stream.events] == ["notifications/tools/list_changed"]
        await b.close()
        assert s1.fut.done() and s1.error is None  # the streams end with the backend

    run(main())


def test_shared_child_takes_answers_only_from_the_session_it_asked():
    """The shared child asks the client of the one call in flight (sampling): another
    session's answer under the same id does not reach it, the right session's does."""

    async def main():
        b = backend(raw_cfg(mode="shared"))
        one, _ = await opened(b)
        two, _ = await opened(b)
        acks = []

        def answer_it(call, ev):
            m = orjson.loads(ev.data)
            if m.get("method") == "sampling/createMessage":
                for bs, who in ((two, "intruder"), (one, "asked")):
                    r = Rec()
                    acks.append(r)
                    b.send(bs, orjson.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"from": who}}), r)

        rec = Rec()
        rec.on_each = answer_it
        b.send(one, tool(1, "ask"), rec)
        await rec.fut
        assert rec.response()["result"] == {"client said": {"from": "asked"}}
        assert [a.heads for a in acks] == [[(202, None)], [(202, None)]]
        await b.close()

    run(main())


def test_all_processes_busy_is_503():
    async def main():
        b = backend(raw_cfg(max_processes=1))
        bs, _ = await opened(b)
        rec = Rec()
        b.send(bs, tool(1, "sleep", {"seconds": 0.3}), rec)
        with pytest.raises(UpstreamError) as ei:
            await b.ask(None, V, INIT)
        assert ei.value.status == 503 and "busy" in str(ei.value) and "kid" in str(ei.value)
        await rec.fut
        assert rec.error is None
        # Now it is idle: it makes room, even with a listen stream open (which ends).
        stream = Rec()
        b.listen(bs, stream, None)
        await opened(b)
        assert (await b.ask(bs.session_id, V, rpc(2, "ping"))).status == 404
        await stream.fut
        assert stream.heads == [(200, b"text/event-stream")] and stream.error is None
        await b.close()

    run(main())


def test_instance_id_is_new_after_fork():
    mine = instance_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports and leaves at once
        os.write(w, instance_id().encode())
        os._exit(0)
    os.close(w)
    theirs = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert theirs and theirs != mine and instance_id() == mine


def test_probe():
    async def main():
        assert await backend(raw_cfg()).probe() is None
        missing = backend(BackendConfig(name="nope", url="", host="", port=0, path="/", transport="stdio",
                                        command="no-such-mcp-server-here"))  # fmt: skip
        assert "not found" in await missing.probe()
        # A bare name is looked up on the PATH the backend's env sets, if it sets one.
        bin_dir = os.path.dirname(PY)
        named = BackendConfig(name="py", url="", host="", port=0, path="/", transport="stdio",
                              command=os.path.basename(PY), env=(("PATH", bin_dir),))  # fmt: skip
        assert await backend(named).probe() is None
        nowhere = BackendConfig(name="py", url="", host="", port=0, path="/", transport="stdio",
                                command=os.path.basename(PY), env=(("PATH", "/nonexistent"),))  # fmt: skip
        assert "not found" in await backend(nowhere).probe()
        with pytest.raises(UpstreamError) as ei:
            await missing.ask(None, V, INIT)
        assert ei.value.status == 503 and "nope" in str(ei.value)

    run(main())


def test_cli_stdio_backend_shorthand(tmp_path):
    res = CliRunner().invoke(
        cli_main,
        ["check-config", "--stdio-backend", "fs=npx -y '@scope/server fs' --root \"/a b\"", "--stdio-backend", "py=python3 -m srv"],
    )
    assert res.exit_code == 0, res.output
    cfg = orjson.loads(res.output)
    by_name = cfg["backends"]
    assert by_name["fs"]["transport"] == "stdio"
    assert by_name["fs"]["command"] == "npx"
    assert by_name["fs"]["args"] == ["-y", "@scope/server fs", "--root", "/a b"]
    assert by_name["py"]["args"] == ["-m", "srv"]
    bad = CliRunner().invoke(cli_main, ["check-config", "--stdio-backend", "fs="])
    assert bad.exit_code == 2 and "--stdio-backend" in bad.output


# --- through a real gateway ----------------------------------------------------------------


def _gateway_session(h, url: str) -> dict:
    hdrs = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    r = h.post(url, content=INIT, headers=hdrs)
    assert r.status_code == 200, r.text
    hdrs = {**hdrs, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": V}
    assert h.post(url, content=INITIALIZED, headers=hdrs).status_code == 202
    return hdrs


def _raw_backend(*flags, **kw) -> dict:
    return {"transport": "stdio", "command": PY, "args": ["-I", "-S", RAW, *flags], "shutdown_grace": 0.3, **kw}


def test_gateway_injected_line_reaches_the_child_as_one_line(tmp_path):
    """A client posts a tools/call whose arguments hold raw line breaks around a
    message-shaped value: the child reads one line, and runs nothing hidden in it."""
    record = tmp_path / "seen.jsonl"
    hidden = b'{"jsonrpc":"2.0","id":99,"method":"tools/call","params":{"name":"denied"}}'
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"x":[\r\n'
            + hidden + b'\n]}}}')  # fmt: skip
    with GatewayThread({"backends": {"kid": _raw_backend("--record", str(record))}}) as gt, httpx.Client(timeout=10) as h:
        hdrs = _gateway_session(h, gt.url())
        r = h.post(gt.url(), content=body, headers=hdrs)
        assert r.status_code == 200 and r.json()["result"]["echo"]["x"][0]["id"] == 99, r.text
    msgs = [orjson.loads(orjson.loads(x)) for x in record.read_text().splitlines()]
    assert [m.get("method") for m in msgs] == ["initialize", "notifications/initialized", "tools/call"]
    assert 99 not in [m.get("id") for m in msgs]


def test_gateway_names_the_backend_of_a_crashed_child():
    with GatewayThread({"backends": {"kid": _raw_backend()}}) as gt, httpx.Client(timeout=10) as h:
        hdrs = _gateway_session(h, gt.url())
        [pid] = my_children(RAW)  # the gateway runs in this process: its child is ours

        def kill_soon():
            time.sleep(0.3)
            os.kill(pid, signal.SIGKILL)

        threading.Thread(target=kill_soon, daemon=True).start()
        r = h.post(gt.url(), content=tool(5, "sleep", {"seconds": 30}), headers=hdrs)
        err = r.json()["error"]
        assert r.json()["id"] == 5 and "backend kid" in err["message"] and f"process {pid} exited" in err["message"], r.text
        # The client session goes on: a fresh child serves it once the backoff (the
        # child died young) has passed; meanwhile the answer says why.
        for _ in range(50):
            r = h.post(gt.url(), content=tool(6, "echo", {"a": 1}), headers=hdrs)
            assert r.status_code == 200, r.text
            if "result" in r.json():
                break
            assert "next start in" in r.json()["error"]["message"], r.text
            time.sleep(0.05)
        assert r.json()["result"] == {"echo": {"a": 1}}, r.text
        assert my_children(RAW) and pid not in my_children(RAW)
    assert not my_children(RAW)  # the gateway's stop took its children


def test_gateway_legacy_sse_client_on_a_stdio_backend():
    """A 2024-11-05 client (the SDK's sse_client) through the gateway's legacy front to a
    per-session stdio child: progress, logging, sampling and elicitation round-trip; its
    child goes when its stream closes."""
    backend_cfg = {"transport": "stdio", "command": PY, "args": [SDK, "--transport", "stdio"], "cwd": os.path.dirname(HERE)}
    seen, logs = [], []

    async def progress(p, total, message):
        seen.append((p, total, message))

    async def logging_cb(params):
        logs.append(params.data)

    with GatewayThread({"backends": {"e2e": backend_cfg}}) as gt:

        async def run():
            async with Legacy(gt.url("/sse"), logging_callback=logging_cb) as c:
                assert len(my_children(SDK)) == 1
                res = await c.call_tool("steps", {"n": 3}, progress_callback=progress)
                assert res.content[0].text == "done 3"
                res = await c.call_tool("ask_model", {"question": "2+2?"})
                assert res.content[0].text == "model said: answer to 2+2?"
                res = await c.call_tool("ask_user", {})
                assert res.content[0].text == "user chose blue"

        anyio.run(run)
        deadline = time.monotonic() + 10
        while my_children(SDK) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not my_children(SDK)
    assert seen == [(float(i), 3.0, f"step {i}") for i in range(1, 4)]
    assert logs == [f"step {i}" for i in range(1, 4)]
