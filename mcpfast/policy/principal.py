"""Who is calling: the ``Principal`` every later policy step decides on.

Theory of operation.  Authentication turns credentials (a JWT, an API key, nothing)
into one immutable ``Principal``.  Authorization matches rules against it, rate
limiting keys buckets by it, session binding remembers it and audit events name it.
Principals are built on the slow path (a token's first sight) and cached by the
authenticator, so the hot path hands the *same object* around: it is frozen, and
compared and hashed by identity, which lets the authorizer memoize decisions per
principal object with one dict lookup.

``key`` is the identity used for binding and rate limiting.  It includes the kind and,
for JWTs, the issuer, so ``alice`` from one issuer is never ``alice`` from another or
an API key named ``alice``.  ``client_ip`` is part of the principal because rules can
match on it; a cached principal seen from a new address is copied once with the new
address (``with_ip``) and the copy replaces it in the cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["Principal", "KIND_JWT", "KIND_APIKEY", "KIND_ANONYMOUS", "EMPTY", "anonymous"]

KIND_JWT = "jwt"
KIND_APIKEY = "apikey"
KIND_ANONYMOUS = "anonymous"

#: An empty read-only mapping shared by principals without claims or attributes.
EMPTY: Mapping[str, Any] = MappingProxyType({})
_NO_SCOPES: frozenset[str] = frozenset()


class Principal:
    """An authenticated (or anonymous) caller.  Read-only; compared and hashed by identity.

    A hand-written slotted class rather than a frozen dataclass: read-only mappings are
    not valid dataclass defaults, and construction stays a plain ``__init__``.
    """

    __slots__ = ("subject", "kind", "key", "client_ip", "scopes", "claims", "attributes", "issuer", "expires")

    subject: str
    kind: str  # KIND_JWT | KIND_APIKEY | KIND_ANONYMOUS
    key: str  # stable identity for session binding and rate-limit buckets
    client_ip: str
    scopes: frozenset[str]
    claims: Mapping[str, Any]  # verified JWT claims (read-only view)
    attributes: Mapping[str, Any]  # API-key attributes from config (read-only view)
    issuer: str | None
    # Wall-clock second after which this principal must not be reused from a cache
    # (the token's ``exp``); ``inf`` for API keys and anonymous callers.
    expires: float

    def __init__(
        self,
        subject: str,
        kind: str,
        key: str,
        client_ip: str,
        scopes: frozenset[str] = _NO_SCOPES,
        claims: Mapping[str, Any] = EMPTY,
        attributes: Mapping[str, Any] = EMPTY,
        issuer: str | None = None,
        expires: float = math.inf,
    ) -> None:
        put = object.__setattr__
        put(self, "subject", subject)
        put(self, "kind", kind)
        put(self, "key", key)
        put(self, "client_ip", client_ip)
        put(self, "scopes", scopes)
        put(self, "claims", claims)
        put(self, "attributes", attributes)
        put(self, "issuer", issuer)
        put(self, "expires", expires)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Principal is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Principal is read-only")

    def __repr__(self) -> str:
        return f"Principal({self.subject!r}, kind={self.kind!r}, key={self.key!r}, client_ip={self.client_ip!r})"

    def with_ip(self, client_ip: str) -> Principal:
        """The same caller seen from another address."""
        return Principal(
            self.subject,
            self.kind,
            self.key,
            client_ip,
            self.scopes,
            self.claims,
            self.attributes,
            self.issuer,
            self.expires,
        )

    def audit_view(self) -> dict[str, Any]:
        """What an audit event may say about this principal (never a credential)."""
        d: dict[str, Any] = {"subject": self.subject, "kind": self.kind}
        if self.issuer is not None:
            d["issuer"] = self.issuer
        return d


def anonymous(client_ip: str) -> Principal:
    return Principal("anonymous", KIND_ANONYMOUS, "anonymous", client_ip)
