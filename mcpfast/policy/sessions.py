"""Session binding on passthrough routes: the session id the client sees is sealed.

Theory of operation.  The MCP authorization spec says a session never authenticates
anything: every request is verified on its own, and a session id presented by another
principal must not let them ride the session.  A table from session id to principal
would have to be bounded, and whatever a bounded table forgets can be claimed by
someone else -- so the binding lives in the id itself, as the multiplexer's tokens do.

On an authenticated passthrough route the gateway never shows the client the backend's
``Mcp-Session-Id``.  It hands out::

    <backend session id> "." <tag>
    tag = base64url(HMAC-SHA256(K, label || route || principal key || backend id)[:16])

(22 characters; the whole value stays visible ASCII, as the Streamable HTTP transport
requires of a session id.)  ``K`` is derived from the ``[sessions]`` key the
multiplexer's tokens use, so every worker process -- and every gateway sharing the key
-- verifies every other's ids, and a restart loses nothing.  On each request the tag is
checked against the *caller's* principal and the route; the backend receives only its
own id.  Nothing is stored per session, so no amount of traffic can flush a binding.

Verification is a pure function of (keys, route, header bytes, principal key), so its
results are cached in a bounded dict keyed by the header bytes: the parser hands a
kept-alive connection's repeated field out as the same bytes object, so a hit costs one
dict lookup and one string comparison.  The cache is only a shortcut -- an evicted entry
costs one HMAC on its next use -- so it simply drops its oldest entry when full.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["SessionSeal", "TAG_CHARS"]

_LABEL = b"mcpfast/passthrough-session\x00"
_DERIVE = b"mcpfast passthrough session seal"
_TAG_BYTES = 16
#: Length of the sealed suffix: "." and 16 bytes in unpadded base64url.
TAG_CHARS = 22
_SUFFIX = TAG_CHARS + 1
#: Longest sealed id verified (a backend id of 1 KiB plus the tag); longer is refused unread.
MAX_SEALED = 1024 + _SUFFIX


def _derive(key: bytes) -> bytes:
    # A key of its own for this use: the [sessions] key also encrypts multiplexer tokens.
    return hmac.digest(key, _DERIVE, hashlib.sha256)


class SessionSeal:
    """Seals and opens the session ids of one route.  ``keys``: the current key first,
    then older ones still accepted (rotation)."""

    __slots__ = ("_keys", "_prefix", "_cache", "max_cache")

    def __init__(self, keys: Iterable[bytes], route: str, max_cache: int = 100000) -> None:
        ks = [_derive(k) for k in keys]
        if not ks:
            raise ValueError("a session seal needs a key")
        self._keys = tuple(ks)
        rb = route.encode("utf-8")
        self._prefix = _LABEL + b"%d:" % len(rb) + rb
        # sealed header bytes -> (principal key, backend session id)
        self._cache: dict[bytes, tuple[str, bytes]] = {}
        self.max_cache = max_cache

    def _tag(self, key: bytes, pkey: bytes, sid: bytes) -> bytes:
        mac = hmac.digest(key, b"%s%d:%s%s" % (self._prefix, len(pkey), pkey, sid), hashlib.sha256)
        return base64.urlsafe_b64encode(mac[:_TAG_BYTES])[:TAG_CHARS]

    def seal(self, sid: bytes, principal_key: str) -> bytes:
        """The id to show the client for backend session ``sid`` opened by
        ``principal_key``."""
        sid = bytes(sid)
        sealed = sid + b"." + self._tag(self._keys[0], principal_key.encode("utf-8"), sid)
        self._remember(sealed, principal_key, sid)
        return sealed

    def open(self, sealed: bytes, principal_key: str) -> bytes | None:
        """The backend's session id inside ``sealed`` when it was sealed on this route
        for ``principal_key``; None for anything else (unsealed, forged, another
        route's, another principal's)."""
        hit = self._cache.get(sealed)
        if hit is not None:
            return hit[1] if hit[0] == principal_key else None
        n = len(sealed)
        if n <= _SUFFIX or n > MAX_SEALED or sealed[n - _SUFFIX] != 0x2E:  # "."
            return None
        sid = sealed[: n - _SUFFIX]
        tag = sealed[n - TAG_CHARS :]
        pkey = principal_key.encode("utf-8")
        for key in self._keys:
            if hmac.compare_digest(self._tag(key, pkey, sid), tag):
                sid = bytes(sid)
                self._remember(bytes(sealed), principal_key, sid)
                return sid
        return None

    def _remember(self, sealed: bytes, principal_key: str, sid: bytes) -> None:
        cache = self._cache
        if self.max_cache <= 0:
            return
        if len(cache) >= self.max_cache:
            del cache[next(iter(cache))]
        cache[sealed] = (principal_key, sid)

    def cached(self) -> int:
        return len(self._cache)
