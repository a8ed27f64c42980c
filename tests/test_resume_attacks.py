"""Resumable answers from message-level backends, attacked: what a hostile or careless
client can do with ``Last-Event-ID``, cancellations, dropped connections and floods of
answers, judged by what the clients and the backends actually got.

Real gateway (``GatewayThread``), real children (``fixtures/stdio_raw.py``, the SDK server
over stdio) and a real legacy HTTP+SSE server (``fixtures/sse_server.py``)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import httpx
import orjson
import pytest

from gwutil import ROOT, GatewayThread, backend_process, wait_until
from mcpfast.transport.messages import _KEEP, Replay
from test_resume_messages import NEW, OLD, _events, _messages, _open

pytestmark = pytest.mark.e2e

RAW = os.path.join(ROOT, "tests", "fixtures", "stdio_raw.py")
SDK = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")


def _raw(mode: str = "per_session", *extra: str, **kw) -> dict:
    return {"transport": "stdio", "command": sys.executable, "args": ["-I", "-S", RAW, *extra], "mode": mode, **kw}


def _sdk(mode: str = "per_session", **kw) -> dict:
    return {"transport": "stdio", "command": sys.executable, "args": [SDK, "--transport", "stdio"], "mode": mode,
            "cwd": ROOT, **kw}  # fmt: skip


@pytest.fixture(scope="module")
def legacy_url():
    with backend_process("tests/fixtures/sse_server.py", "--name", "legacy") as (_, url):
        yield url


def _last_id(events: list[dict]) -> str:
    return [e["id"] for e in events if e["id"]][-1]


def _tool(rid, name: str, **arguments) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def _cancel(rid) -> dict:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid, "reason": "changed my mind"}}


class _Reader(threading.Thread):
    """A GET (or POST) read to its end in a thread: ``status``, ``text``, ``error``."""

    def __init__(self, method: str, url: str, headers: dict, body: dict | None = None, timeout: float = 30) -> None:
        super().__init__(daemon=True)
        self.args = (method, url, headers, body, timeout)
        self.status = None
        self.text = ""
        self.error: BaseException | None = None
        self.first = threading.Event()  # the head arrived

    def run(self) -> None:
        method, url, headers, body, timeout = self.args
        try:
            with httpx.Client(timeout=timeout) as h:
                kw = {"json": body} if body is not None else {}
                with h.stream(method, url, headers=headers, **kw) as r:
                    self.status = r.status_code
                    self.first.set()
                    for chunk in r.iter_text():
                        self.text += chunk
        except BaseException as exc:
            self.error = exc
        finally:
            self.first.set()


# --- cancellations ----------------------------------------------------------------------------


def _backend(kind: str, legacy_url: str, stdio=None, **kw) -> dict:
    """A backend of ``kind`` (stdio, stdio-shared, sse): for stdio, ``stdio`` (``_raw``
    or ``_sdk``) makes it."""
    if kind == "sse":
        return {"transport": "sse", "url": legacy_url, **kw}
    return stdio("shared" if kind == "stdio-shared" else "per_session", **kw)


@pytest.mark.parametrize("kind", ["stdio", "stdio-shared", "sse"])
def test_a_cancelled_answer_left_to_be_resumed_ends_and_its_reader_does_not_hang(kind, legacy_url):
    """A client sent away by poll_after (its answer recorded, not cancelled) then cancels
    the request: the server sends no response to a cancelled request, so the record must
    end there -- a resumed stream that follows it ends instead of waiting forever, and a
    later resumption is answered at once."""
    cfg = {"backends": {"b": _backend(kind, legacy_url, _sdk, poll_after=0.3)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url)
        # The tool asks the client's model and waits for the answer: it sends one
        # message (the sampling request), then nothing until the client answers.
        r = h.post(url, json=_tool("c-1", "ask_model", question="2+2?"), headers=hdrs)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        evs = _events(r.text)
        asked = _messages(evs)
        assert asked and asked[0]["method"] == "sampling/createMessage", evs
        pos = _last_id(evs)
        # A resumed stream follows the record now...
        reader = _Reader("GET", url, {**hdrs, "Last-Event-ID": pos}, timeout=15)
        reader.start()
        assert reader.first.wait(10) and reader.status == 200
        time.sleep(0.2)
        # ... and the client gives up on the request.
        assert h.post(url, json=_cancel("c-1"), headers=hdrs).status_code == 202
        reader.join(12)
        assert not reader.is_alive() and reader.error is None, f"the resumed stream never ended: {reader.error!r}"
        assert not any("result" in m or "error" in m for m in _messages(_events(reader.text)))
        # Resuming again is answered at once: the answer ended with the cancellation.
        r = h.get(url, headers={**hdrs, "Last-Event-ID": pos}, timeout=5)
        assert r.status_code in (200, 400), r.text


@pytest.mark.parametrize("version", [NEW, OLD])
def test_a_cancelled_call_whose_client_left_does_not_keep_its_child_from_being_reaped(version):
    """A per-session child is not stopped when idle while a call of its is in flight --
    recorded for a client that will resume it, or not -- but a call its client cancelled
    gets no response, so it is in flight no more."""
    cfg = {"backends": {"b": _sdk("per_session", poll_after=0.3, idle_timeout=1.0)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url, version)
        backend = gt.gw.backends["b"]
        pids = gt.call(lambda: [c.pid for c in backend.children])
        assert len(pids) == 1
        # The client leaves once it has the tool's question (sent away by poll_after; an
        # old client closes its connection, which the gateway learns only when it writes).
        body = orjson.dumps(_tool("c-2", "ask_model", question="?"))
        fields = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as s:
            s.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            got = b""
            while b"sampling/createMessage" not in got:
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
        # Still in flight: the child is busy, never reaped.
        time.sleep(1.6)
        assert gt.call(lambda: [c.pid for c in backend.children]) == pids
        assert h.post(url, json=_cancel("c-2"), headers=hdrs).status_code == 202
        assert wait_until(lambda: not gt.call(lambda: list(backend.children)), 10), "the child was never reaped"


# --- poll_after and the buffer's room ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["stdio", "sse"])
def test_poll_after_does_not_send_away_a_client_whose_answer_can_no_longer_be_resumed(kind, legacy_url):
    """Other sessions' answers fill the backend's buffer and push out the record of a
    long call still under way.  Its client must still get the response: the gateway may
    not close the stream on poll_after when a resumption could only get 400."""
    if kind == "sse":
        backend = {"transport": "sse", "url": legacy_url}
        slow = _tool("victim-1", "slow", seconds=3.0)
        big = lambda i: _tool(i, "big", size=1500)  # noqa: E731
    else:
        backend = _raw("per_session")
        slow = _tool("victim-1", "sleep", seconds=3.0)
        big = lambda i: _tool(i, "echo", pad="x" * 1500)  # noqa: E731
    # 16 KiB over all sessions, 2 KiB a session.
    cfg = {"backends": {"b": {**backend, "resume_buffer": 16384, "poll_after": 2.0}}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        victim = _open(h, url)
        others = [_open(h, url) for _ in range(12)]
        rec = gt.gw.backends["b"].replay
        reader = _Reader("POST", url, victim, slow)
        reader.start()
        assert reader.first.wait(10) and reader.status == 200
        # Twelve other sessions, an answer of about 1.7 KB each: more than the buffer.
        for i, hd in enumerate(others):
            assert h.post(url, json=big(f"big-{i}"), headers=hd).status_code == 200
        assert gt.call(lambda: all(r.rid != b'"victim-1"' for r in rec.records.values())), \
            "the others did not push the victim's record out: nothing tested"  # fmt: skip
        reader.join(15)
        assert reader.error is None, reader.error
        evs = _events(reader.text)
        got = _messages(evs)
        for _ in range(5):  # as a client would: resume until the response comes
            if any(m.get("id") == "victim-1" for m in got):
                break
            r = h.get(url, headers={**victim, "Last-Event-ID": _last_id(evs)})
            assert r.status_code == 200, f"the answer is lost: resumption answered {r.status_code} {r.text}"
            evs = _events(r.text)
            got += _messages(evs)
        assert any(m.get("id") == "victim-1" and "result" in m for m in got), got


# --- expiry -------------------------------------------------------------------------------------


def test_an_expired_answer_cannot_be_resumed_even_behind_one_still_running():
    """An answer is kept _KEEP seconds after its response, and no longer: not when no
    answer was opened since, nor when an older one still runs (an orphan whose backend
    never answers) and holds up the sweep of expired ones."""
    resp = b'{"jsonrpc":"2.0","id":2,"result":{}}'
    r = Replay(1 << 20)
    running = r.open("s", b"1")
    running.append(b'{"jsonrpc":"2.0","method":"notifications/message","params":{}}', False)
    done = r.open("s", b"2")
    done.append(resp, True)
    done.ended_at -= _KEEP + 1
    assert r.find("s", done.event_id(0)) is None
    again = r.open("s", b"3")
    again.append(resp, True)
    again.ended_at -= _KEEP + 1
    r.open("s", b"4")  # a sweep, which stops at ``running``
    assert r.find("s", again.event_id(1)) is None
    assert r.find("s", running.event_id(1)) == (running, 1)
    assert r.size == sum(x.size for x in r.records.values())


# --- what holds: isolation ------------------------------------------------------------------------


def _raw_get(port: int, path: str, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A GET with exactly these header fields (bytes, repeated or odd as given); the whole
    answer (the connection is closed after it)."""
    head = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % path.encode()
    head += b"".join(k + b": " + v + b"\r\n" for k, v in fields) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("kind", ["stdio", "sse"])
def test_no_crafted_last_event_id_reveals_another_sessions_answer_or_reaches_a_backend(kind, legacy_url, tmp_path):
    """Bob, in his own session, tries every Last-Event-ID he can make of Alice's (whose
    answer holds a secret) and of another route's: each is refused with 4xx, reveals
    nothing, takes nothing from Alice, and no backend hears of it."""
    seen = tmp_path / "seen.jsonl"
    if kind == "sse":
        a = {"transport": "sse", "url": legacy_url}
        secret_call = _tool(1, "echo", text="alice-secret-123")
    else:
        a = _raw("per_session", "--record", str(seen))
        secret_call = _tool(1, "echo", secret="alice-secret-123")
    cfg = {
        "backends": {"a": a, "b": _raw("per_session")},
        "routes": [{"path": "/a", "backends": ["a"]}, {"path": "/b", "backends": ["b"]}],
    }
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        ua, ub = gt.url("/a"), gt.url("/b")
        alice, bob, carol = _open(h, ua), _open(h, ua), _open(h, ub)
        r = h.post(ua, json=secret_call, headers=alice)
        pa = _events(r.text)[0]["id"]  # the priming event's: the whole answer after it
        assert pa.startswith("p!a~")
        r = h.post(ub, json=_tool(1, "echo", secret="carol-secret-456"), headers=carol)
        pb = _events(r.text)[0]["id"]
        rawa, rawb = pa.split("~", 1)[1], pb.split("~", 1)[1]
        key, _, idx = rawa.rpartition(".")
        lines_before = seen.read_text().count("\n") if kind == "stdio" else 0
        hostile = [
            pa, "p!b~" + rawa, "p!a~" + rawb, pb, "g!a~" + rawa, "g!a~" + rawa + "!b~" + rawb,
            "p!a~" + key + ".1", "p!a~" + key + "." + "9" * 13, "p!a~" + key + ".-1", "p!a~" + key + ".0x1",
            "p!a~" + key + ".01", "p!a~" + key, "p!a~" + key + "..1", "p!a~." + idx, "p!a~" + rawa + ".0",
            "p!a*" + __import__("base64").urlsafe_b64encode(rawa.encode() + b" ").decode().rstrip("="),
            "p!a~" + rawa + "!a~" + rawa, "p!!a~" + rawa, "p!A~" + rawa, "p!a~" + "1" * 20000,
        ]
        for lei in hostile:
            for url in (ua, ub):
                r = h.get(url, headers={**bob, "Last-Event-ID": lei})
                assert 400 <= r.status_code < 500, (lei, url, r.status_code)
                assert "secret" not in r.text, (lei, url, r.text)
        # Bytes no client library sends: non-ASCII, control characters, the field twice.
        sid = bob["Mcp-Session-Id"].encode()
        base = [(b"Accept", b"text/event-stream"), (b"Mcp-Session-Id", sid), (b"MCP-Protocol-Version", NEW.encode())]
        for fields in (
            [(b"Last-Event-ID", pa.encode() + b"\xc3\xa9")],
            [(b"Last-Event-ID", ("p!a~" + key + ".\u0661").encode())],
            [(b"Last-Event-ID", pa.encode() + b"\x01")],
            [(b"Last-Event-ID", b"p!b~x.1.1"), (b"Last-Event-ID", pa.encode())],
            [(b"Last-Event-ID", pa.encode()), (b"Last-Event-ID", pa.encode())],
        ):
            out = _raw_get(gt.port, "/a", base + fields)
            assert out.startswith(b"HTTP/1.1 4"), out[:200]
            assert b"secret" not in out
        # Alice's answer is whole and hers: she resumes it and gets the secret.
        r = h.get(ua, headers={**alice, "Last-Event-ID": pa})
        assert r.status_code == 200 and _messages(_events(r.text))[-1]["id"] == 1
        assert "alice-secret-123" in r.text
        if kind == "stdio":
            assert seen.read_text().count("\n") == lines_before, "a resumption reached the backend"


# --- what holds: bounds ---------------------------------------------------------------------------


def test_many_resumptions_of_one_answer_hold_one_reader_and_none_hangs():
    """Twenty streams resume the same answer at once: each newer one takes over (the
    older ends at once), so the gateway follows the record with one stream, every
    stream ends, and the last gets the rest to the response in order."""
    cfg = {"backends": {"b": _raw("per_session", poll_after=0.2)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url)
        r = h.post(url, json=_tool("many", "steps", n=30, gap=0.05), headers=hdrs)
        pos = _events(r.text)[0]["id"]
        readers = [_Reader("GET", url, {**hdrs, "Last-Event-ID": pos}, timeout=15) for _ in range(20)]
        for t in readers:
            t.start()
        for t in readers:
            t.join(15)
        assert not any(t.is_alive() for t in readers), "a resumed stream never ended"
        assert all(t.error is None and t.status == 200 for t in readers), [(t.status, t.error) for t in readers]
        whole = [t for t in readers if any(m.get("id") == "many" for m in _messages(_events(t.text)))]
        assert whole, "no stream got the response"
        for t in whole:
            got = _messages(_events(t.text))
            assert [m["params"]["data"] for m in got[:-1]] == [f"step {i}" for i in range(30)]
        replay = gt.gw.backends["b"].replay
        assert gt.call(lambda: [x.reader for x in replay.records.values()]) == [None]


def _connection_buffers(gt) -> list[int]:
    def sizes():
        return [c.transport.get_write_buffer_size() for c in list(gt.gw.connections) if c.transport is not None]
    return gt.call(sizes)


@pytest.mark.parametrize("mode", ["per_session", "shared"])
def test_a_resumed_stream_that_is_never_read_holds_no_more_than_its_record(mode, caplog):
    """A child streams without end; its client went away (poll_after) and resumed with a
    stream it never reads.  What the gateway holds for it stays bounded -- the record
    within its share, the connection's unsent bytes at the socket's pause mark -- while
    the child goes on, and stopping the gateway then neither hangs nor logs a
    traceback."""
    cfg = {"backends": {"b": _raw(mode, poll_after=0.2, resume_buffer=1 << 20)}}
    gt = GatewayThread(cfg).start()
    s = socket.socket()
    try:
        with httpx.Client(timeout=20) as h:
            url = gt.url("/mcp")
            hdrs = _open(h, url)
            big = _tool("endless", "steps", n=10**8, gap=0)
            r = h.post(url, json=big, headers=hdrs)
            pos = _last_id(_events(r.text))
            # The resuming client: a small receive window, and it never reads.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", gt.port))
            fields = "".join(f"{k}: {v}\r\n" for k, v in {**hdrs, "Last-Event-ID": pos}.items() if k != "Content-Type")
            s.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n".encode())
            replay = gt.gw.backends["b"].replay
            rec = gt.call(lambda: list(replay.records.values())[-1])
            # The stream follows until the sockets are full, then stops (its client takes
            # nothing) and falls behind the child, which goes on.
            assert wait_until(lambda: gt.call(lambda: rec.reader is not None and rec.reader.paused), 30), \
                gt.call(lambda: (rec.reader, rec.next))  # fmt: skip
            behind = gt.call(lambda: rec.next)
            assert wait_until(lambda: gt.call(lambda: rec.next) > behind + 20000, 20), "the child did not go on"
            assert gt.call(lambda: rec.reader.paused and rec.next - rec.reader.pos > 20000)
            assert gt.call(lambda: replay.size) <= replay.share + 4096
            assert max(_connection_buffers(gt)) < 1 << 20, _connection_buffers(gt)
    finally:
        t0 = time.monotonic()
        gt.stop()
        s.close()
    assert time.monotonic() - t0 < 12
    bad = [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("mode", ["per_session", "shared"])
def test_a_deleted_session_leaves_no_record_and_its_resumed_stream_ends(mode):
    cfg = {"backends": {"b": _raw(mode, poll_after=0.2)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        keep, gone = _open(h, url), _open(h, url)
        h.post(url, json=_tool(1, "echo", x=1), headers=keep)
        replay = gt.gw.backends["b"].replay
        kept = gt.call(lambda: replay.size)
        r = h.post(url, json=_tool(2, "steps", n=200, gap=0.02), headers=gone)
        reader = _Reader("GET", url, {**gone, "Last-Event-ID": _last_id(_events(r.text))}, timeout=15)
        reader.start()
        assert reader.first.wait(10) and reader.status == 200
        assert h.delete(url, headers=gone).status_code == 200
        reader.join(12)
        assert not reader.is_alive(), "the resumed stream of a deleted session never ended"
        # Only the other session's answer is left.
        assert wait_until(lambda: gt.call(lambda: replay.size) == kept, 10), gt.call(lambda: replay.size)
        assert gt.call(lambda: list(replay.sessions)) == [gt.call(lambda: next(iter(replay.records.values())).sid)]


# --- what holds: correctness ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stdio", "stdio-shared", "sse"])
def test_a_resumption_while_the_first_stream_is_open_gets_the_same_answer(kind, legacy_url):
    """The client resumes from the priming event while the first stream still flows:
    both streams get every message, in order, and the response; a notification of the
    same client is still answered 202, and a request of an old client, or of one that
    does not take event streams, is answered with JSON as ever."""
    if kind == "sse":
        b = {"transport": "sse", "url": legacy_url}
        call = {"jsonrpc": "2.0", "id": "two", "method": "tools/call",
                "params": {"name": "steps", "arguments": {"n": 8}, "_meta": {"progressToken": "two"}}}  # fmt: skip
        plain = _tool(3, "whoami")
    else:
        b = _raw("shared" if kind == "stdio-shared" else "per_session")
        call = _tool("two", "steps", n=8, gap=0.1)
        plain = _tool(3, "echo", x=1)
    with GatewayThread({"backends": {"b": b}}) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url)
        first = _Reader("POST", url, hdrs, call)
        first.start()
        assert wait_until(lambda: "\n\n" in first.text, 10), first.text
        pos = _events(first.text)[0]["id"]
        second = _Reader("GET", url, {**hdrs, "Last-Event-ID": pos})
        second.start()
        note = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
        assert h.post(url, json=note, headers=hdrs).status_code == 202
        first.join(15)
        second.join(15)
        a, b_ = _events(first.text), _events(second.text)
        assert [e["id"] for e in a[1:]] == [e["id"] for e in b_], (a, b_)
        assert _messages(a) == _messages(b_) and _messages(a)[-1]["id"] == "two"
        for headers in ({**hdrs, "MCP-Protocol-Version": NEW, "Accept": "application/json"}, _open(h, url, OLD)):
            r = h.post(url, json=plain, headers=headers)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json", (headers, r.text)
            assert r.json()["id"] == 3


def test_a_legacy_server_lost_while_an_answer_is_left_to_be_resumed_ends_it_with_an_error():
    with backend_process("tests/fixtures/sse_server.py", "--name", "doomed") as (proc, url0):
        cfg = {"backends": {"b": {"transport": "sse", "url": url0, "poll_after": 0.2}}}
        with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
            url = gt.url("/mcp")
            hdrs = _open(h, url)
            errors = gt.gw.metrics.errors.labels("upstream_unavailable")
            before = errors._value.get()
            r = h.post(url, json=_tool("s-1", "slow", seconds=30), headers=hdrs)
            reader = _Reader("GET", url, {**hdrs, "Last-Event-ID": _last_id(_events(r.text))}, timeout=15)
            reader.start()
            assert reader.first.wait(10) and reader.status == 200
            proc.kill()
            proc.wait(5)
            reader.join(12)
            assert not reader.is_alive() and reader.error is None, reader.error
            got = _messages(_events(reader.text))
            assert got and got[-1]["id"] == "s-1" and got[-1]["error"]["code"] == -32603, got
            assert "backend b" in got[-1]["error"]["message"]
            # Counted once, though no route saw it as a failure.
            assert errors._value.get() == before + 1


def test_the_resume_buffer_bounds_what_the_records_really_take():
    """``resume_buffer`` is in bytes: many short answers (the usual case) must not hold
    several times that, counted as Python really allocates them (each record its
    objects, each message its object and its bytes)."""
    import gc
    import tracemalloc

    budget = 1 << 20
    gc.collect()
    tracemalloc.start()
    try:
        r = Replay(budget)
        for i in range(20000):
            rec = r.open(f"s{i % 64}", b'"req-%d"' % i)
            note = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":%d,"progress":1}}' % i
            rec.append(note, False)
            resp = b'{"jsonrpc":"2.0","id":"req-%d","result":{"content":[{"type":"text","text":"ok"}]}}' % i
            rec.append(resp, True)
            del rec, note, resp
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.size <= budget
    assert held <= 1.25 * budget, f"{held} bytes held for a buffer of {budget} ({len(r.records)} answers)"


def _silent_call(kind: str, rid) -> dict:
    """A call whose backend says nothing for 30 s."""
    return _tool(rid, "slow", seconds=30) if kind == "sse" else _tool(rid, "sleep", seconds=30)


@pytest.mark.parametrize("kind", ["stdio", "stdio-shared", "sse"])
def test_an_answer_left_to_be_resumed_still_ends_at_the_response_timeout(kind, legacy_url):
    cfg = {"backends": {"b": _backend(kind, legacy_url, _raw, poll_after=0.2, response_timeout=1.5)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url)
        r = h.post(url, json=_silent_call(kind, "t-1"), headers=hdrs)
        assert not _messages(_events(r.text)), r.text  # sent away after the priming event
        r = h.get(url, headers={**hdrs, "Last-Event-ID": _last_id(_events(r.text))}, timeout=10)
        got = _messages(_events(r.text))
        assert got and got[-1]["id"] == "t-1" and got[-1]["error"]["code"] == -32603, got
        assert gt.gw.metrics.errors.labels("upstream_timeout")._value.get() == 1


@pytest.mark.parametrize("kind", ["stdio", "stdio-shared", "sse"])
def test_stopping_the_gateway_with_answers_left_to_be_resumed_and_streams_following_them(kind, legacy_url, caplog):
    cfg = {"backends": {"b": _backend(kind, legacy_url, _raw, poll_after=0.2)}}
    gt = GatewayThread(cfg).start()
    readers = []
    try:
        with httpx.Client(timeout=20) as h:
            url = gt.url("/mcp")
            for i in range(3):
                hdrs = _open(h, url)
                r = h.post(url, json=_silent_call(kind, f"x-{i}"), headers=hdrs)
                if i:  # two of them followed by a resumed stream, one left alone
                    t = _Reader("GET", url, {**hdrs, "Last-Event-ID": _last_id(_events(r.text))}, timeout=20)
                    t.start()
                    assert t.first.wait(10) and t.status == 200
                    readers.append(t)
    finally:
        t0 = time.monotonic()
        gt.stop()
    assert time.monotonic() - t0 < 12
    for t in readers:
        t.join(5)
        assert not t.is_alive()
    bad = [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    assert not bad, [r.getMessage() for r in bad]


def test_a_late_answer_to_a_cancelled_request_never_reaches_one_that_reused_its_id():
    """A child that answers a request its client cancelled (the cancellation crossed the
    answer, or the child ignores it): the id stays taken until that answer comes and is
    dropped, so a request reusing it meanwhile is refused, not answered with the old
    answer."""
    cfg = {"backends": {"b": _raw("per_session", poll_after=0.2)}}
    with GatewayThread(cfg) as gt, httpx.Client(timeout=20) as h:
        url = gt.url("/mcp")
        hdrs = _open(h, url)
        r = h.post(url, json=_tool("r", "sleep", seconds=1.0), headers=hdrs)
        assert not _messages(_events(r.text))  # sent away, recorded
        assert h.post(url, json=_cancel("r"), headers=hdrs).status_code == 202
        r = h.post(url, json=_tool("r", "echo", fresh=True), headers=hdrs)
        got = _messages(_events(r.text)) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
        assert got and got[-1]["id"] == "r" and got[-1].get("error", {}).get("code") == -32600, ("id reused", got)

        def fresh_answer() -> bool:
            r = h.post(url, json=_tool("r", "echo", fresh=True), headers=hdrs)
            if r.headers["content-type"] == "application/json":  # refused at once
                evs, msgs = [], [r.json()]
            else:
                evs = _events(r.text)
                msgs = _messages(evs)
            for _ in range(5):  # resumed to its response, as a client would
                if msgs and "id" in msgs[-1]:
                    break
                r = h.get(url, headers={**hdrs, "Last-Event-ID": _last_id(evs)})
                evs = _events(r.text)
                msgs += _messages(evs)
            last = msgs[-1]
            if "error" in last:
                assert last["error"]["code"] == -32600, last  # still taken: the old answer has not come
                return False
            assert last["result"] == {"echo": {"fresh": True}}, last  # never {"slept": true}
            return True

        assert wait_until(fresh_answer, 10)
