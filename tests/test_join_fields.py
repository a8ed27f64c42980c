"""``join_fields``: the header block a proxy forwards, in both cores."""

from __future__ import annotations

import random

import pytest

from mcpfast.wire import _core, _core_py

KEEP, DROP, XFF = 0, 1, 2


class _Classes(dict):
    """Classifies unseen names the way the gateway's field table does (``__missing__``)."""

    def __init__(self, dropped: set[bytes]) -> None:
        super().__init__()
        self.dropped = dropped
        self.missed: list[bytes] = []

    def __missing__(self, name: bytes) -> int:
        self.missed.append(name)
        ln = name.lower()
        code = DROP if ln in self.dropped else XFF if ln == b"x-forwarded-for" else KEEP
        self[name] = code
        return code


HEADERS = [
    (b"Host", b"gw.example"),
    (b"Content-Type", b"application/json"),
    (b"Connection", b"keep-alive, X-Trace"),
    (b"X-Forwarded-For", b"10.0.0.1"),
    (b"Mcp-Session-Id", b"abc"),
    (b"X-Trace", b"1"),
    (b"x-forwarded-for", b"10.0.0.2"),
    (b"Accept", b"application/json, text/event-stream"),
]


def test_keeps_order_drops_classified_and_listed(core):
    classes = _Classes({b"host", b"connection"})
    block, xff = core.join_fields(HEADERS, classes, frozenset({b"x-trace"}))
    assert block == (
        b"Content-Type: application/json\r\nMcp-Session-Id: abc\r\n"
        b"Accept: application/json, text/event-stream\r\n"
    )
    assert xff == b"10.0.0.2"  # the last one
    # Each distinct name was classified once, through __missing__.
    assert sorted(classes.missed) == sorted({n for n, _ in HEADERS})
    classes.missed.clear()
    assert core.join_fields(HEADERS, classes, frozenset({b"x-trace"}))[0] == block
    assert classes.missed == []


def test_nothing_listed_nothing_kept(core):
    assert core.join_fields([], {}, None) == (b"", None)
    assert core.join_fields([(b"Host", b"h")], {b"Host": DROP}, None) == (b"", None)
    assert core.join_fields([(b"A", b"")], {b"A": KEEP}, None) == (b"A: \r\n", None)


@pytest.mark.parametrize("bad", [[(b"A", None)], [("A", b"x")], [(None, b"x")], [(b"A", bytearray(b"x"))]])
def test_fields_must_be_bytes(core, bad):
    with pytest.raises(TypeError):
        core.join_fields(bad, _Classes(set()), None)


def test_unknown_name_in_plain_dict_raises(core):
    with pytest.raises(KeyError):
        core.join_fields([(b"A", b"x")], {}, None)


def test_cores_agree_on_random_sections():
    rng = random.Random(2026)
    names = [b"Host", b"Accept", b"X-A", b"x-a", b"Connection", b"TE", b"X-Forwarded-For", b"Authorization", b"Z" * 300]
    for _ in range(3000):
        hs = [(rng.choice(names), bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 40))))
              for _ in range(rng.randrange(0, 12))]  # fmt: skip
        dropped = set(rng.sample([n.lower() for n in names], rng.randrange(0, 4)))
        listed = None if rng.random() < 0.5 else frozenset(rng.sample([b"x-a", b"accept", b"zz"], 2))
        got_c = _core.join_fields(hs, _Classes(dropped), listed)
        got_py = _core_py.join_fields(hs, _Classes(dropped), listed)
        assert got_c == got_py, hs
        want = b"".join(
            b"%s: %s\r\n" % (n, v) for n, v in hs
            if n.lower() not in dropped and n.lower() != b"x-forwarded-for" and not (listed and n.lower() in listed)
        )  # fmt: skip
        assert got_c[0] == want
