"""Routable ids (mcpfast.mux.ids): request ids, progress tokens, SSE event ids."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpfast.wire.heads import is_field_value
from mcpfast.mux.ids import (
    STREAM_GET,
    STREAM_POST,
    MergedStreamIds,
    decode_event_id,
    decode_progress_token,
    decode_request_id,
    encode_event_id,
    encode_progress_token,
    encode_request_id,
    json_id,
)

_backend = st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True)
_json_id = st.one_of(st.integers(), st.integers(-(2**200), 2**200), st.text(max_size=40))


def test_request_id_examples():
    assert encode_request_id("weather", 7) == "weather~n7"
    assert encode_request_id("weather", -7) == "weather~n-7"
    assert encode_request_id("weather", "abc") == "weather~sabc"
    assert encode_request_id("weather", "") == "weather~s"
    assert encode_request_id("w", "x~n1") == "w~sx~n1"
    assert decode_request_id("weather~n7") == ("weather", 7)
    assert decode_request_id("weather~s") == ("weather", "")
    assert decode_request_id("w~sx~n1") == ("w", "x~n1")
    assert decode_request_id("weather~n7") == decode_progress_token("weather~n7")
    assert encode_progress_token("a", 1) == "a~n1"


@pytest.mark.parametrize(
    "value",
    [None, 7, "", "~n1", "weather", "weather~", "weather~x1", "weather~n", "weather~n007", "weather~n-0",
     "weather~n+5", "weather~n1.0", "weather~n1e3", "weather~n 1", "we ather~n1", "wé~n1", "a/b~n1"],
)  # fmt: skip
def test_request_id_refused(value):
    assert decode_request_id(value) is None


def test_request_id_types():
    with pytest.raises(TypeError):
        encode_request_id("a", True)
    with pytest.raises(TypeError):
        encode_request_id("a", 1.5)
    with pytest.raises(TypeError):
        encode_request_id("a", None)


@settings(max_examples=500)
@given(_backend, _json_id)
def test_property_request_id_round_trip(backend, rid):
    enc = encode_request_id(backend, rid)
    assert isinstance(enc, str)
    back = decode_request_id(enc)
    assert back == (backend, rid) and type(back[1]) is type(rid)


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=30), st.from_regex(r"[a-z]{1,4}~[ns]-?[0-9]{0,5}", fullmatch=True)))
def test_property_decode_is_canonical(s):
    """Every accepted string is the one encoding of what it decodes to."""
    hit = decode_request_id(s)
    if hit is not None:
        assert encode_request_id(*hit) == s


@pytest.mark.parametrize("v", [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**40, "x", "é\n", None])
def test_json_id_exact(v):
    import json

    assert json.loads(json_id(v)) == v


# --- SSE event ids ------------------------------------------------------------------------


def test_event_id_examples():
    assert encode_event_id(STREAM_POST, {"weather": b"abc-1"}) == b"p!weather~abc-1"
    assert encode_event_id(STREAM_GET, {}) == b"g"
    e = encode_event_id(STREAM_GET, {"a": b"1", "b": b"x y"})
    assert e == b"g!a~1!b*eCB5"
    assert decode_event_id(e) == ("g", {"a": b"1", "b": b"x y"})
    assert decode_event_id("p!weather~abc-1") == ("p", {"weather": b"abc-1"})
    assert decode_event_id(b"g") == ("g", {})


def test_event_id_encode_refusals():
    with pytest.raises(ValueError):
        encode_event_id(STREAM_POST, {})
    with pytest.raises(ValueError):
        encode_event_id(STREAM_POST, {"a": b"1", "b": b"2"})
    with pytest.raises(ValueError):
        encode_event_id("x", {"a": b"1"})
    with pytest.raises(ValueError):
        encode_event_id(STREAM_GET, {"a!": b"1"})
    with pytest.raises(ValueError):
        encode_event_id(STREAM_GET, {"a": b""})


@pytest.mark.parametrize(
    "value",
    [b"", b"x", b"p", b"p!", b"p!a~1!b~2", b"g!", b"g!a", b"g!a~", b"g!a~1!a~2", b"g!~1", b"g!a*", b"g!a*e",
     b"g!a*eCB5=", b"g!a*MQ", b"g!a~x y", b"g!a b~1", "g!é~1", b"g!a*MSB", b"G!a~1", b"g" + b"!a~1" * 5000],
)  # fmt: skip
def test_event_id_refused(value):
    # b"g!a*MQ" is base64 of b"1", which must be spelled raw (b"g!a~1"); b"g!a*MSB"
    # (base64 of b"1 " is "MSA") has non-zero trailing bits
    assert decode_event_id(value) is None


_raw_event_id = st.binary(min_size=1, max_size=50)


@settings(max_examples=400)
@given(st.dictionaries(_backend, _raw_event_id, max_size=5))
def test_property_event_id_round_trip(positions):
    enc = encode_event_id(STREAM_GET, positions)
    # usable as an SSE id field and as a Last-Event-ID header value
    assert all(0x21 <= b <= 0x7E for b in enc)
    if not all(is_field_value(raw) for raw in positions.values()):
        # a position that could not go back to its backend in Last-Event-ID is refused
        assert decode_event_id(enc) is None
        return
    assert decode_event_id(enc) == ("g", positions)
    if len(positions) == 1:
        enc = encode_event_id(STREAM_POST, positions)
        assert decode_event_id(enc) == ("p", positions)


@settings(max_examples=400)
@given(
    st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60),
        st.from_regex(rb"[pg](![a-c][~*][A-Za-z0-9_=-]{0,6}){0,3}", fullmatch=True),
    )
)
def test_property_event_id_decode_never_raises_and_is_canonical(v):
    hit = decode_event_id(v)
    if hit is not None:
        kind, pos = hit
        raw = v.encode() if isinstance(v, str) else v
        assert encode_event_id(kind, pos) == raw


def test_merged_stream_ids():
    m = MergedStreamIds()
    assert m.current() == b"g"
    assert m.see("a", None) is None
    assert m.see("a", b"") is None
    assert m.see("a", b"1") == b"g!a~1"
    assert m.see("b", b"uuid-x") == b"g!a~1!b~uuid-x"
    assert m.see("a", b"2") == b"g!a~2!b~uuid-x"
    kind, pos = decode_event_id(m.current())
    resumed = MergedStreamIds(kind, pos)
    assert resumed.see("b", b"uuid-y") == b"g!a~2!b~uuid-y"
    p = MergedStreamIds(STREAM_POST)
    assert p.current() is None
    assert p.see("a", b"7") == b"p!a~7"
    with pytest.raises(ValueError):
        p.see("b", b"1")
    with pytest.raises(ValueError):
        MergedStreamIds("q")


def test_sdk_style_event_ids_stay_readable():
    # the Python SDK's event store hands out UUID-ish ids; they travel unencoded
    eid = b"3f2b6c1e-8f0a-4a8e-9a57-0d7e0c8a1b2c"
    assert encode_event_id(STREAM_POST, {"weather": eid}) == b"p!weather~" + eid
    assert orjson.loads(orjson.dumps(encode_event_id(STREAM_GET, {"a": eid}).decode()))
