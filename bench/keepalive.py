"""Keep-alive latency of one client against the demo backend: direct, and through
``mcpfast serve``, in the same run.

    python bench/keepalive.py                 # 5 rounds of 200 calls per target
    python bench/keepalive.py --calls 500 --rounds 3

One connection, one request at a time (``tools/call echo``), each answer read whole
before the next request: the pattern that shows a Nagle/delayed-ACK stall (~40 ms per
call) when a socket on the path lacks ``TCP_NODELAY`` and an answer leaves in two small
writes.  Targets alternate round by round; the report gives each round's p50 and the
median over rounds, and the gateway's added p50 (through - direct).  The figure that
matters is that difference: the target is under 1 ms added.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from mcpfast.demo_backend import wait_ready  # noqa: E402


def _req(port: int, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n%sContent-Length: %d\r\n\r\n%s" % (port, extra, len(body), body)
    )


def _read(s: socket.socket, buf: bytearray) -> tuple[bytes, bytes]:
    """One whole answer (Content-Length or chunked); leftover bytes stay in ``buf``."""
    while (i := buf.find(b"\r\n\r\n")) < 0:
        buf += s.recv(65536)
    head = bytes(buf[:i])
    del buf[: i + 4]
    h = head.lower()
    if b"content-length:" in h:
        n = int(h.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buf) < n:
            buf += s.recv(65536)
        body = bytes(buf[:n])
        del buf[:n]
        return head, body
    if b"chunked" in h:
        while (j := buf.find(b"\r\n0\r\n\r\n")) < 0 and not buf.startswith(b"0\r\n\r\n"):
            buf += s.recv(65536)
        end = 5 if buf.startswith(b"0\r\n\r\n") else j + 7
        body = bytes(buf[:end])
        del buf[:end]
        return head, body
    return head, b""


def measure(port: int, calls: int) -> list[float]:
    """Per-call seconds of ``calls`` kept-alive ``tools/call echo`` in one session."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    init = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})  # fmt: skip
    s.sendall(_req(port, init))
    head, _ = _read(s, buf)
    sid = next(ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n") if ln.lower().startswith(b"mcp-session-id"))
    extra = b"Mcp-Session-Id: %s\r\nMCP-Protocol-Version: 2025-06-18\r\n" % sid
    s.sendall(_req(port, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', extra))
    _read(s, buf)
    out = []
    for i in range(calls + 20):
        body = orjson.dumps({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                             "params": {"name": "echo", "arguments": {"text": "hi"}}})  # fmt: skip
        t = time.perf_counter()
        s.sendall(_req(port, body, extra))
        h, b = _read(s, buf)
        dt = time.perf_counter() - t
        if not h.startswith(b"HTTP/1.1 200") or b'"hi"' not in b:
            raise RuntimeError(f"bad answer: {h[:80]!r} {b[:120]!r}")
        if i >= 20:  # the first calls warm up
            out.append(dt)
    s.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    backend = subprocess.Popen([py, "-m", "mcpfast.demo_backend", "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, cwd=ROOT)  # fmt: skip
    gw = None
    try:
        url = wait_ready(backend, 30)
        if url is None:
            raise SystemExit("demo backend did not start")
        bport = int(url.rsplit(":", 1)[1].split("/")[0])
        gport = _free_port()
        gw = subprocess.Popen(
            [py, "-m", "mcpfast", "serve", "--listen", f"127.0.0.1:{gport}", "--backend", f"demo={url}",
             "--access-log", "off", "--log-level", "warning", "--allowed-host", "*"],
            cwd=ROOT, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", gport), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("gateway did not start") from None
                time.sleep(0.1)
        p50 = {"direct": [], "mcpfast": []}
        p99 = {"direct": [], "mcpfast": []}
        for r in range(args.rounds):
            for name, port in (("direct", bport), ("mcpfast", gport)):
                xs = sorted(measure(port, args.calls))
                p50[name].append(statistics.median(xs) * 1e3)
                p99[name].append(xs[int(len(xs) * 0.99) - 1] * 1e3)
            print(f"round {r + 1}: direct p50 {p50['direct'][-1]:.3f} ms, through mcpfast p50 {p50['mcpfast'][-1]:.3f} ms")
        d, g = statistics.median(p50["direct"]), statistics.median(p50["mcpfast"])
        added = [b - a for a, b in zip(p50["direct"], p50["mcpfast"], strict=True)]
        print()
        print("| target | p50 ms (median of rounds) | p99 ms (median) |")
        print("|---|---|---|")
        print(f"| direct to demo backend | {d:.3f} | {statistics.median(p99['direct']):.3f} |")
        print(f"| through mcpfast | {g:.3f} | {statistics.median(p99['mcpfast']):.3f} |")
        print(f"\nadded by the gateway (p50, per round): median {statistics.median(added):.3f} ms, "
              f"range {min(added):.3f}..{max(added):.3f} ms; ratio {g / d:.2f}")  # fmt: skip
    finally:
        for p in (gw, backend):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
