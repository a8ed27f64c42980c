"""Authentication: request credentials → ``Principal``, or a refusal that says why.

Theory of operation.  ``Authenticator.authenticate(head, peer_ip)`` is called once per
request on a route, before the body is looked at.  It reads three things from the
request head: the ``Authorization`` value, the configured API-key header, and the
request target (to refuse tokens in the query string, RFC 6750 §2.3 / MCP "Token
Requirements").

The hot path is one dict lookup: a verified credential's ``Principal`` is cached under
the exact ``Authorization`` bytes, until the token's ``exp`` (never past it), in a dict
bounded by ``cache_size`` (oldest entry dropped first).  A hit returns the cached object
itself -- no allocation -- unless the client address changed, when a copy with the new
address replaces it.

On a miss the token is verified synchronously with pyjwt against pinned keys (see
``keys.py``): the algorithm comes from the token only if the chosen key's type allows
it.  Only when a token names a ``kid`` that is not in the key set (or no keys were
loaded yet) and a JWKS refresh may run does ``authenticate`` return an
``asyncio.Future`` instead of a ``Principal``; the future resolves after the refresh to
the principal, or fails with ``AuthError``.  So the caller's hot path needs no coroutine:

    p = auth.authenticate(head, peer)        # raises AuthError
    if type(p) is not Principal:             # rare: keys being fetched
        p.add_done_callback(...)             # or: p = await p

Failures raise ``AuthError`` with a prebuilt ``WWW-Authenticate`` line: 401 for missing
or invalid credentials (``resource_metadata`` and ``scope`` per MCP authorization, RFC
9728 §5.1), 403 ``insufficient_scope`` when the token lacks a scope the route requires
(RFC 6750 §3.1), 400 ``invalid_request`` for a token in the query string, 503 when no
keys could be loaded.  Each failure is written to the audit log with a reason code;
tokens, keys and unverified claims are never logged.

Modes: ``required`` refuses requests without credentials; ``optional`` lets them in as
the anonymous principal -- but credentials that are *presented* must still be valid
(a bad token is a 401, not a silent downgrade); ``off`` does nothing at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from . import refusal as R
from .audit import AUTH_FAILURE, AuditLog
from .config import AuthConfig
from .jwks import KeySource
from .oauth import www_authenticate
from .principal import KIND_APIKEY, KIND_JWT, Principal, anonymous
from .refusal import AuthError

__all__ = ["Authenticator", "AuthError"]

_BEARER = b"bearer"
_ACCESS_TOKEN = b"access_token"
_ANON_CACHE = 4096

# reason → (HTTP status, OAuth error code or None, description for the client)
_FAILURES: dict[str, tuple[int, str | None, str]] = {
    R.MISSING_CREDENTIALS: (401, None, "authentication required"),
    R.UNSUPPORTED_SCHEME: (401, None, "authentication required"),
    R.TOKEN_IN_QUERY: (400, "invalid_request", "access tokens are accepted only in the Authorization header"),
    R.MALFORMED_TOKEN: (401, "invalid_token", "malformed token"),
    R.ALG_NOT_ALLOWED: (401, "invalid_token", "token algorithm not accepted"),
    R.UNKNOWN_KID: (401, "invalid_token", "token signed with an unknown key"),
    R.NO_MATCHING_KEY: (401, "invalid_token", "no key to verify this token"),
    R.BAD_SIGNATURE: (401, "invalid_token", "signature verification failed"),
    R.EXPIRED: (401, "invalid_token", "token expired"),
    R.NOT_YET_VALID: (401, "invalid_token", "token not yet valid"),
    R.ISSUED_IN_FUTURE: (401, "invalid_token", "token issued in the future"),
    R.WRONG_ISSUER: (401, "invalid_token", "token issuer not accepted"),
    R.WRONG_AUDIENCE: (401, "invalid_token", "token audience is not this resource"),
    R.MISSING_CLAIM: (401, "invalid_token", "token lacks a required claim"),
    R.INVALID_CLAIM: (401, "invalid_token", "token has an invalid claim"),
    R.UNKNOWN_API_KEY: (401, "invalid_token", "unknown API key"),
    R.INSUFFICIENT_SCOPE: (403, "insufficient_scope", "token lacks a required scope"),
    R.KEYS_UNAVAILABLE: (503, None, "token verification keys are unavailable, try again later"),
}


def _query_has_token(target: bytes) -> bool:
    """A query parameter named ``access_token`` (RFC 6750 §2.3)."""
    q = target[target.find(b"?") + 1 :]
    if _ACCESS_TOKEN not in q.lower():
        return False
    for part in q.split(b"&"):
        if part.partition(b"=")[0].lower() == _ACCESS_TOKEN:
            return True
    return False


def _scopes_from(claims: dict, names: tuple[str, ...]) -> frozenset[str]:
    """``scope`` is a space-separated string (RFC 8693 §4.2); ``scp`` is often a list."""
    out: set[str] = set()
    for n in names:
        v = claims.get(n)
        if isinstance(v, str):
            out.update(v.split())
        elif isinstance(v, list):
            out.update(x for x in v if isinstance(x, str))
    return frozenset(out)


class Authenticator:
    """Credentials of one route → ``Principal``.  Build once per route at config load."""

    __slots__ = (
        "mode", "route", "_off", "_required", "_required_scopes", "_cache", "_hcache", "_cache_size",
        "_anon", "_keys", "_jwt", "_algs", "_issuers", "_audiences", "_leeway", "_options", "_subject_claim",
        "_scope_claims", "_cache_seconds", "_api", "_api_header", "_api_bearer", "_failures", "_audit", "_wall",
    )  # fmt: skip

    def __init__(
        self,
        cfg: AuthConfig,
        *,
        route: str = "/mcp",
        mode: str | None = None,
        required_scopes: tuple[str, ...] | None = None,
        resource: str | None = None,
        metadata_url: str | None = None,
        keys: KeySource | None = None,
        audit: AuditLog | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.route = route
        self.mode = mode = mode or cfg.mode
        self._off = mode == "off"
        self._required = mode == "required"
        self._required_scopes = frozenset(cfg.required_scopes if required_scopes is None else required_scopes)
        self._cache: dict[bytes, Principal] = {}
        self._hcache: dict[bytes, Principal] = {}
        self._anon: dict[str, Principal] = {}
        self._audit = audit
        self._wall = wall

        j = cfg.jwt
        self._jwt = j is not None
        if j is not None:
            if keys is None:
                keys = KeySource.from_config(j)
            keys.on_change(self._keys_changed)
            self._algs = j.algorithms
            self._issuers = j.issuers[0] if len(j.issuers) == 1 else frozenset(j.issuers)
            auds = list(cfg.audiences)
            if resource is not None:
                auds.insert(0, resource)
            self._audiences = auds
            self._leeway = j.leeway_seconds
            self._options = {"require": list(j.required_claims), "verify_iat": True}
            self._subject_claim = j.subject_claim
            self._scope_claims = j.scope_claims
            self._cache_seconds = j.cache_seconds
            self._cache_size = j.cache_size
        else:
            self._algs = frozenset()
            self._cache_size = 10000
        self._keys = keys

        api = cfg.api_keys
        self._api: dict[str, Principal] = {}
        self._api_header: bytes | None = None
        self._api_bearer = False
        if api is not None:
            self._api_header = api.header.encode("ascii") if api.header else None
            self._api_bearer = api.bearer
            for e in api.keys:
                attrs = MappingProxyType(dict(e.attributes))
                self._api[e.sha256] = Principal(
                    e.subject, KIND_APIKEY, f"apikey:{e.subject}", "", e.scopes, attributes=attrs
                )

        # Every failure answer is encoded now: refusing costs no formatting.
        scope = " ".join(sorted(self._required_scopes)) or " ".join(cfg.scopes_supported) or None
        need = " ".join(sorted(self._required_scopes)) or None
        self._failures: dict[str, tuple[int, int, str, bytes]] = {}
        for reason, (status, error, desc) in _FAILURES.items():
            if status == 503:
                hdr = b""
            elif reason == R.INSUFFICIENT_SCOPE:
                hdr = www_authenticate(resource_metadata=metadata_url, scope=need, error=error, description=desc)
            else:
                # RFC 6750 §3.1: no error code (nor description) when credentials were missing.
                hdr = www_authenticate(
                    resource_metadata=metadata_url, scope=scope, error=error, description=desc if error else None
                )
            code = R.CODE_FORBIDDEN if status == 403 else R.CODE_UNAUTHORIZED
            word = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 503: "Unavailable"}[status]
            self._failures[reason] = (status, code, f"{word}: {desc}", hdr)

    # --- the per-request call ---------------------------------------------------------
    def authenticate(self, head: Any, peer: str) -> Principal | asyncio.Future[Principal]:
        """``head`` needs ``authorization``, ``headers``, ``target`` and ``session_id``
        (a ``RequestHead``).  Returns a ``Principal`` (or, rarely, a future of one);
        raises ``AuthError``."""
        if self._off:
            return self._anonymous(peer)
        target = head.target
        if b"?" in target and _query_has_token(target):
            raise self._fail(R.TOKEN_IN_QUERY, head, peer)
        value = head.authorization
        if value is not None:
            p = self._cache.get(value)
            if p is not None:
                if p.expires > self._wall():
                    if p.client_ip != peer:
                        p = self._cache[value] = p.with_ip(peer)
                    return p
                del self._cache[value]
            r = self._from_authorization(value, head, peer)
            if r is not None:
                return r
        hname = self._api_header
        if hname is not None:
            n = len(hname)
            for name, v in head.headers:
                if len(name) == n and name.lower() == hname:
                    p = self._hcache.get(v)
                    if p is not None:
                        if p.client_ip != peer:
                            p = self._hcache[v] = p.with_ip(peer)
                        return p
                    return self._api_key(v.strip(), v, self._hcache, head, peer)
        if self._required:
            raise self._fail(R.MISSING_CREDENTIALS, head, peer)
        return self._anonymous(peer)

    # --- slow paths -------------------------------------------------------------------
    def _from_authorization(self, value: bytes, head: Any, peer: str) -> Principal | asyncio.Future | None:
        scheme, _, cred = value.partition(b" ")
        if scheme.lower() != _BEARER:
            # RFC 6750 §3.1: an unknown scheme is answered as if no credentials came;
            # another scheme may be meant for a backend (forward_credentials).
            return None
        token = cred.strip(b" \t")
        if not token:
            raise self._fail(R.MALFORMED_TOKEN, head, peer)
        if self._jwt and token.count(b".") == 2:
            try:
                text = token.decode("ascii")
            except UnicodeDecodeError:
                raise self._fail(R.MALFORMED_TOKEN, head, peer) from None
            return self._verify_jwt(value, text, head, peer, True)
        if self._api_bearer:
            return self._api_key(token, value, self._cache, head, peer)
        raise self._fail(R.MALFORMED_TOKEN if self._jwt else R.UNKNOWN_API_KEY, head, peer)

    def _api_key(self, raw: bytes, cache_key: bytes, cache: dict, head: Any, peer: str) -> Principal:
        entry = self._api.get(hashlib.sha256(raw).hexdigest())
        if entry is None:
            raise self._fail(R.UNKNOWN_API_KEY, head, peer)
        if self._required_scopes and not self._required_scopes <= entry.scopes:
            raise self._fail(R.INSUFFICIENT_SCOPE, head, peer)
        p = entry.with_ip(peer)
        self._remember(cache, cache_key, p)
        return p

    def _verify_jwt(
        self, value: bytes, token: str, head: Any, peer: str, may_refresh: bool
    ) -> Principal | asyncio.Future:
        keys = self._keys.current
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise self._fail(R.MALFORMED_TOKEN, head, peer) from None
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str) or alg not in self._algs:
            raise self._fail(R.ALG_NOT_ALLOWED, head, peer)  # "none" is never in _algs
        if kid is not None and not isinstance(kid, str):
            raise self._fail(R.MALFORMED_TOKEN, head, peer)
        if kid is not None:
            k = keys.by_kid.get(kid)
            if k is None:
                if may_refresh:
                    fut = self._after_refresh(value, token, head, peer)
                    if fut is not None:
                        return fut
                raise self._fail(self._no_key_reason(keys, R.UNKNOWN_KID), head, peer)
            if alg not in k.algorithms:
                # The token's alg does not fit this key's type: HS256 "signed" with an
                # RSA public key, ES256 against an RSA key, and so on.
                raise self._fail(R.ALG_NOT_ALLOWED, head, peer)
            candidates: tuple = (k,)
        else:
            candidates = keys.by_alg.get(alg, ())
            if not candidates:
                if may_refresh and len(keys) == 0:
                    fut = self._after_refresh(value, token, head, peer)
                    if fut is not None:
                        return fut
                raise self._fail(self._no_key_reason(keys, R.NO_MATCHING_KEY), head, peer)
        claims = None
        for k in candidates:
            try:
                claims = jwt.decode(
                    token,
                    k.key,
                    algorithms=[alg],
                    audience=self._audiences,
                    issuer=self._issuers,
                    leeway=self._leeway,
                    options=self._options,
                )
                break
            except InvalidSignatureError:
                continue  # without a kid several keys may fit; try the next
            except ExpiredSignatureError:
                raise self._fail(R.EXPIRED, head, peer) from None
            except ImmatureSignatureError as exc:
                reason = R.ISSUED_IN_FUTURE if "iat" in str(exc) else R.NOT_YET_VALID
                raise self._fail(reason, head, peer) from None
            except InvalidIssuerError:
                raise self._fail(R.WRONG_ISSUER, head, peer) from None
            except InvalidAudienceError:
                raise self._fail(R.WRONG_AUDIENCE, head, peer) from None
            except MissingRequiredClaimError as exc:
                reason = {"aud": R.WRONG_AUDIENCE, "iss": R.WRONG_ISSUER}.get(exc.claim, R.MISSING_CLAIM)
                raise self._fail(reason, head, peer) from None
            except (InvalidAlgorithmError, InvalidKeyError):
                raise self._fail(R.ALG_NOT_ALLOWED, head, peer) from None
            except DecodeError:
                raise self._fail(R.MALFORMED_TOKEN, head, peer) from None
            except PyJWTError:
                raise self._fail(R.INVALID_CLAIM, head, peer) from None
        if claims is None:
            raise self._fail(R.BAD_SIGNATURE, head, peer)
        return self._jwt_principal(value, claims, head, peer)

    def _jwt_principal(self, value: bytes, claims: dict, head: Any, peer: str) -> Principal:
        sub = claims.get(self._subject_claim)
        if sub is None:
            raise self._fail(R.MISSING_CLAIM, head, peer)
        if not isinstance(sub, str) or not sub:
            raise self._fail(R.INVALID_CLAIM, head, peer)
        scopes = _scopes_from(claims, self._scope_claims)
        if self._required_scopes and not self._required_scopes <= scopes:
            raise self._fail(R.INSUFFICIENT_SCOPE, head, peer)
        exp = claims.get("exp")
        now = self._wall()
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            expires = float(exp)  # cached exactly until exp, never past it (leeway is not extended)
        else:
            expires = now + self._cache_seconds  # no exp (not required): re-verify now and then
        iss = claims.get("iss") if isinstance(claims.get("iss"), str) else None
        p = Principal(
            sub,
            KIND_JWT,
            f"jwt:{iss or ''}|{sub}",
            peer,
            scopes,
            MappingProxyType(claims),
            issuer=iss,
            expires=expires,
        )
        self._remember(self._cache, value, p)
        return p

    def _remember(self, cache: dict, key: bytes, p: Principal) -> None:
        if self._cache_size <= 0:
            return
        if len(cache) >= self._cache_size:
            try:
                del cache[next(iter(cache))]  # the oldest entry: bounded at O(1)
            except (StopIteration, KeyError):
                pass
        cache[key] = p

    def _no_key_reason(self, keys, reason: str) -> str:
        return R.KEYS_UNAVAILABLE if len(keys) == 0 and self._keys.dynamic else reason

    def _after_refresh(self, value: bytes, token: str, head: Any, peer: str) -> asyncio.Future | None:
        """Start (or join) a JWKS refresh; verify again once it is done."""
        task = self._keys.refresh()
        if task is None:
            return None
        fut = task.get_loop().create_future()

        def done(_t: Any) -> None:
            if fut.done():
                return
            try:
                p = self._verify_jwt(value, token, head, peer, False)
            except BaseException as exc:  # AuthError, mostly
                fut.set_exception(exc)
            else:
                fut.set_result(p)

        task.add_done_callback(done)
        return fut

    def _anonymous(self, peer: str) -> Principal:
        p = self._anon.get(peer)
        if p is None:
            if len(self._anon) >= _ANON_CACHE:
                self._anon.clear()
            p = self._anon[peer] = anonymous(peer)
        return p

    def _fail(self, reason: str, head: Any, peer: str) -> AuthError:
        status, code, message, hdr = self._failures[reason]
        if status == 503 and self._keys is not None:
            hdr = b"Retry-After: %d\r\n" % max(1, int(self._keys.retry_after() + 0.999))
        if self._audit is not None:
            self._audit.event(
                AUTH_FAILURE, reason, client=peer, session=head.session_id, route=self.route, status=status
            )
        return AuthError(status, code, message, reason, hdr)

    # --- upkeep -----------------------------------------------------------------------
    def _keys_changed(self, removed: frozenset[str]) -> None:
        # A key the issuer withdrew must stop vouching for tokens at once.
        if removed:
            self._cache.clear()

    def sweep(self, now: float | None = None) -> None:
        """Drop cached tokens past their expiry (the tick calls this)."""
        now = self._wall() if now is None else now
        dead = [k for k, p in self._cache.items() if p.expires <= now]
        for k in dead:
            self._cache.pop(k, None)

    @property
    def cached(self) -> int:
        return len(self._cache)
