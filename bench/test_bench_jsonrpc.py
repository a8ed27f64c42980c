"""JSON-RPC scanner benchmarks: compiled ``scan_jsonrpc`` (``c``) against ``orjson.loads``
and the pure-Python twin (``py``).

Run: ``.venv/bin/python -m pytest bench/test_bench_jsonrpc.py --benchmark-only -q``.
Each ``jsonrpc:<size>:<order>`` group holds the three rows for one body: a ``tools/call``
of about 200 B, 10 KB or 1 MB whose routing keys (``jsonrpc``/``id``/``method``/
``params.name``) come either ``first`` or ``last`` -- after the big ``arguments``, so the
scanner must walk (and validate) all of it before it finds them.  The ``arguments`` are a
mix of what tools really get: a text field with newlines, quotes, escapes and some
non-ASCII, plus a list of small records (strings, integers, floats, booleans, null).

Targets: c at least 3x faster than orjson.loads at 10 KB and 1 MB (both orders) and at
least 20x faster than py everywhere.  ``test_targets`` (its own group, run last) checks
them on the minimum times when the whole file ran with benchmarking on.
"""

from __future__ import annotations

import importlib
import os

import orjson
import pytest

C = importlib.import_module(os.environ.get("MCPFAST_CORE_MODULE", "mcpfast.wire._core"))
PY = importlib.import_module("mcpfast.wire._core_py")

TOOL = "search_documents"
PARAGRAPH = (
    'The gateway reads "tools/call" bodies it forwards.\n'
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit \u2014 d\u00e9j\u00e0 vu, na\u00efve, "
    "\u65e5\u672c\u8a9e.\tC:\\temp\\x.txt\n"
)


def _record(k: int) -> dict:
    return {"id": k, "title": f"document {k}", "score": k * 0.125, "tags": ["a", "bc"], "ok": k % 3 == 0, "parent": None}


def _arguments(target: int) -> bytes:
    """``arguments`` JSON of about ``target`` bytes: half text, half records."""
    if target < 400:
        return orjson.dumps({"query": "weather in Paris this weekend", "limit": 5, "units": "metric", "lang": "en-GB"})
    unit = len(orjson.dumps(PARAGRAPH)) - 2
    text = (PARAGRAPH * (target // 2 // unit + 1))[: len(PARAGRAPH) * (target // 2) // unit]
    args = {"query": "quarterly report", "context": text, "results": []}
    k = 0
    while len(orjson.dumps(args)) < target:
        args["results"].extend(_record(k + j) for j in range(max(1, (target - len(orjson.dumps(args))) // 120)))
        k = len(args["results"])
    return orjson.dumps(args)


def _body(size: int, order: str) -> bytes:
    head = b'"jsonrpc":"2.0","id":42,"method":"tools/call"'
    name = b'"name":"' + TOOL.encode() + b'"'
    overhead = len(head) + len(name) + 30
    args = _arguments(size - overhead)
    if order == "first":
        return b"{" + head + b',"params":{' + name + b',"arguments":' + args + b"}}"
    return b'{"params":{"arguments":' + args + b"," + name + b'},"method":"tools/call","id":42,"jsonrpc":"2.0"}'


SIZES = {"200B": 200, "10KB": 10_000, "1MB": 1_000_000}
ORDERS = ("first", "last")
BODIES = {(s, o): _body(n, o) for s, n in SIZES.items() for o in ORDERS}


def _check(body: bytes) -> None:
    """Both scanners agree with orjson on the body before anything is timed."""
    doc = orjson.loads(body)
    for core in (C, PY):
        env = core.scan_jsonrpc(body)
        assert (env.kind, env.method, env.id, env.name) == (core.KIND_REQUEST, doc["method"], doc["id"], doc["params"]["name"])
        assert orjson.loads(body[slice(*env.params_span)]) == doc["params"]


IMPLS = {"c": C.scan_jsonrpc, "orjson": orjson.loads, "py": PY.scan_jsonrpc}
RESULTS: dict[tuple[str, str, str], float] = {}  # (size, order, impl) -> min seconds


def _make(size: str, order: str, impl: str):
    body = BODIES[size, order]
    fn = IMPLS[impl]

    @pytest.mark.benchmark(group=f"jsonrpc:{size}:{order}")
    def bench(benchmark):
        _check(body)
        benchmark.extra_info["bytes"] = len(body)
        benchmark(fn, body)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            RESULTS[size, order, impl] = stats.stats.min

    bench.__name__ = f"test_{size}_{order}__{impl}"
    return bench


for _size in SIZES:
    for _order in ORDERS:
        for _impl in IMPLS:
            globals()[f"test_{_size}_{_order}__{_impl}"] = _make(_size, _order, _impl)


@pytest.mark.benchmark(group="jsonrpc:targets")
def test_targets(benchmark):
    """c >= 3x orjson at 10 KB and 1 MB, c >= 20x py: on the minimum times measured above."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if len(RESULTS) < len(SIZES) * len(ORDERS) * len(IMPLS):
        pytest.skip("needs every jsonrpc benchmark of this file to have run with timing on")
    lines, misses = [], []
    for size in SIZES:
        for order in ORDERS:
            c, fast, py = (RESULTS[size, order, impl] for impl in IMPLS)
            lines.append(f"{size:>5} {order:>5}: c {c * 1e6:10.2f} us  orjson/c {fast / c:6.1f}x  py/c {py / c:7.1f}x")
            if size != "200B" and fast / c < 3:
                misses.append(f"{size} {order}: orjson/c {fast / c:.1f}x < 3x")
            if py / c < 20:
                misses.append(f"{size} {order}: py/c {py / c:.1f}x < 20x")
    benchmark.extra_info["ratios"] = lines
    print("\n" + "\n".join(lines))
    assert not misses, misses
