"""The three message-level backend kinds behind a terminating route, each with a record
of exactly what it received, for the adversarial tests that run over all of them.

* ``stdio``: a child per session (``fixtures/stdio_raw.py --record``), and
* ``stdio-shared``: one child for every session -- both record every line read on stdin;
* ``sse``: a 2024-11-05 HTTP+SSE backend on a raw socket (``LegacyRecorder``) that keeps
  every request it got, head and body, and one event stream per session.

``backend(kind, tmp_path)`` gives the backend's configuration table and a ``Received``:
``messages()`` is every message the backend got, each checked to be exactly one JSON
object (a stdio line, a legacy POST body), so a test can ask whether a marker arrived and
whether anything arrived that no client meant to send.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import orjson

from gwutil import ROOT
from rawbackend import RawBackend

RAW = os.path.join(ROOT, "tests", "fixtures", "stdio_raw.py")
KINDS = ("stdio", "stdio-shared", "sse")

# The header names of every request the gateway makes to a legacy backend (besides the
# backend's configured ``headers``): nothing of a client's ever joins them.
LEGACY_POST_FIELDS = [b"content-length", b"content-type", b"host"]
LEGACY_GET_FIELDS = [b"accept", b"host"]


def _strict_object(text) -> dict:
    """``text`` as one JSON object: a duplicated key or anything but an object fails."""

    def pairs(items):
        keys = [k for k, _ in items]
        assert len(keys) == len(set(keys)), f"duplicated key in {text!r}"
        return dict(items)

    msg = json.loads(text, object_pairs_hook=pairs)
    assert isinstance(msg, dict), text
    return msg


class Received:
    """What one backend got.  ``raw()``: the stdin lines (text, as read) or the legacy
    requests ((head, body) bytes); ``messages()``: each as a parsed JSON object."""

    def __init__(self, kind: str, record: str | None = None, legacy: LegacyRecorder | None = None) -> None:
        self.kind = kind
        self.record = record
        self.legacy = legacy

    def raw(self) -> list:
        if self.legacy is not None:
            return list(self.legacy.requests)
        if not os.path.exists(self.record):
            return []
        with open(self.record, encoding="utf-8") as f:
            return [orjson.loads(line) for line in f.read().splitlines() if line]

    def posts(self) -> list[tuple[bytes, bytes]]:
        return [(h, b) for h, b in self.raw() if h.startswith(b"POST ")]

    def messages(self) -> list[dict]:
        """Every message received, in order; each must be exactly one JSON object on a
        line of its own (stdio: the child read a line ending in LF and holding no other
        line break; legacy: a POST body)."""
        out = []
        if self.legacy is not None:
            for head, body in self.posts():
                out.append(_strict_object(body.decode("utf-8")))
            return out
        for line in self.raw():
            assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line, repr(line)
            out.append(_strict_object(line))
        return out

    def text(self) -> str:
        """Everything received as text (markers are searched for in it)."""
        if self.legacy is not None:
            return "\n".join(b.decode("utf-8", "replace") for _, b in self.posts())
        return "".join(self.raw())

    def mark(self) -> int:
        """How many messages were received so far (``messages()[mark:]`` are newer)."""
        return len(self.messages())

    def calls(self, since: int = 0) -> list[dict]:
        """The ``tools/call`` messages received after ``mark()`` gave ``since``."""
        return [m for m in self.messages()[since:] if m.get("method") == "tools/call"]

    def heads(self) -> list:
        """Legacy: every request as the gateway's strict parser reads it -- exactly one
        head each, its body exactly Content-Length long, no chunked framing."""
        from test_adversarial_transports import _received

        return [h for h, _ in _received(self.legacy)]

    def field_names(self) -> list[tuple[bytes, list[bytes]]]:
        """Legacy: (method, sorted lower-case header names) of every request."""
        return [(h.method, sorted(n.lower() for n, _ in h.headers)) for h in self.heads()]


def backend(kind: str, tmp_path, **extra) -> tuple[dict, Received]:
    """The configuration table of a backend of ``kind`` and the record of what it gets;
    for ``sse`` the caller closes ``received.legacy``.  ``extra``: more keys of the table."""
    if kind.startswith("stdio"):
        record = str(tmp_path / f"received-{kind}.jsonl")
        cfg = {"transport": "stdio", "command": sys.executable, "args": ["-I", "-S", RAW, "--record", record],
               "mode": "shared" if kind == "stdio-shared" else "per_session", **extra}  # fmt: skip
        return cfg, Received(kind, record=record)
    legacy = LegacyRecorder()
    return {"transport": "sse", "url": f"http://127.0.0.1:{legacy.port}/sse", **extra}, Received(kind, legacy=legacy)


# Fields a legacy backend puts on its answers that must never reach a client.
BACKEND_FIELDS = b"Set-Cookie: backend=evil\r\nX-Evil-Backend: yes\r\nMcp-Session-Id: evil-session\r\n"


class LegacyRecorder(RawBackend):
    """A 2024-11-05 backend that records every request and keeps one event stream per
    session: ``GET`` opens a stream whose ``endpoint`` event names ``/messages?session_id=N``;
    each ``POST`` there is recorded, answered 202, and its JSON-RPC answer goes out on
    stream N.  Tools, as the stdio fixture's: ``echo`` answers ``{"echo": arguments}``,
    ``sleep`` waits ``arguments.seconds`` first, ``long`` first sends a message event of
    ``arguments.size`` bytes, ``hostile`` first sends each of ``arguments.lines`` (text
    whose code points are the bytes) as an event's data, unchecked.  Its answers carry
    ``BACKEND_FIELDS``, which no client may ever see.  ``open_streams()``: the streams the gateway holds open now."""

    def __init__(self) -> None:
        self.streams: dict[int, socket.socket] = {}
        self.closed_streams = 0
        self.serial = 0
        self.lock = threading.Lock()
        self.endpoint = b"/messages?session_id={n}"  # {n}: the stream's number
        self.init_version: str | None = None  # what initialize answers (None: the version asked)
        super().__init__("legacy_rec")

    def open_streams(self) -> int:
        with self.lock:
            return len(self.streams)

    def _legacy_rec(self, conn: socket.socket, req: tuple[bytes, bytes]) -> None:
        head, body = req
        if head.startswith(b"GET"):
            with self.lock:
                self.serial += 1
                n = self.serial
                self.streams[n] = conn
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + BACKEND_FIELDS + b"\r\n"
                             b"event: endpoint\ndata: " + self.endpoint.replace(b"{n}", b"%d" % n) + b"\n\n")  # fmt: skip
                while conn.recv(65536):
                    pass  # held until the gateway closes it
            finally:
                with self.lock:
                    self.streams.pop(n, None)
                    self.closed_streams += 1
            raise OSError("stream closed")
        conn.sendall(b"HTTP/1.1 202 Accepted\r\n" + BACKEND_FIELDS + b"Content-Length: 0\r\n\r\n")
        target = head.split(b" ", 2)[1]
        n = int(target.rpartition(b"=")[2]) if b"session_id=" in target else 0
        msg = json.loads(body)  # not orjson: ids may be integers of any size
        if "id" not in msg or "method" not in msg:
            return
        threading.Thread(target=self._answer, args=(n, msg), daemon=True).start()

    def _send(self, n: int, data: bytes) -> None:
        with self.lock:
            s = self.streams.get(n)
            if s is None:
                return
            try:
                s.sendall(data)
            except OSError:
                pass

    def _message(self, n: int, msg) -> None:
        self._send(n, b"event: message\ndata: %s\n\n" % (msg if isinstance(msg, bytes) else json.dumps(msg).encode()))

    def _answer(self, n: int, msg: dict) -> None:
        m = msg["method"]
        params = msg.get("params") or {}
        if m == "initialize":
            result = {"protocolVersion": self.init_version or params.get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}},
                      "serverInfo": {"name": "legacy", "version": "1"}}  # fmt: skip
        elif m == "tools/call":
            name, args = params.get("name"), params.get("arguments") or {}
            if name == "sleep":
                time.sleep(args.get("seconds", 1))
            elif name == "long":
                self._message(n, b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"'
                              + b"x" * args.get("size", 1 << 20) + b'"}}')  # fmt: skip
            elif name == "hostile":
                for line in args.get("lines", ()):
                    self._message(n, line.encode("latin-1"))
            result = {"echo": args}
        else:
            result = params
        self._message(n, {"jsonrpc": "2.0", "id": msg["id"], "result": result})
