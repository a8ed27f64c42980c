"""A deliberately minimal, fast MCP server over stdio: the baseline of the stdio benchmark.

Theory of operation.  It reads stdin in large blocks, splits lines, and answers each
JSON-RPC request with a preformatted byte template with the request's id spliced in
(found by byte regex; nothing is parsed), writing every answer of one read in one
``write`` -- so its own cost is as small as possible and "direct" numbers are an upper
bound.  It speaks just enough MCP: ``initialize`` (echoing the client's protocol
version), notifications (no answer), ``tools/list`` (one tool, ``echo``), ``tools/call``
(a fixed text result), ``ping``; any other request gets -32601.

Run: ``python bench/fast_stdio_backend.py`` (messages on stdin and stdout, nothing else).
"""

from __future__ import annotations

import os
import re
import sys

_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')
_METHOD = re.compile(rb'"method"\s*:\s*"([^"]+)"')
_VERSION = re.compile(rb'"protocolVersion"\s*:\s*"([^"]+)"')

_INIT = (
    b'{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"%s","capabilities":{"tools":{}},'
    b'"serverInfo":{"name":"fast-stdio","version":"1"}}}\n'
)
_LIST = (
    b'{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"echo","description":"echo",'
    b'"inputSchema":{"type":"object","properties":{"text":{"type":"string"}}}}]}}\n'
)
_CALL = b'{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}\n'
_PING = b'{"jsonrpc":"2.0","id":%s,"result":{}}\n'
_UNKNOWN = b'{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"Method not found"}}\n'


def answer(line: bytes) -> bytes:
    m = _METHOD.search(line)
    i = _ID.search(line)
    if m is None or i is None:
        return b""  # a notification or a response: nothing to say
    method = m.group(1)
    rid = i.group(1)
    if method == b"tools/call":
        return _CALL % rid
    if method == b"initialize":
        v = _VERSION.search(line)
        return _INIT % (rid, v.group(1) if v else b"2025-06-18")
    if method == b"tools/list":
        return _LIST % rid
    if method == b"ping":
        return _PING % rid
    return _UNKNOWN % rid


def main() -> None:
    fin = sys.stdin.fileno()
    fout = sys.stdout.fileno()
    rest = b""
    while True:
        block = os.read(fin, 65536)
        if not block:
            return
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        out = b"".join(answer(ln) for ln in lines if ln.strip())
        if out:
            view = memoryview(out)
            while view:
                n = os.write(fout, view)
                view = view[n:]


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    os._exit(0)
