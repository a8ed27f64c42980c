"""JSON-RPC error codes and error bodies: one definition, valid output.

- Every numeric JSON-RPC error code (-32xxx) in the package's Python code is written in
  ``mcpfast/wire/rpcerrors.py`` or in the core (which raises its own two codes), nowhere else:
  other modules name the code.  The scan is shown to catch a literal and to pass over
  comments and strings, on a small tree written here.
- ``jsonrpc_error_body`` gives a valid JSON-RPC 2.0 error for hostile messages, ids and
  data (quotes, backslashes, control characters, non-ASCII, lone surrogates): it parses
  with the standard library, orjson and the gateway's strict scanner, and carries the
  message back unchanged.
- The old import places still give the same objects.
"""

from __future__ import annotations

import io
import json
import pathlib
import tokenize

import orjson
import pytest

from mcpfast.wire import rpcerrors
from mcpfast.wire.core import KIND_ERROR, scan_jsonrpc
from mcpfast.wire.rpcerrors import jsonrpc_error_body, status_reason

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mcpfast"
# The one place for the codes, and the core (its error module and its pure-Python twin
# files), which raises -32700/-32600 itself.
# The wire layer's modules, relative to the package.
ALLOWED = {f"wire/{f}" for f in ("rpcerrors.py", "errors.py", "_core_py.py", "_jsonrpc_py.py", "_http_py.py", "_sse_py.py")}


def code_literals(source: str) -> list[tuple[int, str]]:
    """(line, literal) of each negative integer literal -32000..-32999 in ``source``'s code
    (comments and strings do not count)."""
    found = []
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]  # fmt: skip
    for a, b in zip(toks, toks[1:]):
        if a.type == tokenize.OP and a.string == "-" and b.type == tokenize.NUMBER:
            try:
                value = int(b.string, 0)
            except ValueError:
                continue
            if 32000 <= value <= 32999:
                found.append((b.start[0], "-" + b.string))
    return found


def stray_codes(package: pathlib.Path) -> list[str]:
    """Each ``file:line literal`` outside the allowed files, in mcpfast/*.py and mcpfast/*/*.py."""
    out = []
    for path in sorted(package.glob("*.py")) + sorted(package.glob("*/*.py")):
        if path.relative_to(package).as_posix() in ALLOWED:
            continue
        for line, lit in code_literals(path.read_text(encoding="utf-8")):
            out.append(f"{path.relative_to(package.parent)}:{line} {lit}")
    return out


def test_each_code_is_defined_once():
    stray = stray_codes(PACKAGE)
    assert not stray, "JSON-RPC error codes written outside the wire layer (name them from mcpfast/wire/rpcerrors.py): " + ", ".join(stray)


def test_scan_catches_a_literal_and_skips_comments_and_strings(tmp_path):
    pkg = tmp_path / "mcpfast"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "wire").mkdir()
    (pkg / "wire" / "rpcerrors.py").write_text("X = -32601\n")
    (pkg / "rpcerrors.py").write_text("X = -32601\n")  # the old place is no exception
    (pkg / "clean.py").write_text('# answers -32600\nMSG = "code -32602"\n"""-32603"""\nY = 32000 - 1\n')
    (pkg / "sub" / "bad.py").write_text("def f(ex):\n    ex.respond_error(400,\n        -32600, 'no')\n")
    (pkg / "worse.py").write_text("CODE = - 32001  # spaced\n")
    assert stray_codes(pkg) == ["mcpfast/rpcerrors.py:1 -32601", "mcpfast/worse.py:1 -32001", "mcpfast/sub/bad.py:3 -32600"]


def test_codes_are_distinct_and_in_range():
    names = [n for n in rpcerrors.__all__ if n.isupper()]
    values = [getattr(rpcerrors, n) for n in names]
    assert len(set(values)) == len(values), dict(zip(names, values))
    assert all(-32768 <= v <= -32000 for v in values)
    assert (rpcerrors.PARSE_ERROR, rpcerrors.INVALID_REQUEST, rpcerrors.METHOD_NOT_FOUND,
            rpcerrors.INVALID_PARAMS, rpcerrors.INTERNAL_ERROR) == (-32700, -32600, -32601, -32602, -32603)  # fmt: skip


def test_old_import_places_give_the_same_objects():
    from mcpfast.wire import errors
    from mcpfast.transport import listener as server
    from mcpfast.mux import merge, rewrite
    from mcpfast.policy import refusal

    assert server.jsonrpc_error_body is jsonrpc_error_body
    assert server.status_reason is status_reason
    assert errors.PARSE_ERROR == rpcerrors.PARSE_ERROR and errors.INVALID_REQUEST == rpcerrors.INVALID_REQUEST
    assert (rewrite.METHOD_NOT_FOUND, rewrite.INVALID_PARAMS, rewrite.INVALID_REQUEST, rewrite.RESOURCE_NOT_FOUND) == (
        -32601, -32602, -32600, -32002)  # fmt: skip
    assert merge.INVALID_PARAMS == merge.InvalidCursor.code == -32602
    assert (refusal.CODE_UNAUTHORIZED, refusal.CODE_FORBIDDEN, refusal.CODE_RATE_LIMITED,
            refusal.CODE_INVALID_PARAMS, refusal.CODE_SESSION_NOT_FOUND) == (-32030, -32031, -32032, -32602, -32001)  # fmt: skip


HOSTILE = [
    "",
    'say "hi"',
    '"}, "result": {"x": 1}, "id": "',
    "back\\slash \\u0000 \\n",
    "line\nbreak\r\nand\ttab",
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "nul \x00 here",
    "ünïcödé 日本語 😀 \u2028\u2029",
    "\ufeffBOM and \ufffe",
    "</script><script>alert(1)</script>",
    "x" * 100_000,
]
IDS = [None, 0, -1, 2**53, "a", 'id "quoted"', "ünï\n", ""]


def _check(body: bytes, code: int, rpc_id, message: str, data=None) -> None:
    assert isinstance(body, bytes)
    assert not any(b < 0x20 for b in body), "raw control byte in the body"
    body.decode("utf-8")  # strict UTF-8
    for parsed in (json.loads(body), orjson.loads(body)):
        want = {"code": code, "message": message}
        if data is not None:
            want["data"] = data
        assert parsed == {"jsonrpc": "2.0", "id": rpc_id, "error": want}
    env = scan_jsonrpc(body)
    assert env.kind == KIND_ERROR
    assert env.error_code == code
    assert env.id == rpc_id
    assert env.method is None and env.result_span is None


@pytest.mark.parametrize("message", HOSTILE)
@pytest.mark.parametrize("rpc_id", IDS)
def test_body_is_valid_jsonrpc_for_hostile_input(message, rpc_id):
    _check(jsonrpc_error_body(rpcerrors.INVALID_PARAMS, message, rpc_id), rpcerrors.INVALID_PARAMS, rpc_id, message)


@pytest.mark.parametrize("message", HOSTILE[:8])
def test_body_with_hostile_data(message):
    data = {message: [message, {"uri": message}], "n": 1}
    body = jsonrpc_error_body(rpcerrors.RESOURCE_NOT_FOUND, message, "r", data)
    _check(body, rpcerrors.RESOURCE_NOT_FOUND, "r", message, data)


def test_data_none_is_left_out():
    assert orjson.loads(jsonrpc_error_body(-32000, "m", 1)) == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "m"}}


def test_lone_surrogates_still_give_an_answer():
    # A "\ud800" escape decodes to a lone surrogate, which UTF-8 cannot carry.
    body = jsonrpc_error_body(rpcerrors.INVALID_PARAMS, "bad \ud800 name \udfff", "a\ud83d\ude00", {"k\udc00": ["\ud83d"]})
    _check(body, rpcerrors.INVALID_PARAMS, "a\U0001f600", "bad \ufffd name \ufffd", {"k\ufffd": ["\ufffd"]})


def test_status_reason():
    assert status_reason(200) == b"OK"
    assert status_reason(421) == b"Misdirected Request"
    assert status_reason(503) == b"Service Unavailable"
    assert status_reason(599) == b"Unknown"
    for status in (100, 200, 202, 204, 400, 401, 403, 404, 405, 406, 408, 413, 414, 415, 417, 421, 429, 431,
                   500, 501, 502, 503, 504, 505):  # fmt: skip
        reason = status_reason(status)
        assert reason and reason != b"Unknown" and all(0x20 <= c < 0x7F for c in reason)
