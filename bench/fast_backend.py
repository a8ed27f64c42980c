"""A deliberately minimal, fast MCP backend: the baseline of the load harness.

Theory of operation.  Bytes come in on a raw ``asyncio.Protocol`` (uvloop), one
HTTP/1.1 connection per client, keep-alive by default (RFC 9112 §9.3).  A request
is complete when its head (up to CRLFCRLF) and its body (``Content-Length``, or a
chunked body, RFC 9112 §6.3/§7.1) are buffered; nothing else about HTTP is
interpreted.  The JSON-RPC body is *not* parsed: the id, method and tool name are
found by byte-regex (the benchmark's clients write ``params.name`` before
``arguments``, which is what every SDK does), and every answer is a
preformatted byte template with the id spliced in, written with one
``transport.write``.  The point is that this server costs as little CPU as
possible, so that "direct" numbers are an upper bound and "through the gateway"
numbers show the gateway's own cost.

It speaks just enough Streamable HTTP (MCP 2025-06-18 §Transports) for the
benchmark:

* ``POST /mcp`` ``initialize``  -> JSON result, ``Mcp-Session-Id`` header;
* notifications / client responses (no ``"method"`` with an id)  -> ``202``;
* ``tools/list``  -> the three tools below;
* ``tools/call`` ``echo``  -> ``application/json`` result carrying the request id;
* ``tools/call`` ``echo_sse`` (or header ``X-Bench-Response: sse``)  ->
  ``text/event-stream``, one ``event: message`` event, chunked transfer coding,
  stream ends after the response (as the Python and TypeScript SDKs do);
* ``tools/call`` ``blob``  -> a ~1 MiB text result (``application/json``);
* ``ping``  -> empty result; any other method -> JSON-RPC error -32601;
* ``GET /mcp`` -> 405 (no server->client stream), ``DELETE /mcp`` -> 200.

Sessions are issued but not enforced: the backend is the baseline, not a
conformance target.  Binds 127.0.0.1 only.

Run: ``python bench/fast_backend.py --port 0``  prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys

# --- byte scanners (first occurrence wins; see module docstring) -------------
_RE_ID = re.compile(rb'"id"\s*:\s*(-?[0-9]+|"(?:[^"\\]|\\.)*")')
_RE_METHOD = re.compile(rb'"method"\s*:\s*"([^"]*)"')
_RE_NAME = re.compile(rb'"name"\s*:\s*"([^"]*)"')

# --- preformatted answers -----------------------------------------------------
SESSION_ID = b"bench-0123456789abcdef"

_JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_R202 = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
_R405 = b"HTTP/1.1 405 Method Not Allowed\r\nallow: POST, DELETE\r\ncontent-length: 0\r\n\r\n"
_R404 = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_R200_EMPTY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_R400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_R413 = b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"

_PRE = b'{"jsonrpc":"2.0","id":'
_ECHO_POST = b',"result":{"content":[{"type":"text","text":"echo: hello from the bench backend"}],"isError":false}}'
_PING_POST = b',"result":{}}'
_NOMETHOD_POST = b',"error":{"code":-32601,"message":"Method not found"}}'
_INIT_POST = (
    b',"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{"listChanged":false}},'
    b'"serverInfo":{"name":"mcpfast-bench-backend","version":"0.1.0"}}}'
)
_SCHEMA = b'{"type":"object","properties":{"text":{"type":"string"}}}'
_TOOLS_POST = (
    b',"result":{"tools":['
    b'{"name":"echo","description":"Answers application/json","inputSchema":' + _SCHEMA + b"},"
    b'{"name":"echo_sse","description":"Answers one SSE event","inputSchema":' + _SCHEMA + b"},"
    b'{"name":"blob","description":"Answers ~1 MiB of text","inputSchema":' + _SCHEMA + b"}"
    b"]}}"
)
BLOB_TEXT_SIZE = 1 << 20


def _blob_text(size: int) -> bytes:
    # Printable ASCII prose with newlines escaped as JSON \n: realistic text that
    # needs no further escaping.
    line = b"The quick brown fox jumps over the lazy dog; mcpfast bench payload 0123456789.\\n"
    return (line * (size // len(line) + 1))[:size]


_BLOB_POST = (
    b',"result":{"content":[{"type":"text","text":"' + _blob_text(BLOB_TEXT_SIZE) + b'"}],"isError":false}}'
)

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


def _json_response(idb: bytes, post: bytes, extra_headers: bytes = b"") -> list:
    body_len = len(_PRE) + len(idb) + len(post)
    return [_JSON_HEAD, b"%d\r\n" % body_len, extra_headers, b"\r\n", _PRE, idb, post]


def _sse_response(idb: bytes, post: bytes) -> bytes:
    # One chunk holding the whole event, then the last-chunk (RFC 9112 §7.1).
    event = b"event: message\ndata: " + _PRE + idb + post + b"\n\n"
    return b"".join((_SSE_HEAD, b"%x\r\n" % len(event), event, b"\r\n0\r\n\r\n"))


def _decode_chunked(buf, start: int):
    """Return (body, end) for a complete chunked body at ``buf[start:]``, or None."""
    parts = []
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            # Trailer section: ends at an empty line.
            end = buf.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return b"".join(parts), end + 4
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


def _header(head: bytes, key: bytes) -> bytes:
    """Value of the first header ``key`` (``b"\\nname:"``, lower-case) in a lower-cased head."""
    at = head.find(key)
    if at < 0:
        return b""
    at += len(key)
    eol = head.find(b"\r", at)
    return head[at : eol if eol >= 0 else len(head)].strip()


class BackendProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def __init__(self) -> None:
        self.transport = None
        self.buf = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf and self.transport is not None:
            hend = buf.find(b"\r\n\r\n")
            if hend < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(_R413)
                return
            head = bytes(buf[:hend]).lower()
            body_start = hend + 4
            if b"chunked" in _header(head, b"\ntransfer-encoding:"):
                got = _decode_chunked(buf, body_start)
                if got is None:
                    if len(buf) > MAX_BODY:
                        self._fail(_R413)
                    return
                body, end = got
            else:
                try:
                    n = int(_header(head, b"\ncontent-length:") or b"0")
                except ValueError:
                    self._fail(_R400)
                    return
                if n > MAX_BODY:
                    self._fail(_R413)
                    return
                end = body_start + n
                if len(buf) < end:
                    return
                body = bytes(buf[body_start:end])
            del buf[:end]
            self._handle(head, body)

    def _fail(self, answer: bytes) -> None:
        self.transport.write(answer)
        self.transport.close()
        self.buf.clear()

    def _handle(self, head: bytes, body: bytes) -> None:
        t = self.transport
        sp1 = head.find(b" ")
        sp2 = head.find(b" ", sp1 + 1)
        method = head[:sp1]
        target = head[sp1 + 1 : sp2]
        close = b"\nconnection: close" in head or head.find(b"http/1.0", sp2) == sp2 + 1
        qs = target.find(b"?")
        path = target if qs < 0 else target[:qs]
        if path != b"/mcp":
            t.write(_R404)
        elif method == b"post":
            self._post(t, head, body)
        elif method == b"delete":
            t.write(_R200_EMPTY)
        else:
            t.write(_R405)
        if close:
            t.close()

    def _post(self, t, head: bytes, body: bytes) -> None:
        m = _RE_METHOD.search(body)
        i = _RE_ID.search(body)
        if m is None or i is None:
            # Notification (no id) or a client's response (no method): 202, no body.
            t.write(_R202)
            return
        idb = i.group(1)
        rpc = m.group(1)
        if rpc == b"tools/call":
            pstart = body.find(b'"params"')
            n = _RE_NAME.search(body, pstart if pstart >= 0 else 0)
            name = n.group(1) if n is not None else b""
            if name == b"blob":
                post = _BLOB_POST
            else:
                post = _ECHO_POST
            if name == b"echo_sse" or b"\nx-bench-response: sse" in head:
                t.write(_sse_response(idb, post))
            else:
                t.writelines(_json_response(idb, post))
        elif rpc == b"initialize":
            t.writelines(_json_response(idb, _INIT_POST, b"mcp-session-id: " + SESSION_ID + b"\r\n"))
        elif rpc == b"tools/list":
            t.writelines(_json_response(idb, _TOOLS_POST))
        elif rpc == b"ping":
            t.writelines(_json_response(idb, _PING_POST))
        else:
            t.writelines(_json_response(idb, _NOMETHOD_POST))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendProtocol, "127.0.0.1", port, backlog=1024, reuse_address=True)
    real_port = server.sockets[0].getsockname()[1]
    print(f"READY {real_port}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    try:
        await stop
    finally:
        server.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: chosen by the OS)")
    ap.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = ap.parse_args(argv)
    if not args.no_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
