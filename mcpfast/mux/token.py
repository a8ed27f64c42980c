"""Stateless session tokens: the client-facing ``Mcp-Session-Id`` of a virtual server.

Theory of operation.  A multiplexed session is a set of backend sessions plus a few facts
the gateway needs on every request (which principal owns it, which protocol versions
were negotiated, what the client declared it can do).  Instead of keeping that in a
table -- which would pin a session to one process -- the gateway seals it into the
session id itself: any process holding the key decodes it, a restart loses nothing.

Wire format (all of it then base64url without padding, so it is visible ASCII
0x21-0x7E as MCP's Streamable HTTP transport requires of a session id)::

    version(1) = 0x01 | key_id(1) | nonce(12) | AES-256-GCM(payload) with tag(16)

* ``key_id`` is the first byte of SHA-256("mcpfast key id" || key).  It only picks the
  candidate key(s) quickly; two keys sharing an id byte both get tried, so nothing has to
  be configured by hand and rotation is "add the new key as current, keep the old one in
  ``old_keys`` until the longest session you care about has ended".
* The associated data is ``"mcpfast/session" 0x00 || version || key_id || route``: a
  token minted for one route (virtual server) does not open on another, and the header
  bytes cannot be swapped.
* ``payload`` is compact binary (varint lengths, see ``_pack``): creation time, the
  principal subject, the client's negotiated version, capabilities and clientInfo (raw
  JSON bytes, parsed only when asked for; DEFLATEd with a preset dictionary when that
  is shorter, typically 110 → 30 bytes), and per backend its name, negotiated version
  and session id.  Known protocol versions are one byte; session ids that are 32 hex
  digits or a canonical UUID (what the Python and TypeScript SDKs mint) pack to 16 bytes.

Which process can serve a token.  The token holds every backend session, so any process
with the key serves a session whose backends are reachable from anywhere: Streamable
HTTP backends, legacy SSE backends re-opened where needed, and a shared stdio child
(each process runs its own).  A backend session that *is* a process-local object -- a
per-session stdio child, a legacy SSE stream -- is named in the token by an id that
starts with its process's random instance id; another process cannot serve it and says
so (``transport.base.SessionLost``), and the client gets 404 and initializes again.
Behind several replicas, route a session to the process that opened it (sticky on
``Mcp-Session-Id``) when such backends are in use.

Nonces are random (96 bits); with one encryption per *session* (not per request) a key
stays far below the 2^32 messages NIST SP 800-38D allows for random nonces.

Every way a token can be wrong -- not ASCII, not canonical base64url, too short, unknown
key, failed tag, a payload that does not parse, expired, bound to another principal --
raises the one exception ``InvalidToken``.  The gateway answers it with 404 (MCP
transports: an unknown session is a 404, after which the client re-initializes), never 500.

Decoding runs on every request, so ``TokenCodec`` keeps a bounded cache from
(route, token) to the decoded state: a hit skips base64, AES and parsing.  The cache is
sound because decoding is a pure function of (key set, route, token); expiry and the
principal are checked on hits too.

A token cannot be unsealed, so ending a session (DELETE) is recorded beside the codec:
``revoke`` keeps a digest of the token until the token would have expired anyway
(``max_age``), in a bounded table (oldest dropped first), and drops it from the cache, so
only a cache miss needs the table.  The table is this process's: another process sharing
the key learns of the end only from the backends (docs/multiplexing.md §7).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..transport.base import BackendSession

__all__ = [
    "InvalidToken",
    "SessionEnded",
    "SessionState",
    "TokenCodec",
    "key_id",
    "parse_key",
    "load_key_file",
    "new_key_text",
    "KNOWN_VERSIONS",
]

FORMAT_AESGCM = 0x01
_NONCE = 12
_TAG = 16
_HEADER = 2
_MIN_RAW = _HEADER + _NONCE + _TAG + 1
#: Refuse anything longer before touching it (a token of a few backends is ~250 chars).
MAX_TOKEN_CHARS = 8192
_AAD_PREFIX = b"mcpfast/session\x00"

#: Protocol versions that pack into one byte.  Append only: the index is in live tokens.
KNOWN_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
_VERSION_CODE = {v: i + 2 for i, v in enumerate(KNOWN_VERSIONS)}
_V_NONE, _V_LITERAL = 0, 1

# Session id packings.
_SID_NONE, _SID_TEXT, _SID_HEX32, _SID_UUID = 0, 1, 2, 3
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class InvalidToken(Exception):
    """The session token cannot be used: the gateway answers 404 (the client must
    re-initialize).  ``reason`` is for logs only; never show it to the client."""

    status = 404

    def __init__(self, reason: str = "invalid session") -> None:
        super().__init__(reason)
        self.reason = reason


class SessionEnded(InvalidToken):
    """An authentic token whose session was ended (DELETE): it must not be revived by
    re-opening backend sessions.  Also 404."""

    def __init__(self, reason: str = "session ended") -> None:
        super().__init__(reason)


# ---------------------------------------------------------------------------------
# Keys


def key_id(key: bytes) -> int:
    """The one-byte id written into tokens sealed with ``key``."""
    return hashlib.sha256(b"mcpfast key id" + key).digest()[0]


def parse_key(material: str | bytes) -> bytes:
    """A 32-byte AES-256 key from its text form: 64 hex digits, or base64 (standard or
    URL-safe alphabet, padding optional).  Surrounding whitespace is ignored.  Raw 32
    bytes are accepted as ``bytes`` too.  Anything else is a ``ValueError``."""
    if isinstance(material, (bytes, bytearray)):
        raw = bytes(material)
        if len(raw) == 32:
            # No text form is 32 characters long (hex is 64, base64 43-44), so 32 bytes
            # can only be the key itself.
            return raw
        material = raw.decode("ascii", "replace")
    text = material.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        return bytes.fromhex(text)
    if re.fullmatch(r"[A-Za-z0-9+/_-]{43}={0,1}", text):
        std = text.rstrip("=").replace("-", "+").replace("_", "/") + "="
        try:
            raw = base64.b64decode(std, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return raw
    raise ValueError("a session key must be 32 bytes written as 64 hex digits or base64 (43-44 characters)")


def load_key_file(path: str) -> bytes:
    """Read a key file (one key in text form, see ``parse_key``; ``#`` comment lines and
    blank lines are ignored)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = [ln.strip() for ln in data.decode("ascii", "replace").splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(keys) != 1:
        raise ValueError(f"{path}: expected exactly one key line, found {len(keys)}")
    return parse_key(keys[0])


def new_key_text() -> str:
    """A fresh random key in base64 (what ``mcpfast`` would print for a key file)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


# ---------------------------------------------------------------------------------
# What a token holds


class SessionState:
    """The decoded contents of a session token.  Treat it as immutable: decoded states
    are shared through the codec's cache (``with_backend`` returns a new one)."""

    __slots__ = (
        "subject", "created", "protocol_version", "backends", "client_capabilities_json",
        "client_info_json", "_caps", "_by_name",
    )  # fmt: skip

    def __init__(
        self,
        *,
        subject: str,
        protocol_version: str | None,
        backends: Sequence[BackendSession],
        client_capabilities: dict | None = None,
        client_capabilities_json: bytes | None = None,
        client_info: dict | None = None,
        client_info_json: bytes | None = None,
        created: int | None = None,
    ) -> None:
        self.subject = subject
        self.created = int(time.time()) if created is None else int(created)
        self.protocol_version = protocol_version
        self.backends = tuple(backends)
        if client_capabilities_json is None:
            client_capabilities_json = orjson.dumps(client_capabilities or {})
        self.client_capabilities_json = client_capabilities_json
        if client_info_json is None and client_info is not None:
            client_info_json = orjson.dumps(client_info)
        self.client_info_json = client_info_json
        self._caps = client_capabilities
        self._by_name = {b.name: b for b in self.backends}
        if len(self._by_name) != len(self.backends):
            raise ValueError("backend names in a session must be distinct")

    @property
    def client_capabilities(self) -> dict:
        """The client's ``capabilities`` from initialize (parsed on first use; do not
        mutate the returned dict)."""
        caps = self._caps
        if caps is None:
            caps = self._caps = orjson.loads(self.client_capabilities_json)
        return caps

    @property
    def client_info(self) -> dict | None:
        return None if self.client_info_json is None else orjson.loads(self.client_info_json)

    def client_can(self, capability: str) -> bool:
        """Did the client declare ``capability`` (``sampling``, ``elicitation``, ``roots``)?"""
        return capability in self.client_capabilities

    def backend(self, name: str) -> BackendSession | None:
        return self._by_name.get(name)

    def with_backend(self, name: str, session_id: str | None, protocol_version: str | None) -> SessionState:
        """A copy with one backend's session replaced (or added)."""
        new = BackendSession(name, session_id, protocol_version)
        if name in self._by_name:
            backends = [new if b.name == name else b for b in self.backends]
        else:
            backends = [*self.backends, new]
        return SessionState(
            subject=self.subject,
            protocol_version=self.protocol_version,
            backends=backends,
            client_capabilities_json=self.client_capabilities_json,
            client_info_json=self.client_info_json,
            created=self.created,
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SessionState)
            and self.subject == other.subject
            and self.created == other.created
            and self.protocol_version == other.protocol_version
            and self.backends == other.backends
            and self.client_capabilities_json == other.client_capabilities_json
            and self.client_info_json == other.client_info_json
        )

    def __repr__(self) -> str:
        return (
            f"SessionState(subject={self.subject!r}, created={self.created}, "
            f"protocol_version={self.protocol_version!r}, backends={list(self.backends)!r})"
        )


# ---------------------------------------------------------------------------------
# Payload: varint-framed binary.  ``_Reader`` fails with ``_Malformed`` on any fault.


class _Malformed(Exception):
    pass


def _varint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("varint must be >= 0")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _bytes(out: bytearray, b: bytes) -> None:
    _varint(out, len(b))
    out += b


def _text(out: bytearray, s: str) -> None:
    _bytes(out, s.encode("utf-8"))


def _version(out: bytearray, v: str | None) -> None:
    if v is None:
        out.append(_V_NONE)
        return
    code = _VERSION_CODE.get(v)
    if code is not None:
        out.append(code)
    else:
        out.append(_V_LITERAL)
        _text(out, v)


def _session_id(out: bytearray, sid: str | None) -> None:
    if sid is None:
        out.append(_SID_NONE)
    elif _HEX32.match(sid):
        out.append(_SID_HEX32)
        out += bytes.fromhex(sid)
    elif _UUID.match(sid):
        out.append(_SID_UUID)
        out += uuid.UUID(sid).bytes
    else:
        out.append(_SID_TEXT)
        _text(out, sid)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _Malformed("truncated")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise _Malformed("varint too long")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _Malformed("truncated")
        b = self.buf[self.pos : end]
        self.pos = end
        return b

    def bytes(self) -> bytes:
        return self.take(self.varint())

    def text(self) -> str:
        try:
            return self.bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed("bad utf-8") from None

    def version(self) -> str | None:
        code = self.byte()
        if code == _V_NONE:
            return None
        if code == _V_LITERAL:
            return self.text()
        i = code - 2
        if i >= len(KNOWN_VERSIONS):
            raise _Malformed("unknown version code")
        return KNOWN_VERSIONS[i]

    def session_id(self) -> str | None:
        tag = self.byte()
        if tag == _SID_NONE:
            return None
        if tag == _SID_HEX32:
            return self.take(16).hex()
        if tag == _SID_UUID:
            return str(uuid.UUID(bytes=self.take(16)))
        if tag == _SID_TEXT:
            return self.text()
        raise _Malformed("unknown session id tag")


# Payload flags (first byte).
_F_CLIENT_INFO = 0x01  # the client section holds clientInfo after the capabilities
_F_DEFLATED = 0x02  # the client section is raw DEFLATE with ``_ZDICT_1`` as dictionary
_F_ALL = _F_CLIENT_INFO | _F_DEFLATED

# A preset dictionary for the client section (capabilities and clientInfo JSON): small
# JSON compresses well only with one.  Frozen: live tokens depend on these exact bytes;
# a better dictionary needs a new flag.
_ZDICT_1 = (
    b'{"experimental":{},"tasks":{"list":{},"cancel":{},"requests":{}}}'
    b'{"name":"","title":"","version":"0.1.0","websiteUrl":"https://"}'
    b'{"sampling":{"context":{},"tools":{}},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}}'
)
_MAX_CLIENT_SECTION = 65536


def _deflate(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT_1)
    return co.compress(data) + co.flush()


def _inflate(data: bytes) -> bytes:
    do = zlib.decompressobj(-15, _ZDICT_1)
    try:
        out = do.decompress(data, _MAX_CLIENT_SECTION)
    except zlib.error:
        raise _Malformed("bad deflate data") from None
    if do.unconsumed_tail or not do.eof or do.unused_data:
        raise _Malformed("bad deflate data")
    return out


def _pack(state: SessionState) -> bytes:
    flags = 0
    client = bytearray()
    _bytes(client, state.client_capabilities_json)
    if state.client_info_json is not None:
        flags |= _F_CLIENT_INFO
        _bytes(client, state.client_info_json)
    packed = _deflate(bytes(client))
    if len(packed) < len(client):
        flags |= _F_DEFLATED
        client = bytearray(packed)
    out = bytearray()
    out.append(flags)
    _varint(out, state.created)
    _text(out, state.subject)
    _version(out, state.protocol_version)
    _bytes(out, bytes(client))
    _varint(out, len(state.backends))
    for b in state.backends:
        _text(out, b.name)
        _version(out, b.protocol_version)
        _session_id(out, b.session_id)
    return bytes(out)


def _unpack(data: bytes) -> SessionState:
    r = _Reader(data)
    flags = r.byte()
    if flags & ~_F_ALL:
        raise _Malformed("unknown flags")
    created = r.varint()
    subject = r.text()
    version = r.version()
    client = r.bytes()
    if flags & _F_DEFLATED:
        client = _inflate(client)
    cr = _Reader(client)
    caps = cr.bytes()
    info = cr.bytes() if flags & _F_CLIENT_INFO else None
    if cr.pos != len(client):
        raise _Malformed("trailing bytes in the client section")
    n = r.varint()
    if n > 1024:
        raise _Malformed("too many backends")
    backends = []
    for _ in range(n):
        name = r.text()
        bver = r.version()
        sid = r.session_id()
        backends.append(BackendSession(name, sid, bver))
    if r.pos != len(data):
        raise _Malformed("trailing bytes")
    try:
        return SessionState(
            subject=subject,
            protocol_version=version,
            backends=backends,
            client_capabilities_json=caps,
            client_info_json=info,
            created=created,
        )
    except ValueError as exc:
        raise _Malformed(str(exc)) from None


# ---------------------------------------------------------------------------------
# base64url without padding, canonical only


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")


def _b64decode(text: str) -> bytes:
    """Strict inverse of ``_b64encode``: any other spelling of the same bytes (padding,
    non-zero trailing bits, foreign characters) is refused, so a token has exactly one
    valid text form and a changed character can never decode to the same bytes."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise InvalidToken("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:
        raise InvalidToken("non-canonical base64url")
    return raw


# ---------------------------------------------------------------------------------


class TokenCodec:
    """Seals and opens session tokens.

    ``key`` encrypts new tokens; ``key`` and every one of ``old_keys`` open tokens.
    ``max_age`` (seconds, None = unlimited) bounds how long after creation a token is
    accepted.  ``cache_size`` decoded tokens are kept (0 disables the cache).
    ``max_revoked`` bounds the table of revoked tokens (``revoke``).
    """

    def __init__(
        self,
        key: bytes,
        old_keys: Iterable[bytes] = (),
        *,
        max_age: float | None = None,
        cache_size: int = 4096,
        max_revoked: int = 65536,
    ) -> None:
        keys = [key, *old_keys]
        for k in keys:
            if len(k) != 32:
                raise ValueError("session keys must be 32 bytes (AES-256)")
        self._kid = key_id(key)
        self._seal = AESGCM(key)
        by_id: dict[int, list[AESGCM]] = {}
        seen = set()
        for k in keys:
            if k in seen:
                continue
            seen.add(k)
            by_id.setdefault(key_id(k), []).append(AESGCM(k))
        self._open = by_id
        self.max_age = max_age
        self._cache: dict[tuple[bytes, str | bytes], tuple] = {}  # see _lookup
        self._cache_size = cache_size
        # digest(route, token) -> when the token expires anyway (None: never); insertion
        # order, so the oldest revocation is dropped first when the table is full.
        self._revoked: dict[bytes, float | None] = {}
        self.max_revoked = max_revoked

    @staticmethod
    def _aad(header: bytes, route: bytes) -> bytes:
        return _AAD_PREFIX + header + route

    def encode(self, state: SessionState, route: str | bytes) -> str:
        """The token for ``state`` on ``route`` (a route path or any stable route id)."""
        route_b = route.encode("utf-8") if isinstance(route, str) else bytes(route)
        header = bytes((FORMAT_AESGCM, self._kid))
        nonce = os.urandom(_NONCE)
        sealed = self._seal.encrypt(nonce, _pack(state), self._aad(header, route_b))
        return _b64encode(header + nonce + sealed)

    def decode(
        self,
        token: str | bytes,
        route: str | bytes,
        *,
        subject: str | None = None,
        now: float | None = None,
    ) -> SessionState:
        """Open ``token`` for ``route``.  With ``subject`` given, the token must be bound
        to that principal.  Raises ``InvalidToken`` for every kind of fault."""
        if type(token) is not str:
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken("not ASCII") from None
        route_b = route if type(route) is bytes else route.encode("utf-8") if isinstance(route, str) else bytes(route)
        entry = self._lookup(token, token, route_b)
        self._accept(entry, subject, now)
        return entry[0]

    def open_sid(self, sid: bytes, route_b: bytes, subject: str | None) -> tuple[SessionState, str]:
        """``decode`` for the request path: ``sid`` is the ``Mcp-Session-Id`` field's bytes
        as the request parser handed them out, ``route_b`` the route's path as bytes.
        Returns ``(state, token)``, the token as text.  Cached under those bytes: the
        parser hands a kept-alive connection's repeated field out as the same object, so
        a hit hashes nothing new and makes no text."""
        entry = self._cache.get((route_b, sid))
        if entry is None:
            try:
                token = sid.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken("not ASCII") from None
            entry = self._lookup(sid, token, route_b)
        self._accept(entry, subject, None)
        return entry[0], entry[1]

    def _lookup(self, key, token: str, route_b: bytes) -> tuple:
        """The cache entry ``(state, token, expiry or None, subject)`` under ``(route_b,
        key)`` (``key`` is the token as text or as bytes), opened and cached on a miss."""
        ck = (route_b, key)
        entry = self._cache.get(ck)
        if entry is None:
            state = self._decode(token, route_b)
            if self._revoked and _digest(route_b, token) in self._revoked:
                raise SessionEnded("revoked")
            entry = (state, token, None if self.max_age is None else state.created + self.max_age, state.subject)
            if self._cache_size:
                cache = self._cache
                if len(cache) >= self._cache_size:
                    # Drop the oldest entry (dicts keep insertion order): FIFO is enough
                    # here, a hot session is simply re-inserted after its eviction.
                    del cache[next(iter(cache))]
                cache[ck] = entry
        return entry

    def _accept(self, entry: tuple, subject: str | None, now: float | None) -> None:
        """Refuse an open token (a ``_lookup`` entry) that is too old, or bound to another
        principal."""
        expires = entry[2]
        if expires is not None and (time.time() if now is None else now) > expires:
            raise InvalidToken("expired")
        if subject is not None and subject != entry[3]:
            raise InvalidToken("bound to another principal")

    def _decode(self, token: str, route_b: bytes) -> SessionState:
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("too long")
        raw = _b64decode(token)
        if len(raw) < _MIN_RAW:
            raise InvalidToken("too short")
        if raw[0] != FORMAT_AESGCM:
            raise InvalidToken("unknown format")
        candidates = self._open.get(raw[1])
        if not candidates:
            raise InvalidToken("unknown key")
        header = raw[:_HEADER]
        nonce = raw[_HEADER : _HEADER + _NONCE]
        sealed = raw[_HEADER + _NONCE :]
        aad = self._aad(header, route_b)
        for aead in candidates:
            try:
                plain = aead.decrypt(nonce, sealed, aad)
                break
            except InvalidTag:
                continue
        else:
            raise InvalidToken("authentication failed")
        try:
            return _unpack(plain)
        except _Malformed as exc:
            # Authentic but unreadable: a token from a newer gateway version, say.
            raise InvalidToken(f"unreadable payload: {exc}") from None

    def clear_cache(self) -> None:
        self._cache.clear()

    def revoke(self, token: str, route: str | bytes, state: SessionState, now: float | None = None) -> None:
        """From now on ``decode`` refuses ``token`` (ended by DELETE) in this process:
        until it would have expired (``max_age``), or until ``max_revoked`` later
        revocations have pushed it out."""
        route_b = route.encode("utf-8") if isinstance(route, str) else bytes(route)
        cache = self._cache
        cache.pop((route_b, token), None)  # cached under the text and under the bytes
        cache.pop((route_b, token.encode("ascii", "replace")), None)
        table = self._revoked
        t = time.time() if now is None else now
        # Forget revocations of tokens that expired by themselves (oldest first).
        for d, until in list(itertools.islice(table.items(), 8)):
            if until is not None and until < t:
                del table[d]
        while len(table) >= self.max_revoked > 0:
            del table[next(iter(table))]
        if self.max_revoked > 0:
            table[_digest(route_b, token)] = None if self.max_age is None else state.created + self.max_age

    def revoked(self, token: str, route: str | bytes) -> bool:
        """Was ``token`` revoked here (and is that still remembered)?"""
        if not self._revoked:
            return False
        route_b = route.encode("utf-8") if isinstance(route, str) else bytes(route)
        return _digest(route_b, token) in self._revoked


def _digest(route_b: bytes, token: str) -> bytes:
    # 128 bits of SHA-256: the table holds a fixed-size key, not the token itself.
    return hashlib.sha256(route_b + b"\x00" + token.encode("ascii", "replace")).digest()[:16]
