"""HTTP/1.1 request parsing (RFC 9110, RFC 9112) over both cores.

Every case is fed whole, byte by byte and at random split points (``feed_mode``), and
again with a second request pipelined behind it, which must come out unchanged after
the first.  Error cases check the ``ProtocolError`` status -- also with the pipelined
request behind -- and that the parser takes no more input afterwards.  The rules are
those of the contract in ``mcpfast/_core.pyi``.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from feeding import split_ways
from http_events import Recorder, messages, normal

from mcpfast.wire.errors import ProtocolError

NEXT = b"GET /next HTTP/1.1\r\nHost: next.example\r\n\r\n"


def feed_all(parser, data: bytes, mode: str, seed: int = 0) -> None:
    for piece in split_ways(data, mode, seed):
        parser.feed(piece)


def parse_all(core, data: bytes, mode: str, *, seed: int = 0, **limits) -> list[tuple]:
    """All messages of ``data`` as ``(interims, head attrs, body, trailers)``."""
    rec = Recorder()
    parser = core.RequestParser(rec, **limits)
    feed_all(parser, data, mode, seed)
    assert not parser.in_message
    parser.feed_eof()
    return messages(normal(rec.events))


def parse_one(core, mode: str, msg: bytes, **limits) -> tuple[dict, bytes, list | None]:
    """``(head attrs, body, trailers)`` of the one request in ``msg``; the same must
    come out when ``NEXT`` is pipelined behind it, and ``NEXT`` must parse after it."""
    alone = parse_all(core, msg, mode, **limits)
    assert len(alone) == 1
    both = parse_all(core, msg + NEXT, mode, seed=1, **limits)
    assert len(both) == 2 and both[0] == alone[0]
    _, head2, body2, trailers2 = both[1]
    assert (head2["method"], head2["target"], head2["host"], body2, trailers2) == (
        b"GET", b"/next", b"next.example", b"", None
    )
    _, head, body, trailers = alone[0]
    return head, body, trailers


def parse_error(core, mode: str, msg: bytes, status: int, *, pipelined: bool = True, **limits) -> list:
    """``msg`` (and ``msg + NEXT``) raises ``ProtocolError(status)``; returns what the
    handler saw before the error (for ``msg`` alone)."""
    seen = None
    for data in (msg + NEXT, msg) if pipelined else (msg,):
        rec = Recorder()
        parser = core.RequestParser(rec, **limits)
        with pytest.raises(ProtocolError) as info:
            feed_all(parser, data, mode)
            parser.feed_eof()
        assert type(info.value) is ProtocolError
        assert info.value.status == status, repr(info.value)
        assert info.value.code is None
        with pytest.raises(RuntimeError):
            parser.feed(NEXT)
        with pytest.raises(RuntimeError):
            parser.feed_eof()
        assert not parser.in_message
        seen = normal(rec.events)
    return seen


def req(*header_lines: bytes, line: bytes = b"GET / HTTP/1.1", body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in header_lines) + b"\r\n" + body


H = b"Host: h"

# -- request line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, method, target, version",
    [
        (b"GET / HTTP/1.1", b"GET", b"/", 11),
        (b"POST /mcp?x=1&y=%20 HTTP/1.1", b"POST", b"/mcp?x=1&y=%20", 11),
        (b"get /lower-case-method HTTP/1.1", b"get", b"/lower-case-method", 11),  # token, case kept
        (b"M-SEARCH * HTTP/1.1", b"M-SEARCH", b"*", 11),  # asterisk-form
        (b"OPTIONS * HTTP/1.0", b"OPTIONS", b"*", 10),
        (b"CONNECT gw.example:443 HTTP/1.1", b"CONNECT", b"gw.example:443", 11),  # authority-form
        (b"GET http://gw.example/mcp HTTP/1.1", b"GET", b"http://gw.example/mcp", 11),  # absolute-form
        (b"PATCH /a/b;c=d?e=f#frag~!$&'()*+,;= HTTP/1.1", b"PATCH", b"/a/b;c=d?e=f#frag~!$&'()*+,;=", 11),
        (b"!#$%&'*+-.^_`|~09azAZ / HTTP/1.1", b"!#$%&'*+-.^_`|~09azAZ", b"/", 11),  # every tchar class
    ],
)
def test_request_line(core, feed_mode, line, method, target, version):
    head, body, trailers = parse_one(core, feed_mode, req(H, line=line))
    assert (head["method"], head["target"], head["version"]) == (method, target, version)
    assert (body, trailers) == (b"", None)
    assert type(head["method"]) is bytes and type(head["target"]) is bytes


def test_empty_lines_before_request_line_are_skipped(core, feed_mode):
    head, _, _ = parse_one(core, feed_mode, b"\r\n\r\n\r\n" + req(H))
    assert head["target"] == b"/"
    # ... also between pipelined requests, and a CRLF pair after a body is no request.
    msgs = parse_all(core, req(H, b"Content-Length: 2", body=b"ok") + b"\r\n\r\n" + NEXT, feed_mode)
    assert [m[1]["target"] for m in msgs] == [b"/", b"/next"]


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/2.0 / HTTP/1.1",  # a status-line-like method: "/" is no tchar
        b"GET  / HTTP/1.1",  # two spaces: empty target
        b"GET / HTTP/1.1 ",
        b"GET /  HTTP/1.1",
        b" GET / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b"GET /a b HTTP/1.1",
        b"GET / HTTP/1.1\x00",
        b"G(T / HTTP/1.1",
        b"G\xc3\x89T / HTTP/1.1",
        b"GET /\x7f HTTP/1.1",
        b"GET /\x80 HTTP/1.1",
        b"GET /\x00 HTTP/1.1",
        b"GET /\x1b HTTP/1.1",
        b"GET",
        b"GET /",
        b"GET / ",
        b"/ HTTP/1.1",
        b"GET / http/1.1",
        b"GET / HTTP/1.",
        b"GET / HTTP/1",
        b"GET / HTTP/11",
        b"GET / HTTP/1.10",
        b"GET / HTTP/1.a",
        b"GET / HTTP/a.1",
        b"GET / HTTP 1.1",
        b"GET / HTTPS/1.1",
        b"GET / HTTP/1,1",
        b"GET / HTTP/1.1/",
        b"\x00",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
    ],
)
def test_bad_request_line(core, feed_mode, line):
    parse_error(core, feed_mode, req(H, line=line), 400)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/9.9", b"HTTP/0.0"])
def test_unsupported_version_505(core, feed_mode, version):
    parse_error(core, feed_mode, req(H, line=b"GET / " + version), 505)


# -- headers -------------------------------------------------------------------------------

MCP_BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{}}}'
MCP_HEADERS = [
    (b"Host", b"gw.example:8080"),
    (b"Content-Type", b"application/json"),
    (b"Accept", b"application/json, text/event-stream"),
    (b"Authorization", b"Bearer abc.def.ghi"),
    (b"Origin", b"https://app.example"),
    (b"Connection", b"keep-alive"),
    (b"Mcp-Session-Id", b"3f2a-9c1e"),
    (b"MCP-Protocol-Version", b"2025-06-18"),
    (b"Mcp-Method", b"tools/call"),
    (b"Mcp-Name", b"search"),
    (b"Last-Event-ID", b"17-ab"),
    (b"X-Custom", b"spaced  value"),
    (b"X-Empty", b""),
    (b"X-Obs-Text", b"caf\xc3\xa9 \xff"),
    (b"X-Tab", b"a\tb"),
    (b"Content-Length", b"%d" % len(MCP_BODY)),
]
MCP_POST = (
    b"POST /mcp HTTP/1.1\r\n"
    b"Host: gw.example:8080\r\n"
    b"Content-Type:application/json\r\n"  # no OWS at all
    b"Accept: application/json, text/event-stream\r\n"
    b"Authorization: Bearer abc.def.ghi \r\n"
    b"Origin:\thttps://app.example\t\r\n"
    b"Connection: keep-alive\r\n"
    b"Mcp-Session-Id: 3f2a-9c1e\r\n"
    b"MCP-Protocol-Version: 2025-06-18\r\n"
    b"Mcp-Method: tools/call\r\n"
    b"Mcp-Name: search\r\n"
    b"Last-Event-ID: 17-ab\r\n"
    b"X-Custom:  \t spaced  value \t \r\n"
    b"X-Empty:\r\n"
    b"X-Obs-Text: caf\xc3\xa9 \xff\r\n"
    b"X-Tab: a\tb\r\n"
    b"Content-Length: %d\r\n\r\n" % len(MCP_BODY)
) + MCP_BODY


def test_mcp_post_all_fast_attributes(core, feed_mode):
    head, body, trailers = parse_one(core, feed_mode, MCP_POST)
    assert head == {
        "method": b"POST",
        "target": b"/mcp",
        "version": 11,
        "headers": MCP_HEADERS,
        "keep_alive": True,
        "content_length": len(MCP_BODY),
        "chunked": False,
        "expect_continue": False,
        "host": b"gw.example:8080",
        "content_type": b"application/json",
        "accept": b"application/json, text/event-stream",
        "authorization": b"Bearer abc.def.ghi",
        "origin": b"https://app.example",
        "connection": b"keep-alive",
        "transfer_encoding": None,
        "session_id": b"3f2a-9c1e",
        "protocol_version": b"2025-06-18",
        "mcp_method": b"tools/call",
        "mcp_name": b"search",
        "last_event_id": b"17-ab",
    }
    assert (body, trailers) == (MCP_BODY, None)
    assert all(type(n) is bytes and type(v) is bytes for n, v in head["headers"])


def test_fast_attributes_absent_are_none(core, feed_mode):
    head, _, _ = parse_one(core, feed_mode, req(H, b"X-Other: 1"))
    for name in ("content_type", "accept", "authorization", "origin", "connection", "transfer_encoding",
                 "session_id", "protocol_version", "mcp_method", "mcp_name", "last_event_id"):  # fmt: skip
        assert head[name] is None, name
    assert head["content_length"] == -1 and head["headers"] == [(b"Host", b"h"), (b"X-Other", b"1")]


def test_field_names_case_insensitive_but_kept(core, feed_mode):
    msg = req(
        b"hOST: h",
        b"CONTENT-TYPE: application/json",
        b"accept: */*",
        b"AUTHORIZATION: Basic eA==",
        b"origin: null",
        b"CoNnEcTiOn: close",
        b"mcp-session-id: s",
        b"Mcp-Protocol-Version: 2025-11-25",
        b"MCP-METHOD: ping",
        b"mcp-name: n",
        b"last-event-id: 9",
        b"content-length: 0",
        line=b"POST /mcp HTTP/1.1",
    )
    head, _, _ = parse_one(core, feed_mode, msg)
    assert [n for n, _ in head["headers"]] == [
        b"hOST", b"CONTENT-TYPE", b"accept", b"AUTHORIZATION", b"origin", b"CoNnEcTiOn", b"mcp-session-id",
        b"Mcp-Protocol-Version", b"MCP-METHOD", b"mcp-name", b"last-event-id", b"content-length",
    ]  # fmt: skip
    assert (head["host"], head["content_type"], head["accept"], head["authorization"], head["origin"]) == (
        b"h", b"application/json", b"*/*", b"Basic eA==", b"null"
    )
    assert (head["connection"], head["session_id"], head["protocol_version"], head["mcp_method"]) == (
        b"close", b"s", b"2025-11-25", b"ping"
    )
    assert (head["mcp_name"], head["last_event_id"], head["content_length"], head["keep_alive"]) == (b"n", b"9", 0, False)


def test_near_miss_names_are_ordinary_headers(core, feed_mode):
    names = [b"Hosts", b"Hos", b"Content-Typ", b"Accept-Encoding", b"Mcp-Session", b"Mcp-Names", b"Origin2",
             b"Content-Lengths", b"Transfer-Encodings", b"Connections", b"Expectation", b"Mcp-Methods", b"Last-Event"]  # fmt: skip
    msg = req(H, *(n + b": v" for n in names))
    head, _, _ = parse_one(core, feed_mode, msg)
    assert head["headers"][1:] == [(n, b"v") for n in names]
    assert head["content_length"] == -1 and not head["chunked"] and not head["expect_continue"]
    assert head["content_type"] is head["accept"] is head["session_id"] is head["connection"] is None


def test_list_fields_joined(core, feed_mode):
    msg = req(H, b"Accept: application/json", b"X: 1", b"Accept: text/event-stream",
              b"Connection: keep-alive", b"Connection: Upgrade")  # fmt: skip
    head, _, _ = parse_one(core, feed_mode, msg)
    assert head["accept"] == b"application/json, text/event-stream"
    assert head["connection"] == b"keep-alive, Upgrade" and head["keep_alive"]
    assert [n for n, _ in head["headers"]] == [b"Host", b"Accept", b"X", b"Accept", b"Connection", b"Connection"]


def test_other_fields_repeat_freely(core, feed_mode):
    head, _, _ = parse_one(core, feed_mode, req(H, b"X-A: 1", b"X-A: 1", b"x-a: 2", b"Cookie: a=1", b"Cookie: b=2"))
    assert head["headers"][1:] == [(b"X-A", b"1"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2")]


@pytest.mark.parametrize(
    "name",
    [b"Host", b"Content-Type", b"Authorization", b"Origin", b"Mcp-Session-Id", b"MCP-Protocol-Version",
     b"Mcp-Method", b"Mcp-Name", b"Last-Event-ID"],
)  # fmt: skip
def test_duplicate_singleton_400(core, feed_mode, name):
    extra = [] if name == b"Host" else [H]
    parse_error(core, feed_mode, req(*extra, name + b": a", name.lower() + b": a"), 400)
    parse_error(core, feed_mode, req(*extra, name.upper() + b": a", b"X: y", name + b": b"), 400)


def test_host_required_in_1_1_only(core, feed_mode):
    parse_error(core, feed_mode, req(b"X: y"), 400)
    head, _, _ = parse_one(core, feed_mode, req(line=b"GET / HTTP/1.0"))
    assert head["host"] is None and head["version"] == 10
    head, _, _ = parse_one(core, feed_mode, req(b"Host:"))  # empty Host is allowed (RFC 9112 §3.2)
    assert head["host"] == b""


def test_value_ows_stripped_inner_kept(core, feed_mode):
    head, _, _ = parse_one(core, feed_mode, req(H, b"X-A:\t \t a \t b \t\t", b"X-B:   ", b"X-C:\t"))
    assert head["headers"][1:] == [(b"X-A", b"a \t b"), (b"X-B", b""), (b"X-C", b"")]


def test_value_with_colons_and_obs_text(core, feed_mode):
    head, _, _ = parse_one(core, feed_mode, req(H, b"X-A: a:b: c", b"X-B: \x80\xff\xfe", b"X-C: \"q\" (c) ;x=y"))
    assert head["headers"][1:] == [(b"X-A", b"a:b: c"), (b"X-B", b"\x80\xff\xfe"), (b"X-C", b"\"q\" (c) ;x=y")]


@pytest.mark.parametrize(
    "field",
    [
        b"Host : h",  # whitespace before the colon (RFC 9112 §5.1)
        b"Host\t: h",
        b"X-A : 1",
        b": value",  # empty name
        b"NoColon",
        b"X A: 1",
        b"X(A): 1",
        b"X@A: 1",
        b"X\"A: 1",
        b"X/A: 1",
        b"X[A]: 1",
        b"X{A}: 1",
        b"X=A: 1",
        b"X;A: 1",
        b"X,A: 1",
        b"X\\A: 1",
        b"X?A: 1",
        b"X\xc3\xa9: 1",  # non-ASCII name
        b"X\x00A: 1",
        b"X\x7fA: 1",
        b"X-A: a\x00b",  # controls in values
        b"X-A: \x01",
        b"X-A: a\x7f",
        b"X-A: a\x0bb",
        b"X-A: a\x0cb",
        b"X-A: a\x1fb",
        b"X-A: a\rb",  # bare CR inside a line
        b"X-A: a\r",
        b"X-A\r: a",
        b"\x00",
        b"\r",
    ],
)
def test_bad_field_line_400(core, feed_mode, field):
    parse_error(core, feed_mode, req(H, field), 400)


def test_obs_fold_400(core, feed_mode):
    parse_error(core, feed_mode, req(H, b"X-A: one", b" two"), 400)
    parse_error(core, feed_mode, req(H, b"X-A: one", b"\ttwo"), 400)
    parse_error(core, feed_mode, req(H, b"X-A: one", b" "), 400)
    # RFC 9112 §2.2: whitespace between the start line and the first field.
    parse_error(core, feed_mode, req(b" Host: h"), 400)
    parse_error(core, feed_mode, req(b"\tHost: h"), 400)


@pytest.mark.parametrize(
    "msg",
    [
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",  # bare LF after the request line
        b"GET / HTTP/1.1\r\nHost: h\n\r\n",  # ... after a field line
        b"GET / HTTP/1.1\r\nHost: h\r\n\n",  # ... as the empty line
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",  # a bare-LF empty line before the request
        b"\r\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\rHost: h\r\n\r\n",  # bare CR as a line end
        b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n",
        b"GET / HTTP/1.1\r\r\nHost: h\r\n\r\n",
    ],
)
def test_bare_lf_and_cr_400(core, feed_mode, msg):
    parse_error(core, feed_mode, msg, 400)


# -- Content-Length bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, length",
    [(b"0", 0), (b"5", 5), (b"005", 5), (b"0" * 40 + b"5", 5), (b"5, 5", 5), (b"5,5,5", 5), (b" 5 ,\t5 ", 5)],
)
def test_content_length(core, feed_mode, value, length):
    body = b"x" * length
    head, got, trailers = parse_one(core, feed_mode, req(H, b"Content-Length: " + value, line=b"POST / HTTP/1.1", body=body))
    assert (head["content_length"], head["chunked"], got, trailers) == (length, False, body, None)


def test_content_length_with_thousands_of_leading_zeros(core, feed_mode):
    # The digits must not go to int() as written: Python's int() refuses more than 4300
    # digits, which would be a ValueError instead of a parse.
    value = b"0" * 5000 + b"12"
    head, body, _ = parse_one(core, feed_mode, req(H, b"Content-Length: " + value, body=b"x" * 12))
    assert head["content_length"] == 12 and body == b"x" * 12
    head, _, _ = parse_one(core, "whole", req(H, b"Content-Length: " + b"0" * 20000))
    assert head["content_length"] == 0
    parse_error(core, feed_mode, req(H, b"Content-Length: " + b"0" * 5000 + b"1" * 19), 413)


def test_identical_duplicate_content_length_accepted(core, feed_mode):
    msg = req(H, b"Content-Length: 3", b"X: y", b"content-length: 003", line=b"POST / HTTP/1.1", body=b"abc")
    head, body, _ = parse_one(core, feed_mode, msg)
    assert head["content_length"] == 3 and body == b"abc"
    assert [v for n, v in head["headers"] if n.lower() == b"content-length"] == [b"3", b"003"]


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 5, 6"],
        [b"Content-Length: 6,5"],
        [b"Content-Length: 5", b"Content-Length: 5, 6"],
        [b"Content-Length: 0", b"Content-Length: 5"],
    ],
)
def test_differing_content_lengths_400(core, feed_mode, lines):
    parse_error(core, feed_mode, req(H, *lines, body=b"hello!"), 400)


@pytest.mark.parametrize(
    "value",
    [b"-1", b"-0", b"+5", b"5a", b"0x5", b"", b"1 2", b"1_000", b"1.0", b"5,", b",5", b"5,,5", b"five",
     b"\xd9\xa5", b"1e3", b"\"5\""],
)  # fmt: skip
def test_bad_content_length_400(core, feed_mode, value):
    parse_error(core, feed_mode, req(H, b"Content-Length: " + value, body=b"hello"), 400)


@pytest.mark.parametrize("value", [b"9" * 19, b"9" * 40, b"18446744073709551616", b"9223372036854775808", b"1" + b"0" * 18])
def test_overflowing_content_length_413(core, feed_mode, value):
    assert parse_error(core, feed_mode, req(H, b"Content-Length: " + value), 413) == []


def test_body_delivered_as_it_arrives(core):
    body = b"0123456789" * 10
    rec = Recorder()
    parser = core.RequestParser(rec)
    head = req(H, b"Content-Length: 100", line=b"POST / HTTP/1.1")
    parser.feed(head + body[:30])
    assert [k for k, _ in rec.events] == ["head", "body"] and bytes(rec.events[1][1]) == body[:30]
    assert parser.in_message
    parser.feed(body[30:31])
    parser.feed(b"")
    assert bytes(rec.events[-1][1]) == body[30:31] and len(rec.events) == 3
    parser.feed(body[31:] + NEXT[:5])  # the rest of the body in the same call as the next request
    assert [k for k, _ in rec.events] == ["head", "body", "body", "body", "end"]
    assert bytes(rec.events[3][1]) == body[31:] and rec.events[4][1] is None
    assert parser.in_message  # NEXT has started
    parser.feed(NEXT[5:])
    assert not parser.in_message and [k for k, _ in rec.events][-2:] == ["head", "end"]


@pytest.mark.parametrize("size, kind", [(1, bytes), (511, bytes), (512, memoryview), (100_000, memoryview)])
def test_body_run_view_or_copy(core, size, kind):
    # Runs of at least 512 bytes inside a fed bytes are views of it (zero-copy); shorter
    # ones, where a copy is cheaper, are new bytes.  Chunked data follows the same rule.
    body = bytes(range(256)) * (size // 256) + b"q" * (size % 256)
    for framing, wire in ((b"Content-Length: %d" % size, body), (b"Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (size, body))):
        data = req(H, framing, line=b"POST / HTTP/1.1", body=wire) + NEXT
        rec = Recorder()
        core.RequestParser(rec).feed(data)
        ((_, chunk),) = [e for e in rec.events if e[0] == "body"]
        assert type(chunk) is kind and bytes(chunk) == body
        if kind is memoryview:
            assert chunk.obj is data and chunk.readonly


def test_body_one_call_per_feed_zero_copy(core):
    body = b"z" * 1000
    data = req(H, b"Content-Length: 1000", line=b"PUT /x HTTP/1.1", body=body)
    rec = Recorder()
    parser = core.RequestParser(rec)
    parser.feed(data)
    (_, chunk), = [e for e in rec.events if e[0] == "body"]  # fmt: skip
    assert type(chunk) is memoryview and chunk.obj is data and chunk.readonly and bytes(chunk) == body
    # A feed holding exactly the body is handed on as that very object.
    rec = Recorder()
    parser = core.RequestParser(rec)
    parser.feed(data[: -len(body)])
    parser.feed(body)
    assert rec.events[1][1] is body


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_mutable_input_not_retained(core, kind):
    data = bytearray(req(H, b"Content-Length: 6", line=b"POST / HTTP/1.1", body=b"origin"))
    src = kind(data)  # a copy (bytearray) or a view of data (memoryview)
    rec = Recorder()
    parser = core.RequestParser(rec)
    parser.feed(src[:20])
    parser.feed(src[20:])
    data[:] = src[:] = b"X" * len(data)
    chunk = rec.events[1][1]
    assert type(chunk) is bytes and chunk == b"origin"
    assert rec.events[0][1].headers == [(b"Host", b"h"), (b"Content-Length", b"6")]


def test_zero_length_body_no_body_call(core, feed_mode):
    rec = Recorder()
    parser = core.RequestParser(rec)
    feed_all(parser, req(H, b"Content-Length: 0", line=b"POST / HTTP/1.1") + NEXT, feed_mode)
    assert [k for k, _ in rec.events] == ["head", "end", "head", "end"]


def test_no_framing_means_no_body(core, feed_mode):
    # RFC 9112 §6.3: a request with neither Content-Length nor Transfer-Encoding has no body.
    msgs = parse_all(core, req(H, line=b"POST /mcp HTTP/1.1") + NEXT, feed_mode)
    assert [(m[1]["target"], m[2], m[1]["content_length"]) for m in msgs] == [(b"/mcp", b"", -1), (b"/next", b"", -1)]


# -- chunked bodies -----------------------------------------------------------------------

CHUNKED = b"POST /mcp HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "chunks, body, trailers",
    [
        (b"0\r\n\r\n", b"", []),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", []),
        (b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij", []),
        (b"0005\r\nhello\r\n000\r\n\r\n", b"hello", []),
        (b"000000000000000F\r\n" + b"f" * 15 + b"\r\n0000000000000000\r\n\r\n", b"f" * 15, []),  # 16 digits
        (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r", []),  # chunk-data is opaque
        (b"2\r\nhi\r\n0\r\nX-Sum: 1\r\nServer-Timing:  a;dur=1 \r\n\r\n", b"hi", [(b"X-Sum", b"1"), (b"Server-Timing", b"a;dur=1")]),
        # Trailer fields are listed, not interpreted.
        (b"0\r\nContent-Length: 99\r\nHost: other\r\nHost: again\r\n\r\n", b"", [(b"Content-Length", b"99"), (b"Host", b"other"), (b"Host", b"again")]),
        # RFC 9112 §7.1.1 chunk extensions, validated and ignored.
        (b"5;ext\r\nhello\r\n0;last=yes\r\n\r\n", b"hello", []),
        (b"5 ; a = b ;c;d=\"quoted \\\" \\\\ str\"\r\nhello\r\n0\r\n\r\n", b"hello", []),
        (b"5;a=\"\"\r\nhello\r\n0;x=\"\x80\xff\"\r\n\r\n", b"hello", []),
        (b"1;" + b"e" * 4095 + b"\r\nx\r\n0\r\n\r\n", b"x", []),  # 4096 bytes of chunk-ext (";" included)
    ],
)
def test_chunked(core, feed_mode, chunks, body, trailers):
    head, got, got_trailers = parse_one(core, feed_mode, CHUNKED + chunks)
    assert (head["chunked"], head["content_length"], head["transfer_encoding"]) == (True, -1, b"chunked")
    assert (got, got_trailers) == (body, trailers)


@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b"CHUNKED", b" chunked ", b"chunked,", b", ,chunked, ,"])
def test_chunked_spellings(core, feed_mode, te):
    head, body, trailers = parse_one(core, feed_mode, req(H, b"Transfer-Encoding: " + te, body=b"1\r\na\r\n0\r\n\r\n"))
    assert head["chunked"] and body == b"a" and trailers == []


def test_chunks_delivered_as_they_arrive(core):
    rec = Recorder()
    parser = core.RequestParser(rec)
    parser.feed(CHUNKED + b"5\r\nhel")
    assert [k for k, _ in rec.events] == ["head", "body"] and bytes(rec.events[1][1]) == b"hel"
    parser.feed(b"lo\r\n3;x=y\r\nabc")
    assert [bytes(c) for k, c in rec.events if k == "body"] == [b"hel", b"lo", b"abc"]
    assert rec.events[-1][0] == "body" and parser.in_message
    parser.feed(b"\r\n0\r\nT: 1\r\n")
    assert rec.events[-1][0] == "body"  # the trailer section is not over yet
    parser.feed(b"\r\n")
    assert rec.events[-1] == ("end", [(b"T", b"1")]) and not parser.in_message


def test_one_body_call_per_chunk_when_whole(core):
    rec = Recorder()
    core.RequestParser(rec).feed(CHUNKED + b"3\r\nabc\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n")
    assert [bytes(c) for k, c in rec.events if k == "body"] == [b"abc", b"de", b"f"]


@pytest.mark.parametrize(
    "chunks",
    [
        b"\r\n",  # empty chunk-size
        b"g\r\n",
        b"-1\r\n",
        b"+1\r\n",
        b" 1\r\nx\r\n0\r\n\r\n",
        b"\t1\r\nx\r\n0\r\n\r\n",
        b"1 \r\nx\r\n0\r\n\r\n",  # BWS only before ";"
        b"0x1\r\nx\r\n0\r\n\r\n",
        b"1_0\r\n",
        b"00000000000000001\r\nx\r\n0\r\n\r\n",  # 17 digits
        b"1\nx\r\n0\r\n\r\n",  # bare LF ending the chunk-size line
        b"1\rx\r\n0\r\n\r\n",
        b"1\r\r\nx\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",  # chunk-data longer than declared
        b"5\r\nhello\n0\r\n\r\n",  # bare LF after chunk-data
        b"5\r\nhello\r0\r\n\r\n",
        b"5\r\nhello0\r\n\r\n",
        b"5\r\nhell\r\n0\r\n\r\n",  # shorter: CRLF lands inside the data
        b"0\r\n\n",  # bare LF ending the trailer section
        b"0\r\nT: 1\n\r\n",
        b"0\r\n T: 1\r\n\r\n",  # whitespace / obs-fold in trailers
        b"0\r\nT: 1\r\n  2\r\n\r\n",
        b"0\r\nT : 1\r\n\r\n",
        b"0\r\nT: \x00\r\n\r\n",
        b"0\r\n: 1\r\n\r\n",
        b"5;\r\nhello\r\n0\r\n\r\n",  # chunk-ext syntax
        b"5;=x\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5 a\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"open\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"x\\\"\r\nhello\r\n0\r\n\r\n",
        b"5;a=\x80\r\nhello\r\n0\r\n\r\n",
        b"5;a=(b)\r\nhello\r\n0\r\n\r\n",
        b"5,a\r\nhello\r\n0\r\n\r\n",
        b"1;" + b"e" * 4096 + b"\r\nx\r\n0\r\n\r\n",  # chunk-ext over 4096 bytes
        b"1" + b" " * 5000 + b";e\r\nx\r\n0\r\n\r\n",  # chunk-size line over any valid length
    ],
)
def test_bad_chunked_framing_400(core, feed_mode, chunks):
    parse_error(core, feed_mode, CHUNKED + chunks, 400)


@pytest.mark.parametrize(
    "te, status",
    [
        (b"gzip, chunked", 501),  # unknown / unsupported codings before chunked
        (b"x-custom, chunked", 501),
        (b"identity, chunked", 501),
        (b"chunked, gzip", 400),  # chunked not final: length undeterminable (RFC 9112 §6.3)
        (b"gzip", 400),
        (b"identity", 400),
        (b"", 400),
        (b",", 400),
        (b"chunked, chunked", 400),  # chunked twice (RFC 9112 §7.1)
        (b"chunked;q=1", 400),
        (b"chunked\x0b", 400),
        (b"\"chunked\"", 400),
    ],
)
def test_transfer_coding_errors(core, feed_mode, te, status):
    parse_error(core, feed_mode, req(H, b"Transfer-Encoding: " + te, body=b"0\r\n\r\n"), status)


def test_transfer_encoding_split_over_lines(core, feed_mode):
    parse_error(core, feed_mode, req(H, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 501)
    parse_error(core, feed_mode, req(H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400)
    head, body, _ = parse_one(core, feed_mode, req(H, b"Transfer-Encoding:", b"Transfer-Encoding: chunked", body=b"1\r\nq\r\n0\r\n\r\n"))
    assert head["chunked"] and body == b"q" and head["transfer_encoding"] == b", chunked"


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length: 5", b"Transfer-Encoding: chunked"],  # RFC 9112 §6.1: the smuggling pattern
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 0"],
        [b"Content-Length: 5", b"Transfer-Encoding: gzip, chunked"],
        [b"Content-Length: 5", b"Transfer-Encoding: gzip"],
    ],
)
def test_content_length_with_transfer_encoding_400(core, feed_mode, lines):
    assert parse_error(core, feed_mode, req(H, *lines, body=b"5\r\nhello\r\n0\r\n\r\n"), 400) == []


def test_transfer_encoding_in_http_1_0_400(core, feed_mode):
    parse_error(core, feed_mode, req(b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0", body=b"0\r\n\r\n"), 400)


# -- persistence, HTTP/1.0, Expect -------------------------------------------------------------


@pytest.mark.parametrize(
    "version, connection, keep_alive",
    [
        (b"1.1", [], True),
        (b"1.1", [b"close"], False),
        (b"1.1", [b"Close"], False),
        (b"1.1", [b"keep-alive, close"], False),
        (b"1.1", [b"keep-alive", b"close"], False),
        (b"1.1", [b"Upgrade"], True),
        (b"1.1", [b"closed"], True),
        (b"1.1", [b",, close ,"], False),
        (b"1.0", [], False),
        (b"1.0", [b"keep-alive"], True),
        (b"1.0", [b"Keep-Alive"], True),
        (b"1.0", [b"foo,keep-alive"], True),
        (b"1.0", [b"keep-alive", b"close"], False),
        (b"1.0", [b"keepalive"], False),
    ],
)
def test_keep_alive(core, feed_mode, version, connection, keep_alive):
    msg = req(H, *(b"Connection: " + c for c in connection), line=b"GET / HTTP/" + version)
    head, _, _ = parse_one(core, feed_mode, msg)
    assert head["keep_alive"] is keep_alive
    assert head["version"] == (11 if version == b"1.1" else 10)


def test_http_1_0_with_body(core, feed_mode):
    head, body, trailers = parse_one(core, feed_mode, req(b"Content-Length: 3", line=b"POST /mcp HTTP/1.0", body=b"abc"))
    assert (head["version"], head["keep_alive"], body, trailers) == (10, False, b"abc", None)


@pytest.mark.parametrize(
    "lines, expect",
    [
        ([b"Expect: 100-continue"], True),
        ([b"Expect: 100-Continue"], True),
        ([b"expect:   100-CONTINUE  "], True),
        ([b"Expect: 100-continue", b"Expect: 100-continue"], True),
        ([], False),
    ],
)
def test_expect_continue(core, feed_mode, lines, expect):
    msg = req(H, *lines, b"Content-Length: 2", line=b"POST / HTTP/1.1", body=b"{}")
    head, body, _ = parse_one(core, feed_mode, msg)
    assert head["expect_continue"] is expect and body == b"{}"
    assert [n for n, _ in head["headers"]].count(b"Expect") + [n for n, _ in head["headers"]].count(b"expect") == len(lines)


def test_expect_continue_ignored_in_http_1_0(core, feed_mode):
    head, _, _ = parse_one(core, feed_mode, req(b"Expect: 100-continue", b"Content-Length: 1", line=b"POST / HTTP/1.0", body=b"x"))
    assert head["expect_continue"] is False


def test_expect_continue_seen_before_body(core):
    # The owner answers "100 Continue" from on_request, before any body byte exists.
    rec = Recorder()
    parser = core.RequestParser(rec)
    parser.feed(req(H, b"Expect: 100-continue", b"Content-Length: 4", line=b"POST / HTTP/1.1"))
    assert [k for k, _ in rec.events] == ["head"] and rec.events[0][1].expect_continue
    parser.feed(b"data")
    assert [k for k, _ in rec.events] == ["head", "body", "end"]


@pytest.mark.parametrize("value", [b"100-continue-x", b"200-ok", b"", b"100-continue, foo", b"100 continue"])
def test_unsupported_expectation_417(core, feed_mode, value):
    parse_error(core, feed_mode, req(H, b"Expect: " + value), 417)


# -- limits ---------------------------------------------------------------------------------


def test_header_bytes_limit_431(core, feed_mode):
    msg = req(H, b"X-Pad: " + b"p" * 100)
    head, _, _ = parse_one(core, feed_mode, msg, max_header_bytes=len(msg))  # the whole head, CRLFs included
    assert head["headers"][1] == (b"X-Pad", b"p" * 100)
    assert parse_error(core, feed_mode, msg, 431, max_header_bytes=len(msg) - 1) == []
    # A single field line longer than the limit, cut or whole.
    parse_error(core, feed_mode, req(H, b"X: " + b"v" * 5000), 431, max_header_bytes=4096)


def test_request_line_alone_over_header_limit_431(core, feed_mode):
    parse_error(core, feed_mode, req(H, line=b"GET /" + b"a" * 40 + b" HTTP/1.1"), 431, max_header_bytes=32)
    parse_error(core, feed_mode, req(H, line=b"G" * 100 + b" / HTTP/1.1"), 431, max_header_bytes=64)


def test_unterminated_line_fails_at_the_limit(core):
    # No LF ever comes: the parser must not buffer past the limit waiting for one.
    for junk, status in ((b"G" * 70_000, 431), (b"GET /" + b"a" * 70_000, 414)):
        parser = core.RequestParser(Recorder())
        with pytest.raises(ProtocolError) as info:
            for i in range(0, len(junk), 1000):
                parser.feed(junk[i : i + 1000])
        assert info.value.status == status
    parser = core.RequestParser(Recorder())
    parser.feed(b"GET / HTTP/1.1\r\nX: " + b"v" * 60_000)
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"v" * 10_000)
    assert info.value.status == 431


def test_header_count_limit_431(core, feed_mode):
    msg = req(H, b"A: 1", b"B: 2")
    head, _, _ = parse_one(core, feed_mode, msg, max_headers=3)
    assert len(head["headers"]) == 3
    parse_error(core, feed_mode, req(H, b"A: 1", b"B: 2", b"C: 3"), 431, max_headers=3)
    parse_error(core, feed_mode, req(H), 431, max_headers=0)


def test_trailer_limits_431(core, feed_mode):
    msg = CHUNKED + b"1\r\nx\r\n0\r\nA: 1\r\nB: 2\r\n\r\n"
    _, _, trailers = parse_one(core, feed_mode, msg, max_headers=2)
    assert trailers == [(b"A", b"1"), (b"B", b"2")]
    parse_error(core, feed_mode, CHUNKED + b"1\r\nx\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431, max_headers=2)
    # The trailer section has the header-section byte limit of its own.
    section = b"A: " + b"t" * 100 + b"\r\n\r\n"  # longer than the head, which has the same limit
    _, _, trailers = parse_one(core, feed_mode, CHUNKED + b"1\r\nx\r\n0\r\n" + section, max_header_bytes=len(section))
    assert trailers == [(b"A", b"t" * 100)]
    parse_error(core, feed_mode, CHUNKED + b"1\r\nx\r\n0\r\n" + section, 431, max_header_bytes=len(section) - 1)


def test_target_limit_414(core, feed_mode):
    target = b"/" + b"t" * 99
    head, _, _ = parse_one(core, feed_mode, req(H, line=b"GET " + target + b" HTTP/1.1"), max_target_bytes=100)
    assert head["target"] == target
    assert parse_error(core, feed_mode, req(H, line=b"GET " + target + b"t HTTP/1.1"), 414, max_target_bytes=100) == []
    # A target longer than the whole header section: still 414, whole or cut.
    long_line = b"GET /" + b"t" * 5000 + b" HTTP/1.1"
    parse_error(core, feed_mode, req(H, line=long_line), 414, max_header_bytes=1024, max_target_bytes=512)
    parse_error(core, feed_mode, req(H, line=b"GET /" + b"t" * 70_000 + b" HTTP/1.1"), 414)  # default limits

def test_body_limit_413(core, feed_mode):
    _, body, _ = parse_one(core, feed_mode, req(H, b"Content-Length: 10", body=b"0123456789"), max_body_bytes=10)
    assert body == b"0123456789"
    # Declared too large: refused before any event, so before any body byte.
    assert parse_error(core, feed_mode, req(H, b"Content-Length: 11", body=b"0123456789a"), 413, max_body_bytes=10) == []
    assert parse_error(core, feed_mode, req(H, b"Content-Length: 1", body=b"a"), 413, max_body_bytes=0) == []


def test_chunked_body_limit_413(core, feed_mode):
    ok = CHUNKED + b"6\r\n012345\r\n4\r\n6789\r\n0\r\n\r\n"
    _, body, _ = parse_one(core, feed_mode, ok, max_body_bytes=10)
    assert body == b"0123456789"
    over = CHUNKED + b"6\r\n012345\r\n5\r\n6789a\r\n0\r\n\r\n"
    seen = parse_error(core, feed_mode, over, 413, max_body_bytes=10)
    # Counted as chunk sizes are declared: the chunk that goes over is never handed out.
    assert [k for k, _ in seen] == ["head", "body"] and seen[1][1] == b"012345"
    parse_error(core, feed_mode, CHUNKED + b"ffffffffffffffff\r\n", 413, pipelined=False)
    parse_error(core, feed_mode, CHUNKED + b"FFFFFFFFFFFFFFFF\r\nx", 413, pipelined=False)


def test_limits_must_be_positive(core):
    for kw in ({"max_header_bytes": 0}, {"max_headers": -1}, {"max_target_bytes": 0}, {"max_body_bytes": -1}):
        with pytest.raises(ValueError):
            core.RequestParser(Recorder(), **kw)


# -- end of input, failure, handler errors -----------------------------------------------------


def test_feed_eof_between_requests(core, feed_mode):
    rec = Recorder()
    parser = core.RequestParser(rec)
    feed_all(parser, MCP_POST + b"\r\n", feed_mode)  # a trailing empty line is not a request
    assert not parser.in_message
    parser.feed_eof()
    parser.feed_eof()  # a second one is a no-op
    ((_, head, body, trailers),) = messages(normal(rec.events))
    assert (head["target"], body, trailers) == (b"/mcp", MCP_BODY, None)
    with pytest.raises(RuntimeError):
        parser.feed(NEXT)


@pytest.mark.parametrize(
    "partial",
    [
        b"G",
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r",
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcd",
        CHUNKED,
        CHUNKED + b"5\r\nhel",
        CHUNKED + b"5\r\nhello",
        CHUNKED + b"5\r\nhello\r",
        CHUNKED + b"0\r\n",
        CHUNKED + b"0\r\nT: 1\r\n",
        b"\r",
    ],
)
def test_feed_eof_inside_request_400(core, feed_mode, partial):
    seen = parse_error(core, feed_mode, partial, 400, pipelined=False)
    assert all(k != "end" for k, _ in seen)


def test_in_message(core):
    parser = core.RequestParser(Recorder())
    assert not parser.in_message
    parser.feed(b"\r\n")
    assert not parser.in_message
    for piece in (b"P", b"OST / HTTP/1.1\r\nHost: h\r\n", b"Content-Length: 2\r\n\r\n", b"{"):
        parser.feed(piece)
        assert parser.in_message
    parser.feed(b"}")
    assert not parser.in_message
    parser.feed_eof()
    assert not parser.in_message


def test_handler_exception_propagates_and_kills(core):
    class Boom(Exception):
        pass

    for where in ("on_request", "on_body", "on_request_end"):
        rec = Recorder()

        def explode(*_a, where=where):
            raise Boom(where)

        setattr(rec, where, explode)
        parser = core.RequestParser(rec)
        with pytest.raises(Boom, match=where):
            parser.feed(req(H, b"Content-Length: 2", body=b"{}") + NEXT)
        with pytest.raises(RuntimeError):
            parser.feed(NEXT)
        with pytest.raises(RuntimeError):
            parser.feed_eof()


def test_feed_eof_from_a_callback(core):
    class Closer(Recorder):
        def on_request_end(self, trailers):
            super().on_request_end(trailers)
            parser.feed_eof()

    rec = Closer()
    parser = core.RequestParser(rec)
    with pytest.raises(RuntimeError):
        parser.feed(req(H) + NEXT)
    assert [k for k, _ in rec.events] == ["head", "end"]


def test_many_pipelined_requests(core, feed_mode):
    one = req(H, b"Content-Length: 3", line=b"POST /a HTTP/1.1", body=b"abc")
    two = CHUNKED + b"2\r\nxy\r\n0\r\n\r\n"
    data = (one + two + NEXT) * 20
    msgs = parse_all(core, data, feed_mode)
    assert [(m[1]["target"], m[2], m[3]) for m in msgs] == [(b"/a", b"abc", None), (b"/mcp", b"xy", []), (b"/next", b"", None)] * 20


def test_large_body_in_pieces(core):
    body = bytes(range(256)) * 4096  # 1 MiB
    data = req(H, b"Content-Length: %d" % len(body), line=b"POST / HTTP/1.1", body=body) + NEXT
    rec = Recorder()
    parser = core.RequestParser(rec)
    for i in range(0, len(data), 65536):
        parser.feed(data[i : i + 65536])
    parser.feed_eof()
    ((_, _, got, _), (_, nxt, _, _)) = messages(normal(rec.events))
    assert got == body and nxt["target"] == b"/next"
    assert sum(1 for k, _ in rec.events if k == "body") == len(data) // 65536 + 1


def test_compiled_core_loaded(c_core, py_core):
    assert c_core.__file__.endswith((".so", ".pyd"))
    assert c_core.RequestParser is not py_core.RequestParser
    assert c_core.RequestHead is not py_core.RequestHead


# -- a kept-alive connection: each head parsed on its own merits --------------------------

KEPT = [b"Host: h", b"Content-Type: application/json", b"Accept: */*", b"X-Long: " + b"v" * 40, b"Content-Length: 2"]
KEPT_VARIANTS = [
    KEPT,
    KEPT,  # identical
    [b"Host: h", b"Content-Type: application/jsoN", *KEPT[2:]],  # one value byte differs
    [b"Host: h", b"Content-Type: application/json5", *KEPT[2:]],  # longer value
    [b"Host: h", b"Content-Type: application/jso", *KEPT[2:]],  # shorter value
    [b"Host: h", b"Content-Type:", *KEPT[2:]],  # empty value
    [b"host: h", b"content-type: application/json", *KEPT[2:]],  # names in another case
    [b"Host:\t h \t", b"Content-Type:application/json", *KEPT[2:]],  # other OWS, same values
    [b"Host: h", b"Content-Typer: application/json", *KEPT[2:]],  # a name that extends the previous one
    [b"Host: h", b"Content-Typ: application/json", *KEPT[2:]],  # ... and one that is a prefix of it
    [b"Host: h", b"Content-Type: application/json", b"Accept: */*", b"Accept: text/event-stream", *KEPT[3:]],
    [b"Host: h", *KEPT[2:]],  # one field fewer: everything shifts
    [KEPT[1], KEPT[0], *KEPT[2:]],  # reordered
    [b"Host: h", b"Content-Length: 2"],  # far fewer
    KEPT + [b"X-%d: %d" % (i, i) for i in range(20)],  # more
    KEPT,
]


def test_kept_alive_heads_equal_fresh_parses(core, feed_mode):
    stream = b"".join(req(*lines, line=b"POST /mcp HTTP/1.1", body=b"{}") for lines in KEPT_VARIANTS)
    kept = parse_all(core, stream, feed_mode)
    fresh = [parse_all(core, req(*lines, line=b"POST /mcp HTTP/1.1", body=b"{}"), "whole")[0] for lines in KEPT_VARIANTS]
    assert kept == fresh
    assert kept[6][1]["headers"][:2] == [(b"host", b"h"), (b"content-type", b"application/json")]
    assert kept[8][1]["content_type"] is None and kept[5][1]["content_type"] == b""


@pytest.mark.parametrize(
    "bad, status",
    [
        (b"X-Long: " + b"v" * 39 + b"\x00", 400),  # same name, same length, value now invalid
        (b"X-Long: " + b"v" * 40 + b"\x7f", 400),
        (b"X-Long : " + b"v" * 40, 400),  # same name but whitespace before the colon
        (b"X-Lon\x00: " + b"v" * 40, 400),
        (b"Host: h", 400),  # a second Host where the previous head had X-Long
    ],
)
def test_kept_alive_head_still_checked(core, feed_mode, bad, status):
    good = req(*KEPT, line=b"POST /mcp HTTP/1.1", body=b"{}")
    rec = Recorder()
    parser = core.RequestParser(rec)
    feed_all(parser, good + good, feed_mode)
    with pytest.raises(ProtocolError) as info:
        feed_all(parser, req(*KEPT[:3], bad, KEPT[4], line=b"POST /mcp HTTP/1.1", body=b"{}"), feed_mode)
    assert info.value.status == status
    assert len(messages(normal(rec.events))) == 2


def test_owner_may_change_the_headers_list(core):
    # The gateway edits a head's list in place (hop-by-hop fields out, its own in); the
    # parser keeps nothing that this could reach.
    class Editor(Recorder):
        def on_request(self, head):
            super().on_request(head)
            head.headers.clear()
            head.headers.append((b"X-Gateway", b"1"))

    rec = Editor()
    parser = core.RequestParser(rec)
    one = req(*KEPT, line=b"POST /mcp HTTP/1.1", body=b"{}")
    parser.feed(one + one)
    parser.feed(one)
    heads = [h for k, h in rec.events if k == "head"]
    assert [h.headers for h in heads] == [[(b"X-Gateway", b"1")]] * 3
    fresh = parse_all(core, one, "whole")[0][1]
    assert [(h.host, h.content_type, h.accept, h.content_length) for h in heads] == [
        (fresh["host"], fresh["content_type"], fresh["accept"], fresh["content_length"])
    ] * 3


def test_kept_alive_fields_shared(c_core):
    # The compiled core's fast path: an unchanged field is the previous head's tuple,
    # names and methods are interned.  (Not part of the contract; guards the speed.)
    rec = Recorder()
    parser = c_core.RequestParser(rec)
    one = req(*KEPT, line=b"POST /mcp HTTP/1.1", body=b"{}")
    parser.feed(one)
    parser.feed(one.replace(b"*/*", b"*/x"))
    first, second = (h for k, h in rec.events if k == "head")
    assert first.headers is not second.headers
    assert [a is b for a, b in zip(first.headers, second.headers)] == [True, True, False, True, True]
    assert first.headers[2][0] is second.headers[2][0] and first.headers[2][1] == b"*/*"
    assert first.target is second.target and first.method is second.method


def test_no_leak_over_many_requests(c_core):
    """Reference counting in the compiled core: memory stays flat over many messages
    (field reuse, interned names, targets, trailers all exercised)."""
    core = c_core

    class Sink:
        def on_request(self, head):
            pass

        def on_body(self, chunk):
            pass

        def on_request_end(self, trailers):
            pass

    def loop(count):
        parser = core.RequestParser(Sink())
        for i in range(count):
            lines = KEPT_VARIANTS[i % len(KEPT_VARIANTS)]
            parser.feed(req(*lines, b"X-I: %d" % i, line=b"POST /mcp HTTP/1.1", body=b"{}"))
            if i % 97 == 0:
                parser.feed(b"GET /%d HTTP/1.1\r\nHost: h\r\nMcp-Name: n%d\r\n\r\n" % (i, i))
            if i % 13 == 0:
                parser.feed(CHUNKED + b"3;x=%d\r\nabc\r\n0\r\nT: %d\r\n\r\n" % (i, i))
        parser.feed_eof()

    loop(2000)  # warm caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop(30_000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 100_000, after - before
