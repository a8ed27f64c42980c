"""A hostile backend cannot make the gateway hand one exchange's bytes to another.

The backend answers each request the way its ``X-Mode`` field says: with extra bytes
after a complete response, with two responses to one request, with a response before
the request has been written in full, or with a response long after the exchange
ended.  Whatever it does, the upstream connection it did it on is closed, the exchange
that owned the connection keeps its own complete answer, and a second client served by
the same backend gets its own answer -- never the bytes meant to leak (``STOLEN``).

The backend's pool is held to one connection here, so the second client is always
waiting for exactly the connection the hostile answer came on: the moment a connection
is handed over is the moment that matters.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time

import orjson
import pytest

from gwutil import GatewayThread, wait_until as _wait
from mcpfast.wire.core import ProtocolError, RequestParser
from test_adversarial_heads import read_answers

STOLEN = b'{"jsonrpc":"2.0","id":1,"result":{"m":"STOLEN"}}'
BIG = 24 * 1024 * 1024


def _response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _answer_to(body: bytes) -> bytes:
    msg = orjson.loads(body)
    return _response(orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"m": msg["params"]["arguments"]["m"]}}))


class _Conn:
    """One backend connection: its requests, as the strict parser reads them."""

    def __init__(self, backend: "HostileBackend", sock: socket.socket) -> None:
        self.backend = backend
        self.sock = sock
        self.head = None
        self.body: list = []
        self.closed = False  # the gateway closed it
        self.requests = 0

    def on_request(self, head) -> None:
        self.head = head
        self.body = []
        self.requests += 1
        if self._mode() == b"early":
            # Answer from the head alone, then stop reading for a while: the gateway is
            # still writing the body when this answer arrives.
            self.sock.sendall(_response(b'{"jsonrpc":"2.0","id":1,"result":{"m":"early"}}'))
            time.sleep(0.3)

    def on_body(self, chunk) -> None:
        self.body.append(bytes(chunk))

    def on_request_end(self, trailers) -> None:
        mode = self._mode()
        body = b"".join(self.body)
        if mode == b"early":
            self.sock.sendall(_response(STOLEN))  # a second answer, once the body is in
        elif mode == b"two":
            time.sleep(0.3)  # the next client is waiting for this connection by now
            self.sock.sendall(_answer_to(body) + _response(STOLEN))
        elif mode == b"trailing":
            time.sleep(0.3)
            self.sock.sendall(_answer_to(body) + b"HTTP/1.1 200 OK\r\nContent-Length: 4")
        elif mode == b"late":
            self.sock.sendall(_answer_to(body))
            time.sleep(0.2)  # the connection is idle in the pool by now
            self.sock.sendall(_response(STOLEN))
        elif mode == b"split":
            # The answer, then in a second write a response nobody asked for.
            self.sock.sendall(_answer_to(body))
            time.sleep(0.02)
            self.sock.sendall(_response(STOLEN))
        else:
            self.sock.sendall(_answer_to(body))

    def _mode(self) -> bytes | None:
        for k, v in self.head.headers:
            if k.lower() == b"x-mode":
                return v
        return None


class HostileBackend:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
        self.conns: list[_Conn] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            c = _Conn(self, s)
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: _Conn) -> None:
        parser = RequestParser(c, max_body_bytes=BIG * 2)
        try:
            with c.sock:
                while not self.stop.is_set():
                    data = c.sock.recv(1 << 20)
                    if not data:
                        break
                    parser.feed(data)
        except (OSError, ProtocolError):
            pass
        c.closed = True

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def hostile():
    b = HostileBackend()
    # One upstream connection at most: a second request waits for the first one's.
    cfg = {"backends": {"evil": {"url": b.url, "response_timeout": 5.0, "max_connections": 1}},
           "limits": {"max_body_bytes": BIG * 2}}  # fmt: skip
    try:
        with GatewayThread(cfg) as gt:
            yield gt, b
    finally:
        b.close()


def _post(marker: str, mode: str | None = None, pad: int = 0) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "echo", "arguments": {"m": marker, "pad": "x" * pad}}})  # fmt: skip
    extra = b"X-Mode: %s\r\n" % mode.encode() if mode else b""
    return (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body))  # fmt: skip


class _Client:
    """A client in its own thread: sends one request, keeps everything it receives."""

    def __init__(self, port: int, raw: bytes) -> None:
        self.raw = raw
        self.port = port
        self.answers: list = []
        self.received = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(self.raw)
            got = read_answers(_Recording(s), 1)
            self.answers = got

    def result(self) -> list:
        self.thread.join(15)
        return self.answers


class _Recording:
    """A socket that keeps a copy of every byte read (what the client *saw*)."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.seen = bytearray()

    def settimeout(self, t) -> None:
        self.s.settimeout(t)

    def recv(self, n: int) -> bytes:
        d = self.s.recv(n)
        self.seen += d
        _SEEN.append(bytes(d))
        return d


_SEEN: collections.deque = collections.deque(maxlen=10000)




def _marker_of(answer) -> str:
    return orjson.loads(answer[2])["result"]["m"]


@pytest.mark.parametrize("mode", ["two", "trailing", "early"])
def test_hostile_answer_closes_the_connection_and_reaches_no_one_else(hostile, mode):
    gt, backend = hostile
    _SEEN.clear()
    a = _Client(gt.port, _post("a", mode, pad=BIG if mode == "early" else 0))
    assert _wait(lambda: backend.conns and backend.conns[0].requests == 1)
    time.sleep(0.1)
    b = _Client(gt.port, _post("b"))  # waits for the one connection the hostile answer comes on
    got_a, got_b = a.result(), b.result()
    # The second client got its own answer, and not a byte of the leaked one.
    assert len(got_b) == 1 and got_b[0][0] == 200 and _marker_of(got_b[0]) == "b"
    assert not any(b"STOLEN" in d for d in _SEEN)
    # The owner kept its complete answer.
    assert len(got_a) == 1 and got_a[0][0] == 200
    assert _marker_of(got_a[0]) == ("early" if mode == "early" else "a")
    # The connection the hostile answer came on was closed by the gateway; the second
    # client was served on a new one.
    assert _wait(lambda: backend.conns[0].closed)
    assert backend.conns[0].requests == 1
    assert len(backend.conns) == 2 and backend.conns[1].requests == 1
    # And the gateway keeps serving.
    c = _Client(gt.port, _post("c")).result()
    assert len(c) == 1 and _marker_of(c[0]) == "c"


@pytest.mark.parametrize("mode", ["late", "split"])
def test_bytes_on_an_idle_connection_close_it(hostile, mode, caplog):
    """A response that arrives after the exchange ended -- on the connection resting in
    the pool -- closes it; the next request is not answered with it."""
    gt, backend = hostile
    caplog.set_level(logging.ERROR)
    _SEEN.clear()
    a = _Client(gt.port, _post("a", mode)).result()
    assert len(a) == 1 and _marker_of(a[0]) == "a"
    assert _wait(lambda: backend.conns[0].closed), "the connection with the unsolicited answer was closed"
    b = _Client(gt.port, _post("b")).result()
    assert len(b) == 1 and _marker_of(b[0]) == "b"
    assert not any(b"STOLEN" in d for d in _SEEN)
    assert not [r for r in caplog.records if r.exc_info or "Fatal error" in r.getMessage()], caplog.text
    assert backend.conns[0].requests == 1 and len(backend.conns) == 2


def test_second_response_in_one_read_without_a_waiter(hostile, caplog):
    """Two responses in one read with nobody waiting: the extra one is dropped with the
    connection (no error escapes the transport), and the pool stays usable."""
    gt, backend = hostile
    caplog.set_level(logging.ERROR)
    _SEEN.clear()
    a = _Client(gt.port, _post("a", "two")).result()
    assert len(a) == 1 and _marker_of(a[0]) == "a"
    assert _wait(lambda: backend.conns[0].closed)
    assert gt.call(lambda: gt.gw.pools["evil"].open_connections) == 0
    b = _Client(gt.port, _post("b")).result()
    assert len(b) == 1 and _marker_of(b[0]) == "b"
    assert not any(b"STOLEN" in d for d in _SEEN)
    assert not [r for r in caplog.records if r.exc_info or "Fatal error" in r.getMessage()], caplog.text
