"""SSE parser and writer (WHATWG HTML §9.2.5-9.2.6) over both cores.

Every rule is checked fed whole, byte by byte and at random split points, and again
with a pipelined partial event behind it.  Each result must also tile the stream:
``raw`` of consecutive events are consecutive slices of it.  Besides the hand-written
cases, a property test compares both cores with ``spec_events`` -- the spec's algorithm
written out the obvious way over the whole stream, independent of the incremental
design both cores share.
"""

from __future__ import annotations

import json
import re

import pytest
from feeding import MODES, split_ways
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.errors import ProtocolError

BOM = b"\xef\xbb\xbf"
TRAILER = b"event: message\ndata: {\"pipelined\": tr"  # an event cut mid-line


def fields(ev):
    return (ev.event, ev.data, ev.id, ev.retry, ev.comments)


def full(ev):
    return (ev.raw, ev.start, ev.end, *fields(ev))


def check_tiling(events, stream, offset):
    """raw of consecutive events are consecutive slices of the stream, up to offset."""
    pos = 0
    for ev in events:
        assert type(ev.raw) is bytes
        assert ev.start == pos and ev.end == pos + len(ev.raw)
        assert stream[ev.start : ev.end] == ev.raw
        pos = ev.end
    assert offset == pos


def parse(core, stream, mode="whole", *, eof=True, seed=0, **kw):
    parser = core.SSEParser(**kw)
    events = []
    for piece in split_ways(stream, mode, seed):
        events += parser.feed(piece)
    if eof:
        events += parser.feed_eof()
        # Only empty lines (and a lone BOM) may be left out of the blocks.
        rest = stream[parser.offset :]
        if parser.offset == 0 and rest.startswith(BOM):
            rest = rest[3:]
        assert rest.strip(b"\r\n") == b""
    check_tiling(events, stream, parser.offset)
    return events


def check_rule(core, mode, stream, expected):
    """stream (ending in a blank line) gives exactly the expected field tuples, also
    with a partial event pipelined behind it, which only feed_eof reports, raw only."""
    events = parse(core, stream, mode)
    assert [fields(e) for e in events] == expected
    parser = core.SSEParser()
    got = []
    for piece in split_ways(stream + TRAILER, mode, seed=7):
        got += parser.feed(piece)
    assert [full(e) for e in got] == [full(e) for e in events]
    (tail,) = parser.feed_eof()
    start = events[-1].end if events else 0  # empty lines after the last block lead the next
    raw = stream[start:] + TRAILER
    assert full(tail) == (raw, start, start + len(raw), b"message", None, None, None, 0)


# -- each rule -------------------------------------------------------------------------

N = None
RULES = {
    # §9.2.6: "data" appends the value; one leading space after the colon is dropped.
    "data": (b"data: hello\n\n", [(N, b"hello", N, N, 0)]),
    "one-space-only": (b"data:  two\n\n", [(N, b" two", N, N, 0)]),
    "no-space": (b"data:tight\n\n", [(N, b"tight", N, N, 0)]),
    "tab-kept": (b"data:\tx \n\n", [(N, b"\tx ", N, N, 0)]),
    "colon-in-value": (b"data: a:b: c\n\n", [(N, b"a:b: c", N, N, 0)]),
    "data-lines-joined": (b"data: a\ndata: b\ndata:\n\n", [(N, b"a\nb\n", N, N, 0)]),
    "empty-data": (b"data:\n\n", [(N, b"", N, N, 0)]),
    "name-only-line": (b"data\n\n", [(N, b"", N, N, 0)]),  # no colon: value is empty
    # §9.2.5 end-of-line: CRLF, CR or LF, mixed freely.
    "line-ends-mixed": (b"data: a\rdata: b\r\ndata: c\n\r\n", [(N, b"a\nb\nc", N, N, 0)]),
    "cr-only": (b"data: x\r\rdata: y\r\r", [(N, b"x", N, N, 0), (N, b"y", N, N, 0)]),
    "crlf": (b"event: e\r\ndata: x\r\n\r\n", [(b"e", b"x", N, N, 0)]),
    "cr-then-lf-is-one-eol": (b"data: x\r\n\ndata: y\n\r\r\n\n", [(N, b"x", N, N, 0), (N, b"y", N, N, 0)]),
    # "event" sets the type; the last one wins.
    "event-last-wins": (b"event: a\nevent: b\ndata: x\n\n", [(b"b", b"x", N, N, 0)]),
    "event-empty": (b"event\ndata\n\n", [(b"", b"", N, N, 0)]),
    # "id": last one wins, a value with NULL is ignored, an empty value is an empty id.
    "id": (b"id: 42\ndata: x\n\n", [(N, b"x", b"42", N, 0)]),
    "id-with-nul-ignored": (b"id: 1\nid: 2\x003\ndata: x\n\n", [(N, b"x", b"1", N, 0)]),
    "id-empty": (b"id\n\n", [(N, N, b"", N, 0)]),
    "id-per-block": (b"id: 1\ndata: a\n\ndata: b\n\n", [(N, b"a", b"1", N, 0), (N, b"b", N, N, 0)]),
    # "retry": only ASCII digits; otherwise ignored (an earlier valid value stands).
    "retry": (b"retry: 3000\n\n", [(N, N, N, 3000, 0)]),
    "retry-leading-zeros": (b"retry: 0007\n\n", [(N, N, N, 7, 0)]),
    "retry-invalid": (b"retry: 30x0\n\n", [(N, N, N, N, 0)]),
    "retry-negative": (b"retry: -1\n\n", [(N, N, N, N, 0)]),
    "retry-empty": (b"retry:\n\n", [(N, N, N, N, 0)]),
    "retry-two-spaces": (b"retry:  5\n\n", [(N, N, N, N, 0)]),
    "retry-non-ascii-digits": ("retry: \u0661\u0662\n\n".encode(), [(N, N, N, N, 0)]),
    "retry-last-valid": (b"retry: 1\nretry: abc\n\n", [(N, N, N, 1, 0)]),
    "retry-largest": (b"retry: " + b"9" * 18 + b"\n\n", [(N, N, N, 10**18 - 1, 0)]),
    "retry-too-large": (b"retry: 1" + b"0" * 18 + b"\n\n", [(N, N, N, N, 0)]),
    # ":" lines are comments; a block of comments alone is still a block.
    "comment": (b": keepalive\n\n", [(N, N, N, N, 1)]),
    "comments-counted": (b":\n:x\ndata: y\n: z\n\n", [(N, b"y", N, N, 3)]),
    # Unknown names (names are case-sensitive, no space before the colon) are ignored.
    "unknown-fields": (b"foo: bar\nData: x\ndata : y\n\n", [(N, N, N, N, 0)]),
    "space-line-is-not-empty": (b" \n\n", [(N, N, N, N, 0)]),
    # One leading BOM is ignored; a second one, or one later, is part of a field name.
    "bom": (BOM + b"data: x\n\n", [(N, b"x", N, N, 0)]),
    "bom-twice": (BOM + BOM + b"data: x\n\n", [(N, N, N, N, 0)]),
    "bom-later": (b"data: a\n\n" + BOM + b"data: b\n\n", [(N, b"a", N, N, 0), (N, N, N, N, 0)]),
    "bom-then-blank": (BOM + b"\ndata: x\n\n", [(N, b"x", N, N, 0)]),
    # Empty lines before a block are not a block; they are in the next block's raw.
    "leading-empty-lines": (b"\n\r\n\r\n\ndata: x\n\n\n\ndata: y\n\n", [(N, b"x", N, N, 0), (N, b"y", N, N, 0)]),
    # Bytes are passed through as sent: NUL, invalid UTF-8, non-ASCII.
    "binary-data": (b"data: \x00\xff\xfe\xc3\n\n", [(N, b"\x00\xff\xfe\xc3", N, N, 0)]),
    "utf8": ("event: \u00e9\ndata: \u2603\n\n".encode(), [("\u00e9".encode(), "\u2603".encode(), N, N, 0)]),
    "all-fields": (
        b": c\nevent: message\nid: 7\nretry: 10\ndata: {}\n\n",
        [(b"message", b"{}", b"7", 10, 1)],
    ),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule(core, feed_mode, name):
    stream, expected = RULES[name]
    check_rule(core, feed_mode, stream, expected)


def test_empty_lines_only_are_not_a_block(core, feed_mode):
    assert parse(core, b"\n\r\n\r\n\r", feed_mode) == []
    assert parse(core, BOM, feed_mode) == []
    assert parse(core, b"", feed_mode) == []


def test_raw_keeps_everything(core, feed_mode):
    stream = BOM + b"\r\n: hi\nfoo\nevent: x\r\ndata: 1\rid: \x00\n\n\ndata: 2\n\n"
    events = parse(core, stream, feed_mode)
    assert [e.raw for e in events] == [BOM + b"\r\n: hi\nfoo\nevent: x\r\ndata: 1\rid: \x00\n\n", b"\ndata: 2\n\n"]


def test_event_type_objects_not_confused(core, feed_mode):
    # The compiled core reuses the last event-type object when the next one matches.
    stream = b"".join(b"event: %s\ndata: x\n\n" % t for t in (b"message", b"message", b"messagf", b"mess", b"message"))
    assert [e.event for e in parse(core, stream, feed_mode)] == [b"message", b"message", b"messagf", b"mess", b"message"]


# -- where a block ends, and when it is reported ------------------------------------


def test_lf_and_crlf_blocks_reported_by_the_feed_that_ends_them(core):
    parser = core.SSEParser()
    assert [e.data for e in parser.feed(b"data: a\n\n")] == [b"a"]
    assert [e.data for e in parser.feed(b"data: b\r\n\r\n")] == [b"b"]
    assert [e.data for e in parser.feed(b"data: c\n\r\n")] == [b"c"]


def test_cr_at_end_of_data_is_held(core):
    parser = core.SSEParser()
    assert parser.feed(b"data: x\r\r") == []  # is the second CR a CRLF?
    (ev,) = parser.feed(b"\n")
    assert ev.raw == b"data: x\r\r\n" and ev.data == b"x"
    assert parser.feed(b"data: y\r\r") == []
    (ev,) = parser.feed(b"data: z")
    assert ev.raw == b"data: y\r\r" and ev.data == b"y"
    assert parser.feed(b"\r") == []
    (ev,) = parser.feed_eof()  # EOF settles it: a bare CR, the line "data: z" is done
    assert ev.raw == b"data: z\r" and ev.data == b"z"


def test_cr_lf_split_across_feeds_is_one_line_end(core):
    parser = core.SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n") == []  # the LF completes "data: x\r\n", not a blank line
    (ev,) = parser.feed(b"\r\n")
    assert ev.raw == b"data: x\r\n\r\n"


def test_bom_split_across_feeds(core):
    parser = core.SSEParser()
    assert parser.feed(b"\xef") == [] and parser.feed(b"\xbb") == []
    (ev,) = parser.feed(b"\xbfdata: x\n\n")
    assert ev.raw == BOM + b"data: x\n\n" and ev.data == b"x"


def test_partial_bom_at_eof_is_a_line(core):
    (ev,) = parse(core, b"\xef\xbb")
    assert ev.raw == b"\xef\xbb" and fields(ev) == (None, None, None, None, 0)
    (ev,) = parse(core, b"\xef\xbb\n")  # a field named b"\xef\xbb": unknown, ignored
    assert ev.raw == b"\xef\xbb\n"


def test_offset_counts_reported_bytes(core):
    parser = core.SSEParser()
    parser.feed(b"\n\ndata: a\n\ndata: b")
    assert parser.offset == len(b"\n\ndata: a\n\n")
    parser.feed_eof()
    assert parser.offset == len(b"\n\ndata: a\n\ndata: b")


# -- end of stream ---------------------------------------------------------------------


def test_eof_reports_unterminated_block(core, feed_mode):
    (ev,) = parse(core, b"event: message\ndata: {}\n", feed_mode)
    assert fields(ev) == (b"message", b"{}", None, None, 0)


def test_eof_line_without_line_end_is_raw_only(core, feed_mode):
    (ev,) = parse(core, b"id: 3\ndata: {\"jsonrpc\": \"2.", feed_mode)
    assert ev.raw == b"id: 3\ndata: {\"jsonrpc\": \"2." and fields(ev) == (None, None, b"3", None, 0)
    (ev,) = parse(core, b"\n\ndata: x", feed_mode)
    assert ev.start == 0 and ev.data is None


def test_eof_after_blank_lines_reports_nothing_more(core, feed_mode):
    events = parse(core, b"data: a\n\n\n\n\r\n", feed_mode)
    assert [e.raw for e in events] == [b"data: a\n\n"]


def test_feed_after_eof(core):
    parser = core.SSEParser()
    parser.feed_eof()
    assert parser.feed_eof() == []
    with pytest.raises(RuntimeError):
        parser.feed(b"data: x\n\n")


# -- input types -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_input_types(core, kind):
    stream = b"data: a\n\ndata: b\n\ndata: c"
    parser = core.SSEParser()
    got = parser.feed(kind(stream[:12])) + parser.feed(kind(stream[12:])) + parser.feed_eof()
    assert [full(e) for e in got] == [full(e) for e in parse(core, stream)]


def test_caller_buffer_not_retained(core):
    parser = core.SSEParser()
    buf = bytearray(b"data: original")
    parser.feed(buf)
    buf[:] = b"XXXXXXXXXXXXXX"
    (ev,) = parser.feed(b"\n\n")
    assert ev.data == b"original"


def test_one_event_per_feed_is_not_copied(c_core):
    chunk = b"event: message\ndata: " + b"x" * 1000 + b"\n\n"
    parser = c_core.SSEParser()
    (ev,) = parser.feed(chunk)
    assert ev.raw is chunk


def test_compiled_core_loaded(c_core, py_core):
    assert c_core.__file__.endswith((".so", ".pyd"))
    assert c_core.SSEParser is not py_core.SSEParser
    assert c_core.SSEEvent is not py_core.SSEEvent


# -- large events ------------------------------------------------------------------------


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_large_event_in_pieces(core, line_end):
    payload = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"blob": "y" * (1 << 20)}}).encode()
    stream = b"event: message" + line_end + b"data: " + payload + line_end * 2 + b"data: next" + line_end * 2
    parser = core.SSEParser()
    events = []
    for i in range(0, len(stream), 65536):
        events += parser.feed(stream[i : i + 65536])
    events += parser.feed_eof()
    assert [e.data for e in events] == [payload, b"next"]
    check_tiling(events, stream, parser.offset)


def test_large_multiline_data(core, feed_mode):
    count = 50 if feed_mode == "bytewise" else 2000  # 2000 lines: ~190 KB of data
    lines = [b"%06d" % i + b"z" * 90 for i in range(count)]
    stream = b"".join(b"data: " + line + b"\n" for line in lines) + b"\n" + b"data: small\ndata: two\n\n"
    events = parse(core, stream, feed_mode)
    assert [e.data for e in events] == [b"\n".join(lines), b"small\ntwo"]


# -- MCP-shaped streams --------------------------------------------------------------------

REQUEST_RESULT = {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "hi"}]}}
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 1}}


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_mcp_post_response_stream(core, feed_mode, eol):
    # 2025-11-25: priming event (id, empty data), related notifications, then the response.
    stream = eol.join(
        [
            b"id: 0-ab",
            b"data: ",
            b"",
            b": keep-alive",
            b"",
            b"event: message",
            b"id: 1-ab",
            b"data: " + json.dumps(PROGRESS).encode(),
            b"",
            b"event: message",
            b"id: 2-ab",
            b"data: " + json.dumps(REQUEST_RESULT).encode(),
            b"",
            b"",
        ]
    )
    events = parse(core, stream, feed_mode)
    assert [(e.event, e.id) for e in events] == [(None, b"0-ab"), (None, None), (b"message", b"1-ab"), (b"message", b"2-ab")]
    assert events[0].data == b"" and events[1].comments == 1 and events[1].data is None
    assert json.loads(events[2].data) == PROGRESS and json.loads(events[3].data) == REQUEST_RESULT


def test_mcp_legacy_endpoint_event(core, feed_mode):
    stream = b"event: endpoint\r\ndata: /messages/?session_id=3f2a\r\n\r\nevent: message\r\ndata: {}\r\n\r\n"
    events = parse(core, stream, feed_mode)
    assert [(e.event, e.data) for e in events] == [(b"endpoint", b"/messages/?session_id=3f2a"), (b"message", b"{}")]


def test_mcp_polling_retry_then_close(core, feed_mode):
    # A server that will close the stream first tells the client when to reconnect.
    stream = b"id: 5-x\nretry: 2500\ndata: \n\n"
    (ev,) = parse(core, stream, feed_mode)
    assert fields(ev) == (None, b"", b"5-x", 2500, 0)


def test_mcp_stream_ended_without_blank_line(core, feed_mode):
    body = json.dumps(REQUEST_RESULT).encode()
    events = parse(core, b"event: message\ndata: " + body + b"\n", feed_mode)
    assert [(e.event, e.data) for e in events] == [(b"message", body)]


# -- max_event_bytes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream,limit,ok",
    [
        (b"data: x\n\n", 8, True),  # 8 bytes before the blank line
        (b"data: x\n\n", 7, False),
        (b"data: x\r\n\r\n", 9, True),
        (b"data: x\r\n\r\n", 8, False),
        (b"data: x\n\r", 8, True),  # held CR is the blank line, not counted
        (b"\n" * 10 + b"data: x\n\n", 18, True),  # leading empty lines count
        (b"\n" * 10 + b"data: x\n\n", 17, False),
        (BOM + b"data: x\n\n", 11, True),
        (BOM + b"data: x\n\n", 10, False),
        (b"\n" * 100, 50, False),  # empty lines alone cannot pile up
        (b"data: xyz", 9, True),  # final block at EOF: all of it counts
        (b"data: xyz", 8, False),
    ],
)
def test_max_event_bytes(core, feed_mode, stream, limit, ok):
    if ok:
        parse(core, stream, feed_mode, max_event_bytes=limit)
    else:
        with pytest.raises(ProtocolError) as info:
            parse(core, stream, feed_mode, max_event_bytes=limit)
        assert info.value.status == 502


def test_error_after_good_events_is_raised_by_next_call(core):
    parser = core.SSEParser(max_event_bytes=20)
    events = parser.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 100)
    assert [e.data for e in events] == [b"a", b"b"]
    for call in (lambda: parser.feed(b""), parser.feed_eof, lambda: parser.feed(b"\n\n")):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value.status == 502


def test_error_outcome_independent_of_split(core, feed_mode):
    stream = b"data: a\n\n: c\n\ndata: " + b"x" * 100 + b"\n\n"
    parser = core.SSEParser(max_event_bytes=30)
    got = []
    with pytest.raises(ProtocolError):
        for piece in split_ways(stream, feed_mode, seed=3):
            got += parser.feed(piece)
        parser.feed_eof()
    assert [e.raw for e in got] == [b"data: a\n\n", b": c\n\n"]


# -- writer ------------------------------------------------------------------------------


def test_encode_layout(core):
    assert core.encode_sse_event(b"a\r\nb\rc\nd", event=b"message", id=b"7", retry=100) == (
        b"event: message\nid: 7\nretry: 100\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert core.encode_sse_event(b"") == b"data: \n\n"
    assert core.encode_sse_event(b"x\n") == b"data: x\ndata: \n\n"
    assert core.encode_sse_event(id=b"") == b"id: \n\n"
    assert core.encode_sse_event(bytearray(b"x"), event=memoryview(b"e")) == b"event: e\ndata: x\n\n"


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        ({"data": b"x", "event": b"a\nb"}, ValueError),
        ({"data": b"x", "event": b"a\rb"}, ValueError),
        ({"data": b"x", "id": b"1\n"}, ValueError),
        ({"data": b"x", "id": b"\r"}, ValueError),
        ({"data": b"x", "id": b"1\x002"}, ValueError),
        ({"data": b"x", "retry": -1}, ValueError),
        ({"data": b"x", "retry": 10**18}, ValueError),
        ({"data": b"x", "retry": 1.5}, TypeError),
        ({}, ValueError),
        ({"data": "text"}, TypeError),
        ({"event": 5}, TypeError),
    ],
)
def test_encode_errors(core, kwargs, exc):
    with pytest.raises(exc):
        core.encode_sse_event(**kwargs)


def _normalise(data):
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


field_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
line_ended_data = st.lists(
    st.one_of(st.binary(max_size=30), st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r", b" ", b":", b"{}"])), max_size=12
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(st.none(), line_ended_data),
    event=st.one_of(st.none(), field_bytes),
    id=st.one_of(st.none(), field_bytes.map(lambda b: b.replace(b"\x00", b""))),
    retry=st.one_of(st.none(), st.integers(0, 10**18 - 1)),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 1000),
)
def test_encode_parse_round_trip(core, data, event, id, retry, mode, seed):
    if data is None and event is None and id is None and retry is None:
        data = b""
    encoded = core.encode_sse_event(data, event=event, id=id, retry=retry)
    (ev,) = parse(core, encoded, mode, seed=seed)
    assert ev.raw == encoded
    assert fields(ev) == (event, None if data is None else _normalise(data), id, retry, 0)


# -- against the spec's algorithm, done the obvious way ------------------------------------


def spec_events(stream):
    """Fields of each block by WHATWG §9.2.6, reading the whole stream at once."""
    if stream.startswith(BOM):
        stream = stream[3:]
    parts = re.split(rb"(\r\n|\r|\n)", stream)  # content, eol, content, eol, ..., rest
    lines, rest = parts[0:-1:2], parts[-1]
    blocks, cur = [], None

    def fresh():
        return {"event": None, "data": None, "id": None, "retry": None, "comments": 0}

    for line in lines:
        if line == b"":
            if cur is not None:
                blocks.append(cur)
            cur = None
            continue
        cur = cur or fresh()
        if line.startswith(b":"):
            cur["comments"] += 1
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            cur["data"] = value if cur["data"] is None else cur["data"] + b"\n" + value
        elif name == b"event":
            cur["event"] = value
        elif name == b"id" and b"\x00" not in value:
            cur["id"] = value
        elif name == b"retry" and value and all(48 <= c <= 57 for c in value) and int(value) < 10**18:
            cur["retry"] = int(value)
    if cur is not None or rest:  # the gateway's extra: the unfinished block at EOF
        blocks.append(cur or fresh())
    return [(b["event"], b["data"], b["id"], b["retry"], b["comments"]) for b in blocks]


stream_tokens = st.sampled_from(
    [b"data", b"event", b"id", b"retry", b":", b": ", b" ", b"\r", b"\n", b"\r\n", BOM, b"\x00", b"12", b"0", b"x", b"\xff"]
)
streams = st.one_of(st.lists(stream_tokens, max_size=40).map(b"".join), st.binary(max_size=60))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams, mode=st.sampled_from(MODES), seed=st.integers(0, 1000))
def test_matches_spec_algorithm(core, stream, mode, seed):
    assert [fields(e) for e in parse(core, stream, mode, seed=seed)] == spec_events(stream)


# --- a parser that starts mid-stream --------------------------------------------------


def test_mid_stream_parser_reads_a_leading_bom_as_bytes(core, feed_mode):
    """``stream_start=False``: the BOM is no stream start, so it is part of the first
    field name (an unknown field) -- as for a BOM after the first block of a stream."""
    got = parse(core, BOM + b"id: 1\ndata: x\n\n", feed_mode, stream_start=False)
    assert [fields(e) for e in got] == [(None, b"x", None, None, 0)]
    assert got[0].raw == BOM + b"id: 1\ndata: x\n\n"
    got = parse(core, BOM + b"data: x\n\n", feed_mode, stream_start=False)
    assert [fields(e) for e in got] == [(None, None, None, None, 0)]
    # Without a BOM it changes nothing.
    assert [fields(e) for e in parse(core, b"data: x\n\n", feed_mode, stream_start=False)] == [(None, b"x", None, None, 0)]


whole_blocks = st.lists(
    st.lists(st.sampled_from([b"data: 1", b"event: e", b"id: 7", b"retry: 5", b": c", BOM + b"data: b", b"x"]),
             min_size=1, max_size=3).map(lambda lines: b"\n".join(lines) + b"\n\n"),
    min_size=1, max_size=6,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=whole_blocks, k=st.integers(0, 6), mode=st.sampled_from(MODES), seed=st.integers(0, 1000))
def test_mid_stream_parser_continues_a_stream_after_whole_blocks(core, blocks, k, mode, seed):
    """Parsing a stream from a block boundary with ``stream_start=False`` gives the
    events that parsing it from the start gives after that boundary."""
    k = min(k, len(blocks))
    stream = b"".join(blocks)
    head = b"".join(blocks[:k])
    all_events = [fields(e) for e in parse(core, stream, mode, seed=seed)]
    n_head = len(parse(core, head, "whole")) if head else 0
    rest = [fields(e) for e in parse(core, stream[len(head):], mode, seed=seed, stream_start=k == 0)]
    assert rest == all_events[n_head:]


# --- sse_passable ---------------------------------------------------------------------

ANSWER = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\n\n'


@pytest.mark.parametrize(
    "data, ok",
    [
        (ANSWER, True),
        (ANSWER.replace(b"\n", b"\r\n"), True),
        (ANSWER + b": keep-alive\n\n", True),
        (b"retry: 100\n\n", True),
        (b"\n\n", True),
        (ANSWER[:-1], False),  # the last event is not ended
        (ANSWER[:-2] + b"\r\r", False),  # a CR the next read may pair with
        (ANSWER[:-2] + b"\n\r\n", False),
        (b"data: {}\r\n\n", True),
        (BOM + ANSWER, False),
        (b"id: 4\n" + ANSWER, False),
        (ANSWER + b"id\n\n", False),
        (ANSWER.replace(b"\n", b"\r") + b"id: 1\r\n\r\n", False),
        (b'data: {"jsonrpc":"2.0","id":5,"method":"ping"}\n\n', False),
        (b'data: {"jsonrpc":"2.0","\\u006dethod":"ping"}\n\n', False),
        (b'data: {"jsonrpc":"2.0","id":1,"result":{"text":"caf\\u00e9"}}\n\n', False),  # cannot tell: parse
        (b"", False),
        (b"\n", False),
    ],
)
def test_sse_passable(core, data, ok):
    assert core.sse_passable(data) is ok
    assert core.sse_passable(bytearray(data)) is ok and core.sse_passable(memoryview(data)) is ok


passable_tokens = st.sampled_from(
    [b"data: ", b"id", b"id: 1", b"event: message", b": c", b'"method"', b'"id"', b"\\u", b"\\", b"u",
     b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", BOM, b"{", b"}", b"x"]
)  # fmt: skip


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.lists(passable_tokens, max_size=20).map(b"".join), st.binary(max_size=40)))
def test_sse_passable_cores_agree(c_core, py_core, data):
    assert c_core.sse_passable(data) is py_core.sse_passable(data)
