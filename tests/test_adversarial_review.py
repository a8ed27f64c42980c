"""A second look at the security bounds, as an attacker: each test is a way around a
bound that the first round of fixes left open.  Judged by what the backend received
and what the clients got back."""

from __future__ import annotations

import socket
import struct
import threading
import time

import orjson

from gwutil import GatewayThread, wait_until as _wait
from rawbackend import read_request, post, read_response, status_of, body_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'
# The smallest request the gateway answers by itself (no route at this path).
TINY = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"




class GatedBackend:
    """Answers each request only once ``go`` is set; counts what it received."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
        self.go = threading.Event()
        self.stop = threading.Event()
        self.requests: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            while not self.stop.is_set():
                try:
                    r = read_request(c)
                except OSError:
                    return
                if r is None:
                    return
                self.requests.append(r)
                self.go.wait(20)
                rid = orjson.loads(r[1]).get("id") if r[1] else None
                b = orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {}})
                try:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        self.sock.close()


def _read_answers(s: socket.socket, n: int, timeout: float = 15.0) -> list[bytes]:
    s.settimeout(timeout)
    out = []
    while len(out) < n:
        r = read_response(s)
        if not r:
            break
        out.append(r)
    return out


def _pipeline(port: int, n_tiny: int) -> socket.socket:
    """One call that the backend holds, and ``n_tiny`` requests pipelined behind it, in one
    write (a thread sends: the gateway may stop reading before it has everything)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    data = post("/mcp", CALL) + TINY * n_tiny
    threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
    return s


def test_many_pipelined_requests_answered_by_the_gateway_are_all_answered():
    """Thousands of requests the gateway answers itself, pipelined behind one held call:
    when the call ends they are answered one after the other, in order, and the
    connection stays usable -- none is lost to an error in the gateway, and the gateway
    keeps serving the connection and others."""
    gated = GatedBackend()
    gt = GatewayThread({"backends": {"b": {"url": gated.url}}}).start()
    n = 3000
    try:
        s = _pipeline(gt.port, n)
        assert _wait(lambda: len(gated.requests) == 1)
        time.sleep(0.3)  # everything the gateway is going to read of the pipeline is read
        gated.go.set()
        got = _read_answers(s, n + 1)
        assert len(got) == n + 1
        assert status_of(got[0]) == 200 and orjson.loads(body_of(got[0]))["id"] == 7
        assert all(status_of(r) == 404 for r in got[1:])
        # The same connection carries one more call, which reaches the backend.
        s.sendall(post("/mcp", CALL.replace(b'"id":7', b'"id":9')))
        r = read_response(s)
        assert status_of(r) == 200 and orjson.loads(body_of(r))["id"] == 9
        assert len(gated.requests) == 2
        s.close()
        assert _wait(lambda: gt.call(lambda: len(gt.gw.connections)) == 0)
    finally:
        gt.stop()
        gated.close()


def test_one_read_of_tiny_pipelined_requests_is_not_all_queued():
    """While one answer is pending, the gateway holds at most a few queued requests per
    connection, even when a single read brings thousands of them: what is beyond is kept
    as unread bytes, not as thousands of parsed requests (each costs far more memory
    than its 30 bytes on the wire).  Everything is still answered once the call ends."""
    gated = GatedBackend()
    gt = GatewayThread({"backends": {"b": {"url": gated.url}}}).start()
    n = 6000
    try:
        s = _pipeline(gt.port, n)
        assert _wait(lambda: len(gated.requests) == 1)
        time.sleep(0.3)
        queued = gt.call(lambda: max((len(c.queue) for c in gt.gw.connections), default=0))
        # One read of up to 256 KiB would be ~8,000 of them.
        assert queued <= 1024, queued
        gated.go.set()
        got = _read_answers(s, n + 1)
        assert len(got) == n + 1
        assert [status_of(r) for r in got[1:]] == [404] * n
        assert len(gated.requests) == 1
        s.close()
    finally:
        gt.stop()
        gated.close()


def test_backend_url_credentials_are_refused_without_being_echoed(tmp_path):
    """A backend URL with a user and password: the gateway never sends them (backends get
    ``headers`` or ``bearer_token``), so the file is refused with one line naming the key
    -- and neither that line nor any other configuration error shows the password or a
    query value of the URL."""
    from click.testing import CliRunner

    from mcpfast.cli import main

    cases = {
        "http://user:PASSSECRET@127.0.0.1:1/mcp?key=QSECRET": "backends.a.url",
        "https://user:PASSSECRET@127.0.0.1:1/mcp?key=QSECRET": "backends.a.url",
        "http://user:PASSSECRET@127.0.0.1:notaport/mcp?key=QSECRET": "backends.a.url",
        "http://:PASSSECRET@/mcp?key=QSECRET": "backends.a.url",
    }
    for url, key in cases.items():
        f = tmp_path / "gw.toml"
        f.write_text(f'[backends.a]\nurl = "{url}"\n')
        r = CliRunner().invoke(main, ["check-config", str(f)])
        assert r.exit_code == 2, (url, r.output)
        assert key in r.output
        assert "PASSSECRET" not in r.output and "QSECRET" not in r.output, r.output


def _session(port: int) -> bytes:
    init = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(post("/mcp", init))
        r = read_response(s)
    for line in r.split(b"\r\n\r\n")[0].split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"mcp-session-id":
            return v.strip()
    raise AssertionError(r)


def test_clients_that_stop_reading_do_not_hold_backend_connections_forever():
    """Two clients ask for a large answer and never read it, on a backend with two request
    connections: once their answers have stalled for ``timeouts.client_write`` the gateway
    drops them, and with them the backend connections they pinned, so a third client's
    call reaches the backend and is answered."""
    from rawbackend import RawBackend

    be = RawBackend("mux")
    gt = GatewayThread({
        "backends": {"b": {"url": be.url, "max_connections": 2, "response_timeout": 30}},
        "timeouts": {"client_write": 1.0},
    }).start()  # fmt: skip
    try:
        sid = _session(gt.port)
        extra = b"Mcp-Session-Id: %s\r\nMCP-Protocol-Version: 2025-06-18\r\n" % sid
        big = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"big","arguments":{"size":40000000}}}'
        stalled = []
        for _ in range(2):
            c = socket.create_connection(("127.0.0.1", gt.port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(post("/mcp", big, extra))
            stalled.append(c)
        assert _wait(lambda: len(be.requests) == 3)
        time.sleep(0.5)
        n = len(be.requests)
        with socket.create_connection(("127.0.0.1", gt.port), timeout=15) as c:
            c.sendall(post("/mcp", b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"n"}}', extra))
            r = read_response(c)
        assert status_of(r) == 200, r[:200]
        assert orjson.loads(body_of(r))["id"] == 4
        assert len(be.requests) == n + 1
        # The stalled clients were cut (the gateway holds no connection of theirs) while
        # they are still open on their side; the backend did not send all of them.
        assert _wait(lambda: gt.call(lambda: len(gt.gw.connections)) == 0, 5)
        assert be.bytes_sent < 2 * 40000000
        for c in stalled:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
    finally:
        gt.stop()
        be.stop.set()
        be.sock.close()


def test_requests_abandoned_while_waiting_for_a_backend_connection_are_let_go():
    """A backend whose only request connection is busy: thousands of clients send a call
    and leave at once.  Their waits are dropped from the pool's queue when they leave
    (nothing of theirs is kept until a connection frees), and when the busy call ends,
    a live client's call is served -- the abandoned waits are not walked one inside the
    other."""
    gated = GatedBackend()
    gt = GatewayThread({"backends": {"b": {"url": gated.url, "max_connections": 1, "response_timeout": 30}}}).start()
    try:
        first = socket.create_connection(("127.0.0.1", gt.port), timeout=15)
        first.sendall(post("/mcp", CALL))
        assert _wait(lambda: len(gated.requests) == 1)
        for i in range(3000):
            with socket.create_connection(("127.0.0.1", gt.port)) as c:
                c.sendall(post("/mcp", CALL))
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert _wait(lambda: gt.call(lambda: len(gt.gw.connections)) == 1)
        waiting = gt.call(lambda: len(gt.gw.pools["b"]._waiters))
        assert waiting == 0, waiting
        live = socket.create_connection(("127.0.0.1", gt.port), timeout=15)
        live.sendall(post("/mcp", CALL.replace(b'"id":7', b'"id":8')))
        time.sleep(0.2)
        gated.go.set()
        assert orjson.loads(body_of(read_response(first)))["id"] == 7
        r = read_response(live)
        assert status_of(r) == 200 and orjson.loads(body_of(r))["id"] == 8
        assert len(gated.requests) == 2
        first.close()
        live.close()
    finally:
        gt.stop()
        gated.close()


def test_a_client_cannot_override_the_query_parameters_of_the_backend_url():
    """The operator pins ``tenant=acme`` in the backend URL.  A client that adds its own
    ``tenant`` (plainly or percent-encoded) to the request target does not reach the
    backend with it -- many frameworks take the last of repeated parameters -- while its
    other parameters pass."""
    from urllib.parse import parse_qsl, urlsplit

    from rawbackend import RawBackend

    be = RawBackend("ok")
    gt = GatewayThread({"backends": {"b": {"url": be.url + "?tenant=acme&v=1"}}}).start()
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as c:
            c.sendall(post("/mcp", CALL))  # no query of its own: the backend URL's is sent as it is
            assert status_of(read_response(c)) == 200
        assert be.requests[-1][0].split(b"\r\n")[0].split(b" ")[1] == b"/mcp?tenant=acme&v=1"
        for query in (b"tenant=globex&x=1", b"x=1&ten%61nt=globex", b"x=1&tenant", b"x=1&+tenant=globex&tenant+=globex"):
            with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as c:
                c.sendall(post("/mcp?" + query.decode(), CALL))
                assert status_of(read_response(c)) == 200
            target = be.requests[-1][0].split(b"\r\n")[0].split(b" ")[1].decode()
            params = parse_qsl(urlsplit(target).query, keep_blank_values=True)
            names = [k for k, _ in params]
            assert names.count("tenant") == 1 and ("tenant", "acme") in params, (query, target)
            assert ("x", "1") in params and ("v", "1") in params, (query, target)
    finally:
        gt.stop()
        be.close()
