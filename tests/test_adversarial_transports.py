"""An attacker's review of the newer transports, judged by what backends and other
clients actually got.

* the legacy HTTP+SSE front (``front/legacy_sse.py``): sessions across principals, the
  internal request it builds for each message, policy on that path;
* legacy HTTP+SSE backends (``transport/sse_legacy.py``): what a hostile backend's
  stream, endpoint and errors can make the gateway do or say;
* https backends (``transport/tls.py``): no configuration silently skips verification.

Raw sockets on 127.0.0.1 stand in for hostile peers and record every byte they got;
real MCP SDK servers stand in where a real backend is needed.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx
import orjson
import pytest

from gwutil import GatewayThread, wait_until
from mcpfast.wire.core import RequestParser
from rawbackend import read_request

INIT = orjson.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
})  # fmt: skip
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SECRET = "s3cr3t-query-key-0123456789"


class LegacyServer:
    """A hostile 2024-11-05 backend on a plain socket: ``GET`` answers ``get_answer``
    (bytes written as they are, the connection then held open); every request is kept."""

    def __init__(self, get_answer: bytes) -> None:
        self.get_answer = get_answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            req = read_request(conn)
            if req is None:
                return
            self.requests.append(req)
            if req[0].startswith(b"GET"):
                conn.sendall(self.get_answer)
                self.stop.wait(30)
            else:
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


# --- legacy backends: secrets ------------------------------------------------------------


def test_a_legacy_backend_refusing_its_stream_never_shows_the_url_query_to_clients(caplog):
    """The configured URL's query may hold a key (``?api_key=``).  A backend that refuses
    the GET of its stream (any status but a 200 event stream) must not make the gateway
    hand that key to its clients in the error, nor to the log."""
    srv = LegacyServer(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    url = f"http://127.0.0.1:{srv.port}/sse?api_key={SECRET}"
    try:
        with GatewayThread({"backends": {"old": {"url": url, "transport": "sse", "response_timeout": 5.0}}}) as gt:
            seen = []
            with httpx.Client(timeout=10) as c:
                for _ in range(2):  # the first attempt, then one refused while backing off
                    r = c.post(gt.url("/mcp"), content=INIT, headers=HEADERS)
                    seen.append(r.text)
                    assert r.status_code >= 400 or b"error" in r.content
        assert srv.requests and srv.requests[0][0].startswith(b"GET /sse?api_key=")  # it was asked
        for text in seen:
            assert SECRET not in text, text
        assert SECRET not in caplog.text
    finally:
        srv.close()


# --- the legacy front: sessions across principals ----------------------------------------

KEYS = {"alice": "mk_alice_0123456789abcdef0123456789", "bob": "mk_bob_0123456789abcdef0123456789ab"}


def _auth() -> dict:
    import hashlib

    keys = [{"sha256": hashlib.sha256(k.encode()).hexdigest(), "subject": s} for s, k in KEYS.items()]
    return {"auth": {"api_keys": {"keys": keys}}, "audit": {"sink": "off"}}


def _open_stream(port: int, path: str, extra: bytes = b"") -> tuple[socket.socket, bytes]:
    """A raw legacy ``GET`` stream: the socket (left open) and what arrived first."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n" % (path.encode(), extra))
    buf = b""
    while b"\r\n\r\n" not in buf or (buf.startswith(b"HTTP/1.1 200") and b"session_id=" not in buf):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    return s, buf


def test_a_legacy_stream_cannot_spend_another_sessions_stream_quota():
    """``max_streams_per_session`` counts GET streams per ``Mcp-Session-Id``.  A legacy
    stream has no session of the route's (its client sends none, and nothing checks one
    it sends): bob's legacy streams carrying alice's session id must not use up alice's
    streams, and alice's own GET must still reach the backend."""
    from rawbackend import RawBackend

    backend = RawBackend("mux")
    streams = []
    try:
        raw = {"backends": {"b": {"url": backend.url}}, **_auth(), "sessions": {"key": "cd" * 32}}
        with GatewayThread(raw) as gt:
            alice = {**HEADERS, "X-API-Key": KEYS["alice"]}
            with httpx.Client(timeout=10) as c:
                r = c.post(gt.url("/mcp"), content=INIT, headers=alice)
                sid = r.headers["mcp-session-id"]
                for _ in range(gt.config.limits.max_streams_per_session):
                    s, first = _open_stream(
                        gt.port, "/sse", b"X-API-Key: %s\r\nMcp-Session-Id: %s\r\n" % (KEYS["bob"].encode(), sid.encode())
                    )
                    streams.append(s)
                    # Refused (a legacy client sends no Mcp-Session-Id), or open: never counted.
                    assert first.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), first
                gets = sum(1 for h, _ in backend.requests if h.startswith(b"GET "))
                r = c.get(gt.url("/mcp"), headers={**alice, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"})
                assert r.status_code != 429, r.text
                assert wait_until(lambda: sum(1 for h, _ in backend.requests if h.startswith(b"GET ")) == gets + 1)
    finally:
        for s in streams:
            s.close()
        backend.stop.set()
        backend.sock.close()
