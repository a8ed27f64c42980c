"""Verification keys and the algorithms each one may verify.

Theory of operation.  A JWT names its algorithm in its own header, which the attacker
writes.  The classic attacks use exactly that: ``alg: none`` (no signature), or ``HS256``
with a key that is really an RSA public key -- the attacker, who knows the public key,
uses its bytes as an HMAC secret.  So the algorithm is never taken from the token alone:
every key carries the set of algorithms its *type* allows (RFC 7518 §3.1 table, and §3.2
for HMAC key sizes), narrowed by the configuration's allow-list and by a JWK's own
``alg``.  A token is verified only with a key whose set contains the token's ``alg``.
``none`` is in no set.

A ``KeySet`` is an immutable snapshot indexed by ``kid`` and by algorithm; the JWKS
source swaps whole snapshots, so a request never sees half a refresh.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWTError

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "VerifyKey",
    "KeySet",
    "KeyError_",
    "algorithms_for",
    "load_pem",
    "key_from_jwk",
    "keys_from_jwks",
]

HMAC_ALGORITHMS = frozenset(("HS256", "HS384", "HS512"))
RSA_ALGORITHMS = frozenset(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"))
_EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(_EC_BY_CURVE.values()) | {"EdDSA"}
# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


class KeyError_(ValueError):
    """A key that cannot be used (bad PEM, bad JWK, no usable algorithm)."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str | None
    key: Any  # bytes (HMAC secret) or a cryptography public-key object
    algorithms: frozenset[str]
    origin: str  # "config" | "jwks": where it came from, for messages


def algorithms_for(key: Any) -> frozenset[str]:
    """The algorithms a key's type can verify."""
    if isinstance(key, (bytes, bytearray)):
        n = len(key)
        return frozenset(a for a, need in _HMAC_MIN_BYTES.items() if n >= need)
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_BY_CURVE.get(key.curve.name)
        return frozenset((alg,)) if alg else frozenset()
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset(("EdDSA",))
    return frozenset()


def make_key(key: Any, kid: str | None, allowed: Iterable[str], origin: str, pinned: str | None = None) -> VerifyKey:
    """Pin a key to the algorithms its type allows ∩ ``allowed`` (∩ ``pinned``)."""
    algs = algorithms_for(key) & frozenset(allowed)
    if pinned is not None:
        algs &= {pinned}
    if not algs:
        kind = "HMAC secret" if isinstance(key, (bytes, bytearray)) else type(key).__name__
        extra = ""
        if isinstance(key, (bytes, bytearray)) and len(key) < 32:
            extra = f" (an HMAC secret needs at least 32 bytes, got {len(key)})"
        raise KeyError_(f"no allowed algorithm fits this {kind}{extra}")
    return VerifyKey(kid, bytes(key) if isinstance(key, bytearray) else key, algs, origin)


def load_pem(data: bytes) -> Any:
    """A public key from PEM: a public key, a certificate, or a private key (whose
    public half is kept -- the private part is dropped at once)."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        if b"PRIVATE KEY-----" in data:
            return load_pem_private_key(data, password=None).public_key()
        return load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"not a usable PEM key: {exc}") from None


def _b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def key_from_jwk(jwk: dict[str, Any], allowed: Iterable[str], origin: str, allow_symmetric: bool) -> VerifyKey:
    """A ``VerifyKey`` from one JWK (RFC 7517).  Symmetric (``oct``) keys only when
    ``allow_symmetric``: a JWKS fetched from a URL is public and must never hold secrets."""
    if not isinstance(jwk, dict):
        raise KeyError_("a JWK must be an object")
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyError_("kid must be a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeyError_(f"key use is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyError_("key_ops does not include 'verify'")
    pinned = jwk.get("alg")
    if pinned is not None and (not isinstance(pinned, str) or pinned not in SUPPORTED_ALGORITHMS):
        raise KeyError_(f"unsupported alg {pinned!r}")
    if kty == "oct":
        if not allow_symmetric:
            raise KeyError_("symmetric (oct) keys are not accepted from a JWKS URL")
        k = jwk.get("k")
        if not isinstance(k, str):
            raise KeyError_("oct key without 'k'")
        try:
            secret = _b64url(k)
        except ValueError:
            raise KeyError_("'k' is not base64url") from None
        return make_key(secret, kid, allowed, origin, pinned)
    # PyJWK needs an algorithm only to choose the key parser; the verification set is
    # decided by the key type below, so RS256 stands for every RSA algorithm here.
    parse_alg = pinned
    if parse_alg is None:
        parse_alg = {"RSA": "RS256", "OKP": "EdDSA"}.get(kty) if isinstance(kty, str) else None
        if kty == "EC":
            parse_alg = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(jwk.get("crv"))
    if parse_alg is None:
        raise KeyError_(f"unsupported key type {kty!r} / curve {jwk.get('crv')!r}")
    try:
        obj = PyJWK(jwk, algorithm=parse_alg).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise KeyError_(f"bad JWK: {exc}") from None
    if hasattr(obj, "public_key"):  # a private JWK: keep only the public half
        obj = obj.public_key()
    return make_key(obj, kid, allowed, origin, pinned)


def keys_from_jwks(doc: Any, allowed: Iterable[str]) -> tuple[list[VerifyKey], list[str]]:
    """Parse a JWKS document (RFC 7517 §5).  Unusable keys are skipped, not fatal (an
    issuer may publish encryption keys or algorithms we do not allow); their problems
    are returned for the log."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyError_("a JWKS is an object with a 'keys' array")
    allowed = frozenset(allowed)
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for i, jwk in enumerate(doc["keys"]):
        try:
            keys.append(key_from_jwk(jwk, allowed, "jwks", allow_symmetric=False))
        except KeyError_ as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            skipped.append(f"keys[{i}] (kid {kid!r}): {exc}")
    return keys, skipped


class KeySet:
    """An immutable snapshot of verification keys, indexed for the verifier."""

    __slots__ = ("keys", "by_kid", "by_alg", "kids")

    def __init__(self, keys: Iterable[VerifyKey] = ()) -> None:
        self.keys = tuple(keys)
        by_kid: dict[str, VerifyKey] = {}
        by_alg: dict[str, list[VerifyKey]] = {}
        for k in self.keys:
            if k.kid is not None and k.kid not in by_kid:  # first one wins: config before JWKS
                by_kid[k.kid] = k
            for a in k.algorithms:
                by_alg.setdefault(a, []).append(k)
        self.by_kid = by_kid
        self.by_alg = {a: tuple(v) for a, v in by_alg.items()}
        self.kids = frozenset(by_kid)

    def __len__(self) -> int:
        return len(self.keys)
