"""Closed-loop HTTP/1.1 load generator on uvloop: the harness's fallback when ``wrk`` is missing.

Theory of operation.  ``--connections`` keep-alive connections each run the loop an
MCP client runs: write one ``POST`` (a JSON-RPC ``tools/call`` with an id unique in
the run), read the whole answer, then write the next — no pipelining.  An answer ends
at ``Content-Length``, at the last chunk of a chunked body (RFC 9112 §7.1), or at
connection close (RFC 9112 §6.3 rule 8; the connection is then re-opened).  Bodies
are counted, not kept or parsed: a chunked body is walked chunk header by chunk
header.  The run stops at ``--duration`` seconds or ``--max-requests`` answers,
whichever comes first; a request still in flight at the deadline is not counted.
Latency is write-of-request to end-of-answer, ``perf_counter_ns``, in µs.

Output (stdout, one JSON object): requests, duration_s, rps, bytes, bytes_per_s,
p50_us, p90_us, p99_us, max_us, mean_us, errors{status,read,connect}.

It runs in its own process (the harness starts it) so that it does not share an
event loop or a GIL with anything it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array

_perf = time.perf_counter_ns

# Response-reader states.
_HEAD, _BODY_LEN, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _BODY_EOF = range(6)


class Run:
    """Shared state of one run: counters, deadline and the request template."""

    def __init__(self, host, port, path, tool, headers, duration, max_requests, method="tools/call"):
        self.host = host
        self.port = port
        hdr = "".join(f"{k}: {v}\r\n" for k, v in headers)
        self.head_prefix = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
            "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
            f"{hdr}content-length: "
        ).encode()
        self.body_pre = b'{"jsonrpc":"2.0","id":'
        if method == "tools/call":
            self.body_post = (
                b',"method":"tools/call","params":{"name":"' + tool.encode() + b'","arguments":{"text":"hello"}}}'
            )
        else:  # a request without params, e.g. tools/list
            self.body_post = b',"method":"' + method.encode() + b'"}'
        self.next_id = 0
        self.duration = duration
        self.max_requests = max_requests
        self.deadline = 0
        self.started = 0
        self.lat = array("q")
        self.bytes = 0
        self.err_status = 0
        self.err_read = 0
        self.err_connect = 0
        self.active = 0
        self.done = None

    def request(self) -> bytes:
        self.next_id += 1
        body = b"%s%d%s" % (self.body_pre, self.next_id, self.body_post)
        return b"%s%d\r\n\r\n%s" % (self.head_prefix, len(body), body)

    def may_continue(self) -> bool:
        return len(self.lat) < self.max_requests and _perf() < self.deadline

    def conn_finished(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)


class Client(asyncio.Protocol):
    __slots__ = ("run", "t", "buf", "state", "remain", "t0", "nbytes", "status", "close_after", "loop")

    def __init__(self, run: Run, loop) -> None:
        self.run = run
        self.loop = loop
        self.t = None
        self.buf = bytearray()
        self.state = _HEAD

    def connection_made(self, transport) -> None:
        self.t = transport
        self.send()

    def send(self) -> None:
        self.buf.clear()
        self.state = _HEAD
        self.nbytes = 0
        self.close_after = False
        req = self.run.request()
        self.t0 = _perf()
        self.t.write(req)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        state = self.state
        if state == _BODY_LEN and not self.buf:
            # Hot path for large Content-Length bodies: just count.
            n = len(data)
            if n < self.remain:
                self.remain -= n
                return
            self.buf += data[self.remain :]
            self.remain = 0
            self._finish()
            return
        self.buf += data
        self._advance()

    def _advance(self) -> None:
        buf = self.buf
        while True:
            st = self.state
            if st == _HEAD:
                hend = buf.find(b"\r\n\r\n")
                if hend < 0:
                    return
                head = bytes(buf[:hend]).lower()
                del buf[: hend + 4]
                self.status = int(head[9:12])
                self.close_after = b"\nconnection: close" in head
                if self.status in (204, 304) or 100 <= self.status < 200:
                    self.remain = 0
                    self.state = _BODY_LEN
                elif b"\ntransfer-encoding:" in head and b"chunked" in head:
                    self.state = _CHUNK_SIZE
                elif b"\ncontent-length:" in head:
                    at = head.find(b"\ncontent-length:") + 16
                    eol = head.find(b"\r", at)
                    self.remain = int(head[at : eol if eol >= 0 else len(head)])
                    self.state = _BODY_LEN
                else:
                    self.state = _BODY_EOF
                    self.close_after = True
            elif st == _BODY_LEN:
                n = len(buf)
                if n < self.remain:
                    self.remain -= n
                    buf.clear()
                    return
                del buf[: self.remain]
                self.remain = 0
                self._finish()
                return
            elif st == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                del buf[: eol + 2]
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.remain = size + 2  # data + CRLF
                    self.state = _CHUNK_DATA
            elif st == _CHUNK_DATA:
                n = len(buf)
                if n < self.remain:
                    self.remain -= n
                    buf.clear()
                    return
                del buf[: self.remain]
                self.state = _CHUNK_SIZE
            elif st == _TRAILER:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                del buf[: eol + 2]
                if eol == 0:
                    self._finish()
                    return
            else:  # _BODY_EOF: ends in connection_lost
                buf.clear()
                return

    def _finish(self) -> None:
        run = self.run
        if _perf() > run.deadline:
            # Answer completed after the deadline: not counted, stop this connection.
            self.close_after = True
            self.t.close()
            return
        run.lat.append((_perf() - self.t0) // 1000)
        run.bytes += self.nbytes
        if not (200 <= self.status < 300):
            run.err_status += 1
        if self.buf:
            # Extra bytes after a complete answer on a non-pipelined connection: protocol error.
            run.err_read += 1
            self.close_after = True
        if self.close_after:
            self.t.close()
            return
        if run.may_continue():
            self.send()
        else:
            self.close_after = True
            self.t.close()

    def connection_lost(self, exc) -> None:
        run = self.run
        if self.state == _BODY_EOF and exc is None:
            self._finish_eof()  # a close-delimited answer ends here
        elif not self.close_after:
            run.err_read += 1  # the peer dropped us mid-answer
        self.t = None
        if run.may_continue():
            spawn(run, self.loop)
        run.conn_finished()

    def _finish_eof(self) -> None:
        run = self.run
        if _perf() <= run.deadline:
            run.lat.append((_perf() - self.t0) // 1000)
            run.bytes += self.nbytes
            if not (200 <= self.status < 300):
                run.err_status += 1


def spawn(run: Run, loop) -> None:
    # Counted before the task runs so that ``active`` never touches 0 while a
    # replacement connection is pending.
    run.active += 1
    loop.create_task(_connect(run, loop))


async def _connect(run: Run, loop) -> None:
    try:
        await loop.create_connection(lambda: Client(run, loop), run.host, run.port)
    except OSError:
        run.err_connect += 1
        run.conn_finished()


def _pct(sorted_lat, q: float) -> int:
    if not sorted_lat:
        return 0
    k = min(len(sorted_lat) - 1, max(0, int(round(q / 100.0 * len(sorted_lat) + 0.5)) - 1))
    return int(sorted_lat[k])


async def run_load(host, port, path, tool, headers, connections, duration, max_requests, method="tools/call") -> dict:
    loop = asyncio.get_running_loop()
    run = Run(host, port, path, tool, headers, duration, max_requests, method)
    run.done = loop.create_future()
    run.started = _perf()
    run.deadline = run.started + int(duration * 1e9)
    for _ in range(connections):
        spawn(run, loop)
    # Bounded: every connection ends at the deadline; stragglers get 10 s more.
    try:
        await asyncio.wait_for(run.done, timeout=duration + 10)
    except asyncio.TimeoutError:
        pass
    elapsed = (min(_perf(), run.deadline) - run.started) / 1e9
    lat = sorted(run.lat)
    n = len(lat)
    return {
        "generator": "python-uvloop",
        "connections": connections,
        "requests": n,
        "duration_s": elapsed,
        "rps": n / elapsed if elapsed > 0 else 0.0,
        "bytes": run.bytes,
        "bytes_per_s": run.bytes / elapsed if elapsed > 0 else 0.0,
        "p50_us": _pct(lat, 50),
        "p90_us": _pct(lat, 90),
        "p99_us": _pct(lat, 99),
        "max_us": int(lat[-1]) if lat else 0,
        "mean_us": (sum(lat) / n) if n else 0.0,
        "errors": {"status": run.err_status, "read": run.err_read, "connect": run.err_connect, "timeout": 0},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="closed-loop MCP tools/call load generator (uvloop)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/mcp")
    ap.add_argument("--tool", default="echo")
    ap.add_argument("--method", default="tools/call", help="tools/call (with --tool) or a method without params")
    ap.add_argument("--header", action="append", default=[], help="extra request header 'Name: value'")
    ap.add_argument("--connections", "-c", type=int, default=1)
    ap.add_argument("--duration", "-d", type=float, default=5.0)
    ap.add_argument("--max-requests", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("loopback only")
    headers = []
    for h in args.header:
        k, _, v = h.partition(":")
        headers.append((k.strip(), v.strip()))
    import uvloop

    uvloop.install()
    res = asyncio.run(
        run_load(args.host, args.port, args.path, args.tool, headers, args.connections, args.duration,
                 args.max_requests, args.method)
    )
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
