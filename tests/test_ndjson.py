"""NDJSON framer (the stdio transport's line splitter) over both cores.

Every rule is checked against ``spec_lines`` -- the rules written out the obvious way
over the whole stream -- fed whole, byte by byte, at random split points and cut at
every byte offset (every pair of offsets for short streams), so a CR split from its LF,
or a limit checked on the wrong side of a cut, cannot hide.  The bounded-memory promise
is checked on a 100 MB line fed in 64 KiB pieces: by ``buffered`` and by what
tracemalloc saw allocated.
"""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from feeding import split_ways

from mcpfast.wire.errors import ProtocolError

FAULT = "error"


def spec_lines(stream: bytes, max_line: int) -> tuple[list[bytes], bool]:
    """The lines of a whole stream that then ends, and whether the limit is broken."""
    *complete, last = stream.split(b"\n")
    lines = []
    for line in [*complete, last]:  # the stream ended: the last line as if LF followed
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > max_line:
            return lines, True
        if line:
            lines.append(line)
    return lines, False


def run(core, pieces, max_line=1000, eof=True):
    """What each call gave: a list of lines per call, then ("error", status, text)."""
    framer = core.NDJSONFramer(max_line)
    calls = []
    try:
        for piece in pieces:
            calls.append(framer.feed(piece))
        if eof:
            calls.append(framer.feed_eof())
    except ProtocolError as exc:
        calls.append((FAULT, exc.status, str(exc)))
    return calls


def flatten(calls):
    lines = [line for call in calls if isinstance(call, list) for line in call]
    return lines, bool(calls) and isinstance(calls[-1], tuple)


def check(core, stream, max_line, pieces):
    calls = run(core, pieces, max_line)
    assert all(type(x) is bytes for call in calls if isinstance(call, list) for x in call)
    assert flatten(calls) == spec_lines(stream, max_line), pieces
    if isinstance(calls[-1], tuple):
        assert calls[-1][1:] == (502, f"NDJSON line longer than {max_line} bytes")
    return calls


CASES = [
    # (stream, max_line, expected lines, fault)
    (b"", 5, [], False),
    (b'{"a":1}\n{"b":2}\n', 100, [b'{"a":1}', b'{"b":2}'], False),
    (b"one\r\ntwo\r\n", 100, [b"one", b"two"], False),
    (b"last without LF", 100, [b"last without LF"], False),
    (b"last ends in CR\r", 100, [b"last ends in CR"], False),
    (b"\n\r\n\n\r\nx\n\n", 100, [b"x"], False),  # empty and lone-CR lines are skipped
    (b"a\rb\n\r\r\n\rc\r\r\n", 100, [b"a\rb", b"\r", b"\rc\r"], False),  # only the CR before LF goes
    (b"\r", 100, [], False),
    (b"abc\n", 3, [b"abc"], False),  # exactly the limit
    (b"abc\r\n", 3, [b"abc"], False),  # the CR of CRLF does not count
    (b"abc\r", 3, [b"abc"], False),  # nor a last CR at EOF
    (b"ab\r\rc\n", 3, [], True),  # a CR inside the line does
    (b"abc\r\rd\n", 3, [], True),
    (b"ok\nabcd\nnever\n", 3, [b"ok"], True),  # lines after the fault are not given out
    (b"ok\nabcd", 3, [b"ok"], True),
    (b"ok\nabc\r\r", 3, [b"ok"], True),  # the first CR is no line end: 4 bytes
    (b"a\n\r\n" * 3 + b"b" * 10, 9, [b"a"] * 3, True),
]


@pytest.mark.parametrize("stream,max_line,lines,fault", CASES)
def test_rules(core, feed_mode, stream, max_line, lines, fault):
    assert spec_lines(stream, max_line) == (lines, fault)
    check(core, stream, max_line, split_ways(stream, feed_mode, seed=max_line))


@pytest.mark.parametrize("stream,max_line,lines,fault", CASES)
def test_every_split_point(core, stream, max_line, lines, fault):
    for i in range(len(stream) + 1):
        check(core, stream, max_line, [stream[:i], stream[i:]])
    if len(stream) <= 40:
        for i, j in itertools.combinations(range(len(stream) + 1), 2):
            check(core, stream, max_line, [stream[:i], stream[i:j], stream[j:]])


MIXED = b'{"jsonrpc":"2.0","id":1}\r\n\n\r\n{"x":"a\rb"}\n' + b"y" * 20 + b"\r\r\n" + b"z" * 21 + b"\r\n" + b"tail\r"


@pytest.mark.parametrize("max_line", [1, 2, 10, 20, 21, 22, 24, 30])
def test_every_split_point_of_a_mixed_stream(core, max_line):
    for i, j in itertools.combinations(range(len(MIXED) + 1), 2):
        check(core, MIXED, max_line, [MIXED[:i], MIXED[i:j], MIXED[j:]])


def test_the_fault_is_raised_by_the_first_call_without_lines(core):
    framer = core.NDJSONFramer(4)
    assert framer.feed(b"ok\nabc") == [b"ok"]
    assert framer.buffered == 3
    # This feed completes two lines and breaks the limit: the line comes first...
    assert framer.feed(b"\r\nx\nabcde") == [b"abc", b"x"]
    assert framer.buffered == 0
    # ...the error with the next call, and every call after it.
    for call in (lambda: framer.feed(b"\n"), framer.feed_eof, lambda: framer.feed(b"")):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value.status == 502 and str(info.value) == "NDJSON line longer than 4 bytes"


def test_a_held_cr_counts_once_the_next_byte_is_no_lf(core):
    framer = core.NDJSONFramer(3)
    assert framer.feed(b"abc\r") == []
    assert framer.buffered == 4  # the limit plus a CR that may be CRLF's
    with pytest.raises(ProtocolError):
        framer.feed(b"d")
    framer = core.NDJSONFramer(3)
    assert framer.feed(b"abc\r") == []
    assert framer.feed(b"\n") == [b"abc"]
    assert framer.buffered == 0
    framer = core.NDJSONFramer(3)
    assert framer.feed(b"ab") == [] and framer.feed(b"c") == [] and framer.feed(b"\r") == []
    with pytest.raises(ProtocolError):
        framer.feed(b"\r\n")  # the first CR was data: 4 bytes


def test_lines_are_fresh_bytes_whatever_the_input_type(core):
    stream = b"first\nsecond\r\nthi"
    for wrap in (bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))):
        framer = core.NDJSONFramer(100)
        src = wrap(stream)
        got = framer.feed(src) + framer.feed(wrap(b"rd\n")) + framer.feed_eof()
        assert got == [b"first", b"second", b"third"]
        assert all(type(x) is bytes for x in got)
        if isinstance(src, bytearray):
            src[:] = b"X" * len(src)  # the lines do not share the caller's buffer
            assert got[0] == b"first"


def test_arguments(core):
    for bad in (0, -1, -(2**40)):
        with pytest.raises(ValueError):
            core.NDJSONFramer(bad)
    with pytest.raises(TypeError):
        core.NDJSONFramer(2.5)
    for not_bytes in ("text", 5, None):
        with pytest.raises(TypeError):
            core.NDJSONFramer(10).feed(not_bytes)
    with pytest.raises(BufferError):
        core.NDJSONFramer(10).feed(memoryview(b"a\nb\n")[::2])
    framer = core.NDJSONFramer()
    assert framer.max_line == 16 * 1024 * 1024
    assert core.NDJSONFramer(1).feed(b"a\nbb\n") == [b"a"]


def test_after_eof(core):
    framer = core.NDJSONFramer(10)
    assert framer.feed(b"a\nb") == [b"a"]
    assert framer.feed_eof() == [b"b"]
    assert framer.feed_eof() == []
    assert framer.buffered == 0
    with pytest.raises(RuntimeError):
        framer.feed(b"c\n")


MIB = 1024 * 1024
PIECE = 64 * 1024
HUNDRED_MB = 100 * MIB


@pytest.mark.parametrize("max_line", [MIB, 3 * MIB + 5])
def test_a_100_mb_line_is_refused_with_bounded_memory(core, max_line):
    """A child printing a 100 MB line in 64 KiB pieces: the framer raises with the
    piece that passes the limit, never held more than max_line, and allocated about
    that much (tracemalloc sees the buffer's allocations, PyMem or PyObject)."""
    piece = b"x" * PIECE
    framer = core.NDJSONFramer(max_line)
    fed = 0
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            while fed < HUNDRED_MB:
                framer.feed(piece)
                fed += PIECE
                assert framer.buffered == fed <= max_line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status == 502
    assert fed <= max_line < fed + PIECE  # the feed that raised is the one past the limit
    assert framer.buffered == 0
    assert peak < 2 * max_line + 4 * PIECE, peak
    with pytest.raises(ProtocolError):
        framer.feed(b"\n")


def test_a_100_mb_line_within_the_limit_arrives_whole(core):
    """The same line under a limit it meets exactly (with a CR before its LF): one line
    out, and the framer holds nothing afterwards."""
    piece = b"y" * PIECE
    framer = core.NDJSONFramer(HUNDRED_MB)
    for _ in range(HUNDRED_MB // PIECE - 1):
        assert framer.feed(piece) == []
    assert framer.feed(piece + b"\r") == []
    assert framer.buffered == HUNDRED_MB + 1
    (line,) = framer.feed(b"\nnext")
    assert len(line) == HUNDRED_MB and line.count(b"y") == HUNDRED_MB
    del line
    assert framer.buffered == 4
    assert framer.feed_eof() == [b"next"]


def test_many_lines_in_one_buffer(core):
    lines = [b'{"jsonrpc":"2.0","id":%d,"result":{}}' % i for i in range(50_000)]
    stream = b"\n".join(lines) + b"\n"
    framer = core.NDJSONFramer(64)
    assert framer.feed(stream) == lines
    assert framer.buffered == 0
