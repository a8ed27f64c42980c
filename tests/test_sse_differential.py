"""Differential tests: the compiled SSE parser and writer against the pure-Python twin.

Both cores get the same input in the same ``feed`` pieces and must give the same
outcome: the same events after each call and the same error at the same call.  The
hypothesis tests search around MCP-shaped streams (mutated, cut at random points, with
small event limits); the seeded fuzz loop pushes well over 100,000 cheap random inputs
through both and also holds the fuzz invariant: a call returns events or raises
``ProtocolError`` -- never another exception.
"""

from __future__ import annotations

import random

import pytest
from feeding import random_chunks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.errors import ProtocolError

BOM = b"\xef\xbb\xbf"
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(core, pieces, max_event_bytes=None, eof=True):
    """What each call gave: a list of event tuples per call, then ("error", status, text)."""
    parser = core.SSEParser() if max_event_bytes is None else core.SSEParser(max_event_bytes=max_event_bytes)
    calls = []
    try:
        for piece in pieces:
            calls.append([(e.raw, e.start, e.end, e.event, e.data, e.id, e.retry, e.comments) for e in parser.feed(piece)])
        if eof:
            calls.append([(e.raw, e.start, e.end, e.event, e.data, e.id, e.retry, e.comments) for e in parser.feed_eof()])
    except ProtocolError as exc:
        calls.append(("error", exc.status, str(exc)))
    calls.append(("offset", parser.offset))
    return calls


MCP_STREAM = (
    b"id: 0\ndata: \n\n"
    b": ping\n\n"
    b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\n"
    b"retry: 1000\revent: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\r"
    b"data: line one\ndata: line two\n\n"
)
TOKENS = [
    b"data", b"event", b"id", b"retry", b":", b": ", b" ", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\r",
    BOM, b"\xef", b"\xbb", b"\x00", b"0", b"42", b"9" * 19, b"x", b"message", b"{}", b"\xff",
]  # fmt: skip


def mutate(stream: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(stream)
    for _ in range(rnd.randrange(1, 6)):
        i = rnd.randrange(len(buf) + 1)
        op = rnd.randrange(4)
        if op == 0 and buf:
            del buf[i : i + rnd.randrange(1, 8)]
        elif op == 1:
            buf[i:i] = rnd.choice(TOKENS)
        elif op == 2 and i < len(buf):
            buf[i] = rnd.randrange(256)
        else:
            j = rnd.randrange(len(buf) + 1)
            buf[i:i] = buf[j : j + rnd.randrange(1, 20)]  # duplicate a stretch
    return bytes(buf)


token_streams = st.lists(st.sampled_from(TOKENS), max_size=50).map(b"".join)
mutated_streams = st.integers(0, 2**32).map(lambda seed: mutate(MCP_STREAM, random.Random(seed)))
limits = st.one_of(st.none(), st.integers(0, 120))


@SETTINGS
@given(stream=st.one_of(token_streams, mutated_streams, st.binary(max_size=200)), seed=st.integers(0, 2**32), limit=limits)
def test_parser_differential(c_core, py_core, stream, seed, limit):
    pieces = random_chunks(stream, random.Random(seed), max_pieces=2 + seed % 40)
    assert outcome(c_core, pieces, limit) == outcome(py_core, pieces, limit)
    assert outcome(c_core, pieces, limit, eof=False) == outcome(py_core, pieces, limit, eof=False)


@SETTINGS
@given(
    data=st.one_of(st.none(), st.binary(max_size=80), st.lists(st.sampled_from([b"a", b"\r", b"\n", b" "])).map(b"".join)),
    event=st.one_of(st.none(), st.binary(max_size=10)),
    id=st.one_of(st.none(), st.binary(max_size=10)),
    retry=st.one_of(st.none(), st.integers(-5, 10**18 + 5), st.sampled_from([10**18 - 1, 10**18])),
)
def test_writer_differential(c_core, py_core, data, event, id, retry):
    results = []
    for core in (c_core, py_core):
        try:
            results.append(core.encode_sse_event(data, event=event, id=id, retry=retry))
        except ValueError as exc:
            results.append(("ValueError", str(exc)))
    assert results[0] == results[1]


FUZZ_INPUTS = 200_000


def test_fuzz_loop(c_core, py_core):
    """Seeded random streams through both cores: same outcome, only ProtocolError."""
    rnd = random.Random(20250717)
    tokens = TOKENS
    done = 0
    for i in range(FUZZ_INPUTS):
        shape = i % 3
        if shape == 0:
            stream = b"".join(rnd.choices(tokens, k=rnd.randrange(0, 24)))
        elif shape == 1:
            stream = mutate(MCP_STREAM, rnd)
        else:
            stream = rnd.randbytes(rnd.randrange(0, 40))
        cut = sorted(rnd.randrange(len(stream) + 1) for _ in range(rnd.randrange(0, 4)))
        pieces = [stream[a:b] for a, b in zip([0, *cut], [*cut, len(stream)])]
        limit = None if i % 4 else rnd.randrange(0, 64)
        # Anything but ProtocolError escapes outcome() and fails the test here.
        got = outcome(c_core, pieces, limit)
        assert got == outcome(py_core, pieces, limit), (pieces, limit)
        raws = b"".join(e[0] for call in got[:-1] if isinstance(call, list) for e in call)
        assert stream.startswith(raws) and len(raws) == got[-1][1]
        done += 1
    assert done == FUZZ_INPUTS >= 100_000


@pytest.mark.parametrize("split", [1, 3, 1000])
def test_long_stream_differential(c_core, py_core, split):
    """A long stream of mixed events, fed in fixed pieces, including the CR-held cases."""
    rnd = random.Random(split)
    stream = b"".join(mutate(MCP_STREAM, rnd) if rnd.random() < 0.2 else MCP_STREAM for _ in range(200))
    pieces = [stream[i : i + split] for i in range(0, len(stream), split)]
    assert outcome(c_core, pieces) == outcome(py_core, pieces)
