"""transport/sse_legacy.py: the 2024-11-05 HTTP+SSE backend, driven directly on a uvloop
loop against a real MCP SDK server on that transport and against hostile raw backends
(plain sockets that record what reached them)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import orjson
import pytest
import uvloop

from gwutil import backend_process
from mcpfast.config import build_config
from mcpfast.transport.http_mcp import CallHandler

from mcpfast.observe import Metrics
from mcpfast.transport.base import BackendSession, SessionLost
from mcpfast.transport.sse_legacy import SseBackend, SseCall, endpoint_target, instance_id
from mcpfast.transport.pool import UpstreamError, UpstreamPool
from rawbackend import read_request

V = "2024-11-05"


def run(coro_fn, *args):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(*args), 30))
    finally:
        loop.close()


def make_backend(url: str, *, timeout: float = 5.0, max_event: int = 1 << 20, **kw) -> SseBackend:
    """An SseBackend over a pool built as ``Gateway.pool_for`` builds one."""
    cfg = build_config({"backends": {"legacy": {"url": url, "transport": "sse", "headers": {"X-Gw": "yes"}}}})
    b = cfg.backend("legacy")
    pool = UpstreamPool(
        b, Metrics().for_backend("/mcp", "legacy"), connect_timeout=2.0, max_header_bytes=65536,
        max_connections=b.max_connections, max_streams=b.max_streams,
    )  # fmt: skip
    return SseBackend(b, pool, response_timeout=timeout, max_event=max_event, **kw)


async def shut(backend: SseBackend) -> None:
    await backend.close()
    backend.pool.close()
    await asyncio.sleep(0)


def init_body(rid=1, caps=None) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "initialize",
            "params": {"protocolVersion": V, "capabilities": caps or {}, "clientInfo": {"name": "t", "version": "1"}},
        }
    )


def rpc(rid, method: str, params: dict | None = None) -> bytes:
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg)


def tool_call(rid, name: str, args: dict | None = None, token=None) -> bytes:
    params: dict = {"name": name, "arguments": args or {}}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return rpc(rid, "tools/call", params)


INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


class Recorder(CallHandler):
    """Records an answer as a route's handler would see it; sets ``call.stream`` for a
    JSON answer and ``call.queued`` on each delivery, like ``_Relay``."""

    def __init__(self, on_message=None) -> None:
        self.fut = asyncio.get_running_loop().create_future()
        self.head = None
        self.bodies: list[bytes] = []
        self.events: list[bytes] = []
        self.flushes = 0
        self.unflushed = 0
        self.on_message = on_message

    def on_head(self, call, head) -> None:
        self.head = head
        if not call.events:
            call.stream = True
        call.queued = True

    def on_body(self, call, chunk) -> None:
        self.bodies.append(bytes(chunk))
        call.queued = True

    def on_event(self, call, ev) -> None:
        self.events.append(bytes(ev.data))
        self.unflushed += 1
        call.queued = True
        if self.on_message is not None:
            self.on_message(orjson.loads(ev.data))

    def on_flush(self, call) -> None:
        self.flushes += 1
        self.unflushed = 0

    def on_end(self, call, body) -> None:
        if not self.fut.done():
            self.fut.set_result(("end", call.status))

    def on_error(self, call, err) -> None:
        if not self.fut.done():
            self.fut.set_result(("error", err))

    @property
    def messages(self) -> list[dict]:
        return [orjson.loads(x) for x in self.events + self.bodies]


async def open_session(backend: SseBackend, caps=None) -> BackendSession:
    reply = await backend.ask(None, V, init_body(1, caps))
    assert reply.status == 200 and reply.error_text() is None, reply.error_text()
    assert orjson.loads(reply.message)["id"] == 1  # the caller's id, not the private one
    done = await backend.ask(reply.session_id, V, INITIALIZED)
    assert done.status == 202
    return BackendSession("legacy", reply.session_id, V)


# --------------------------------------------------------------------------------------
# Against a real MCP SDK server on the legacy transport


@pytest.fixture(scope="module")
def sdk_url():
    with backend_process("tests/fixtures/sse_server.py", "--name", "legacy") as (_, url):
        yield url


def test_sdk_initialize_list_and_calls(sdk_url):
    async def main():
        backend = make_backend(sdk_url)
        try:
            bs = await open_session(backend)
            assert bs.session_id.startswith(instance_id() + ".")
            reply = await backend.ask(bs.session_id, V, rpc("mcpfast-7", "tools/list"))
            assert reply.status == 200 and reply.error_text() is None
            msg = orjson.loads(reply.message)
            assert msg["id"] == "mcpfast-7"
            assert {"whoami", "steps", "ask_model"} <= {t["name"] for t in msg["result"]["tools"]}

            # The response first: a JSON answer, in one body.
            r = Recorder()
            call = backend.send(bs, tool_call(5, "whoami"), r)
            assert isinstance(call, SseCall)
            assert await r.fut == ("end", 200)
            assert r.head.content_type == b"application/json" and r.head.content_length == len(r.bodies[0])
            assert len(r.bodies) == 1 and not r.events
            assert orjson.loads(r.bodies[0])["result"]["content"][0]["text"] == "legacy"

            # Progress first: a streamed answer, the response last, flushed per read.
            r = Recorder()
            backend.send(bs, tool_call("s-1", "steps", {"n": 3}, token="tok-1"), r)
            assert await r.fut == ("end", 200)
            assert r.head.content_type == b"text/event-stream"
            kinds = [m.get("method", "response") for m in r.messages]
            assert kinds == ["notifications/message", "notifications/progress"] * 3 + ["response"]
            assert [m["params"]["progress"] for m in r.messages[1:6:2]] == [1, 2, 3]
            assert r.messages[-1]["id"] == "s-1"
            assert r.flushes >= 1 and r.unflushed == 0

            # A log line from the one call in flight goes to that call.
            r = Recorder()
            backend.send(bs, tool_call(6, "chatty"), r)
            assert await r.fut == ("end", 200)
            assert [m.get("method") for m in r.messages] == ["notifications/message", None]
            assert r.messages[-1]["id"] == 6
        finally:
            await shut(backend)

    run(main)


def test_sdk_server_requests_reach_their_call_and_replies_go_back(sdk_url):
    async def main():
        backend = make_backend(sdk_url)
        try:
            bs = await open_session(backend, {"sampling": {}, "elicitation": {}})
            acks: list = []

            def answer(result: dict):
                def on_message(m: dict) -> None:
                    if "method" in m and "id" in m:  # a server→client request: reply to it
                        a = Recorder()
                        acks.append((m["method"], a))
                        backend.send(bs, orjson.dumps({"jsonrpc": "2.0", "id": m["id"], "result": result}), a)

                return on_message

            r = Recorder(answer({"role": "assistant", "content": {"type": "text", "text": "forty-two"}, "model": "m"}))
            backend.send(bs, tool_call(10, "ask_model", {"question": "meaning?"}), r)
            assert await r.fut == ("end", 200)
            assert r.messages[0]["method"] == "sampling/createMessage"
            assert r.messages[-1]["result"]["content"][0]["text"] == "model said: forty-two"
            method, ack = acks[0]
            assert method == "sampling/createMessage"
            assert await ack.fut == ("end", 202) and ack.head.status == 202

            r = Recorder(answer({"action": "accept", "content": {"colour": "teal"}}))
            backend.send(bs, tool_call(11, "ask_user"), r)
            assert await r.fut == ("end", 200)
            assert r.messages[0]["method"] == "elicitation/create"
            assert r.messages[-1]["result"]["content"][0]["text"] == "user chose teal"
        finally:
            await shut(backend)

    run(main)


def test_sdk_sessions_apart_ids_listen_and_end(sdk_url):
    async def main():
        backend = make_backend(sdk_url)
        try:
            a = await open_session(backend)
            b = await open_session(backend)
            assert a.session_id != b.session_id

            async def call(bs, rid, name, args=None):
                r = Recorder()
                backend.send(bs, tool_call(rid, name, args), r)
                assert await r.fut == ("end", 200)
                return r.messages[-1]["result"]["content"][0]["text"]

            assert await call(a, 1, "remember", {"value": "apple"}) == "kept"
            assert await call(b, 1, "recall") == "nothing"
            assert await call(a, 2, "recall") == "apple"

            # An id already in flight in the session is refused; the first call is intact.
            slow = Recorder()
            backend.send(a, tool_call(7, "slow", {"seconds": 0.3}), slow)
            dup = Recorder()
            backend.send(a, tool_call(7, "whoami"), dup)
            assert await dup.fut == ("end", 200)
            assert dup.messages[0]["error"]["code"] == -32600 and dup.messages[0]["id"] == 7
            # The same id in the other session is another request.
            assert await call(b, 7, "whoami") == "legacy"
            # The gateway's own request with the very id of a call in flight: both answered.
            own = await backend.ask(a.session_id, V, rpc("mcpfast-1", "tools/list"))
            clash = Recorder()
            backend.send(a, tool_call("mcpfast-sse-1", "slow", {"seconds": 0.2}), clash)
            own2 = await backend.ask(a.session_id, V, rpc("mcpfast-sse-1", "ping"))
            assert own.error_text() is None and orjson.loads(own.message)["id"] == "mcpfast-1"
            assert own2.error_text() is None and orjson.loads(own2.message)["id"] == "mcpfast-sse-1"
            assert await clash.fut == ("end", 200)
            assert clash.messages[-1]["result"]["content"][0]["text"] == "slept"
            assert await slow.fut == ("end", 200)
            assert slow.messages[-1]["result"]["content"][0]["text"] == "slept"

            # A request the client cancels: its answer ends there (the backend sends none).
            nap = Recorder()
            backend.send(a, tool_call(15, "slow", {"seconds": 20}), nap)
            await asyncio.sleep(0.1)
            ack = Recorder()
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 15}}
            backend.send(a, orjson.dumps(cancel), ack)
            assert await nap.fut == ("end", 200) and nap.events == []
            assert await ack.fut == ("end", 202)
            assert 15 not in [k[1] for k in backend.sessions[a.session_id].inflight]

            # Two calls in flight: a log line of neither's is the listen stream's.
            lr = Recorder()
            listener = backend.listen(a, lr, None)
            await asyncio.sleep(0.05)
            assert lr.head is not None and lr.head.status == 200 and lr.head.content_type == b"text/event-stream"
            # One call in flight: its log line is its own, listen stream or not.
            ch = Recorder()
            backend.send(a, tool_call(19, "chatty"), ch)
            assert await ch.fut == ("end", 200)
            assert [m.get("method") for m in ch.messages] == ["notifications/message", None]
            assert lr.events == []
            nap = Recorder()
            backend.send(a, tool_call(20, "slow", {"seconds": 0.3}), nap)
            ch = Recorder()
            backend.send(a, tool_call(21, "chatty"), ch)
            assert await ch.fut == ("end", 200)
            assert [m.get("method") for m in ch.messages] == [None]
            assert [m.get("method") for m in lr.messages] == ["notifications/message"]
            await nap.fut
            listener.detach()

            # Another process's session: SessionLost; an ended one: 404.
            with pytest.raises(SessionLost):
                backend.send(BackendSession("legacy", "someoneelse.1", V), tool_call(1, "whoami"), Recorder())
            with pytest.raises(SessionLost):
                await backend.ask("nodot", V, rpc(1, "ping"))
            await backend.end(a.session_id, V)
            r = Recorder()
            backend.send(a, tool_call(30, "whoami"), r)
            assert await r.fut == ("end", 404)
            assert (await backend.ask(a.session_id, V, rpc(31, "ping"))).status == 404
            assert await call(b, 32, "recall") == "nothing"  # the other session is unharmed
            assert await backend.probe() is None
        finally:
            await shut(backend)

    run(main)


# --------------------------------------------------------------------------------------
# Hostile raw backends


class Counter:
    """A listener that must receive nothing: counts accepted connections and bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


class LegacyRaw:
    """A hand-written legacy SSE backend.  ``endpoint``: the data of its endpoint event
    (None: never sends one).  POSTs are answered ``post_status``; a request gets its
    answer on the newest stream, shaped by ``mode``: ``echo`` (a response), ``drop``
    (the stream is closed instead), ``flood`` (``flood`` stray messages first), ``huge``
    (one event of ``huge`` bytes first)."""

    def __init__(self, endpoint: bytes | None = b"/messages?session_id=abc", mode: str = "echo") -> None:
        self.endpoint = endpoint
        self.mode = mode
        self.post_status = 202
        self.get_status = 200
        self.flood = 0
        self.huge = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/sse"
        self.gets: list[bytes] = []
        self.posts: list[tuple[bytes, bytes]] = []
        self.streams: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self.stop.is_set():
                req = read_request(conn)
                if req is None:
                    conn.close()
                    return
                head, body = req
                if head.startswith(b"GET "):
                    self.gets.append(head)
                    if self.get_status != 200:
                        conn.sendall(b"HTTP/1.1 %d No\r\nContent-Length: 2\r\n\r\nno" % self.get_status)
                        continue
                    # Listed before its head goes out: once a client has seen the head,
                    # this stream is in the list, so a later stream is always after it.
                    with self.lock:
                        self.streams.append(conn)
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
                        if self.endpoint is not None:
                            conn.sendall(b"event: endpoint\r\ndata: " + self.endpoint + b"\r\n\r\n")
                        else:
                            conn.sendall(b": waiting\n\n")
                    return  # the stream stays open; other threads write to it
                self.posts.append((head, body))
                reason = b"Accepted" if self.post_status < 300 else b"Oops"
                conn.sendall(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (self.post_status, reason))
                if self.post_status < 300:
                    self._answer(orjson.loads(body))
        except OSError:
            pass

    def _event(self, data: bytes) -> None:
        with self.lock:
            s = self.streams[-1]
            s.sendall(b"event: message\ndata: " + data + b"\n\n")

    def _answer(self, msg: dict) -> None:
        if "method" not in msg or "id" not in msg or self.mode == "silent":
            return
        if self.mode == "drop" and msg["method"] == "tools/call":
            with self.lock:
                s = self.streams.pop()
            s.shutdown(socket.SHUT_RDWR)
            s.close()
            return
        if self.mode == "flood" and msg["method"] == "tools/call":
            with self.lock:
                s = self.streams[-1]
                blob = b"".join(
                    b'event: message\ndata: {"jsonrpc":"2.0","id":"stray-%d","result":{}}\n\n' % i for i in range(self.flood)
                )
                s.sendall(blob)
        if self.mode == "huge" and msg["method"] == "tools/call":
            with self.lock:
                self.streams[-1].sendall(b"event: message\ndata: " + b"x" * self.huge)
            return
        result = {"protocolVersion": V, "capabilities": {}, "serverInfo": {"name": "raw", "version": "1"}}
        if msg["method"] != "initialize":
            result = {"echo": msg["method"]}
        self._event(orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}))

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            for s in self.streams:
                try:
                    s.close()
                except OSError:
                    pass
        self.sock.close()


@pytest.fixture
def raw():
    made: list[LegacyRaw] = []

    def make(*args, **kw) -> LegacyRaw:
        r = LegacyRaw(*args, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_endpoint_target_rules():
    url = "http://127.0.0.1:8000/base/sse"

    def target(data: bytes):
        return endpoint_target(url, "http", "127.0.0.1", 8000, data)

    assert target(b"/messages/?session_id=ab12") == b"/messages/?session_id=ab12"
    assert target(b"/messages/?session_id=ab%0D%0A12") == b"/messages/?session_id=ab%0D%0A12"
    assert target(b"messages?x=1") == b"/base/messages?x=1"
    assert target(b"http://127.0.0.1:8000/m#frag") == b"/m"
    assert target(b"../up") == b"/up"
    for bad in (
        b"http://127.0.0.1:8001/m", b"//127.0.0.1:9/m", b"https://127.0.0.1:8000/m", b"http://localhost:8000/m",
        b"http://evil.example/m", b"http://u:p@127.0.0.1:8000/m", b"/m x", b"/m\r\nHost: evil", b"/m\nX: y", b"/m\nX-Evil:1", b"/m\tx",
        b"/caf\xc3\xa9", b"", b"http://127.0.0.1:99999/m",
    ):  # fmt: skip
        with pytest.raises(ValueError):
            target(bad)


@pytest.mark.parametrize("where", ["port", "scheme-relative", "crlf", "lf-no-space", "space"])
def test_hostile_endpoint_is_refused_and_nothing_is_sent(raw, where):
    trap = Counter()
    endpoint = {
        "port": b"http://127.0.0.1:%d/messages?s=1" % trap.port,
        "scheme-relative": b"//127.0.0.1:%d/messages" % trap.port,
        # Two data lines join with LF into one value: a header injection attempt.
        "crlf": b"/messages?s=1\r\ndata: Host: 127.0.0.1:%d" % trap.port,
        # No space anywhere: a URL parser would drop the line break and accept it.
        "lf-no-space": b"/messages?s=1\r\ndata:X-Evil:1",
        "space": b"/messages?s=1 HTTP/1.1",
    }[where]
    r = raw(endpoint)

    async def main():
        backend = make_backend(r.url)
        try:
            with pytest.raises(UpstreamError) as ei:
                await backend.ask(None, V, init_body())
            assert "endpoint" in str(ei.value) and "refused" in str(ei.value)
            assert ei.value.status == 502
            await asyncio.sleep(0.2)
        finally:
            await shut(backend)

    try:
        run(main)
        assert len(r.gets) == 1
        assert b"X-Gw: yes" in r.gets[0]  # the configured headers go on the GET
        assert r.posts == [] and trap.accepted == 0
    finally:
        trap.close()


def test_no_endpoint_times_out_then_backs_off(raw):
    r = raw(None)

    async def main():
        backend = make_backend(r.url, timeout=0.4)
        try:
            with pytest.raises(UpstreamError) as ei:
                await backend.ask(None, V, init_body())
            assert ei.value.status == 504 and "endpoint" in str(ei.value)
            # Backing off: the next attempt fails at once, without a connection.
            with pytest.raises(UpstreamError) as ei:
                await backend.ask(None, V, init_body())
            assert ei.value.status == 503 and "retrying" in str(ei.value)
            assert len(r.gets) == 1
            await asyncio.sleep(0.3)  # past the first back-off (0.25 s)
            r.endpoint = b"/messages?session_id=2"
            bs = await open_session(backend)
            assert bs.session_id is not None and len(r.gets) == 2
            assert backend.failures == 0
        finally:
            await shut(backend)

    run(main)


def test_stream_dropped_mid_call_fails_it_and_session_reopens(raw):
    r = raw(mode="drop")

    async def main():
        backend = make_backend(r.url)
        try:
            bs = await open_session(backend)
            rec = Recorder()
            backend.send(bs, tool_call(1, "whoami"), rec)
            outcome, err = await rec.fut
            assert outcome == "error" and err.status == 502
            assert "event stream lost" in str(err) and "legacy" in str(err)
            # The session is gone: 404, so the route opens a new one.
            rec = Recorder()
            backend.send(bs, tool_call(2, "whoami"), rec)
            assert await rec.fut == ("end", 404)
            r.mode = "echo"
            bs2 = await open_session(backend)
            assert bs2.session_id != bs.session_id
            rec = Recorder()
            backend.send(bs2, tool_call(3, "whoami"), rec)
            assert await rec.fut == ("end", 200)
            assert rec.messages == [{"jsonrpc": "2.0", "id": 3, "result": {"echo": "tools/call"}}]
            # The POSTs went to the endpoint with the configured headers, nothing else.
            assert all(h.startswith(b"POST /messages?session_id=abc HTTP/1.1") for h, _ in r.posts)
            assert all(b"X-Gw: yes" in h for h, _ in r.posts)
        finally:
            await shut(backend)

    run(main)


def test_post_refused_with_500_fails_the_call(raw):
    r = raw()

    async def main():
        backend = make_backend(r.url)
        try:
            bs = await open_session(backend)
            r.post_status = 500
            rec = Recorder()
            backend.send(bs, tool_call(1, "whoami"), rec)
            outcome, err = await rec.fut
            assert outcome == "error" and "legacy" in str(err) and "500" in str(err)
            note = Recorder()
            backend.send(bs, b'{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}', note)
            outcome, err = await note.fut
            assert outcome == "error" and "500" in str(err)
            r.post_status = 202
            note = Recorder()
            backend.send(bs, b'{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}', note)
            assert await note.fut == ("end", 202)
        finally:
            await shut(backend)

    run(main)


def test_first_message_timeout_and_inflight_bound(raw):
    r = raw(mode="silent")  # accepts POSTs, never answers on the stream

    async def main():
        backend = make_backend(r.url, timeout=0.3, max_inflight=2)
        try:
            r.mode = "echo"
            bs = await open_session(backend)
            r.mode = "silent"
            recs = [Recorder() for _ in range(3)]
            for i, rec in enumerate(recs):
                backend.send(bs, tool_call(i, "whoami"), rec)
            outcome, err = await recs[2].fut
            assert outcome == "error" and err.status == 503
            for rec in recs[:2]:
                outcome, err = await rec.fut
                assert outcome == "error" and err.status == 504
            assert not backend.sessions[bs.session_id].inflight
        finally:
            await shut(backend)

    run(main)


def test_flood_and_over_long_event_are_bounded(raw):
    r = raw(mode="flood")
    r.flood = 20000

    async def main():
        backend = make_backend(r.url, max_event=4096)
        try:
            bs = await open_session(backend)
            rec = Recorder()
            backend.send(bs, tool_call(1, "whoami"), rec)
            assert await rec.fut == ("end", 200)
            # Twenty thousand answers nobody waited for: dropped, not kept or delivered.
            assert rec.messages == [{"jsonrpc": "2.0", "id": 1, "result": {"echo": "tools/call"}}]
            s = backend.sessions[bs.session_id]
            assert not s.inflight and not s.chatty and not s.touched
            r.mode = "huge"
            r.huge = 1 << 20
            rec = Recorder()
            backend.send(bs, tool_call(2, "whoami"), rec)
            outcome, err = await rec.fut
            assert outcome == "error" and "event stream lost" in str(err)
            assert bs.session_id not in backend.sessions
        finally:
            await shut(backend)

    run(main)


def test_probe_and_close(raw):
    r = raw()
    down = socket.socket()
    down.bind(("127.0.0.1", 0))  # held, never listening: connections are refused
    down_port = down.getsockname()[1]

    async def main():
        backend = make_backend(r.url)
        gone = make_backend(f"http://127.0.0.1:{down_port}/sse", timeout=1.0)
        try:
            assert await backend.probe() is None
            why = await gone.probe()
            assert why is not None and "unreachable" in why
            bs = await open_session(backend)
            listener = Recorder()
            backend.listen(bs, listener, None)
            await backend.close()
            assert await listener.fut == ("end", 200)
            with pytest.raises(UpstreamError) as ei:
                await backend.ask(None, V, init_body())
            assert ei.value.status == 503
        finally:
            await shut(backend)
            await shut(gone)

    try:
        run(main)
    finally:
        down.close()
    assert len(r.gets) == 2  # the probe's and the session's


def test_instance_changes_after_fork():
    mine = instance_id()
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its instance and leave at once
        os.write(wr, instance_id().encode())
        os._exit(0)
    os.close(wr)
    child = os.read(rd, 100).decode()
    os.close(rd)
    os.waitpid(pid, 0)
    assert child and child != mine and instance_id() == mine


def test_stream_refused_and_back_pressure(raw):
    r = raw()
    r.get_status = 500

    async def main():
        backend = make_backend(r.url)
        try:
            with pytest.raises(UpstreamError) as ei:
                await backend.ask(None, V, init_body())
            assert ei.value.status == 502 and "HTTP 500" in str(ei.value)
            assert await backend.probe() == "HTTP 500"
            r.get_status = 200
            await asyncio.sleep(0.3)  # past the back-off
            bs = await open_session(backend)
            stream = backend.sessions[bs.session_id].stream
            # A client that stops reading stops the backend stream's reading.
            r.mode = "silent"
            rec = Recorder()
            call = backend.send(bs, tool_call(1, "whoami"), rec)
            call.pause_reading()
            assert stream.conn._paused
            call.resume_reading()
            assert not stream.conn._paused
            call.pause_reading()
            call.detach()  # leaving undoes the pause, and nothing more reaches the call
            assert not stream.conn._paused
            r.mode = "echo"
            r._answer({"jsonrpc": "2.0", "id": 1, "method": "tools/call"})
            await asyncio.sleep(0.1)
            assert rec.head is None and not rec.fut.done()
            # A route whose client is not reading yet sends paused: the stream waits for it.
            rec = Recorder()
            call = backend.send(bs, tool_call(2, "whoami"), rec, True)
            assert stream.conn._paused
            await asyncio.sleep(0.2)
            assert rec.head is None
            call.resume_reading()
            assert await rec.fut == ("end", 200)
            lr = Recorder()
            listener = backend.listen(bs, lr, None, True)
            assert stream.conn._paused
            listener.detach()
            assert not stream.conn._paused
        finally:
            await shut(backend)

    run(main)
