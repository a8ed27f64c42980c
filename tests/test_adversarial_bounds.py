"""Per-client resource bounds, tried as an attacker would: one client address holding
thousands of sockets, thousands of GET streams from one principal, half-closed streams,
pipelined bodies behind a long answer.  Each test is judged by what the backend saw
(its request counter, the connections it had closed) and by what the other clients got."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import statistics
import threading
import time

import orjson
import pytest

from gwutil import GatewayThread
from rawbackend import RawBackend, body_of, post, read_response, status_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


def _wait(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_two_pipelined_answers_in_one_read_are_both_delivered():
    """Both answers are already in the client's socket buffer when it starts reading:
    each arrives whole and in order, and nothing of the second is lost."""
    good = RawBackend("ok")
    gt = GatewayThread({"backends": {"good": {"url": good.url}}}).start()
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            s.sendall(post("/mcp", CALL) + post("/mcp", CALL.replace(b'"id":7', b'"id":8')))
            assert _wait(lambda: len(good.requests) == 2)
            # The gateway has written both answers once its connection is idle again.
            assert _wait(lambda: gt.call(lambda: all(c.active is None and not c.queue for c in gt.gw.connections)))
            time.sleep(0.05)
            r1 = read_response(s)
            r2 = read_response(s)
            assert orjson.loads(body_of(r1))["id"] == 7
            assert orjson.loads(body_of(r2))["id"] == 8
            assert status_of(r2) == 200
    finally:
        gt.stop()
        good.close()


# ---------------------------------------------------------------------------------
# A backend that holds thousands of streams in one thread.


class QuietBackend:
    """A selector-driven backend: a GET gets an SSE head and one comment, then silence
    for as long as the gateway keeps the connection; a POST gets a JSON-RPC answer
    (``initialize`` opens a session, a notification gets 202).  It counts what it
    received and sees every connection the gateway closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
        self.gets = 0
        self.posts = 0
        self.calls: list[bytes] = []  # bodies of the POSTs, in order
        self.streaming: set[socket.socket] = set()  # connections holding a GET stream
        self.open = 0
        self.closed = 0
        self.sessions = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.fileobj, key.data)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, OSError):
                return
            conn.setblocking(False)
            self.open += 1
            self._sel.register(conn, selectors.EVENT_READ, bytearray())

    def _read(self, conn: socket.socket, buf: bytearray) -> None:
        try:
            d = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            d = b""
        if not d:
            self._sel.unregister(conn)
            self.streaming.discard(conn)
            conn.close()
            self.open -= 1
            self.closed += 1
            return
        buf += d
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            n = 0
            sid = None
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
                elif k.strip().lower() == b"mcp-session-id":
                    sid = v.strip()
            if len(buf) < end + 4 + n:
                return
            body = bytes(buf[end + 4 : end + 4 + n])
            del buf[: end + 4 + n]
            self._answer(conn, head, body, sid)

    def _answer(self, conn, head: bytes, body: bytes, sid) -> None:
        if head.startswith(b"GET "):
            self.gets += 1
            self.streaming.add(conn)
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\n: ok\n\r\n")  # fmt: skip
            return
        self.posts += 1
        self.calls.append(body)
        msg = orjson.loads(body) if body else {}
        if "id" not in msg:
            conn.send(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            return
        extra = b""
        if msg.get("method") == "initialize":
            self.sessions += 1
            extra = b"Mcp-Session-Id: q%d\r\n" % self.sessions
            out = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "quiet", "version": "1"}}})  # fmt: skip
        else:
            out = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"ok": True}})
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                  % (extra, len(out), out))  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()


@pytest.fixture
def quiet():
    b = QuietBackend()
    yield b
    b.close()


@pytest.fixture(scope="module", autouse=True)
def _files():
    """Room for thousands of sockets on both ends (the gateway runs in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _connect_many(n: int, port: int, source: str) -> list[socket.socket]:
    """``n`` connections from ``source`` (a loopback address other than 127.0.0.1)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


def _timed_call(port: int, rid: int, extra: bytes = b"", source: str = "127.0.0.1") -> tuple[bytes, float]:
    body = CALL.replace(b'"id":7', b'"id":%d' % rid)
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(post("/mcp", body, extra))
        resp = read_response(s)
    return resp, time.perf_counter() - t


def _figure(name: str, text: str) -> None:
    """Figures for the record (measured, never asserted): printed, and kept beside the
    test run when MCPFAST_FIGURES names a file."""
    line = f"{name}: {text}"
    print(line)
    path = os.environ.get("MCPFAST_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs) * 1e3:.2f} ms, max {xs[-1] * 1e3:.2f} ms over {len(xs)} calls"


def test_one_address_with_thousands_of_idle_sockets_leaves_room_for_others(quiet):
    """2,000 idle sockets from 127.0.0.2 against a gateway that takes 1,000 connections:
    that address gets its 256 and no more, refused cheaply, and a client on 127.0.0.1
    keeps getting its answers from the backend."""
    gt = GatewayThread({"backends": {"q": {"url": quiet.url}}, "limits": {"max_connections": 1000}}).start()
    socks: list[socket.socket] = []
    try:
        _, warm = _timed_call(gt.port, 1)
        lat = []
        for i in range(4):
            socks += _connect_many(500, gt.port, "127.0.0.2")
            for j in range(5):
                resp, dt = _timed_call(gt.port, 100 + 10 * i + j)
                assert status_of(resp) == 200, resp
                lat.append(dt)
        held = gt.call(lambda: gt.gw.quota.connections.get("127.0.0.2", 0))
        assert held == 256
        # The refused sockets were told so and closed: a 503 with a JSON-RPC body.
        time.sleep(0.3)
        refused = 0
        for s in socks:
            try:
                d = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                refused += 1
                continue
            if d.startswith(b"HTTP/1.1 503 "):
                assert orjson.loads(body_of(d))["error"]["code"] == -32000
                refused += 1
        assert refused >= 2000 - 256
        # Another address is a client of its own.
        resp, _ = _timed_call(gt.port, 999, source="127.0.0.3")
        assert status_of(resp) == 200
        # The backend saw exactly the good clients' calls, all of them.
        ids = sorted(orjson.loads(b)["id"] for b in quiet.calls)
        assert ids == sorted([1, 999] + [100 + 10 * i + j for i in range(4) for j in range(5)])
        _figure("idle sockets (2,000 from one address)",
                f"good client latency {_ms(lat)} (first call {warm * 1e3:.2f} ms before the attack)")  # fmt: skip
    finally:
        for s in socks:
            s.close()
        gt.stop()
