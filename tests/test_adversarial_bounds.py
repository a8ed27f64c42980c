"""Per-client resource bounds, tried as an attacker would: one client address holding
thousands of sockets, thousands of GET streams from one principal, half-closed streams,
pipelined bodies behind a long answer.  Each test is judged by what the backend saw
(its request counter, the connections it had closed) and by what the other clients got."""

from __future__ import annotations

import hashlib
import os
import resource
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

import orjson
import pytest

from gwutil import ROOT, GatewayThread, free_port, wait_until as _wait
from mcpfast.config import ConfigError, build_config
from rawbackend import RawBackend, body_of, post, read_response, status_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'




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


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _get(path: str = "/mcp", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n" % (path.encode(), extra)


def _open_streams(port: int, n: int, extra: bytes, source: str) -> tuple[list[socket.socket], list[bytes]]:
    """``n`` GET streams, each on its own connection; returns the sockets and what each
    got first (an SSE head, or a refusal)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        s.sendall(_get(extra=extra))
        socks.append(s)
    firsts = []
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        firsts.append(buf)
    return socks, firsts


def test_thousands_of_get_streams_from_one_principal(quiet):
    """One API key opens 1,000 GET streams: it gets max_streams_per_principal of them and
    429s for the rest, without the backend seeing them; another principal still opens its
    stream and its calls are answered."""
    policy = {
        "auth": {"mode": "required", "api_keys": {"keys": [
            {"sha256": _sha("k-mallory"), "subject": "mallory"}, {"sha256": _sha("k-alice"), "subject": "alice"}]}},
        "authz": {"default": "allow"},
        "audit": {"sink": "off"},
    }  # fmt: skip
    gt = GatewayThread(
        {"backends": {"q": {"url": quiet.url}}, "limits": {"max_connections_per_address": 5000}, **policy}
    ).start()
    socks: list[socket.socket] = []
    try:
        t = time.perf_counter()
        socks, firsts = _open_streams(gt.port, 1000, b"X-API-Key: k-mallory\r\n", "127.0.0.2")
        opened = time.perf_counter() - t
        ok = [f for f in firsts if f.startswith(b"HTTP/1.1 200 ")]
        refused = [f for f in firsts if f.startswith(b"HTTP/1.1 429 ")]
        assert len(ok) == 128 and len(refused) == 1000 - 128
        assert _wait(lambda: quiet.gets == 128)
        err = orjson.loads(body_of(refused[0]))
        assert err["error"]["code"] == -32000 and "streams" in err["error"]["message"]
        # Alice is not mallory: her stream opens, her calls are answered.
        a_socks, a_firsts = _open_streams(gt.port, 1, b"X-API-Key: k-alice\r\n", "127.0.0.1")
        socks += a_socks
        assert a_firsts[0].startswith(b"HTTP/1.1 200 ")
        lat = []
        for i in range(20):
            resp, dt = _timed_call(gt.port, 500 + i, b"X-API-Key: k-alice\r\n")
            assert status_of(resp) == 200 and orjson.loads(body_of(resp))["id"] == 500 + i
            lat.append(dt)
        assert _wait(lambda: quiet.gets == 129)
        assert quiet.posts == 20
        _figure("GET streams (1,000 from one principal)",
                f"opened or refused in {opened:.2f} s; other principal's calls {_ms(lat)}")  # fmt: skip
    finally:
        for s in socks:
            s.close()
        gt.stop()


def test_streams_per_session_and_per_address_without_credentials(quiet):
    """Without authentication a client is its address: 200 GETs from one address open
    max_streams_per_address; and one session id holds max_streams_per_session."""
    gt = GatewayThread({"backends": {"q": {"url": quiet.url}}}).start()
    socks: list[socket.socket] = []
    try:
        s1, f1 = _open_streams(gt.port, 10, b"Mcp-Session-Id: s-one\r\n", "127.0.0.4")
        socks += s1
        assert [f[:13] for f in f1] == [b"HTTP/1.1 200 "] * 4 + [b"HTTP/1.1 429 "] * 6
        assert _wait(lambda: quiet.gets == 4)
        s2, f2 = _open_streams(gt.port, 200, b"", "127.0.0.2")
        socks += s2
        assert sum(f.startswith(b"HTTP/1.1 200 ") for f in f2) == 64
        assert sum(f.startswith(b"HTTP/1.1 429 ") for f in f2) == 200 - 64
        assert _wait(lambda: quiet.gets == 4 + 64)
        # Another address is not limited by them.
        s3, f3 = _open_streams(gt.port, 3, b"", "127.0.0.3")
        socks += s3
        assert all(f.startswith(b"HTTP/1.1 200 ") for f in f3)
        assert _wait(lambda: quiet.gets == 4 + 64 + 3)
        # Streams that end give their places back.
        for s in s2:
            s.close()
        assert _wait(lambda: gt.call(lambda: gt.gw.quota.streams.get(("a", "127.0.0.2"), 0)) == 0)
        s4, f4 = _open_streams(gt.port, 2, b"", "127.0.0.2")
        socks += s4
        assert all(f.startswith(b"HTTP/1.1 200 ") for f in f4)
    finally:
        for s in socks:
            s.close()
        gt.stop()


def test_streams_have_their_own_backend_budget(quiet):
    """A backend with max_streams = 8 and max_connections = 2: twelve streams from three
    addresses get eight streams and four 503s, and calls are still answered -- the
    streams hold no request connection."""
    gt = GatewayThread({"backends": {"q": {"url": quiet.url, "max_streams": 8, "max_connections": 2}}}).start()
    socks: list[socket.socket] = []
    try:
        firsts = []
        for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            s, f = _open_streams(gt.port, 4, b"", src)
            socks += s
            firsts += f
        assert sum(f.startswith(b"HTTP/1.1 200 ") for f in firsts) == 8
        busy = [f for f in firsts if f.startswith(b"HTTP/1.1 503 ")]
        assert len(busy) == 4
        assert "max_streams" in orjson.loads(body_of(busy[0]))["error"]["message"]
        assert _wait(lambda: quiet.gets == 8)
        lat = []
        for i in range(20):
            resp, dt = _timed_call(gt.port, 700 + i)
            assert status_of(resp) == 200 and orjson.loads(body_of(resp))["id"] == 700 + i
            lat.append(dt)
        assert quiet.posts == 20
        pool = gt.gw.pools["q"]
        assert gt.call(lambda: (pool._streams, pool.open_connections - pool._streams)) == (8, 1)
        _figure("backend stream budget spent (8 streams open)", f"calls {_ms(lat)}")
    finally:
        for s in socks:
            s.close()
        gt.stop()


def test_half_closed_get_stream_frees_its_backend_connection(quiet):
    """A client that half-closes its GET stream: the backend sees that stream's
    connection closed at once (it never writes again), and the client's closes too."""
    gt = GatewayThread({"backends": {"q": {"url": quiet.url}}}).start()
    try:
        socks, firsts = _open_streams(gt.port, 3, b"", "127.0.0.1")
        assert all(f.startswith(b"HTTP/1.1 200 ") for f in firsts)
        assert _wait(lambda: len(quiet.streaming) == 3)
        socks[0].shutdown(socket.SHUT_WR)
        assert _wait(lambda: len(quiet.streaming) == 2, 3.0)
        assert quiet.closed == 1
        socks[0].settimeout(3)
        while socks[0].recv(65536):
            pass  # the gateway closes its side too
        pool = gt.gw.pools["q"]
        assert gt.call(lambda: pool._streams) == 2
        # The others stream on; a call is answered.
        resp, _ = _timed_call(gt.port, 5)
        assert status_of(resp) == 200
        assert len(quiet.streaming) == 2
        # With a request pipelined behind the stream the gateway has stopped reading
        # that socket; the FIN still ends the stream (found by the once-a-second tick).
        socks[1].sendall(post("/mcp", CALL))
        time.sleep(0.1)
        socks[1].shutdown(socket.SHUT_WR)
        assert _wait(lambda: len(quiet.streaming) == 1, 3.0)
        assert quiet.posts == 1  # the pipelined call was never sent: its connection ended
        for s in socks:
            s.close()
    finally:
        gt.stop()


def _initialize(port: int, path: str) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(post(path, body))
        resp = read_response(s)
    assert status_of(resp) == 200, resp
    for line in resp.split(b"\r\n\r\n")[0].split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"mcp-session-id":
            return v.strip()
    raise AssertionError(resp)


def test_half_closed_multiplexed_get_stream_frees_every_backend_connection():
    """The same on a multiplexed route: the merged stream's legs to both backends end."""
    a, b = QuietBackend(), QuietBackend()
    gt = GatewayThread({
        "backends": {"a": {"url": a.url}, "b": {"url": b.url}},
        "routes": [{"path": "/mcp", "backends": ["a", "b"]}],
    }).start()  # fmt: skip
    try:
        sid = _initialize(gt.port, "/mcp")
        extra = b"Mcp-Session-Id: %s\r\nMCP-Protocol-Version: 2025-06-18\r\n" % sid
        socks, firsts = _open_streams(gt.port, 1, extra, "127.0.0.1")
        assert firsts[0].startswith(b"HTTP/1.1 200 "), firsts
        assert _wait(lambda: len(a.streaming) == 1 and len(b.streaming) == 1)
        socks[0].shutdown(socket.SHUT_WR)
        assert _wait(lambda: not a.streaming and not b.streaming, 3.0)
        assert gt.call(lambda: (gt.gw.pools["a"]._streams, gt.gw.pools["b"]._streams)) == (0, 0)
        socks[0].close()
    finally:
        gt.stop()
        a.close()
        b.close()


def _big_call(rid: int, size: int) -> bytes:
    pad = b"x" * (size - 120)
    return b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"pad":"%s"}}}' % (rid, pad)


def _pin(port: int, conns: int, bodies: int, size: int) -> list[socket.socket]:
    """``conns`` connections, each a GET stream followed by ``bodies`` pipelined POSTs of
    ``size`` bytes, written as far as the gateway (and the kernel) take them."""
    socks = []
    pending = []
    for c in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        data = _get() + b"".join(post("/mcp", _big_call(1000 * c + i, size)) for i in range(bodies))
        s.setblocking(False)
        socks.append(s)
        pending.append(memoryview(data))
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.5:
        moved = False
        for i, s in enumerate(socks):
            if pending[i]:
                try:
                    n = s.send(pending[i][:1 << 20])
                except BlockingIOError:
                    continue
                pending[i] = pending[i][n:]
                moved = True
        if moved:
            quiet_since = time.monotonic()
        else:
            time.sleep(0.01)
    return socks


def _buffered(gw) -> list[int]:
    """Request bytes each client connection holds for requests not yet started: the
    distinct buffers behind their body pieces (a view keeps its whole read alive)."""
    out = []
    for c in gw.connections:
        seen: dict[int, int] = {}
        waiting = list(c.queue) + ([c.reading] if c.reading is not None else [])
        for ex in waiting:
            for piece in ex.chunks:
                base = piece.obj if isinstance(piece, memoryview) else piece
                seen[id(base)] = len(base)
        out.append(sum(seen.values()))
    return out


def test_pipelined_bodies_behind_a_stream_are_not_buffered(quiet):
    """Ten connections each open a GET stream and pipeline six 1 MiB requests behind it.
    Each holds at most one request beyond the stream (the limit plus the rest of one
    read), the backend sees none of them, and another client is served meanwhile."""
    size = 1 << 20
    gt = GatewayThread({"backends": {"q": {"url": quiet.url}}, "limits": {"max_body_bytes": size}}).start()
    socks: list[socket.socket] = []
    try:
        socks = _pin(gt.port, 10, 6, size)
        assert _wait(lambda: quiet.gets == 10)
        held = gt.call(lambda: _buffered(gt.gw))
        bound = size + 512 * 1024
        assert len(held) == 10 and max(held) <= bound, held
        assert quiet.posts == 0  # all of them wait behind the streams
        lat = []
        for i in range(20):
            resp, dt = _timed_call(gt.port, 900 + i)
            assert status_of(resp) == 200 and orjson.loads(body_of(resp))["id"] == 900 + i
            lat.append(dt)
        assert quiet.posts == 20
        _figure("pipelined 1 MiB bodies behind streams (10 connections x 6)",
                f"held per connection max {max(held) / 2**20:.2f} MiB, total {sum(held) / 2**20:.1f} MiB "
                f"(bound {bound / 2**20:.2f} MiB each); other client {_ms(lat)}")  # fmt: skip
        # The clients leave (unread answers: their kernels reset the connections).  The
        # gateway reads none of these sockets, yet lets go of them, their streams and the
        # bodies they held, and the backend sees its streams closed.
        for s in socks:
            s.close()
        socks = []
        assert _wait(lambda: gt.call(lambda: len(gt.gw.connections)) == 0, 5.0)
        assert _wait(lambda: not quiet.streaming)
        assert gt.call(lambda: (gt.gw.quota.connections, gt.gw.quota.streams, gt.gw.pools["q"]._streams)) == ({}, {}, 0)
        assert quiet.posts == 20
    finally:
        for s in socks:
            s.close()
        gt.stop()


def _rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out




def test_gateway_memory_with_pinned_pipelined_bodies(quiet, tmp_path):
    """A gateway process with the default 4 MiB body limit; 20 connections each pipeline
    eight 4 MiB requests behind a GET stream.  Its resident memory grows by about one
    body per connection, not eight, and the other client is served."""
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[log]\naccess_log = "off"\nlevel = "error"\n'
        f'[backends.q]\nurl = "{quiet.url}"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "mcpfast", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    socks: list[socket.socket] = []
    try:
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert _wait(up, 20)
        _timed_call(port, 1)
        before = _rss_kib(proc.pid)["VmRSS"]
        size = 4 << 20
        socks = _pin(port, 20, 8, size)
        assert _wait(lambda: quiet.gets == 20)
        lat = [_timed_call(port, 900 + i)[1] for i in range(20)]
        assert quiet.posts == 21
        pinned = _rss_kib(proc.pid)
        for s in socks:
            s.close()
        socks = []
        time.sleep(1.5)
        after = _rss_kib(proc.pid)["VmRSS"]
        grew = (pinned["VmHWM"] - before) / 1024
        # Eight bodies per connection would be 640 MiB; one is 80 MiB.
        assert grew < 20 * (size + (1 << 20)) / 2**20 + 64, grew
        _figure("gateway RSS, 20 connections x 8 pipelined 4 MiB bodies behind streams",
                f"before {before / 1024:.0f} MiB, peak +{grew:.0f} MiB, after close {after / 1024:.0f} MiB; "
                f"other client {_ms(lat)}")  # fmt: skip
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_answer_deadline_holds_with_a_request_waiting_behind_it():
    """A request pipelined behind an answer that never comes: the answer still times out
    (504) on time, and the waiting request is served after it."""
    silent, good = RawBackend("silent"), RawBackend("ok")
    gt = GatewayThread({"backends": {"silent": {"url": silent.url, "response_timeout": 1},
                                     "good": {"url": good.url}}}).start()  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=8) as s:
            s.sendall(post("/mcp/silent", CALL) + post("/mcp/good", CALL.replace(b'"id":7', b'"id":8')))
            r1 = read_response(s)
            r2 = read_response(s)
        assert status_of(r1) == 504 and orjson.loads(body_of(r1))["id"] == 7
        assert status_of(r2) == 200 and orjson.loads(body_of(r2))["id"] == 8
        assert len(good.requests) == 1 and len(silent.requests) == 1
    finally:
        gt.stop()
        silent.close()
        good.close()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"limits": {"max_connections_per_address": 0}}, "limits.max_connections_per_address"),
        ({"limits": {"max_streams_per_principal": -1}}, "limits.max_streams_per_principal"),
        ({"limits": {"max_streams_per_address": "64"}}, "limits.max_streams_per_address"),
        ({"limits": {"max_streams_per_session": 1.5}}, "limits.max_streams_per_session"),
        ({"backends": {"b": {"url": "http://127.0.0.1:1/mcp", "max_connections": 0}}}, "backends.b.max_connections"),
        ({"backends": {"b": {"url": "http://127.0.0.1:1/mcp", "max_streams": True}}}, "backends.b.max_streams"),
    ],
)
def test_bounds_are_validated_by_key(raw, key):
    raw = {"backends": {"b": {"url": "http://127.0.0.1:1/mcp"}}, **raw}
    with pytest.raises(ConfigError) as exc:
        build_config(raw)
    assert exc.value.key == key


def test_bounds_defaults():
    cfg = build_config({"backends": {"b": {"url": "http://127.0.0.1:1/mcp"}}})
    lim, b = cfg.limits, cfg.backends[0]
    assert (lim.max_connections_per_address, lim.max_streams_per_principal, lim.max_streams_per_address,
            lim.max_streams_per_session) == (256, 128, 64, 4)  # fmt: skip
    assert (b.max_connections, b.max_streams) == (1024, 1024)


def test_requests_waiting_for_a_busy_backend_let_go_of_their_bodies_when_clients_leave():
    """A backend whose one request connection is held by a silent call: twenty 1 MiB
    requests queue for it, and their clients leave.  The gateway keeps none of their
    bodies while the queue drains, and none of them reaches the backend."""
    silent = RawBackend("silent")
    gt = GatewayThread({"backends": {"s": {"url": silent.url, "max_connections": 1}}}).start()
    socks = []
    try:
        first = socket.create_connection(("127.0.0.1", gt.port), timeout=5)
        first.sendall(post("/mcp", CALL))
        socks.append(first)
        assert _wait(lambda: len(silent.requests) == 1)
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", gt.port), timeout=5)
            s.sendall(post("/mcp", _big_call(100 + i, 1 << 20)))
            socks.append(s)
        pool = gt.gw.pools["s"]
        assert _wait(lambda: gt.call(lambda: len(pool._waiters)) == 20)
        for s in socks[1:]:
            # Gone for good (a reset), not a half-close that still waits for its answer.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        assert _wait(lambda: gt.call(lambda: len(gt.gw.connections)) == 1)

        def held() -> int:
            return sum(len(cb.__self__.body) for cb in pool._waiters)

        assert gt.call(held) == 0
        assert len(silent.requests) == 1
    finally:
        for s in socks:
            s.close()
        gt.stop()
        silent.close()


def test_a_connection_that_carried_a_finished_stream_serves_requests_again():
    """A GET answered and finished goes back to the pool as a request connection: with
    one connection for each budget, a GET then three calls use one backend connection,
    and nothing stays counted as a stream."""
    good = RawBackend("ok")
    gt = GatewayThread({"backends": {"good": {"url": good.url, "max_connections": 1, "max_streams": 1}}}).start()
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            s.sendall(_get())
            assert status_of(read_response(s)) == 200
            for i in range(3):
                s.sendall(post("/mcp", CALL.replace(b'"id":7', b'"id":%d' % (20 + i))))
                assert orjson.loads(body_of(read_response(s)))["id"] == 20 + i
        pool = gt.gw.pools["good"]
        assert gt.call(lambda: (pool._streams, pool.open_connections)) == (0, 1)
        assert good.accepted == 1 and len(good.requests) == 4
        assert good.requests[0][0].startswith(b"GET ")
    finally:
        gt.stop()
        good.close()
