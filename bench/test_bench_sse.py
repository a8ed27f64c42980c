"""SSE parser benchmarks: compiled core (``c``) against the pure-Python twin (``py``).

Run: ``pytest bench/test_bench_sse.py --benchmark-group-by=group``.  Cases are the
streams the gateway relays: a burst of 100 small MCP events (~200 B, LF and CRLF line
ends) in one read, and one 1 MB ``tools/call`` result, whole and in 64 KiB reads.
The target is c >= 20x py; compare the two rows of each ``sse:<case>`` group.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest

C = importlib.import_module(os.environ.get("MCPFAST_CORE_MODULE", "mcpfast.wire._core"))
PY = importlib.import_module("mcpfast.wire._core_py")


def _small_events(eol: bytes) -> bytes:
    out = []
    for i in range(100):
        msg = {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": f"tok-{i}", "progress": i, "total": 100, "message": "working on it"},
        }
        body = json.dumps(msg, separators=(",", ":")).encode()
        out.append(b"event: message" + eol + b"id: " + str(i).encode() + eol + b"data: " + body + eol + eol)
    return b"".join(out)


SMALL_LF = _small_events(b"\n")
SMALL_CRLF = _small_events(b"\r\n")
_BIG_BODY = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "x" * (1 << 20)}]}}).encode()
LARGE = b"event: message\nid: 9\ndata: " + _BIG_BODY + b"\n\n"
LARGE_64K = [LARGE[i : i + 65536] for i in range(0, len(LARGE), 65536)]

CASES = {
    "small_lf": ([SMALL_LF], 100),
    "small_crlf": ([SMALL_CRLF], 100),
    "large_1mb": ([LARGE], 1),
    "large_1mb_64k": (LARGE_64K, 1),
}
IMPLS = {"c": C, "py": PY}


def _parse(core, pieces):
    parser = core.SSEParser()
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


def _make(case: str, impl: str):
    pieces, count = CASES[case]
    core = IMPLS[impl]

    @pytest.mark.benchmark(group=f"sse:{case}")
    def bench(benchmark):
        events = benchmark(_parse, core, pieces)
        assert len(events) == count

    bench.__name__ = f"test_{case}__{impl}"
    return bench


for _case in CASES:
    for _impl in IMPLS:
        globals()[f"test_{_case}__{_impl}"] = _make(_case, _impl)
