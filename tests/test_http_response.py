"""HTTP/1.1 response parsing (RFC 9110, RFC 9112) over both cores.

As for requests: every case is fed whole, byte by byte and at random split points, and
(where the framing allows one) again with a second response pipelined behind it, which
must come out unchanged.  Every fault of an upstream answer is a ``ProtocolError``
with status 502 -- the gateway's answer whatever rule was broken.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from feeding import split_ways
from http_events import Recorder, messages, normal

from mcpfast.wire.errors import ProtocolError

NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


def feed_all(parser, data: bytes, mode: str, seed: int = 0) -> None:
    for piece in split_ways(data, mode, seed):
        parser.feed(piece)


def parse_all(core, data: bytes, mode: str, *, seed: int = 0, head: bool = False, eof: bool = True, **limits):
    """All messages of ``data`` as ``(interim heads, head attrs, body, trailers)``."""
    rec = Recorder()
    parser = core.ResponseParser(rec, **limits)
    if head:
        parser.expect_head_response()
    feed_all(parser, data, mode, seed)
    if eof:
        parser.feed_eof()
    return messages(normal(rec.events))


def parse_one(core, mode: str, msg: bytes, *, head: bool = False, pipelined: bool = True, **limits):
    """``(interims, head attrs, body, trailers)`` of the one response in ``msg``; with
    ``pipelined``, the same again with ``NEXT`` behind it, which must parse after it."""
    alone = parse_all(core, msg, mode, head=head, **limits)
    assert len(alone) == 1
    if pipelined:
        both = parse_all(core, msg + NEXT, mode, seed=1, head=head, **limits)
        assert len(both) == 2 and both[0] == alone[0]
        interims, nxt, body, trailers = both[1]
        assert (interims, nxt["status"], nxt["content_length"], body, trailers) == ([], 200, 4, b"next", None)
    return alone[0]


def parse_error(core, mode: str, msg: bytes, *, pipelined: bool = True, head: bool = False, **limits) -> list:
    """``msg`` (and ``msg + NEXT``) raises ``ProtocolError(502)``; returns what the
    handler saw before (for ``msg`` alone)."""
    seen = None
    for data in (msg + NEXT, msg) if pipelined else (msg,):
        rec = Recorder()
        parser = core.ResponseParser(rec, **limits)
        if head:
            parser.expect_head_response()
        with pytest.raises(ProtocolError) as info:
            feed_all(parser, data, mode)
            parser.feed_eof()
        assert type(info.value) is ProtocolError and info.value.status == 502, repr(info.value)
        with pytest.raises(RuntimeError):
            parser.feed(NEXT)
        with pytest.raises(RuntimeError):
            parser.feed_eof()
        seen = normal(rec.events)
    return seen


def resp(*header_lines: bytes, line: bytes = b"HTTP/1.1 200 OK", body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in header_lines) + b"\r\n" + body


CL0 = b"Content-Length: 0"

# -- status line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, version, status, reason",
    [
        (b"HTTP/1.1 200 OK", 11, 200, b"OK"),
        (b"HTTP/1.0 404 Not Found", 10, 404, b"Not Found"),
        (b"HTTP/1.1 202 ", 11, 202, b""),
        (b"HTTP/1.1 202", 11, 202, b""),  # SP before an empty reason omitted: tolerated
        (b"HTTP/1.1 500 Internal  Server\tError ", 11, 500, b"Internal  Server\tError "),
        (b"HTTP/1.1 200 \xc3\x89t\xe9 obs-text", 11, 200, b"\xc3\x89t\xe9 obs-text"),
        (b"HTTP/1.1 200 a: b; c=\"d\"", 11, 200, b"a: b; c=\"d\""),
        (b"HTTP/1.1 999 Custom", 11, 999, b"Custom"),
        (b"HTTP/1.1 600  two spaces", 11, 600, b" two spaces"),
    ],
)
def test_status_line(core, feed_mode, line, version, status, reason):
    _, head, body, trailers = parse_one(core, feed_mode, resp(CL0, line=line))
    assert (head["version"], head["status"], head["reason"], body, trailers) == (version, status, reason, b"", None)
    assert type(head["reason"]) is bytes


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 000 Zero",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 200OK",
        b"HTTP/1.1\t200 OK",
        b"HTTP/1.1 2OO OK",
        b"http/1.1 200 OK",
        b"HTTP/1.1",
        b"HTTP/1.1 ",
        b"HTTP/11 200 OK",
        b"HTTP/1 200 OK",
        b"HTTP/2 200",
        b"HTTP/2.0 200 OK",  # well-formed but not 1.x
        b"HTTP/1.2 200 OK",
        b"HTTP/0.9 200 OK",
        b"HTTP/1.1 101 Switching Protocols",  # never asked for
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 200 OK\x7f",
        b"HTTP/1.1 200 OK\x1b[0m",
        b"HTTP/1.1 200 OK\r",
        b" HTTP/1.1 200 OK",
        b"ICY 200 OK",
        b"",  # an empty line where the status line belongs
        b"\x00",
    ],
)
def test_bad_status_line_502(core, feed_mode, line):
    parse_error(core, feed_mode, resp(CL0, line=line))


# -- headers -----------------------------------------------------------------------------


def test_headers_and_fast_attributes(core, feed_mode):
    msg = resp(
        b"Content-Type: text/event-stream",
        b"mcp-session-id:\t3f2a ",
        b"Connection: keep-alive",
        b"Cache-Control: no-cache",
        b"connection: Upgrade",
        b"X-Empty:",
        b"Content-Length: 2",
        body=b"{}",
    )
    _, head, body, trailers = parse_one(core, feed_mode, msg)
    assert head == {
        "version": 11,
        "status": 200,
        "reason": b"OK",
        "headers": [
            (b"Content-Type", b"text/event-stream"), (b"mcp-session-id", b"3f2a"), (b"Connection", b"keep-alive"),
            (b"Cache-Control", b"no-cache"), (b"connection", b"Upgrade"), (b"X-Empty", b""), (b"Content-Length", b"2"),
        ],
        "keep_alive": True,
        "content_length": 2,
        "chunked": False,
        "content_type": b"text/event-stream",
        "session_id": b"3f2a",
        "connection": b"keep-alive, Upgrade",
        "transfer_encoding": None,
    }
    assert (body, trailers) == (b"{}", None)


def test_request_only_fields_are_plain_headers(core, feed_mode):
    msg = resp(b"Host: x", b"Host: y", b"Authorization: a", b"Authorization: b", b"Expect: nonsense", CL0)
    _, head, _, _ = parse_one(core, feed_mode, msg)
    assert len(head["headers"]) == 6


@pytest.mark.parametrize("name", [b"Content-Type", b"Mcp-Session-Id"])
def test_duplicate_singleton_502(core, feed_mode, name):
    parse_error(core, feed_mode, resp(name + b": a", name.lower() + b": a", CL0))


@pytest.mark.parametrize(
    "field",
    [b"X : 1", b"X\t: 1", b": 1", b"NoColon", b"X A: 1", b"X@: 1", b"X: a\x00", b"X: a\rb", b"X: \x7f", b"\xff: 1",
     b" X: 1"],
)  # fmt: skip
def test_bad_field_line_502(core, feed_mode, field):
    parse_error(core, feed_mode, resp(field, CL0))


def test_obs_fold_502(core, feed_mode):
    parse_error(core, feed_mode, resp(b"X: 1", b" 2", CL0))
    parse_error(core, feed_mode, resp(b"X: 1", b"\t2", CL0))


@pytest.mark.parametrize(
    "msg",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n",
        b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # no leading empty lines in responses
        b"\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_bare_lf_and_cr_502(core, feed_mode, msg):
    parse_error(core, feed_mode, msg)


def test_header_limits_502(core, feed_mode):
    msg = resp(b"A: 1", b"B: 2", CL0)
    _, head, _, _ = parse_one(core, feed_mode, msg, max_headers=3, max_header_bytes=len(msg))
    assert len(head["headers"]) == 3
    parse_error(core, feed_mode, msg, max_headers=2)
    parse_error(core, feed_mode, msg, max_header_bytes=len(msg) - 1)
    parse_error(core, feed_mode, resp(CL0, line=b"HTTP/1.1 200 " + b"r" * 200), max_header_bytes=100)
    with pytest.raises(ValueError):
        core.ResponseParser(Recorder(), max_header_bytes=0)


def test_unterminated_status_line_fails_at_the_limit(core):
    parser = core.ResponseParser(Recorder())
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            parser.feed(b"x" * 1000)
    assert info.value.status == 502


# -- bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lines, length", [([b"Content-Length: 5"], 5), ([b"Content-Length: 5", b"Content-Length: 005"], 5),
                                           ([b"Content-Length: 5,5"], 5), ([CL0], 0)])  # fmt: skip
def test_content_length_body(core, feed_mode, lines, length):
    _, head, body, trailers = parse_one(core, feed_mode, resp(*lines, body=b"hello"[:length]))
    assert (head["content_length"], head["chunked"], head["keep_alive"], body, trailers) == (length, False, True, b"hello"[:length], None)


def test_content_length_with_thousands_of_leading_zeros(core, feed_mode):
    _, head, body, _ = parse_one(core, feed_mode, resp(b"Content-Length: " + b"0" * 6000 + b"3", body=b"abc"))
    assert head["content_length"] == 3 and body == b"abc"


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 5, 6"],
        [b"Content-Length: -5"],
        [b"Content-Length: 5x"],
        [b"Content-Length:"],
        [b"Content-Length: " + b"9" * 30],  # overflow
        [b"Content-Length: 5", b"Transfer-Encoding: chunked"],  # RFC 9112 §6.3 rule 3
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Transfer-Encoding: gzip", b"Content-Length: 5"],
    ],
)
def test_bad_framing_502(core, feed_mode, lines):
    assert parse_error(core, feed_mode, resp(*lines, body=b"5\r\nhello\r\n0\r\n\r\n")) == []


@pytest.mark.parametrize(
    "te, chunks, body, trailers",
    [
        (b"chunked", b"0\r\n\r\n", b"", []),
        (b"chunked", b"5\r\nhello\r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n", b"hello" + b"z" * 26, []),
        (b"Chunked", b"3;ext=1;q=\"x y\"\r\nabc\r\n0\r\nX-Trailer: t\r\nX-Other:  o \r\n\r\n", b"abc", [(b"X-Trailer", b"t"), (b"X-Other", b"o")]),
        (b"gzip, chunked", b"2\r\n\x1f\x8b\r\n0\r\n\r\n", b"\x1f\x8b", []),  # relayed as is
        (b"chunked, chunked", b"1\r\nx\r\n0\r\n\r\n", b"x", []),
    ],
)
def test_chunked_body(core, feed_mode, te, chunks, body, trailers):
    _, head, got, got_trailers = parse_one(core, feed_mode, resp(b"Transfer-Encoding: " + te, body=chunks))
    assert (head["chunked"], head["content_length"], head["keep_alive"], head["transfer_encoding"]) == (True, -1, True, te)
    assert (got, got_trailers) == (body, trailers)


@pytest.mark.parametrize(
    "chunks",
    [b"x\r\n", b"\r\n", b"5\r\nhelloX", b"5\r\nhello\n", b"5\nhello\r\n", b"5;\r\nhello\r\n", b"0\r\nT: 1\n\r\n", b"0\r\n T\r\n\r\n",
     b"1" * 17 + b"\r\n", b"5 \r\nhello\r\n", b"1" + b" " * 5000 + b";e\r\n"],
)  # fmt: skip
def test_bad_chunked_framing_502(core, feed_mode, chunks):
    parse_error(core, feed_mode, resp(b"Transfer-Encoding: chunked", body=chunks + b"0\r\n\r\n"))


@pytest.mark.parametrize(
    "lines, keep_alive",
    [
        ([], False),  # neither field: read until close (RFC 9112 §6.3 rule 8)
        ([b"Connection: keep-alive"], False),
        ([b"Transfer-Encoding: gzip"], False),  # TE without final chunked: until close
        ([b"Transfer-Encoding: chunked, gzip"], False),
    ],
)
def test_read_until_close(core, feed_mode, lines, keep_alive):
    rest = b"everything\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nuntil the end"
    rec = Recorder()
    parser = core.ResponseParser(rec)
    feed_all(parser, resp(*lines) + rest, feed_mode)
    assert parser.in_message and rec.events[-1][0] != "end"
    parser.feed_eof()
    ((interims, head, body, trailers),) = messages(normal(rec.events))
    assert (interims, head["keep_alive"], head["content_length"], head["chunked"], body, trailers) == ([], keep_alive, -1, False, rest, None)
    assert not parser.in_message
    parser.feed_eof()  # no-op
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_read_until_close_empty_and_zero_copy(core):
    rec = Recorder()
    parser = core.ResponseParser(rec)
    parser.feed(resp())
    parser.feed_eof()
    assert [k for k, _ in rec.events] == ["head", "end"]
    # A long run inside a fed bytes is a view of it, a short one a copy, a whole feed itself.
    rec = Recorder()
    parser = core.ResponseParser(rec)
    data = resp(body=b"a" * 512)
    parser.feed(data)
    tail = b"defgh"
    parser.feed(tail)
    parser.feed(b"XX" + resp(body=b"abc"))
    first, second, third = (c for k, c in rec.events if k == "body")
    assert type(first) is memoryview and first.obj is data and first.readonly and bytes(first) == b"a" * 512
    assert second is tail
    assert type(third) is bytes and third == b"XX" + resp(body=b"abc")
    rec = Recorder()
    parser = core.ResponseParser(rec)
    parser.feed(resp(body=b"b" * 511))
    assert rec.events[1] == ("body", b"b" * 511) and type(rec.events[1][1]) is bytes


def test_body_delivered_as_it_arrives(core):
    rec = Recorder()
    parser = core.ResponseParser(rec)
    parser.feed(resp(b"Content-Length: 10", body=b"0123"))
    assert [k for k, _ in rec.events] == ["head", "body"] and parser.in_message
    parser.feed(b"456789" + NEXT[:10])
    assert [k for k, _ in rec.events] == ["head", "body", "body", "end"]
    parser.feed(NEXT[10:])
    rec2 = Recorder()
    parser = core.ResponseParser(rec2)
    parser.feed(resp(b"Transfer-Encoding: chunked", body=b"a\r\n01234"))
    assert [bytes(c) for k, c in rec2.events if k == "body"] == [b"01234"]
    parser.feed(b"56789\r\n0\r\n\r\n")
    assert rec2.events[-1] == ("end", [])


# -- no body: 1xx, 204, 304, HEAD -------------------------------------------------------------


def test_interim_responses(core, feed_mode):
    msg = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nLink: </app.js>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\nContent-Length: 99\r\n\r\n"  # no body, whatever it says
        + resp(b"Content-Length: 2", body=b"{}")
    )
    interims, head, body, trailers = parse_one(core, feed_mode, msg)
    assert [(h["status"], h["reason"], h["content_length"]) for h in interims] == [(100, b"Continue", -1), (103, b"Early Hints", -1), (102, b"Processing", -1)]
    assert interims[1]["headers"] == [(b"Link", b"</style.css>; rel=preload"), (b"Link", b"</app.js>; rel=preload")]
    assert (head["status"], body, trailers) == (200, b"{}", None)


def test_interim_reported_before_final_arrives(core):
    rec = Recorder()
    parser = core.ResponseParser(rec)
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2")
    assert [k for k, _ in rec.events] == ["interim"] and parser.in_message
    parser.feed(b"00 OK\r\nContent-Length: 0\r\n\r\n")
    assert [k for k, _ in rec.events] == ["interim", "head", "end"]


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
@pytest.mark.parametrize("lines", [[], [b"Content-Length: 10"], [b"Transfer-Encoding: chunked"]])
def test_no_body_statuses(core, feed_mode, status, lines):
    _, head, body, trailers = parse_one(core, feed_mode, resp(*lines, line=b"HTTP/1.1 " + status))
    assert (head["content_length"], head["chunked"], head["keep_alive"], body, trailers) == (-1, False, True, b"", None)


@pytest.mark.parametrize(
    "lines", [[b"Content-Length: 10"], [b"Transfer-Encoding: chunked"], [], [b"Content-Type: application/json"]]
)
def test_head_response_has_no_body(core, feed_mode, lines):
    _, head, body, trailers = parse_one(core, feed_mode, resp(*lines), head=True)
    assert (head["status"], head["content_length"], body, trailers, head["keep_alive"]) == (200, -1, b"", None, True)


def test_head_flag_survives_interim_and_is_used_once(core, feed_mode):
    msg = b"HTTP/1.1 100 Continue\r\n\r\n" + resp(b"Content-Length: 10") + resp(b"Content-Length: 3", body=b"abc")
    msgs = parse_all(core, msg, feed_mode, head=True)
    assert [(len(i), h["status"], b) for i, h, b, _ in msgs] == [(1, 200, b""), (0, 200, b"abc")]


# -- persistence --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, lines, keep_alive",
    [
        (b"HTTP/1.1 200 OK", [CL0], True),
        (b"HTTP/1.1 200 OK", [CL0, b"Connection: close"], False),
        (b"HTTP/1.1 200 OK", [CL0, b"Connection: Keep-Alive, CLOSE"], False),
        (b"HTTP/1.0 200 OK", [CL0], False),
        (b"HTTP/1.0 200 OK", [CL0, b"Connection: keep-alive"], True),
        (b"HTTP/1.0 200 OK", [b"Transfer-Encoding: chunked", b"Connection: keep-alive"], False),  # TE in 1.0
        (b"HTTP/1.1 204 No Content", [b"Connection: close"], False),
    ],
)
def test_keep_alive(core, feed_mode, line, lines, keep_alive):
    body = b"0\r\n\r\n" if any(b"chunked" in h for h in lines) else b""
    _, head, _, _ = parse_one(core, feed_mode, resp(*lines, line=line, body=body))
    assert head["keep_alive"] is keep_alive


# -- end of input, failure ------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        b"H",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1",
    ],
)
def test_feed_eof_inside_response_502(core, feed_mode, partial):
    seen = parse_error(core, feed_mode, partial, pipelined=False)
    assert all(k != "end" for k, _ in seen)


def test_feed_eof_between_responses(core, feed_mode):
    rec = Recorder()
    parser = core.ResponseParser(rec)
    feed_all(parser, NEXT + b"HTTP/1.1 100 Continue\r\n\r\n", feed_mode)
    assert not parser.in_message
    parser.feed_eof()
    assert [k for k, _ in normal(rec.events)] == ["head", "body", "end", "interim"]
    with pytest.raises(RuntimeError):
        parser.feed(NEXT)


def test_handler_exception_propagates_and_kills(core):
    for where in ("on_interim", "on_response", "on_body", "on_response_end"):
        rec = Recorder()

        def explode(*_a, where=where):
            raise KeyError(where)

        setattr(rec, where, explode)
        parser = core.ResponseParser(rec)
        with pytest.raises(KeyError):
            parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + NEXT + NEXT)
        with pytest.raises(RuntimeError):
            parser.feed(NEXT)


def test_until_close_end_callback_error_kills(core):
    rec = Recorder()

    def explode(_t):
        raise KeyError("end")

    rec.on_response_end = explode
    parser = core.ResponseParser(rec)
    parser.feed(resp(body=b"x"))
    with pytest.raises(KeyError):
        parser.feed_eof()
    with pytest.raises(RuntimeError):
        parser.feed_eof()


def test_many_pipelined_responses(core, feed_mode):
    chunked = resp(b"Transfer-Encoding: chunked", body=b"2\r\nab\r\n0\r\nT: v\r\n\r\n")
    data = (b"HTTP/1.1 100 Continue\r\n\r\n" + NEXT + chunked + resp(line=b"HTTP/1.1 204 No Content")) * 15
    msgs = parse_all(core, data, feed_mode)
    assert [(len(i), h["status"], b, t) for i, h, b, t in msgs] == [(1, 200, b"next", None), (0, 200, b"ab", [(b"T", b"v")]), (0, 204, b"", None)] * 15


def test_no_leak_over_many_responses(c_core):
    """Reference counting in the compiled core: memory stays flat over many messages
    (field reuse, interned names, trailers, interim heads all exercised)."""
    core = c_core

    class Sink:
        def on_interim(self, head):
            pass

        def on_response(self, head):
            pass

        def on_body(self, chunk):
            pass

        def on_response_end(self, trailers):
            pass

    def loop(count):
        parser = core.ResponseParser(Sink())
        for i in range(count):
            parser.feed(resp(b"Date: %d" % (i // 10), b"Content-Type: application/json", b"Content-Length: 2", body=b"{}"))
            if i % 7 == 0:
                parser.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </%d>\r\n\r\n" % i)
                parser.feed(resp(b"Transfer-Encoding: chunked", body=b"2;n=%d\r\nab\r\n0\r\nT: %d\r\n\r\n" % (i, i)))
        parser.feed_eof()

    loop(2000)
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
