"""Misbehaving HTTP backends for failure tests: plain sockets in threads, each with one
behaviour.  They speak just enough HTTP/1.1 to be a backend and record what happened
to them (requests seen, bytes written, when the gateway closed the connection)."""

from __future__ import annotations

import socket
import threading
import time
import weakref

import orjson

OK_BODY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
VERBATIM_ANSWER = b'{ "id" :1 ,"jsonrpc":"2.0",\n "result": {"text":"caf\\u00e9 \\"q\\"", "n": 1.50e+2 } }'


def read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """Read one request (head and Content-Length body); None on EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = conn.recv(65536)
        if not d:
            return None
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(rest) < n:
        d = conn.recv(65536)
        if not d:
            return None
        rest += d
    return head, rest[:n]


class RawBackend:
    """``behaviour`` is one of: ok, garbage, die_mid_stream, silent, stream_forever,
    stream_until_closed, headers, gated_stream, verbatim, mux."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.requests: list[tuple[bytes, bytes]] = []
        self.bytes_sent = 0
        self.closed_at: float | None = None
        self.stop = threading.Event()
        self.release = threading.Event()  # gated_stream: send the second event
        self.accepted = 0
        self.sessions: set[bytes] = set()  # mux: the sessions it knows
        self.amnesia = False  # mux: know no session at all
        self.sid_prefix = b"s"  # mux: session ids are this and a number
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                while not self.stop.is_set():
                    req = read_request(conn)
                    if req is None:
                        return
                    self.requests.append(req)
                    getattr(self, "_" + self.behaviour)(conn, req)
        except OSError:
            self.closed_at = self.closed_at or time.monotonic()

    def _ok(self, conn, req) -> None:
        body = OK_BODY
        try:
            rid = orjson.loads(req[1]).get("id", 1)
            body = orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {"ok": True}})
        except Exception:
            pass
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _headers(self, conn, req) -> None:
        """A JSON answer with a session id and hop-by-hop fields the gateway must drop."""
        body = OK_BODY
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: sess-1\r\n"
            b"Connection: X-Backend-Hop\r\nX-Backend-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
            b"X-Backend-End: kept\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def _verbatim(self, conn, req) -> None:
        """Answer with a JSON body full of odd whitespace and escapes, to check that the
        gateway forwards bytes, not re-encoded JSON."""
        body = VERBATIM_ANSWER
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _gated_stream(self, conn, req) -> None:
        """One SSE event, then wait for ``release`` before the second and the end: a
        gateway that buffers the stream never shows the first event in time."""
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, ev in enumerate((b"id: 1\nevent: message\ndata: {\"n\":1}\n\n", b"id: 2\nevent: message\ndata: {\"n\":2}\n\n")):
            if i == 1 and not self.release.wait(20):
                raise OSError("never released")
            conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        conn.sendall(b"0\r\n\r\n")

    def _mux(self, conn, req) -> None:
        """Just enough of a session-era MCP server to sit behind a multiplexed route.
        ``initialize`` opens a session (``s1``, ``s2``, ...), notifications get 202, and
        a request in a session it does not know gets 404 (``sessions.clear()`` forgets
        them all, ``amnesia`` refuses requests in every one).  Every answer carries the session
        id, which the gateway must not show its client.  Tools:

        * ``big {size, gate}``: a JSON result whose text is ``size`` bytes, with its
          Content-Length; half of it, then (``gate``) a wait for ``release``, then the
          rest as fast as the peer takes it (``bytes_sent`` counts the body).
        * ``events``: an SSE answer; first a server→client request (id 5, progress
          token 9, event id ``e1``), then after ``release`` the response.
        * ``mixed``: an SSE answer in three reads: a comment, a BOM-prefixed block
          holding a server→client request (id 5), the response.
        """
        head, body = req
        sid = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"mcp-session-id":
                sid = v.strip()
        if head.startswith(b"DELETE ") or head.startswith(b"GET "):
            # A DELETE ends the session; a GET stream is not offered (405).
            known = sid in self.sessions
            self.sessions.discard(sid)
            status = b"405 Method Not Allowed" if head.startswith(b"GET ") else (b"200 OK" if known else b"404 Not Found")
            conn.sendall(b"HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n" % status)
            return
        msg = orjson.loads(body)
        method = msg.get("method")
        if method == "initialize":
            sid = self.sid_prefix + b"%d" % (len(self.requests))
            self.sessions.add(sid)
            out = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw", "version": "1"}}})  # fmt: skip
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: %s\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (sid, len(out), out))  # fmt: skip
            return
        if sid not in self.sessions or (self.amnesia and "id" in msg):
            out = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}'
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(out), out))  # fmt: skip
            return
        if "id" not in msg:
            conn.sendall(b"HTTP/1.1 202 Accepted\r\nMcp-Session-Id: %s\r\nContent-Length: 0\r\n\r\n" % sid)
            return
        params = msg.get("params") or {}
        args = params.get("arguments") or {}
        if params.get("name") == "mixed":
            # Three reads: a comment (whole, nothing to rewrite), then a server→client
            # request whose block starts with a BOM -- mid-stream, so part of a field
            # name, not a stream start -- then the response.
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: %s\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" % sid)  # fmt: skip
            ask = orjson.dumps({"jsonrpc": "2.0", "id": 5, "method": "roots/list"})
            answer = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": []}})
            for ev in (b": ready\n\n", b"\xef\xbb\xbfid: e1\nevent: message\ndata: " + ask + b"\n\n",
                       b"event: message\ndata: " + answer + b"\n\n"):  # fmt: skip
                conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.05)  # separate reads at the gateway
            conn.sendall(b"0\r\n\r\n")
            return
        if params.get("name") == "events":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: %s\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" % sid)  # fmt: skip
            ask = orjson.dumps({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage",
                                "params": {"_meta": {"progressToken": 9}, "messages": [], "maxTokens": 1}})  # fmt: skip
            answer = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": []}})
            for i, ev in enumerate((b"id: e1\nevent: message\ndata: " + ask + b"\n\n",
                                    b"id: e2\nevent: message\ndata: " + answer + b"\n\n")):  # fmt: skip
                if i == 1 and not self.release.wait(20):
                    raise OSError("never released")
                conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            conn.sendall(b"0\r\n\r\n")
            return
        size = int(args.get("size", 10))
        out = big_answer(msg["id"], size)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: %s\r\n"
                     b"Content-Length: %d\r\n\r\n" % (sid, len(out)))  # fmt: skip
        view = memoryview(out)
        pos = 0
        while pos < len(view):
            if args.get("gate") and pos >= len(view) // 2 and not self.release.wait(20):
                raise OSError("never released")
            end = min(len(view), pos + 65536, len(view) // 2 if pos < len(view) // 2 else len(view))
            n = conn.send(view[pos:end])
            pos += n
            self.bytes_sent += n

    def _garbage(self, conn, req) -> None:
        conn.sendall(b"THIS IS NOT HTTP\r\n\r\n")

    def _die_mid_stream(self, conn, req) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1e\r\nevent: message\ndata: {\"a\":1}\n\n\r\n"
        )
        time.sleep(0.2)
        conn.shutdown(socket.SHUT_RDWR)
        raise OSError("died")

    def _silent(self, conn, req) -> None:
        self.stop.wait(30)

    def _stream_forever(self, conn, req) -> None:
        """Write SSE events as fast as the peer takes them, up to 64 MiB."""
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        event = b"event: message\ndata: " + b"x" * 16000 + b"\n\n"
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        conn.settimeout(0.5)
        while self.bytes_sent < 64 * 1024 * 1024 and not self.stop.is_set():
            try:
                conn.sendall(chunk)
            except socket.timeout:
                continue  # blocked: the gateway stopped reading
            self.bytes_sent += len(chunk)
        raise OSError("done")

    def _stream_until_closed(self, conn, req) -> None:
        """An SSE stream sending a small event every 50 ms until the peer goes away."""
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        event = b"event: message\ndata: {}\n\n"
        try:
            while not self.stop.is_set():
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                self.bytes_sent += len(event)
                time.sleep(0.05)
        except OSError:
            self.closed_at = time.monotonic()
            raise

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


def big_answer(rid, size: int) -> bytes:
    """The JSON-RPC answer of the ``mux`` backend's ``big`` tool."""
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "x" * size}]}})


def http_request(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes or a full response arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        return read_response(s)


# Bytes read past the end of a response on a socket: the start of the next one (two
# pipelined answers can arrive in one recv).  Weak keys: a closed socket drops its entry.
_LEFTOVER: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def read_response(s: socket.socket) -> bytes:
    """Read one response with a Content-Length (or, without one, whatever arrived with
    its head).  Bytes after its end are kept for the next call on the same socket."""
    buf = _LEFTOVER.pop(s, b"")
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            return buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    if n is None:
        return buf
    while len(rest) < n:
        d = s.recv(65536)
        if not d:
            break
        rest += d
    if len(rest) > n:
        _LEFTOVER[s] = rest[n:]
        rest = rest[:n]
    return head + b"\r\n\r\n" + rest


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n%sContent-Length: %d\r\n\r\n%s"
        % (path.encode(), extra, len(body), body)
    )


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def body_of(resp: bytes) -> bytes:
    return resp.partition(b"\r\n\r\n")[2]
