"""Differential and oracle tests for the JSON-RPC envelope scanner.

Two referees judge every generated body:

* the twins -- the compiled ``scan_jsonrpc`` and the pure-Python one must give the same
  outcome: equal ``Envelope`` fields (all of them), or a ``ProtocolError`` with the same
  status, code and message;
* ``orjson`` -- a body ``orjson.loads`` refuses must be a -32700; a body it accepts must
  scan (the only licensed difference: our nesting limit is 512, orjson's 1024), and the
  scanner's answers must be what the parsed document says: the kind and -32600 verdict
  follow JSON-RPC 2.0 applied to the parsed object, each decoded field equals the
  parsed field, and each span slices out JSON that parses to that very field.  orjson
  turns integers wider than 64 bits into floats; the scanner keeps them exact (see
  ``_core.pyi``), so for those the exact value comes from the standard library's
  ``json`` and orjson's float must be its rounding.

Inputs come from a seeded generator (``BodyGen``) -- random requests, notifications,
responses, errors and batches, with random key order, extra and duplicate keys, trap
keys (``method``/``id``/``name`` nested in params, in strings, escaped), random nested
values, random whitespace and random string escapes -- plus mutated copies of them
(bytes cut, inserted, replaced, duplicated), every prefix of some of them, and a
token soup, and a hypothesis strategy of its own for shrinkable failures.  A default run
pushes about 225,000 inputs through both scanners (120,000 generated bodies and
mutants, 60,000 prefixes, 40,000 token sequences, plus the smaller tests).
"""

from __future__ import annotations

import json
import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.errors import INVALID_REQUEST, PARSE_ERROR, ProtocolError

FIELDS = (
    "kind", "start", "end", "method", "id", "id_span", "params_span", "name", "name_span",
    "uri", "uri_span", "cursor", "cursor_span", "progress_token", "progress_token_span",
    "request_id", "request_id_span", "protocol_version", "protocol_version_span",
    "result_span", "error_span", "error_code",
)  # fmt: skip

MAX_DEPTH = 512
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"


def outcome(core, body):
    """All an implementation says about ``body``: a tuple of fields per envelope (a list
    for a batch), or ("error", status, code, message).  Any other exception escapes."""
    try:
        got = core.scan_jsonrpc(body)
    except ProtocolError as exc:
        return ("error", exc.status, exc.code, str(exc))
    if isinstance(got, list):
        return [tuple(getattr(env, f) for f in FIELDS) for env in got]
    return tuple(getattr(got, f) for f in FIELDS)


# ---------------------------------------------------------------------------------------
# The oracle: JSON-RPC 2.0 applied to what orjson / json parsed
# ---------------------------------------------------------------------------------------


def _depth(doc) -> int:
    """Nesting depth of a parsed document (a scalar is 0, ``[]`` is 1), iteratively."""
    best, todo = 0, [(doc, 1)]
    while todo:
        value, level = todo.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        best = max(best, level)
        todo.extend((v, level + 1) for v in value)
    return best


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _message_ok(msg) -> bool:
    """JSON-RPC 2.0 §4/§5 as the contract words it, on a parsed message object."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or type(msg.get("jsonrpc")) is not str:
        return False
    if "method" in msg and not isinstance(msg["method"], str):
        return False
    if "id" in msg and not (msg["id"] is None or isinstance(msg["id"], str) or _is_int(msg["id"])):
        return False
    has_result, has_error = "result" in msg, "error" in msg
    if has_result and has_error:
        return False
    if "method" in msg:
        return not (has_result or has_error)
    return (has_result or has_error) and "id" in msg


def _same(exact, fast) -> bool:
    """orjson's value ``fast`` agrees with the exact (stdlib) value, big integers aside."""
    if _is_int(exact) and isinstance(fast, float) and not -(2**63) <= exact < 2**64:
        return fast == float(exact)
    return type(exact) is type(fast) and exact == fast


def _slice(body: bytes, span):
    return json.loads(body[span[0] : span[1]])


def _check_field(body, env, name, container, key, types):
    """``env.<name>`` / ``env.<name>_span`` against ``container[key]`` of the parsed message."""
    value, span = getattr(env, name), getattr(env, name + "_span")
    present = isinstance(container, dict) and key in container
    wanted = container.get(key) if present else None
    if not present or not any(t(wanted) for t in types):
        assert value is None and span is None, (name, value, span, wanted)
        return
    assert span is not None, (name, wanted)
    assert type(value) is type(wanted) and value == wanted, (name, value, wanted)
    assert _slice(body, span) == wanted, (name, span)
    assert body[span[0] : span[1]].strip() == body[span[0] : span[1]]


_STR = (lambda v: isinstance(v, str),)
_STR_INT = (lambda v: isinstance(v, str), _is_int)


def _check_envelope(body: bytes, env, msg) -> None:
    assert body[env.start : env.start + 1] == b"{" and body[env.end - 1 : env.end] == b"}"
    assert _slice(body, (env.start, env.end)) == msg
    if "method" in msg:
        assert env.kind == (1 if "id" in msg else 2)
    else:
        assert env.kind == (3 if "result" in msg else 4)
    assert env.method == msg.get("method")
    if "id" in msg:
        assert type(env.id) is type(msg["id"]) and env.id == msg["id"]
        assert _slice(body, env.id_span) == msg["id"]
    else:
        assert env.id is None and env.id_span is None
    params = msg.get("params")
    if isinstance(params, (dict, list)):
        assert _slice(body, env.params_span) == params
    else:
        assert env.params_span is None
    _check_field(body, env, "name", params, "name", _STR)
    _check_field(body, env, "uri", params, "uri", _STR)
    _check_field(body, env, "cursor", params, "cursor", _STR)
    _check_field(body, env, "request_id", params, "requestId", _STR_INT)
    meta = params.get("_meta") if isinstance(params, dict) else None
    _check_field(body, env, "progress_token", meta, "progressToken", _STR_INT)
    _check_field(body, env, "protocol_version", meta, PROTOCOL_VERSION_KEY, _STR)
    for key in ("result", "error"):
        span = getattr(env, key + "_span")
        if key in msg:
            assert _slice(body, span) == msg[key]
        else:
            assert span is None
    error = msg.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if _is_int(code):
        assert type(env.error_code) is int and env.error_code == code
    else:
        assert env.error_code is None


def _check_fast_values(body: bytes, env, fast) -> None:
    """The same message as orjson reads it: each decoded field equals orjson's value, and
    each span holds JSON that orjson.loads to the very value orjson gives for the field."""
    params = fast.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    error = fast.get("error")
    fields = [("method", fast, "method"), ("id", fast, "id"), ("params", fast, "params"), ("result", fast, "result"),
              ("error", fast, "error"), ("name", params, "name"), ("uri", params, "uri"), ("cursor", params, "cursor"),
              ("request_id", params, "requestId"), ("progress_token", meta, "progressToken"),
              ("protocol_version", meta, PROTOCOL_VERSION_KEY), ("error_code", error, "code")]  # fmt: skip
    assert orjson.loads(body[env.start : env.end]) == fast
    for field, container, key in fields:
        theirs = container.get(key) if isinstance(container, dict) else None
        mine = getattr(env, field, None)
        if mine is not None:
            assert _same(mine, theirs), (field, mine, theirs)
        span = getattr(env, field + "_span", None)
        if span is not None:
            assert orjson.loads(body[span[0] : span[1]]) == theirs, (field, span)


class _Pairs(list):
    """A JSON object as all its (name, value) pairs, repeats kept."""


# The members the scanner acts on, by object: a repeated one is refused.
_ACTED_ON = {
    "top": {"jsonrpc", "method", "id", "params", "result", "error"},
    "params": {"name", "uri", "cursor", "requestId", "_meta"},
    "_meta": {"progressToken", PROTOCOL_VERSION_KEY},
    "error": {"code"},
}
_INNER = {("top", "params"): "params", ("top", "error"): "error", ("params", "_meta"): "_meta"}


def _repeats_acted_on(obj, level: str) -> bool:
    names = [k for k, _ in obj if k in _ACTED_ON[level]]
    if len(names) != len(set(names)):
        return True
    return any(
        isinstance(v, _Pairs) and _repeats_acted_on(v, _INNER[(level, k)]) for k, v in obj if (level, k) in _INNER
    )


def has_repeated_member(body: bytes) -> bool:
    """Does a message of ``body`` name a member the scanner acts on twice in one object?"""
    doc = json.loads(body, object_pairs_hook=_Pairs)
    msgs = doc if isinstance(doc, list) and not isinstance(doc, _Pairs) else [doc]
    return any(isinstance(m, _Pairs) and _repeats_acted_on(m, "top") for m in msgs)


def oracle_check(body: bytes, got) -> str:
    """Hold the (already twin-checked) outcome ``got`` against orjson; return a verdict
    name for statistics: "parse", "depth", "duplicate", "invalid" or "ok"."""
    try:
        fast = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert got[:3] == ("error", 400, PARSE_ERROR), (body, got)
        return "parse"
    if isinstance(got, tuple) and got[0] == "error" and got[2] == PARSE_ERROR:
        if "duplicate member name" in got[3]:
            assert has_repeated_member(body), (body, got)
            return "duplicate"
        assert _depth(fast) > MAX_DEPTH and "nesting" in got[3], (body, got)
        return "depth"
    assert _depth(fast) <= MAX_DEPTH, body
    assert not has_repeated_member(body), (body, got)
    exact = json.loads(body)
    if isinstance(exact, list):
        valid = bool(exact) and all(_message_ok(m) for m in exact)
    else:
        valid = _message_ok(exact)
    if not valid:
        assert got[:3] == ("error", 400, INVALID_REQUEST), (body, got)
        return "invalid"
    assert not (isinstance(got, tuple) and got[0] == "error"), (body, got)
    return "ok"


def full_check(py_core, c_core, body: bytes) -> str:
    got = outcome(c_core, body)
    assert got == outcome(py_core, body), body
    verdict = oracle_check(body, got)
    if verdict == "ok":
        exact = json.loads(body)
        fast = orjson.loads(body)
        envs = c_core.scan_jsonrpc(body)
        if isinstance(exact, list):
            assert isinstance(envs, list) and len(envs) == len(exact)
            for env, msg, fmsg in zip(envs, exact, fast):
                _check_envelope(body, env, msg)
                _check_fast_values(body, env, fmsg)
        else:
            _check_envelope(body, envs, exact)
            _check_fast_values(body, envs, fast)
    return verdict


# ---------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------

WHITESPACE = (b" ", b"\n", b"\t", b"\r\n", b"  ", b" \t\r\n ")
# Keys chosen often so that every interesting key turns up in every place: at the top,
# in params, in _meta, in error, and nested where it must not count.
TRAP_KEYS = (
    "jsonrpc", "method", "id", "params", "result", "error", "name", "uri", "cursor", "_meta",
    "progressToken", "requestId", "code", PROTOCOL_VERSION_KEY, "message", "data", "arguments",
)  # fmt: skip
TEXT_CHARS = (
    "abcdefxyz0123456789 /_-.:", "\u00e9\u00fc\u00df", "\u4e2d\u6587", "\U0001f600\U00010348",
    '"\\', "\n\t\r\b\f\x00\x1f", "\x7f\u2028\ufeff", "{}[],:",
)  # fmt: skip
TRAP_STRINGS = (
    '"method":"evil"', '{"id":99}', '\\"id\\": 1', "tools/call", '","name":"x', "2.0", "",
    "\\u0022", "}]", "\U0001f600",
)  # fmt: skip
METHODS = ("tools/call", "tools/list", "resources/read", "initialize", "notifications/cancelled",
           "notifications/progress", "ping", "prompts/get", "")  # fmt: skip
NUMBERS = (
    b"0", b"-0", b"1", b"-1", b"42", b"9007199254740993", b"9223372036854775807", b"-9223372036854775808",
    b"18446744073709551615", b"18446744073709551616", b"123456789012345678901234567890",
    b"1.5", b"-0.0", b"0.25e3", b"1E+2", b"2e-7", b"1e308", b"-1.7976931348623157e308", b"4.9e-324",
    b"1e-400", b"0e999", b"1" + b"0" * 308, b"1e400", b"-1" + b"0" * 309,
)  # fmt: skip


class BodyGen:
    """Random JSON-RPC bodies as bytes, from one ``random.Random``."""

    def __init__(self, rnd: random.Random) -> None:
        self.r = rnd
        self.ws_rate = 0.0
        self.escape_rate = 0.0

    def ws(self) -> bytes:
        if self.ws_rate and self.r.random() < self.ws_rate:
            return self.r.choice(WHITESPACE)
        return b""

    # -- scalars ---------------------------------------------------------------------

    def text(self) -> str:
        r = self.r
        roll = r.random()
        if roll < 0.25:
            return r.choice(TRAP_STRINGS)
        if roll < 0.35:
            return r.choice(TRAP_KEYS)
        pool = r.choice(TEXT_CHARS) if roll < 0.7 else "".join(TEXT_CHARS)
        return "".join(r.choices(pool, k=r.randrange(0, 12)))

    def string(self, s: str) -> bytes:
        """``s`` as a JSON string, each character escaped at random where allowed."""
        r = self.r
        if not self.escape_rate or r.random() < 0.5:
            return orjson.dumps(s)
        out = [b'"']
        for ch in s:
            cp = ord(ch)
            if ch == '"' or ch == "\\" or cp < 0x20 or r.random() < self.escape_rate:
                short = {'"': b'\\"', "\\": b"\\\\", "/": b"\\/", "\b": b"\\b", "\f": b"\\f",
                         "\n": b"\\n", "\r": b"\\r", "\t": b"\\t"}.get(ch)  # fmt: skip
                if short is not None and r.random() < 0.5:
                    out.append(short)
                elif cp > 0xFFFF:
                    cp -= 0x10000
                    pair = f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"
                    out.append((pair.upper().replace("\\U", "\\u") if r.random() < 0.5 else pair).encode())
                else:
                    esc = f"{cp:04x}"
                    out.append(b"\\u" + (esc.upper() if r.random() < 0.5 else esc).encode())
            else:
                out.append(ch.encode())
        out.append(b'"')
        return b"".join(out)

    def integer(self) -> bytes:
        r = self.r
        roll = r.random()
        if roll < 0.6:
            return str(r.randrange(-5, 1000)).encode()
        if roll < 0.9:
            return str(r.randrange(-(2**70), 2**70)).encode()
        return r.choice(NUMBERS[:11])

    def scalar(self) -> bytes:
        r = self.r
        roll = r.random()
        if roll < 0.45:
            return self.string(self.text())
        if roll < 0.7:
            return self.integer()
        if roll < 0.85:  # the last two are out of double range: rare, they spoil the body
            return r.choice(NUMBERS) if r.random() < 0.03 else r.choice(NUMBERS[:-2])
        return r.choice((b"true", b"false", b"null"))

    # -- containers ------------------------------------------------------------------

    def obj(self, members: list[tuple[bytes, bytes]]) -> bytes:
        if not members:
            return b"{" + self.ws() + b"}"
        parts = [self.ws() + k + self.ws() + b":" + self.ws() + v + self.ws() for k, v in members]
        return b"{" + b",".join(parts) + b"}"

    def arr(self, items: list[bytes]) -> bytes:
        if not items:
            return b"[" + self.ws() + b"]"
        return b"[" + b",".join(self.ws() + v + self.ws() for v in items) + b"]"

    def key(self) -> bytes:
        r = self.r
        return self.string(r.choice(TRAP_KEYS) if r.random() < 0.6 else self.text())

    def value(self, budget: int) -> bytes:
        r = self.r
        roll = r.random()
        if budget <= 0 or roll < 0.5:
            return self.scalar()
        width = r.randrange(0, 5)
        if roll < 0.78:
            return self.obj([(self.key(), self.value(budget - 1)) for _ in range(width)])
        return self.arr([self.value(budget - 1) for _ in range(width)])

    def deep(self) -> bytes:
        """A value nested to around the 512 limit (both sides of it)."""
        r = self.r
        levels = r.choice((505, 508, 509, 510, 511, 512))
        opens = [r.choice((b"[", b'{"k":')) for _ in range(levels)]
        closes = [b"]" if o == b"[" else b"}" for o in reversed(opens)]
        return b"".join(opens) + b"1" + b"".join(closes)

    # -- messages --------------------------------------------------------------------

    def maybe(self, p: float) -> bool:
        return self.r.random() < p

    def odd(self, good: bytes, bad_rate: float = 0.04) -> bytes:
        """``good`` most of the time, else a value of some other JSON type."""
        return self.value(1) if self.maybe(bad_rate) else good

    def meta(self) -> bytes:
        members = []
        if self.maybe(0.7):
            members.append((self.string("progressToken"), self.odd(self.integer() if self.maybe(0.5) else self.string(self.text()), 0.1)))
        if self.maybe(0.4):
            members.append((self.string(PROTOCOL_VERSION_KEY), self.odd(self.string("2025-06-18"), 0.1)))
        members += [(self.key(), self.value(2)) for _ in range(self.r.randrange(0, 3))]
        self.r.shuffle(members)
        return self.obj(members)

    def params(self) -> bytes:
        r = self.r
        if self.maybe(0.05):
            return self.arr([self.value(2) for _ in range(r.randrange(0, 4))])
        members = []
        for key in ("name", "uri", "cursor"):
            if self.maybe(0.35):
                members.append((self.string(key), self.odd(self.string(self.text()), 0.1)))
        if self.maybe(0.2):
            members.append((self.string("requestId"), self.odd(self.integer() if self.maybe(0.5) else self.string(self.text()), 0.1)))
        if self.maybe(0.4):
            members.append((self.string("_meta"), self.odd(self.meta(), 0.08)))
        if self.maybe(0.5):  # what tools/call really carries, with traps inside
            members.append((self.string("arguments"), self.value(4)))
        members += [(self.key(), self.value(3)) for _ in range(r.randrange(0, 3))]
        if members and self.maybe(0.15):  # a repeated key: the last one wins
            k, _ = r.choice(members)
            members.append((k, self.value(1) if self.maybe(0.5) else self.string(self.text())))
        r.shuffle(members)
        return self.obj(members)

    def message(self) -> bytes:
        r = self.r
        kind = r.choice(("request", "request", "notification", "response", "error"))
        members = []
        version = b'"2.0"'
        if self.maybe(0.05):
            version = r.choice((b'"\\u0032.0"', b'"2\\u002e0"', b'"1.0"', b"2.0", b'"2.0 "', b"null"))
        if not self.maybe(0.02):
            members.append((self.string("jsonrpc"), version))
        if kind in ("request", "notification") or self.maybe(0.03):
            method = self.string(r.choice(METHODS) if self.maybe(0.8) else self.text())
            members.append((self.string("method"), self.odd(method, 0.03)))
        if (kind != "notification" or self.maybe(0.03)) and not self.maybe(0.02):
            ident = r.choice((self.integer(), self.string(self.text()), b"null"))
            members.append((self.string("id"), self.odd(ident, 0.04)))
        if kind in ("request", "notification") and self.maybe(0.85):
            members.append((self.string("params"), self.params() if self.maybe(0.95) else self.value(1)))
        if kind == "response" or self.maybe(0.02):
            members.append((self.string("result"), self.value(4)))
        if kind == "error" or self.maybe(0.02):
            err = [(self.string("code"), self.odd(self.integer(), 0.1)), (self.string("message"), self.string(self.text()))]
            if self.maybe(0.3):
                err.append((self.string("data"), self.value(3)))
            r.shuffle(err)
            members.append((self.string("error"), self.obj(err) if self.maybe(0.95) else self.value(1)))
        members += [(self.key(), self.value(3)) for _ in range(r.randrange(0, 3))]
        if members and self.maybe(0.1):
            k, _ = r.choice(members)
            members.append((k, self.value(2)))
        r.shuffle(members)
        return self.obj(members)

    def body(self) -> bytes:
        """One body: a message (mostly), a batch, a deep value or some other JSON text."""
        r = self.r
        self.ws_rate = r.choice((0.0, 0.0, 0.2, 0.6))
        self.escape_rate = r.choice((0.0, 0.0, 0.05, 0.3))
        roll = r.random()
        if roll < 0.8:
            text = self.message()
        elif roll < 0.95:
            count = r.randrange(1, 5) if self.maybe(0.95) else 0
            items = [self.message() if self.maybe(0.95) else self.value(1) for _ in range(count)]
            text = self.arr(items)
        elif roll < 0.97:
            text = self.obj([(self.string("jsonrpc"), b'"2.0"'), (self.string("id"), b"1"), (self.string("result"), self.deep())])
        else:
            text = self.value(3)
        return self.ws() + text + self.ws()


MUTATION_TOKENS = (
    b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b" ", b"0", b"-", b".", b"e", b"+",
    b"\\u", b"\\ud800", b"\\udc00", b"\\u00", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3", b"\xe2\x82",
    b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\xff", b"true", b"nul", b'"method":', b'"id":', b'"params":{',
    b"\xef\xbb\xbf", b"\x0c", b"1e400",
)  # fmt: skip


def mutate(body: bytes, r: random.Random) -> bytes:
    buf = bytearray(body)
    for _ in range(r.randrange(1, 4)):
        i = r.randrange(len(buf) + 1)
        op = r.randrange(6)
        if op == 0 and buf:
            del buf[i : i + r.randrange(1, 6)]
        elif op == 1:
            buf[i:i] = r.choice(MUTATION_TOKENS)
        elif op == 2 and i < len(buf):
            buf[i] = r.randrange(256)
        elif op == 3:
            j = r.randrange(len(buf) + 1)
            buf[i:i] = buf[j : j + r.randrange(1, 12)]
        elif op == 4:
            del buf[i:]
        elif i < len(buf):  # swap a structural byte for another
            buf[i] = r.choice(b'{}[]":,')
    return bytes(buf)


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------

SEEDED_BODIES = 40_000  # each checked whole and as 2 mutants: 120,000 inputs


def test_generated_bodies(py_core, c_core):
    """Seeded volume: generated bodies and their mutants through both twins and orjson."""
    r = random.Random(0x4A52)
    gen = BodyGen(r)
    counts = {"parse": 0, "depth": 0, "duplicate": 0, "invalid": 0, "ok": 0}
    inputs = 0
    for _ in range(SEEDED_BODIES):
        body = gen.body()
        counts[full_check(py_core, c_core, body)] += 1
        for _ in range(2):
            counts[full_check(py_core, c_core, mutate(body, r))] += 1
        inputs += 3
    assert inputs >= 100_000
    # The generator must keep exercising every verdict, not drift into one of them.
    assert counts["ok"] > inputs // 5 and counts["invalid"] > inputs // 50
    assert counts["parse"] > inputs // 5 and counts["depth"] > 0 and counts["duplicate"] > 0


def test_generated_prefixes(py_core, c_core):
    """Every prefix of a valid body is a -32700 or a valid parse (a prefix like ``{..}``
    of ``{..} ``), the same in both twins, never another exception."""
    r = random.Random(7)
    gen = BodyGen(r)
    checked = 0
    while checked < 60_000:
        body = gen.body()
        if len(body) > 600:
            continue
        for cut in range(len(body)):
            got = outcome(c_core, body[:cut])
            assert got == outcome(py_core, body[:cut]), body[:cut]
            if isinstance(got, tuple) and got[0] == "error":
                assert got[2] in (PARSE_ERROR, INVALID_REQUEST)
                if got[2] == INVALID_REQUEST:  # only a complete JSON text can be judged
                    orjson.loads(body[:cut])
            checked += 1


SOUP = (
    b"{", b"}", b"[", b"]", b",", b":", b" ", b"\n", b'"', b'"jsonrpc"', b'"2.0"', b'"method"', b'"id"',
    b'"params"', b'"name"', b'"_meta"', b'"progressToken"', b'"result"', b'"error"', b'"code"', b'"x"',
    b"1", b"-0", b"2.5e3", b"true", b"null", b'"\\u00e9"', b'"\\ud83d\\ude00"', b'"\xc3\xa9"', b"\\", b"\xff",
)  # fmt: skip


def test_token_soup(py_core, c_core):
    """JSON-ish token sequences: they reach every state of both walkers with every
    next token, and a fair share of them are valid JSON or valid messages."""
    r = random.Random(99)
    counts = {"parse": 0, "depth": 0, "duplicate": 0, "invalid": 0, "ok": 0}
    head = (b'{"jsonrpc":"2.0",', b"[", b"{", b"")
    for _ in range(40_000):
        body = r.choice(head) + b"".join(r.choices(SOUP, k=r.randrange(0, 16)))
        counts[full_check(py_core, c_core, body)] += 1
    assert counts["ok"] + counts["invalid"] > 100


def test_buffer_types_agree(py_core, c_core):
    """bytes, bytearray and memoryview bodies give identical envelopes."""
    gen = BodyGen(random.Random(11))
    for _ in range(2000):
        body = gen.body()
        want = outcome(c_core, body)
        for wrapped in (bytearray(body), memoryview(body), memoryview(bytearray(body))):
            assert outcome(c_core, wrapped) == want
            assert outcome(py_core, wrapped) == want


# -- hypothesis: the same properties on shrinkable input ---------------------------------

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_json_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(TRAP_KEYS) | _json_text, inner, max_size=4),
    max_leaves=12,
)
_ids = st.none() | st.integers() | _json_text
_params = st.fixed_dictionaries(
    {},
    optional={
        "name": _json_text | _json_values,
        "uri": _json_text,
        "cursor": _json_text,
        "requestId": _ids,
        "_meta": st.fixed_dictionaries({}, optional={"progressToken": _ids, PROTOCOL_VERSION_KEY: _json_text | _json_values}),
        "arguments": _json_values,
        "method": _json_values,
        "id": _json_values,
    },
)
_messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | _json_values},
    optional={
        "method": st.sampled_from(METHODS) | _json_text | _json_values,
        "id": _ids | _json_values,
        "params": _params | _json_values,
        "result": _json_values,
        "error": st.fixed_dictionaries({"code": st.integers() | _json_values, "message": _json_text}) | _json_values,
        "extra": _json_values,
    },
)


@st.composite
def encoded(draw, doc_strategy):
    """A document drawn from ``doc_strategy``, encoded with random key order, random
    whitespace and random string escapes."""
    doc = draw(doc_strategy)
    seed = draw(st.integers(0, 2**32 - 1))
    gen = BodyGen(random.Random(seed))
    gen.ws_rate = draw(st.sampled_from((0.0, 0.3, 1.0)))
    gen.escape_rate = draw(st.sampled_from((0.0, 0.2, 1.0)))

    def enc(value) -> bytes:
        if isinstance(value, dict):
            items = list(value.items())
            gen.r.shuffle(items)
            return gen.obj([(gen.string(k), enc(v)) for k, v in items])
        if isinstance(value, list):
            return gen.arr([enc(v) for v in value])
        if isinstance(value, str):
            return gen.string(value)
        if isinstance(value, float):
            return repr(value).encode() if math.isfinite(value) else b"0"
        return orjson.dumps(value) if not _is_int(value) or -(2**63) <= value < 2**64 else str(value).encode()

    return gen.ws() + enc(doc) + gen.ws()


@SETTINGS
@given(body=encoded(_messages | st.lists(_messages, max_size=3)))
def test_hypothesis_messages(py_core, c_core, body):
    assert full_check(py_core, c_core, body) in ("ok", "invalid")


@SETTINGS
@given(body=encoded(_messages), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_mutants(py_core, c_core, body, seed):
    full_check(py_core, c_core, mutate(body, random.Random(seed)))


@SETTINGS
@given(body=st.binary(max_size=64) | st.lists(st.sampled_from(MUTATION_TOKENS + (b"{", b'"jsonrpc"', b'"2.0"', b"1")), max_size=24).map(b"".join))
def test_hypothesis_noise(py_core, c_core, body):
    full_check(py_core, c_core, body)


@pytest.mark.parametrize("seed", range(4))
def test_large_bodies(py_core, c_core, seed):
    """Big bodies (long strings, wide arrays) cross the SIMD/word loop boundaries."""
    r = random.Random(seed)
    gen = BodyGen(r)
    for _ in range(30):
        text = "".join(r.choices("abc \u00e9\U0001f600\"\\\n", k=r.randrange(0, 3000)))
        args = orjson.dumps({"text": text, "list": list(range(r.randrange(0, 500)))})
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":' + args + b',"name":' + gen.string(text[:40]) + b"}}"
        assert full_check(py_core, c_core, body) == "ok"
        for _ in range(5):
            full_check(py_core, c_core, mutate(body, r))
