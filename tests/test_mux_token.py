"""Session tokens (mcpfast.mux.token): round trips, and every way a token can be wrong
ending in the one ``InvalidToken``."""

from __future__ import annotations

import base64
import os
import random
import string
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfast.mux import token as tk
from mcpfast.mux.token import (
    KNOWN_VERSIONS,
    InvalidToken,
    SessionEnded,
    SessionState,
    TokenCodec,
    key_id,
    load_key_file,
    new_key_text,
    parse_key,
)
from mcpfast.transport.base import BackendSession

KEY = bytes(range(32))
KEY2 = bytes(range(100, 132))
ROUTE = "/mcp"
B64URL = string.ascii_letters + string.digits + "-_"


def realistic_state(**over) -> SessionState:
    kw = {
        "subject": "user-1234@example.com",
        "protocol_version": "2025-06-18",
        "backends": [
            BackendSession("weather", uuid.uuid4().hex, "2025-06-18"),
            BackendSession("github", str(uuid.uuid4()), "2025-11-25"),
            BackendSession("files", uuid.uuid4().hex, "2025-03-26"),
        ],
        "client_capabilities": {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": True}},
        "client_info": {"name": "claude-code", "version": "1.0.3"},
        "created": 1_760_000_000,
    }
    kw.update(over)
    return SessionState(**kw)


@pytest.fixture(scope="module")
def codec() -> TokenCodec:
    return TokenCodec(KEY, cache_size=0)


@pytest.fixture(scope="module")
def token(codec) -> str:
    return codec.encode(realistic_state(), ROUTE)


# --- round trips ----------------------------------------------------------------------


def test_round_trip(codec):
    st_ = realistic_state()
    t = codec.encode(st_, ROUTE)
    back = codec.decode(t, ROUTE)
    assert back == st_
    assert back.client_capabilities == {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": True}}
    assert back.client_info == {"name": "claude-code", "version": "1.0.3"}
    assert back.backend("github").session_id == st_.backend("github").session_id
    assert back.backend("nope") is None
    assert back.client_can("sampling") and not back.client_can("tasks")


def test_token_is_visible_ascii_and_url_safe(token):
    assert all(0x21 <= ord(c) <= 0x7E for c in token)
    assert set(token) <= set(B64URL)


def test_bytes_token_accepted(codec, token):
    assert codec.decode(token.encode(), ROUTE) == codec.decode(token, ROUTE)
    assert codec.decode(token.encode(), ROUTE.encode()).subject == "user-1234@example.com"


def test_two_encodings_differ(codec):
    s = realistic_state()
    assert codec.encode(s, ROUTE) != codec.encode(s, ROUTE)  # random nonce


@pytest.mark.parametrize(
    "sid",
    [
        None,
        "",
        "abc",
        "0123456789abcdef0123456789abcdef",  # hex32 packs
        "0123456789ABCDEF0123456789ABCDEF",  # upper case: kept as text, exact
        "0123456789abcdef0123456789abcde",  # 31 digits
        "12345678-1234-1234-1234-123456789abc",  # uuid packs
        "12345678-1234-1234-1234-123456789ABC",  # upper-case uuid: text
        "!~" * 50,
        "ü-not-ascii-but-fine-in-the-payload",
    ],
)
def test_session_id_forms(codec, sid):
    s = realistic_state(backends=[BackendSession("a", sid, None)])
    assert codec.decode(codec.encode(s, ROUTE), ROUTE).backend("a").session_id == sid


@pytest.mark.parametrize("version", [None, *KNOWN_VERSIONS, "2099-01-01", ""])
def test_version_forms(codec, version):
    s = realistic_state(protocol_version=version, backends=[BackendSession("a", "x", version)])
    back = codec.decode(codec.encode(s, ROUTE), ROUTE)
    assert back.protocol_version == version and back.backend("a").protocol_version == version


def test_no_client_info_and_empty_caps(codec):
    s = realistic_state(client_capabilities={}, client_info=None)
    back = codec.decode(codec.encode(s, ROUTE), ROUTE)
    assert back.client_capabilities == {} and back.client_info is None


def test_incompressible_client_section(codec):
    caps = {"experimental": {"x": base64.b64encode(os.urandom(300)).decode()}}
    s = realistic_state(client_capabilities=caps)
    assert codec.decode(codec.encode(s, ROUTE), ROUTE).client_capabilities == caps


def test_with_backend(codec):
    s = realistic_state()
    s2 = s.with_backend("github", "new-session", "2025-11-25")
    assert s2.backend("github").session_id == "new-session"
    assert s.backend("github").session_id != "new-session"  # the original is untouched
    assert [b.name for b in s2.backends] == ["weather", "github", "files"]
    s3 = s.with_backend("extra", None, None)
    assert [b.name for b in s3.backends][-1] == "extra"
    assert codec.decode(codec.encode(s2, ROUTE), ROUTE) == s2


def test_duplicate_backends_refused():
    with pytest.raises(ValueError):
        SessionState(subject="", protocol_version=None, backends=[BackendSession("a", None, None)] * 2)


_text = st.text(max_size=40)
_versions = st.one_of(st.none(), st.sampled_from(KNOWN_VERSIONS), _text)
_sids = st.one_of(
    st.none(),
    _text,
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(str),
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=10)),
    lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=4) | st.lists(inner, max_size=4),
    max_leaves=10,
)


@st.composite
def states(draw):
    names = draw(st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), max_size=6, unique=True))
    return SessionState(
        subject=draw(_text),
        protocol_version=draw(_versions),
        backends=[BackendSession(n, draw(_sids), draw(_versions)) for n in names],
        client_capabilities=draw(st.dictionaries(st.text(max_size=12), _json, max_size=5)),
        client_info=draw(st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
        created=draw(st.integers(0, 2**40)),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(states(), st.text(max_size=30))
def test_property_round_trip(state, route):
    c = TokenCodec(KEY, cache_size=0)
    t = c.encode(state, route)
    assert all(0x21 <= ord(ch) <= 0x7E for ch in t)
    assert c.decode(t, route) == state


# --- rejection --------------------------------------------------------------------------


def test_every_single_character_change_rejected(codec, token):
    """Replace each character of the token by every other base64url character: all
    rejected (the canonical-base64 check leaves no second spelling of the same bytes)."""
    for i, ch in enumerate(token):
        for rep in B64URL:
            if rep == ch:
                continue
            bad = token[:i] + rep + token[i + 1 :]
            with pytest.raises(InvalidToken):
                codec.decode(bad, ROUTE)


def test_every_bit_flip_of_the_raw_token_rejected(codec, token):
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for i in range(len(raw)):
        for bit in range(8):
            b = bytearray(raw)
            b[i] ^= 1 << bit
            bad = base64.urlsafe_b64encode(bytes(b)).rstrip(b"=").decode()
            with pytest.raises(InvalidToken):
                codec.decode(bad, ROUTE)


def test_every_truncation_rejected(codec, token):
    for n in range(len(token)):
        with pytest.raises(InvalidToken):
            codec.decode(token[:n], ROUTE)
    for n in range(1, len(token)):
        with pytest.raises(InvalidToken):
            codec.decode(token[n:], ROUTE)


@pytest.mark.parametrize("suffix", ["A", "AA", "AAAA", "=", "==", " ", "\n", "."])
def test_appended_bytes_rejected(codec, token, suffix):
    with pytest.raises(InvalidToken):
        codec.decode(token + suffix, ROUTE)


def test_standard_alphabet_and_padding_rejected(codec, token):
    std = token.replace("-", "+").replace("_", "/")
    if std != token:
        with pytest.raises(InvalidToken):
            codec.decode(std, ROUTE)
    padded = token + "=" * (-len(token) % 4)
    if padded != token:
        with pytest.raises(InvalidToken):
            codec.decode(padded, ROUTE)


def test_foreign_key_rejected(token):
    with pytest.raises(InvalidToken):
        TokenCodec(KEY2).decode(token, ROUTE)
    # a foreign key that happens to share the key id byte fails on the tag
    k = _key_with_same_id(KEY)
    with pytest.raises(InvalidToken, match="authentication"):
        TokenCodec(k).decode(token, ROUTE)


def test_route_binding(codec, token):
    with pytest.raises(InvalidToken):
        codec.decode(token, "/other")
    with pytest.raises(InvalidToken):
        codec.decode(token, ROUTE + "/")


def test_subject_binding(token):
    c = TokenCodec(KEY)
    assert c.decode(token, ROUTE, subject="user-1234@example.com").subject == "user-1234@example.com"
    with pytest.raises(InvalidToken, match="principal"):
        c.decode(token, ROUTE, subject="mallory")
    # the cache does not bypass the check
    with pytest.raises(InvalidToken):
        c.decode(token, ROUTE, subject="")


def test_max_age():
    c = TokenCodec(KEY, max_age=3600)
    s = realistic_state(created=1_000_000)
    t = c.encode(s, ROUTE)
    assert c.decode(t, ROUTE, now=1_000_000 + 3600).created == 1_000_000
    with pytest.raises(InvalidToken, match="expired"):
        c.decode(t, ROUTE, now=1_000_000 + 3601)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "A",
        "AB",
        "0123456789abcdef0123456789abcdef",  # what a single-backend session id looks like
        "12345678-1234-1234-1234-123456789abc",
        "AQ" + "A" * 60,
        "x" * 9000,
        "héllo",
        "a b",
        "\x00",
        "%41%42",
    ],
)
def test_garbage_rejected(codec, garbage):
    with pytest.raises(InvalidToken):
        codec.decode(garbage, ROUTE)


def test_non_ascii_bytes_rejected(codec):
    with pytest.raises(InvalidToken):
        codec.decode(b"\xff\xfe" * 30, ROUTE)


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=400), st.text(alphabet=B64URL, max_size=400), st.binary(max_size=300)))
def test_fuzz_only_invalid_token(g):
    with pytest.raises(InvalidToken):
        TokenCodec(KEY, cache_size=0).decode(g, ROUTE)


def test_unknown_format_byte(codec, token):
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] = 2
    with pytest.raises(InvalidToken, match="format"):
        codec.decode(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(), ROUTE)


def _seal_payload(codec: TokenCodec, payload: bytes, route: bytes = b"/mcp") -> str:
    header = bytes((tk.FORMAT_AESGCM, key_id(KEY)))
    nonce = os.urandom(12)
    sealed = codec._seal.encrypt(nonce, payload, codec._aad(header, route))
    return base64.urlsafe_b64encode(header + nonce + sealed).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00",  # truncated after flags
        b"\x80",  # unknown flag
        tk._pack(realistic_state()) + b"\x00",  # trailing byte
        tk._pack(realistic_state())[:-1],  # short
        b"\x02\x00\x00\x00\x03abc\x00",  # "deflated" section that is not DEFLATE
        b"\x00\x00\x00\x07\x00\x00",  # unknown version code
        b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # overlong varint
    ],
)
def test_authentic_but_unreadable_payload(codec, payload):
    with pytest.raises(InvalidToken, match="unreadable"):
        codec.decode(_seal_payload(codec, payload), ROUTE)


# --- keys and rotation --------------------------------------------------------------------


def _key_with_same_id(key: bytes) -> bytes:
    want = key_id(key)
    rnd = random.Random(7)
    while True:
        k = rnd.randbytes(32)
        if k != key and key_id(k) == want:
            return k


def test_rotation():
    old = TokenCodec(KEY)
    t_old = old.encode(realistic_state(), ROUTE)
    rotated = TokenCodec(KEY2, old_keys=[KEY])
    assert rotated.decode(t_old, ROUTE).subject == "user-1234@example.com"
    t_new = rotated.encode(realistic_state(), ROUTE)
    # new tokens are sealed with the new key: the old-only codec cannot open them
    with pytest.raises(InvalidToken):
        old.decode(t_new, ROUTE)
    # once the old key is retired, its tokens die
    retired = TokenCodec(KEY2)
    with pytest.raises(InvalidToken):
        retired.decode(t_old, ROUTE)
    assert retired.decode(t_new, ROUTE).subject == "user-1234@example.com"


def test_key_id_collision_tries_every_candidate():
    twin = _key_with_same_id(KEY)
    t = TokenCodec(twin).encode(realistic_state(), ROUTE)
    both = TokenCodec(KEY, old_keys=[twin])
    assert both.decode(t, ROUTE).subject == "user-1234@example.com"


def test_parse_key_forms(tmp_path):
    hexk = KEY.hex()
    assert parse_key(hexk) == KEY
    assert parse_key(hexk.upper()) == KEY
    assert parse_key(base64.b64encode(KEY).decode()) == KEY
    assert parse_key(base64.b64encode(KEY).decode().rstrip("=")) == KEY
    assert parse_key(base64.urlsafe_b64encode(KEY).decode()) == KEY
    assert parse_key("  " + hexk + "\n") == KEY
    assert parse_key(hexk.encode()) == KEY
    assert parse_key(KEY) == KEY
    assert len(parse_key(new_key_text())) == 32
    for bad in [
        "",
        "abc",
        hexk[:-2],
        base64.b64encode(KEY[:31]).decode(),
        base64.b64encode(KEY + b"x").decode(),
        "Z" * 64,
    ]:
        with pytest.raises(ValueError):
            parse_key(bad)
    p = tmp_path / "key"
    p.write_text("# session key for mcpfast\n\n" + base64.b64encode(KEY).decode() + "\n")
    assert load_key_file(str(p)) == KEY
    p.write_text(hexk + "\n" + hexk + "\n")
    with pytest.raises(ValueError):
        load_key_file(str(p))


def test_codec_refuses_short_keys():
    with pytest.raises(ValueError):
        TokenCodec(b"short")
    with pytest.raises(ValueError):
        TokenCodec(KEY, old_keys=[b"x" * 16])


# --- cache ------------------------------------------------------------------------------------


def test_cache_is_per_route_and_bounded():
    c = TokenCodec(KEY, cache_size=2)
    toks = [c.encode(realistic_state(subject=f"u{i}"), ROUTE) for i in range(3)]
    for t in toks:
        c.decode(t, ROUTE)
    assert len(c._cache) == 2
    # a cached token is still refused on another route
    with pytest.raises(InvalidToken):
        c.decode(toks[-1], "/other")
    assert c.decode(toks[0], ROUTE).subject == "u0"  # re-decoded after eviction
    c.clear_cache()
    assert not c._cache


def test_revoked_tokens_are_refused_until_expiry_or_eviction():
    """DELETE revokes a token: cached or not, it no longer opens (404 like any invalid
    token).  The table holds a digest per token, at most ``max_revoked`` of them (the
    oldest go first), and forgets tokens once they would have expired anyway."""
    c = TokenCodec(KEY, max_age=100, max_revoked=2)
    now = 1_000_000
    states = [realistic_state(subject=f"u{i}", created=now) for i in range(4)]
    toks = [c.encode(st, ROUTE) for st in states]
    c.decode(toks[0], ROUTE, now=now)  # cached
    c.revoke(toks[0], ROUTE, states[0], now=now)
    with pytest.raises(SessionEnded):
        c.decode(toks[0], ROUTE, now=now)
    assert c.revoked(toks[0], ROUTE) and not c.revoked(toks[0], "/other") and not c.revoked(toks[1], ROUTE)
    assert isinstance(SessionEnded(), InvalidToken)
    c.revoke(toks[1], ROUTE, states[1], now=now)
    c.revoke(toks[2], ROUTE, states[2], now=now)  # the table is full: toks[0] is forgotten
    assert c.decode(toks[0], ROUTE, now=now).subject == "u0"
    assert all(token not in c._revoked for token in toks)  # digests, not tokens
    with pytest.raises(SessionEnded):
        c.decode(toks[1], ROUTE, now=now)
    # Past their max_age the revoked tokens are refused as expired; their entries go.
    c.revoke(toks[3], ROUTE, realistic_state(subject="u3", created=now + 1000), now=now + 1000)
    assert len(c._revoked) == 1 and c.revoked(toks[3], ROUTE)


def test_open_sid_is_decode_for_header_bytes():
    """The request path opens the ``Mcp-Session-Id`` field's bytes: same state as
    ``decode``, the token as text, every refusal of ``decode`` (subject, tampering,
    non-ASCII, revocation even after caching), and a cache hit returns the cached pair."""
    c = TokenCodec(KEY, max_age=None)
    st_ = realistic_state()
    tok = c.encode(st_, ROUTE)
    sid = tok.encode()
    route_b = ROUTE.encode()
    state, text = c.open_sid(sid, route_b, "user-1234@example.com")
    assert state == st_ and text == tok
    again = c.open_sid(sid, route_b, None)
    assert again[0] is state and again[1] is text  # cached: no second decryption
    with pytest.raises(InvalidToken):
        c.open_sid(sid, route_b, "someone-else")
    with pytest.raises(InvalidToken):
        c.open_sid(sid, b"/other", None)
    with pytest.raises(InvalidToken):
        c.open_sid(sid[:-2] + (b"A" if sid[-2:-1] != b"A" else b"B") + sid[-1:], route_b, None)
    with pytest.raises(InvalidToken):
        c.open_sid(sid[:10] + "é".encode("latin-1") + sid[11:], route_b, None)
    c.revoke(tok, ROUTE, st_)
    with pytest.raises(SessionEnded):
        c.open_sid(sid, route_b, None)
    with pytest.raises(SessionEnded):
        c.decode(tok, ROUTE)


def test_open_sid_honours_max_age():
    c = TokenCodec(KEY, max_age=10)
    old = c.encode(realistic_state(created=1_000), ROUTE)
    with pytest.raises(InvalidToken):
        c.open_sid(old.encode(), ROUTE.encode(), None)


def test_token_sizes_for_three_backends(codec):
    """Sizes reported in docs/multiplexing.md (the budget: well under 1 KiB)."""
    sizes = {}
    sizes["3 backends, hex session ids, typical client"] = len(codec.encode(realistic_state(), ROUTE))
    uu = realistic_state(
        backends=[BackendSession(n, str(uuid.uuid4()), "2025-06-18") for n in ("weather", "github", "files")]
    )
    sizes["3 backends, UUID session ids"] = len(codec.encode(uu, ROUTE))
    txt = realistic_state(
        backends=[
            BackendSession(n, base64.urlsafe_b64encode(os.urandom(32)).decode(), "2025-06-18")
            for n in ("weather", "github", "files")
        ]
    )
    sizes["3 backends, 44-char opaque session ids"] = len(codec.encode(txt, ROUTE))
    bare = realistic_state(subject="", client_capabilities={}, client_info=None)
    sizes["3 backends, anonymous, no client caps/info"] = len(codec.encode(bare, ROUTE))
    assert sizes["3 backends, hex session ids, typical client"] <= 240, sizes
    assert all(v < 400 for v in sizes.values()), sizes
