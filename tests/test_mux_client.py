"""mux/client.py: the shared head-deadline sweep of routed calls and the cached POST head."""

from __future__ import annotations

import asyncio
import time

from mcpfast.config import build_config
from mcpfast.transport.http_mcp import BackendLink, Call, CallHandler
from mcpfast.transport.base import BackendSession
from mcpfast.observe import Metrics
from mcpfast.transport.pool import UpstreamPool


class _Handler(CallHandler):
    def __init__(self, fut: asyncio.Future) -> None:
        self.fut = fut

    def on_head(self, call, head) -> None:
        pass

    def on_event(self, call, ev) -> None:
        pass

    def on_flush(self, call) -> None:
        pass

    def on_end(self, call, body) -> None:
        if not self.fut.done():
            self.fut.set_result(("end", call.status, body))

    def on_error(self, call, err) -> None:
        if not self.fut.done():
            self.fut.set_result(("error", err.status, str(err)))


def _link(port: int, timeout: float) -> BackendLink:
    cfg = build_config({"backends": {"b": {"url": f"http://127.0.0.1:{port}/mcp"}}})
    b = cfg.backend("b")
    pool = UpstreamPool(b, Metrics().for_backend("/mcp", "b"), connect_timeout=2.0)
    return BackendLink(b, pool, timeout, 1 << 20)


async def _silent_server():
    """Accepts, reads, never answers."""
    conns = []

    async def handle(reader, writer):
        conns.append(writer)
        await reader.read(65536)
        await asyncio.sleep(30)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], conns


async def _read_request(reader: asyncio.StreamReader) -> None:
    """Read one request (head and Content-Length body) and drop it."""
    head = await reader.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    await reader.readexactly(n)


async def _answering_server():
    body = b'{"jsonrpc":"2.0","id":1,"result":{}}'

    async def handle(reader, writer):
        while True:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_routed_call_times_out_by_sweep():
    async def main():
        server, port, conns = await _silent_server()
        link = _link(port, 0.2)
        try:
            fut = asyncio.get_running_loop().create_future()
            t0 = time.monotonic()
            call = Call(link, link.post(b"{}", "s1", "2025-06-18"), _Handler(fut)).start()
            assert call.watched and call.timer is None and call in link.waiting
            kind, status, _ = await asyncio.wait_for(fut, 5)
            took = time.monotonic() - t0
            assert (kind, status) == ("error", 504)
            assert 0.19 <= took < 1.0  # one sweep interval (timeout/4) late at most, plus slack
            assert not link.waiting
            await asyncio.sleep(0.15)
            assert link.sweeper is None  # nothing left to watch: the sweep stops
        finally:
            link.pool.close()
            for w in conns:
                w.close()
            server.close()

    asyncio.run(main())


def test_answered_calls_leave_the_table_and_other_timeouts_keep_a_timer():
    async def main():
        server, port = await _answering_server()
        link = _link(port, 5.0)
        try:
            for _ in range(3):
                fut = asyncio.get_running_loop().create_future()
                Call(link, link.post(b"{}", "s1", "2025-06-18"), _Handler(fut)).start()
                kind, status, body = await asyncio.wait_for(fut, 5)
                assert (kind, status) == ("end", 200) and b'"result"' in body
            assert not link.waiting
            fut = asyncio.get_running_loop().create_future()
            call = Call(link, link.post(b"{}", "s1", "2025-06-18"), _Handler(fut), timeout=3.0).start()
            assert not call.watched and call.timer is not None
            await asyncio.wait_for(fut, 5)
            assert call.timer is None
        finally:
            server.close()

    asyncio.run(main())


def test_cached_post_head_matches_the_general_one():
    link = _link(1, 1.0)
    for sid, ver in (("abc", "2025-06-18"), (None, None), ("x", None)):
        for n in (0, 17, 1234):
            assert link.post_head(sid, ver, n) == link.head(b"POST", sid, ver, n)
            assert link.post(b"x" * n, sid, ver)[0] == link.head(b"POST", sid, ver, n)
    assert link.post(b"ab", "s", "v", ((b"X-More", b"1"),))[0] == link.head(b"POST", "s", "v", 2, ((b"X-More", b"1"),))


def test_session_head_is_kept_per_session_and_link():
    """The routed path's head is built once per backend session, and never reused on
    another link (another backend address, another Host)."""
    a, b = _link(1, 1.0), _link(2, 1.0)
    for sid, ver in (("abc", "2025-06-18"), (None, None), ("x", None)):
        bs = BackendSession("b", sid, ver)
        for n in (0, 17, 1234):
            assert a.session_head(bs, n) == a.head(b"POST", sid, ver, n)
        assert bs.post_link is a
        kept = bs.post_pre
        assert a.session_head(bs, 5) == a.head(b"POST", sid, ver, 5) and bs.post_pre is kept
        assert b"Host: 127.0.0.1:2\r\n" in b.session_head(bs, 5)  # not a's head
        assert b.session_head(bs, 5) == b.head(b"POST", sid, ver, 5) and bs.post_link is b
    # The kept head is no part of the session's value.
    used, fresh = BackendSession("b", "s", "v"), BackendSession("b", "s", "v")
    a.session_head(used, 1)
    assert used == fresh and hash(used) == hash(fresh)


class _Streaming(_Handler):
    """Takes the body piece by piece (``call.stream``); ``fail_in`` names a callback that raises."""

    def __init__(self, fut: asyncio.Future, fail_in: str = "") -> None:
        super().__init__(fut)
        self.chunks: list = []
        self.fail_in = fail_in

    def on_head(self, call, head) -> None:
        call.stream = True
        if self.fail_in == "on_head":
            raise RuntimeError("boom")

    def on_body(self, call, chunk) -> None:
        if self.fail_in == "on_body":
            raise RuntimeError("boom")
        self.chunks.append(bytes(chunk))


async def _answered(link: BackendLink, handler_cls, *args):
    """One routed call to ``link`` with a ``handler_cls(fut, *args)`` handler: (call, handler, outcome)."""
    fut = asyncio.get_running_loop().create_future()
    h = handler_cls(fut, *args)
    call = Call(link, link.post(b"{}", "s1", "2025-06-18"), h).start()
    return call, h, await asyncio.wait_for(fut, 5)


def _against_answering_server(check) -> None:
    """Run ``await check(link)`` with a link to a fresh answering server."""

    async def main():
        server, port = await _answering_server()
        link = _link(port, 5.0)
        try:
            await check(link)
        finally:
            link.pool.close()
            server.close()

    asyncio.run(main())


def test_streamed_body_goes_to_on_body_and_nothing_is_collected():
    async def check(link):
        call, h, outcome = await _answered(link, _Streaming)
        assert outcome == ("end", 200, None)
        assert b"".join(h.chunks) == b'{"jsonrpc":"2.0","id":1,"result":{}}'
        assert call.buf is None

    _against_answering_server(check)


def test_a_failing_handler_ends_the_call_and_the_connection_is_not_reused():
    async def check(link):
        for where in ("on_head", "on_body"):
            _, _, (kind, status, msg) = await _answered(link, _Streaming, where)
            assert (kind, status) == ("error", 502) and "internal error: boom" in msg, where
            await asyncio.sleep(0.05)
            assert link.pool.open_connections == 0, where  # half-read: closed, not pooled

    _against_answering_server(check)


async def _sse_server(reads: list[bytes]):
    """Answers every request with an SSE stream: each of ``reads`` as its own chunk,
    written apart so the client reads them one by one."""

    async def handle(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for r in reads:
            writer.write(b"%x\r\n%s\r\n" % (len(r), r))
            await writer.drain()
            await asyncio.sleep(0.03)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class _Plain(_Handler):
    """Takes reads of plain events unparsed when ``plain``; records what came how."""

    def __init__(self, fut: asyncio.Future, plain: bool) -> None:
        super().__init__(fut)
        self.plain = plain
        self.got: list = []

    def on_head(self, call, head) -> None:
        call.plain = self.plain

    def on_body(self, call, chunk) -> None:
        self.got.append(("body", bytes(chunk)))

    def on_event(self, call, ev) -> None:
        self.got.append(("event", ev.raw))


_ANSWER = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
_ASK = b'event: message\ndata: {"jsonrpc":"2.0","id":5,"method":"ping"}\n\n'


def test_plain_answer_reads_skip_the_sse_parser_until_one_needs_it():
    """With ``call.plain``, a read of whole events holding no request, notification or
    event id reaches ``on_body`` as it came and no parser is made; from the first read
    that needs parsing on, every event is parsed.  Without ``plain`` all are parsed."""
    cases = [
        ([_ANSWER], True, [("body", _ANSWER)], False),
        ([_ANSWER], False, [("event", _ANSWER)], True),
        ([_ASK + _ANSWER], True, [("event", _ASK), ("event", _ANSWER)], True),
        ([b": hi\n\n", _ASK, _ANSWER], True, [("body", b": hi\n\n"), ("event", _ASK), ("event", _ANSWER)], True),
        # An event split over two reads: the first is not whole, so it is parsed.
        ([_ANSWER[:20], _ANSWER[20:]], True, [("event", _ANSWER)], True),
        # An event id must be encoded for the client: parsed.
        ([b"id: 3\n" + _ANSWER], True, [("event", b"id: 3\n" + _ANSWER)], True),
    ]

    async def main():
        for reads, plain, want, parsed in cases:
            server, port = await _sse_server(reads)
            link = _link(port, 5.0)
            try:
                fut = asyncio.get_running_loop().create_future()
                h = _Plain(fut, plain)
                call = Call(link, link.post(b"{}", "s1", "2025-06-18"), h).start()
                assert await asyncio.wait_for(fut, 5) == ("end", 200, None)
                assert h.got == want, reads
                assert (call.sse is not None) is parsed, reads
            finally:
                link.pool.close()
                server.close()

    asyncio.run(main())


def test_a_plain_read_over_the_event_limit_is_refused_like_a_parsed_one():
    async def main():
        server, port = await _sse_server([_ANSWER])
        cfg = build_config({"backends": {"b": {"url": f"http://127.0.0.1:{port}/mcp"}}})
        b = cfg.backend("b")
        link = BackendLink(b, UpstreamPool(b, Metrics().for_backend("/mcp", "b"), connect_timeout=2.0), 5.0, 16)
        try:
            fut = asyncio.get_running_loop().create_future()
            h = _Plain(fut, True)
            Call(link, link.post(b"{}", "s1", "2025-06-18"), h).start()
            kind, status, msg = await asyncio.wait_for(fut, 5)
            assert (kind, status) == ("error", 502) and "invalid SSE" in msg
            assert h.got == []
        finally:
            link.pool.close()
            server.close()

    asyncio.run(main())
