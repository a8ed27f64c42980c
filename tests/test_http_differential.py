"""Differential tests: the compiled HTTP parsers against the pure-Python twin, and both
against ``httptools`` (llhttp) on valid requests.

Both cores get the same input in the same ``feed`` pieces and must give the same
outcome: the same callbacks with the same values (body chunks included, down to their
type, since zero-copy views follow the same rules) after each ``feed`` call, the same
``in_message`` after each call, and the same ``ProtocolError`` (status and message) at
the same call.  Inputs are generated MCP-shaped requests and responses -- pipelined,
with every framing, with random limits -- then mutated byte-wise and line-wise, plus
token soups and raw random bytes.  Anything but ``ProtocolError`` escaping ``feed`` /
``feed_eof`` fails the test (the fuzz invariant), and every input is bounded in time.

The seeded loops push well over 100,000 inputs through both cores in a default run;
the hypothesis tests search around the same generators.
"""

from __future__ import annotations

import random
import time

import httptools
import pytest
from feeding import random_chunks
from http_events import REQUEST_ATTRS, RESPONSE_ATTRS, Recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.errors import ProtocolError

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- generating messages ---------------------------------------------------------------------

KNOWN_METHODS = [b"GET", b"POST", b"POST", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]
ODD_METHODS = [b"M-SEARCH", b"get", b"X_Custom!~", b"BREW"]
TARGETS = [b"/", b"/mcp", b"/mcp", b"/mcp?session=1&x=%20y", b"/a/b;c?d=e", b"http://gw.example:8080/mcp",
           b"/~u/$&'()*+,;=:@!", b"/" + b"p" * 40]  # fmt: skip
TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHARS = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))
OWS = [b"", b"", b" ", b" ", b"\t", b"  ", b" \t "]
MCP_VALUES = {
    b"Content-Type": [b"application/json", b"text/event-stream", b"application/json; charset=utf-8"],
    b"Accept": [b"application/json, text/event-stream", b"*/*", b"text/event-stream"],
    b"Authorization": [b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", b"Basic dTpw"],
    b"Origin": [b"https://app.example", b"null", b"http://localhost:3000"],
    b"Mcp-Session-Id": [b"3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c", b"s-1"],
    b"MCP-Protocol-Version": [b"2025-06-18", b"2025-11-25", b"2025-03-26"],
    b"Mcp-Method": [b"tools/call", b"initialize", b"notifications/initialized"],
    b"Mcp-Name": [b"search", b"weather.get"],
    b"Last-Event-ID": [b"17", b"0-ab", b""],
    b"User-Agent": [b"mcp-client/1.0 (python-httpx/0.27)", b"node"],
    b"Cache-Control": [b"no-cache", b"no-store, max-age=0"],
}
SINGLETONS = [b"Content-Type", b"Authorization", b"Origin", b"Mcp-Session-Id", b"MCP-Protocol-Version",
              b"Mcp-Method", b"Mcp-Name", b"Last-Event-ID"]  # fmt: skip


def rand_case(name: bytes, rnd: random.Random) -> bytes:
    r = rnd.random()
    if r < 0.6:
        return name
    if r < 0.7:
        return name.lower()
    if r < 0.8:
        return name.upper()
    return bytes(c ^ 0x20 if 0x61 <= (c | 0x20) <= 0x7A and rnd.random() < 0.5 else c for c in name)


def rand_value(rnd: random.Random, strict: bool) -> bytes:
    alphabet = VCHARS + b"  \t" + (b"" if strict else OBS_TEXT[:8])
    return bytes(rnd.choices(alphabet, k=rnd.randrange(0, 24))).strip(b" \t")


def rand_name(rnd: random.Random) -> bytes:
    return b"X-" + bytes(rnd.choices(TCHARS, k=rnd.randrange(1, 12)))


def field_line(name: bytes, value: bytes, rnd: random.Random, strict: bool = False) -> bytes:
    # llhttp does not recognise "chunked" followed by OWS: strict input has none there.
    trailing = b"" if strict and name.lower() == b"transfer-encoding" else rnd.choice(OWS)
    return name + b":" + rnd.choice(OWS) + value + trailing + b"\r\n"


def gen_fields(rnd: random.Random, strict: bool, count: int) -> list[tuple[bytes, bytes]]:
    """Fields with MCP names (each singleton at most once) and random extension fields."""
    fields = []
    used = set()
    for _ in range(count):
        if rnd.random() < 0.6:
            name = rnd.choice(list(MCP_VALUES))
            if name in SINGLETONS:
                if name in used:
                    continue
                used.add(name)
            fields.append((rand_case(name, rnd), rnd.choice(MCP_VALUES[name])))
        else:
            fields.append((rand_name(rnd), rand_value(rnd, strict)))
    return fields


def gen_chunked(rnd: random.Random, strict: bool) -> tuple[bytes, bytes, list]:
    """(wire bytes, body, trailers) of a chunked body."""
    out, body = [], b""
    for _ in range(rnd.randrange(0, 4)):
        data = rnd.randbytes(rnd.randrange(1, 30))
        size = b"%x" % len(data)
        if rnd.random() < 0.3:
            size = size.upper()
        if not strict and rnd.random() < 0.2:
            size = b"0" * rnd.randrange(1, 4) + size
        out.append(size + gen_chunk_ext(rnd, strict) + b"\r\n" + data + b"\r\n")
        body += data
    trailers = gen_fields(rnd, strict, rnd.randrange(0, 3)) if rnd.random() < 0.4 else []
    out.append(b"0" + gen_chunk_ext(rnd, strict) + b"\r\n")
    out.extend(n + b": " + v + b"\r\n" for n, v in trailers)
    out.append(b"\r\n")
    return b"".join(out), body, trailers


def gen_chunk_ext(rnd: random.Random, strict: bool) -> bytes:
    if rnd.random() < 0.7:
        return b""
    parts = []
    for _ in range(rnd.randrange(1, 3)):
        bws = (lambda: b"") if strict else (lambda: rnd.choice([b"", b" ", b"\t"]))
        ext = bws() + b";" + bws() + bytes(rnd.choices(TCHARS, k=rnd.randrange(1, 6)))
        if rnd.random() < 0.6:
            if rnd.random() < 0.5:
                val = bytes(rnd.choices(TCHARS, k=rnd.randrange(1, 6)))
            else:
                val = b'"' + bytes(rnd.choices(b"abc =;,\t\\\"", k=rnd.randrange(0, 6))).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            ext += bws() + b"=" + bws() + val
        parts.append(ext)
    return b"".join(parts)


def gen_request(rnd: random.Random, strict: bool = False) -> tuple[bytes, dict]:
    """One valid request and what it must parse to: method, target, headers, body, trailers."""
    method = rnd.choice(KNOWN_METHODS if strict or rnd.random() < 0.9 else ODD_METHODS)
    target = b"*" if method == b"OPTIONS" and rnd.random() < 0.3 else rnd.choice(TARGETS)
    version = b"1.1" if strict or rnd.random() < 0.85 else b"1.0"
    fields = gen_fields(rnd, strict, rnd.randrange(0, 9))
    if version == b"1.1" or rnd.random() < 0.5:
        fields.insert(rnd.randrange(len(fields) + 1), (rand_case(b"Host", rnd), b"gw.example:8080"))
    if rnd.random() < 0.2:
        conn = rnd.choice([b"keep-alive", b"close", b"Keep-Alive, foo"])
        fields.insert(rnd.randrange(len(fields) + 1), (rand_case(b"Connection", rnd), conn))
    if rnd.random() < 0.1 and not strict:
        fields.append((b"Expect", rnd.choice([b"100-continue", b"100-Continue"])))
    framing = rnd.random()
    body, trailers, wire_body = b"", None, b""
    if framing < 0.45 and (method != b"HEAD" or not strict):
        body = rnd.randbytes(rnd.randrange(0, 60))
        cl = b"%d" % len(body)
        if not strict and rnd.random() < 0.15:
            cl = rnd.choice([b"0" + cl, cl + b", " + cl])
        fields.insert(rnd.randrange(len(fields) + 1), (rand_case(b"Content-Length", rnd), cl))
        if not strict and rnd.random() < 0.1:
            fields.append((b"Content-Length", cl))  # identical duplicate
        wire_body = body
    elif framing < 0.75 and version == b"1.1" and (method != b"HEAD" or not strict):
        te = b"chunked" if strict or rnd.random() < 0.8 else rnd.choice([b"Chunked", b"chunked,", b", chunked"])
        fields.insert(rnd.randrange(len(fields) + 1), (rand_case(b"Transfer-Encoding", rnd), te))
        wire_body, body, trailers = gen_chunked(rnd, strict)
    lead = b"\r\n" * rnd.choice([0, 0, 0, 1, 2]) if not strict else b""
    head = lead + method + b" " + target + b" HTTP/" + version + b"\r\n"
    head += b"".join(field_line(n, v, rnd, strict) for n, v in fields) + b"\r\n"
    info = {"method": method, "target": target, "headers": fields, "body": body, "trailers": trailers}
    return head + wire_body, info


INTERIM = [100, 102, 103]
FINAL = [200, 200, 200, 201, 202, 204, 304, 400, 404, 500, 503]


def gen_response(rnd: random.Random, last: bool) -> bytes:
    out = []
    for _ in range(rnd.choice([0, 0, 0, 1, 2])):
        fields = gen_fields(rnd, False, rnd.randrange(0, 3))
        out.append(b"HTTP/1.1 %d Interim\r\n" % rnd.choice(INTERIM) + b"".join(field_line(n, v, rnd) for n, v in fields) + b"\r\n")
    status = rnd.choice(FINAL)
    version = b"1.1" if rnd.random() < 0.85 else b"1.0"
    reason = rnd.choice([b" OK", b" ", b"", b" Not Found", b" Some  reason\twith tab", b" \xc3\xa9"])
    fields = gen_fields(rnd, False, rnd.randrange(0, 7))
    if rnd.random() < 0.2:
        fields.insert(rnd.randrange(len(fields) + 1), (b"Connection", rnd.choice([b"keep-alive", b"close"])))
    framing = rnd.random()
    wire_body = b""
    if framing < 0.5:
        body = rnd.randbytes(rnd.randrange(0, 60))
        fields.insert(rnd.randrange(len(fields) + 1), (rand_case(b"Content-Length", rnd), b"%d" % len(body)))
        wire_body = body if status not in (204, 304) else b""
    elif framing < 0.85 or not last:
        fields.insert(rnd.randrange(len(fields) + 1), (rand_case(b"Transfer-Encoding", rnd), rnd.choice([b"chunked", b"gzip, chunked"])))
        wire_body = gen_chunked(rnd, False)[0] if status not in (204, 304) else b""
    elif framing < 0.92:
        fields.append((b"Transfer-Encoding", b"gzip"))  # read until close
        wire_body = rnd.randbytes(rnd.randrange(0, 40))
    else:
        wire_body = rnd.randbytes(rnd.randrange(0, 40))  # no framing: read until close
    out.append(b"HTTP/" + version + b" %d" % status + reason + b"\r\n")
    out.append(b"".join(field_line(n, v, rnd) for n, v in fields) + b"\r\n" + wire_body)
    return b"".join(out)


def gen_stream(rnd: random.Random, kind: str) -> bytes:
    count = rnd.choice([1, 1, 2, 3])
    if kind == "request":
        return b"".join(gen_request(rnd)[0] for _ in range(count))
    return b"".join(gen_response(rnd, i == count - 1) for i in range(count))


TOKENS = [
    b"\r\n", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b": ", b";", b",", b"\"", b"\\", b"=", b"/", b"0", b"1", b"9",
    b"a", b"f", b"F", b"g", b"ff", b"-", b"\x00", b"\x0b", b"\x7f", b"\x80", b"\xff", b"chunked", b"gzip", b"close",
    b"keep-alive", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"GET", b"POST ", b"/mcp", b"100-continue",
    b"Host: h\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n", b"Content-Length: 5, 6\r\n",
    b"Content-Length: 99999999999999999999\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"Expect: x\r\n", b"Mcp-Session-Id: s\r\n", b" folded\r\n",
    b"0\r\n\r\n", b"5\r\nhello\r\n", b"\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 101 Switching\r\n\r\n",
    b"ffffffffffffffff\r\n", b"10000000000000000\r\n",
]  # fmt: skip


FIELD_LINES = [
    b"Content-Length: 5", b"Content-Length: 0", b"Content-Length: 5, 6", b"Content-Length: 99999999999999999999",
    b"Content-Length: -1", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, chunked", b"Transfer-Encoding: chunked, gzip", b"Connection: close", b"Host: h",
    b"Expect: 100-continue", b"Expect: x", b"Mcp-Session-Id: s", b"Content-Type: a", b" folded", b"X-Bad : v",
]  # fmt: skip


def mutate(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randrange(1, 5)):
        i = rnd.randrange(len(buf) + 1)
        op = rnd.randrange(10)
        if op == 0 and i < len(buf):
            buf[i] ^= 1 << rnd.randrange(8)  # flip a bit
        elif op == 1 and i < len(buf):
            buf[i] = rnd.randrange(256)
        elif op == 2:
            token = rnd.choice(TOKENS)
            if rnd.random() < 0.02:
                token *= rnd.randrange(100, 3000)  # a long run: limits, digit counts
            buf[i:i] = token
        elif op == 3 and buf:
            del buf[i : i + rnd.randrange(1, 6)]
        elif op == 4:
            j = rnd.randrange(len(buf) + 1)
            buf[i:i] = buf[j : j + rnd.randrange(1, 30)]  # duplicate a stretch
        elif op == 5 or op == 6:
            # Line-wise: duplicate, drop or swap whole lines (header fields mostly).
            lines = bytes(buf).split(b"\r\n")
            if len(lines) > 2:
                k = rnd.randrange(1, len(lines) - 1)
                if op == 5:
                    lines.insert(k, lines[k])
                elif rnd.random() < 0.5:
                    del lines[k]
                else:
                    m = rnd.randrange(1, len(lines) - 1)
                    lines[k], lines[m] = lines[m], lines[k]
                buf = bytearray(b"\r\n".join(lines))
        elif op == 7:
            k = buf.find(b"\r\n", i)
            if k >= 0:
                del buf[k]  # CRLF -> bare LF
        elif op == 8:
            k = buf.find(b"\r\n", i)
            if k >= 0:
                buf[k + 2 : k + 2] = rnd.choice(FIELD_LINES) + b"\r\n"  # a field line at a line start
        else:
            # Change a digit: lengths and chunk sizes no longer agree with the data.
            digits = [k for k, c in enumerate(buf) if 48 <= c <= 57]
            if digits:
                buf[rnd.choice(digits)] = rnd.randrange(48, 58)
    return bytes(buf)


def rand_limits(rnd: random.Random, kind: str) -> dict:
    if rnd.random() < 0.75:
        return {}
    limits = {"max_header_bytes": rnd.randrange(1, 400), "max_headers": rnd.randrange(0, 12)}
    if kind == "request":
        limits["max_target_bytes"] = rnd.randrange(1, 60)
        limits["max_body_bytes"] = rnd.randrange(0, 100)
    for key in list(limits):
        if rnd.random() < 0.4:
            del limits[key]
    return limits


# -- running both cores ----------------------------------------------------------------------


def snapshot(events: list) -> list:
    out = []
    for kind, payload in events:
        if kind in ("head", "interim"):
            names = REQUEST_ATTRS if hasattr(payload, "target") else RESPONSE_ATTRS
            out.append((kind, tuple(getattr(payload, n) for n in names)))
        elif kind == "body":
            out.append(("body", type(payload).__name__, bytes(payload)))
        else:
            out.append((kind, payload))
    events.clear()
    return out


def outcome(core, kind: str, pieces, limits: dict, head_request: bool = False, eof: bool = True) -> list:
    """What each call gave: the callbacks it made and ``in_message`` after it; then
    ``("error", status, message)`` if one raised ``ProtocolError``."""
    rec = Recorder()
    parser = (core.RequestParser if kind == "request" else core.ResponseParser)(rec, **limits)
    if head_request:
        parser.expect_head_response()
    calls = []
    try:
        for piece in pieces:
            parser.feed(piece)
            calls.append((snapshot(rec.events), parser.in_message))
        if eof:
            parser.feed_eof()
            calls.append((snapshot(rec.events), parser.in_message))
    except ProtocolError as exc:
        calls.append((snapshot(rec.events), ("error", exc.status, str(exc))))
        assert exc.status in ((400, 413, 414, 417, 431, 501, 505) if kind == "request" else (502,))
        with pytest.raises(RuntimeError):
            parser.feed(b"x")
    return calls


def compare(c_core, py_core, kind, pieces, limits, head_request=False) -> list:
    start = time.perf_counter()
    got = outcome(c_core, kind, pieces, limits, head_request)
    assert got == outcome(py_core, kind, pieces, limits, head_request), (kind, pieces, limits, head_request)
    assert time.perf_counter() - start < 2.0, "parsing one small input took too long"
    return got


def cut(data: bytes, rnd: random.Random) -> list[bytes]:
    r = rnd.random()
    if r < 0.15:
        return [data]
    if r < 0.25 and len(data) <= 1000:
        return [data[i : i + 1] for i in range(len(data))]
    return random_chunks(data, rnd, max_pieces=rnd.choice([3, 8, 30]))


def make_input(rnd: random.Random, kind: str, shape: int) -> bytes:
    if shape == 0:
        return gen_stream(rnd, kind)
    if shape in (1, 2, 3):
        return mutate(gen_stream(rnd, kind), rnd)
    if shape == 4:
        return b"".join(rnd.choices(TOKENS, k=rnd.randrange(0, 30)))
    return rnd.randbytes(rnd.randrange(0, 60))


# -- hypothesis ------------------------------------------------------------------------------

seeds = st.integers(0, 2**64)
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


@SETTINGS
@given(seed=seeds, shape=st.integers(0, 5), split_seed=seeds, limit_seed=seeds, head_request=st.booleans())
def test_differential_generated(c_core, py_core, seed, shape, split_seed, limit_seed, head_request):
    for kind in ("request", "response"):
        data = make_input(random.Random(seed), kind, shape)
        limits = rand_limits(random.Random(limit_seed), kind)
        compare(c_core, py_core, kind, cut(data, random.Random(split_seed)), limits, head_request and kind == "response")


@SETTINGS
@given(data=st.one_of(token_soup, st.binary(max_size=120)), split_seed=seeds, head_request=st.booleans())
def test_differential_soup(c_core, py_core, data, split_seed, head_request):
    for kind in ("request", "response"):
        for prefix in (b"", b"GET / HTTP/1.1\r\n" if kind == "request" else b"HTTP/1.1 200 OK\r\n"):
            compare(c_core, py_core, kind, cut(prefix + data, random.Random(split_seed)), {}, head_request and kind == "response")


CL_PARTS = [b"0", b"0" * 4500, b"5", b"12", b"9" * 18, b"9" * 19, b",", b", ", b" ", b"\t", b"-", b"+", b"x", b"\xff", b"\x00"]
cl_values = st.lists(st.sampled_from(CL_PARTS), max_size=8).map(b"".join)


@SETTINGS
@given(values=st.lists(cl_values, min_size=1, max_size=3), te=st.booleans(), split_seed=seeds)
def test_content_length_differential(c_core, py_core, values, te, split_seed):
    fields = b"".join(b"Content-Length: " + v + b"\r\n" for v in values)
    if te:
        fields += b"Transfer-Encoding: chunked\r\n"
    body = b"0123456789" * 3
    for kind, line in (("request", b"POST / HTTP/1.1\r\nHost: h\r\n"), ("response", b"HTTP/1.1 200 OK\r\n")):
        data = line + fields + b"\r\n" + body
        compare(c_core, py_core, kind, random_chunks(data, random.Random(split_seed)), {})


# -- the seeded fuzz loop ------------------------------------------------------------------

FUZZ_INPUTS = 110_000  # split between requests and responses


@pytest.mark.parametrize("kind", ["request", "response"])
def test_fuzz_loop(c_core, py_core, kind):
    """Seeded inputs through both cores: same outcome, only ProtocolError, bounded time."""
    rnd = random.Random(0x4D43_5046 + (kind == "response"))
    count = FUZZ_INPUTS // 2
    outcomes = {"ok": 0, "error": 0}
    for i in range(count):
        data = make_input(rnd, kind, i % 6)
        pieces = cut(data, rnd)
        limits = rand_limits(rnd, kind)
        got = compare(c_core, py_core, kind, pieces, limits, kind == "response" and i % 7 == 0)
        outcomes["error" if got and isinstance(got[-1][1], tuple) else "ok"] += 1
    assert sum(outcomes.values()) == count
    # Both kinds of outcome must be well represented, or the generators have drifted.
    assert outcomes["ok"] > count // 5 and outcomes["error"] > count // 5, outcomes


def test_fuzz_volume():
    assert FUZZ_INPUTS >= 100_000


@pytest.mark.parametrize("split", [1, 7, 64, 100_000])
@pytest.mark.parametrize("kind", ["request", "response"])
def test_long_pipelined_stream(c_core, py_core, kind, split):
    """Hundreds of pipelined messages in fixed-size pieces, a few mutated near the end."""
    rnd = random.Random(split)
    if kind == "request":
        data = b"".join(gen_request(rnd)[0] for _ in range(300))
    else:
        data = b"".join(gen_response(rnd, False) for _ in range(300))
    for stream in (data, data + mutate(data[-300:], rnd)):
        pieces = [stream[i : i + split] for i in range(0, len(stream), split)]
        got = compare(c_core, py_core, kind, pieces, {})
        if stream is data:
            assert not isinstance(got[-1][1], tuple)  # no error
            assert sum(1 for call, _ in got for e in call if e[0] == "end") == 300


# -- kept-alive connections: runs of similar messages ----------------------------------------


def similar_stream(rnd: random.Random, kind: str, count: int) -> bytes:
    """``count`` messages from one template with small per-message edits -- a value
    byte changed, a name's case flipped, fields swapped, dropped, added or repeated,
    rarely an invalid byte -- so the compiled core's reuse of the previous head's
    fields is exercised on every kind of near miss."""
    if kind == "request":
        line = b"POST /mcp HTTP/1.1"
        template = [(b"Host", b"gw.example")] + gen_fields(rnd, False, 7)
    else:
        line = b"HTTP/1.1 200 OK"
        template = gen_fields(rnd, False, 7)
    out = []
    for _ in range(count):
        fields = list(template)
        for _ in range(rnd.choice([0, 0, 1, 1, 2, 3])):
            op = rnd.randrange(7)
            k = rnd.randrange(len(fields)) if fields else 0
            if op == 0 and fields and fields[k][1]:
                v = bytearray(fields[k][1])
                v[rnd.randrange(len(v))] = rnd.choice(VCHARS)
                fields[k] = (fields[k][0], bytes(v))
            elif op == 1 and fields:
                fields[k] = (rand_case(fields[k][0], rnd), fields[k][1])
            elif op == 2 and len(fields) > 1:
                m = rnd.randrange(len(fields))
                fields[k], fields[m] = fields[m], fields[k]
            elif op == 3 and fields:
                del fields[k]
            elif op == 4:
                fields.insert(k, (rand_name(rnd), rand_value(rnd, False)))
            elif op == 5 and fields:
                fields.insert(k, fields[k])
            elif rnd.random() < 0.1 and fields:
                fields[k] = (fields[k][0], fields[k][1] + rnd.choice([b"\x00", b"\x7f", b"\r", b" x\x01"]))
        body = rnd.randbytes(rnd.randrange(0, 8))
        fields.append((b"Content-Length", b"%d" % len(body)))
        out.append(line + b"\r\n" + b"".join(field_line(n, v, rnd) for n, v in fields) + b"\r\n" + body)
    return b"".join(out)


SIMILAR_STREAMS = 600


@pytest.mark.parametrize("kind", ["request", "response"])
def test_similar_messages_differential(c_core, py_core, kind):
    rnd = random.Random(99 if kind == "request" else 98)
    for _ in range(SIMILAR_STREAMS):
        data = similar_stream(rnd, kind, rnd.randrange(2, 25))
        compare(c_core, py_core, kind, cut(data, rnd), {})


# -- generated valid requests parse to what was generated ------------------------------------


def test_generated_requests_parse_as_generated(c_core, py_core):
    rnd = random.Random(7)
    for _ in range(2000):
        data, info = gen_request(rnd)
        for core in (c_core, py_core):
            rec = Recorder()
            parser = core.RequestParser(rec)
            for piece in random_chunks(data, rnd):
                parser.feed(piece)
            parser.feed_eof()
            head = rec.events[0][1]
            body = b"".join(bytes(c) for k, c in rec.events if k == "body")
            assert (head.method, head.target, head.headers, body, rec.events[-1]) == (
                info["method"], info["target"], info["headers"], info["body"], ("end", info["trailers"])
            )


# -- against httptools ------------------------------------------------------------------------


class LlhttpRecorder:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list = []
        self.trailers: list = []
        self.body = b""
        self.complete = False
        self.keep_alive = None
        self.parser = None
        self._head_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps trailing OWS in values; the contract strips it (RFC 9110 §5.5).
        (self.trailers if self._head_done else self.headers).append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it after the message

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


HTTPTOOLS_INPUTS = 20_000


def test_against_httptools(c_core, py_core):
    """Generated valid requests (within what llhttp accepts): method, target, headers,
    body and trailers equal what httptools reports, fed in the same random pieces."""
    rnd = random.Random(2025)
    for _ in range(HTTPTOOLS_INPUTS):
        data, info = gen_request(rnd, strict=True)
        pieces = random_chunks(data, rnd)
        ref = LlhttpRecorder()
        parser = ref.parser = httptools.HttpRequestParser(ref)
        for piece in pieces:
            parser.feed_data(piece)
        assert ref.complete, data
        expected = (parser.get_method(), ref.url, ref.headers, ref.body, None if info["trailers"] is None else ref.trailers)
        for core in (c_core, py_core):
            rec = Recorder()
            ours = core.RequestParser(rec)
            for piece in pieces:
                ours.feed(piece)
            head = rec.events[0][1]
            body = b"".join(bytes(c) for k, c in rec.events if k == "body")
            trailers = rec.events[-1][1]
            assert rec.events[-1][0] == "end"
            assert (head.method, head.target, head.headers, body, trailers) == expected, data
            assert head.keep_alive == ref.keep_alive
            assert head.version == (11 if parser.get_http_version() == "1.1" else 10)
