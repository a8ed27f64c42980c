"""NDJSON framer benchmarks: compiled core (``c``) against the pure-Python twin (``py``).

Run: ``pytest bench/test_bench_ndjson.py --benchmark-group-by=group``.  Cases are what a
stdio child writes: a burst of 100 small MCP messages (~150 B, LF and CRLF) in one read,
the same burst cut into 4 KiB reads (lines split across reads), and one 1 MB
``tools/call`` result whole and in 64 KiB reads.  Compare the two rows of each
``ndjson:<case>`` group.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest

C = importlib.import_module(os.environ.get("MCPFAST_CORE_MODULE", "mcpfast.wire._core"))
PY = importlib.import_module("mcpfast.wire._core_py")


def _small(eol: bytes) -> bytes:
    msgs = (
        {"jsonrpc": "2.0", "method": "notifications/progress",
         "params": {"progressToken": f"tok-{i}", "progress": i, "total": 100, "message": "working on it"}}
        for i in range(100)
    )  # fmt: skip
    return b"".join(json.dumps(m, separators=(",", ":")).encode() + eol for m in msgs)


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


SMALL_LF = _small(b"\n")
SMALL_CRLF = _small(b"\r\n")
_RESULT = {"content": [{"type": "text", "text": "x" * (1 << 20)}]}
LARGE = json.dumps({"jsonrpc": "2.0", "id": 7, "result": _RESULT}).encode() + b"\n"

CASES = {
    "small_lf": ([SMALL_LF], 100),
    "small_crlf": ([SMALL_CRLF], 100),
    "small_lf_4k": (_cut(SMALL_LF, 4096), 100),
    "large_1mb": ([LARGE], 1),
    "large_1mb_64k": (_cut(LARGE, 65536), 1),
}
IMPLS = {"c": C, "py": PY}


def _frame(core, pieces):
    framer = core.NDJSONFramer()
    return [line for piece in pieces for line in framer.feed(piece)]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_frame(benchmark, case, impl):
    benchmark.group = f"ndjson:{case}"
    pieces, count = CASES[case]
    lines = benchmark(_frame, IMPLS[impl], pieces)
    assert len(lines) == count
