"""Differential tests: the compiled NDJSON framer against the pure-Python twin.

Both get the same stream in the same ``feed`` pieces under the same ``max_line`` and
must give the same lines after each call and the same error at the same call (and the
same ``buffered`` after each call).  Streams are built from the bytes that matter to
framing -- LF, CR, CRLF, CR pairs -- between runs of JSON-ish text of random lengths, so
CRs land just before, just after and far from LFs and cuts fall between a CR and its LF;
limits are small enough that lines exceed them often, and around each line's length.
"""

from __future__ import annotations

import random

from feeding import random_chunks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.wire.errors import ProtocolError

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(core, pieces, max_line, eof=True):
    """Per call: (lines, buffered); then ("error", status, text) if one was raised."""
    framer = core.NDJSONFramer(max_line)
    calls = []
    try:
        for piece in pieces:
            calls.append((framer.feed(piece), framer.buffered))
        if eof:
            calls.append((framer.feed_eof(), framer.buffered))
        # A failed framer raises on the next call even after one that returned lines.
        calls.append((framer.feed(b""), framer.buffered))
    except ProtocolError as exc:
        calls.append(("error", exc.status, str(exc)))
    except RuntimeError as exc:  # feed after feed_eof
        calls.append(("closed", str(exc)))
    return calls


ENDS = [b"\n", b"\r", b"\r\n", b"\r\r", b"\n\n", b"\r\n\r\n", b"\n\r", b"\r\r\n"]
text = st.integers(0, 12).map(lambda n: b'{"a":' + b"7" * n + b"}" if n else b"")
streams = st.lists(st.one_of(st.sampled_from(ENDS), text), max_size=30).map(b"".join)


@SETTINGS
@given(stream=st.one_of(streams, st.binary(max_size=120)), seed=st.integers(0, 2**32), max_line=st.integers(1, 24))
def test_framer_differential(c_core, py_core, stream, seed, max_line):
    pieces = random_chunks(stream, random.Random(seed), max_pieces=2 + seed % 30)
    for eof in (True, False):
        assert outcome(c_core, pieces, max_line, eof) == outcome(py_core, pieces, max_line, eof)


@SETTINGS
@given(lines=st.lists(st.tuples(text, st.sampled_from(ENDS)), min_size=1, max_size=12), seed=st.integers(0, 2**32))
def test_limits_around_line_lengths(c_core, py_core, lines, seed):
    """max_line set to a line's length, one less and one more (with or without the CR
    of its line end), the cases where counting a CR wrongly shows."""
    stream = b"".join(t + e for t, e in lines)
    rnd = random.Random(seed)
    t, _ = rnd.choice(lines)
    pieces = random_chunks(stream, rnd, max_pieces=2 + seed % 20)
    for max_line in {max(1, len(t) + d) for d in (-1, 0, 1, 2)}:
        assert outcome(c_core, pieces, max_line) == outcome(py_core, pieces, max_line)


def test_seeded_fuzz_loop(c_core, py_core):
    """Many cheap random inputs through both: the same outcome, and only ProtocolError
    (anything else escapes outcome() and fails the test)."""
    rnd = random.Random(20261206)
    for i in range(30_000):
        if i % 2:
            stream = b"".join(rnd.choices([*ENDS, b"x", b"yy", b"{}", b"zzzzzzz"], k=rnd.randrange(0, 20)))
        else:
            stream = rnd.randbytes(rnd.randrange(0, 40))
        cut = sorted(rnd.randrange(len(stream) + 1) for _ in range(rnd.randrange(0, 5)))
        pieces = [stream[a:b] for a, b in zip([0, *cut], [*cut, len(stream)])]
        max_line = rnd.randrange(1, 12)
        assert outcome(c_core, pieces, max_line) == outcome(py_core, pieces, max_line), (pieces, max_line)
