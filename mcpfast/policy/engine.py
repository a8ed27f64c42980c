"""The policy the gateway calls: one ``Policy`` per configuration, one ``RoutePolicy`` per route.

Theory of operation.  ``Policy`` builds, once, everything the hot path consults: the
shared key source (config keys + JWKS), one ``Authenticator`` per route (its own
audience -- the route's canonical resource URI -- and its own token cache), the
``Authorizer``, the ``RateLimiter``, the session-binding table, the audit log, and the
encoded RFC 9728 metadata documents by request path.

The gateway holds a ``RoutePolicy`` on each route and makes these calls (see
``docs/policy.md`` "Gateway hooks"):

    p = rp.authenticate(head, peer)              # Principal | Future; raises AuthError
    raw = rp.seal.open(sid, p.key)               # sealed session id -> the backend's (or None)
    r = rp.session_refused(p, sid)               # ... when it is None: audited 404
    r = rp.admit(p, method, name, backend, sid)  # JSON-RPC request/notification: Refusal | None
    r = rp.admit_transport(p, sid)               # GET / DELETE / client responses: Refusal | None
    body = rp.filter_list(p, method, body, backend)   # list answers, when rp.needs_filter(method)

``admit`` returns its refusal instead of raising it, so the allowed path (nearly every
request) costs no exception machinery: authorization, then rate limit; each refusal is
audited here, so the gateway only writes the answer.  ``rp.seal`` (a ``SessionSeal``,
see ``sessions.py``) is set on routes that authenticate, unless ``auth.bind_sessions``
is off; the gateway uses it on passthrough routes (a multiplexed route's token binds
the principal itself).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from . import refusal as R
from .audit import DENIED, RATE_LIMITED, SESSION_REFUSED, AuditLog
from .auth import Authenticator
from .authz import NAME_METHODS, Authorizer
from .config import PolicyConfig
from .jwks import KeySource
from .oauth import WELL_KNOWN, canonical_resource, metadata_document, metadata_path, metadata_url, www_authenticate
from .principal import Principal
from .ratelimit import RateLimiter
from .refusal import Refusal
from .sessions import SessionSeal

__all__ = ["Policy", "RoutePolicy"]

_HIDDEN = {
    "tools/call": "Unknown tool: {}",
    "prompts/get": "Unknown prompt: {}",
    "resources/read": "Resource not found: {}",
    "resources/subscribe": "Resource not found: {}",
    "resources/unsubscribe": "Resource not found: {}",
}
_UPKEEP_EVERY = 10.0  # seconds between sweeps of token caches


class RoutePolicy:
    """Policy as seen from one route.  All methods are synchronous."""

    __slots__ = ("path", "enabled", "auth", "authz", "limiter", "seal", "audit", "resource",
                 "metadata_url", "drop_headers", "_hide", "_deny_status", "authenticate")  # fmt: skip

    def __init__(
        self,
        path: str,
        auth: Authenticator,
        authz: Authorizer | None,
        limiter: RateLimiter | None,
        seal: SessionSeal | None,
        audit: AuditLog | None,
        resource: str | None,
        metadata_url: str | None,
        drop_headers: frozenset[bytes],
    ) -> None:
        self.path = path
        self.auth = auth
        #: ``authenticate(head, peer) -> Principal | Future[Principal]``, raises ``AuthError``
        #: (already audited).  The authenticator's own bound method: no extra call layer.
        self.authenticate = auth.authenticate
        self.authz = authz
        self.limiter = limiter
        #: Seals and opens this route's passthrough session ids (None: not bound).
        self.seal = seal
        self.audit = audit
        self.resource = resource
        self.metadata_url = metadata_url
        #: Lower-cased request header names the gateway must not forward upstream
        #: (the client's credentials), unless ``auth.forward_credentials``.
        self.drop_headers = drop_headers
        self.enabled = auth.mode != "off" or authz is not None or limiter is not None
        self._hide = authz is not None and authz.hide_denied
        self._deny_status = authz.deny_status if authz is not None else 403

    # --- 2. may they --------------------------------------------------------------------
    def admit(
        self,
        principal: Principal,
        method: str,
        name: str | None,
        backend: str | None,
        session_id: bytes | None = None,
        shown: str | None = None,
    ) -> Refusal | None:
        """Authorization and rate limit for one JSON-RPC request or
        notification.  ``name`` is ``params.name`` for tools/call and prompts/get,
        ``params.uri`` for resources/*, else None.  None means go on.

        ``shown`` is the name as the client wrote it when that differs from ``name``
        (a multiplexed route checks the backend's own name; the client sent the
        namespaced one): a ``hide_denied`` answer must name what the client asked for."""
        authz = self.authz
        if authz is not None:
            d = authz.check(principal, method, name, backend)
            if not d.allowed:
                return self._denied(d, principal, method, name, session_id, shown, backend)
        limiter = self.limiter
        if limiter is not None:
            retry, lid = limiter.check_limit(principal, method, name, backend)
            if retry:
                what = name if shown is None else shown
                return self._limited(retry, lid, principal, method, what, session_id, backend)
        return None

    def admit_transport(self, principal: Principal, session_id: bytes | None) -> Refusal | None:
        """For requests that carry no JSON-RPC request (GET stream, DELETE, a POST of
        client responses): no rule applies to them beyond authentication and the session
        binding, which the gateway checks with ``seal`` before any of these calls."""
        return None

    @staticmethod
    def target_name(env: Any) -> str | None:
        """The name ``admit`` wants, from a scanned ``Envelope``."""
        return env.name if env.method in NAME_METHODS else env.uri

    # --- 3. what they see -------------------------------------------------------------
    def needs_filter(self, method: str) -> bool:
        """Must the answer to ``method`` be buffered and passed to ``filter_list``?"""
        return self.authz is not None and self.authz.needs_filter(method)

    def filter_list(self, principal: Principal, method: str, body: bytes, backend: str | None) -> bytes:
        if self.authz is None:
            return body
        return self.authz.filter_list(principal, method, body, backend)

    def allowed_names(self, principal: Principal, method: str, names, backend: str | None) -> list[bool] | None:
        """Per item of a list ``method`` known by its names: may ``principal`` use it on
        ``backend``?  None when every item may stay (the multiplexer filters each
        backend's page this way, under that backend's name)."""
        if self.authz is None:
            return None
        return self.authz.allowed_names(principal, method, names, backend)

    # --- refusals ---------------------------------------------------------------------
    def session_refused(self, p: Principal, sid: bytes, method: str | None = None) -> Refusal:
        """A session id that ``seal`` does not open for ``p``: not sealed here, forged,
        another route's or another principal's.  To the client it is an unknown session
        (404, after which an MCP client re-initializes); it learns nothing about whether
        the session exists for someone else."""
        if self.audit is not None:
            self.audit.event(
                SESSION_REFUSED, R.SESSION_MISMATCH, client=p.client_ip, principal=p, session=sid,
                method=method, route=self.path, status=404,
            )  # fmt: skip
        return Refusal(404, R.CODE_SESSION_NOT_FOUND, "Session not found", R.SESSION_MISMATCH)

    def _denied(
        self, d, p: Principal, method: str, name: str | None, sid: bytes | None, shown: str | None, backend: str | None
    ) -> Refusal:
        if d.missing_scopes:
            status, code = 403, R.CODE_FORBIDDEN
            message = "Forbidden: insufficient scope"
            hdr = www_authenticate(
                resource_metadata=self.metadata_url,
                scope=" ".join(d.missing_scopes),
                error="insufficient_scope",
                description="this operation needs more scope",
            )
            reason = R.DENIED_SCOPE
        elif self._hide and method in _HIDDEN and name is not None:
            # Answer as the backend would for a name it does not have.
            status, code, hdr, reason = 200, R.CODE_INVALID_PARAMS, b"", R.DENIED
            message = _HIDDEN[method].format(shown if shown is not None else name)
        else:
            status, code, hdr, reason = self._deny_status, R.CODE_FORBIDDEN, b"", R.DENIED
            what = shown if shown is not None else name
            message = f"Forbidden: {method}{' ' + what if what else ''} is not allowed"
        if self.audit is not None:
            self.audit.event(
                DENIED, d.reason, client=p.client_ip, principal=p, session=sid, method=method,
                tool=name if shown is None else shown,
                rule=d.rule_id, route=self.path, status=status, backend=backend,
            )  # fmt: skip
        return Refusal(status, code, message, reason, hdr, d.rule_id)

    def _limited(
        self, retry: float, lid: str | None, p: Principal, method: str, name: str | None, sid, backend: str | None
    ) -> Refusal:
        secs = max(1, math.ceil(retry))
        if self.audit is not None:
            self.audit.event(
                RATE_LIMITED, R.RATE_LIMITED, client=p.client_ip, principal=p, session=sid, method=method,
                tool=name, rule=lid, route=self.path, status=429, backend=backend,
            )  # fmt: skip
        return Refusal(
            429, R.CODE_RATE_LIMITED, f"Too many requests: retry in {secs}s", R.RATE_LIMITED,
            b"Retry-After: %d\r\n" % secs, lid,
        )  # fmt: skip


class Policy:
    """Everything policy of one configuration, for all routes."""

    def __init__(
        self,
        cfg: PolicyConfig,
        routes: Iterable[str] = ("/mcp",),
        *,
        registry: CollectorRegistry | None = None,
        audit: AuditLog | None = None,
        keys: KeySource | None = None,
        mcp_path: str = "/mcp",
        session_idle: float = 3600.0,
        session_keys: Iterable[bytes] = (),
        wall=time.time,
        clock=time.monotonic,
    ) -> None:
        self.config = cfg
        self.enabled = cfg.enabled
        self._wall = wall
        self._clock = clock
        self.session_idle = session_idle
        a = cfg.auth
        if audit is None and self.enabled:
            audit = AuditLog(cfg.audit.sink, registry=registry, max_per_second=cfg.audit.max_events_per_second)
        self.audit = audit
        if keys is None and a.jwt is not None:
            keys = KeySource.from_config(a.jwt, clock=clock)
        self.keys = keys
        self.authz = Authorizer(cfg.authz) if cfg.authz.enabled else None
        self.limiter = RateLimiter(cfg.ratelimit, clock=clock) if cfg.ratelimit.limits else None
        self.session_keys = tuple(session_keys)
        self.routes: dict[str, RoutePolicy] = {}
        self.well_known: dict[bytes, bytes] = {}
        self._last_upkeep = -math.inf
        self._mcp_path = mcp_path
        for path in routes:
            self.route(path)

    def route(self, path: str) -> RoutePolicy:
        """The ``RoutePolicy`` of ``path`` (built on first request for it)."""
        rp = self.routes.get(path)
        if rp is not None:
            return rp
        a = self.config.auth
        mode, required = a.for_route(path)
        resource = canonical_resource(a.public_url, path) if a.public_url else None
        meta_url = None
        if resource is not None and a.authorization_servers and mode != "off":
            meta_url = metadata_url(resource)
            doc = metadata_document(
                resource, a.authorization_servers, a.scopes_supported, a.resource_name, a.resource_documentation
            )
            self.well_known[metadata_path(resource).encode()] = doc
            root = WELL_KNOWN.encode()
            if root not in self.well_known or path == self._mcp_path:
                self.well_known[root] = doc
        auth = Authenticator(
            a,
            route=path,
            mode=mode,
            required_scopes=required,
            resource=resource,
            metadata_url=meta_url,
            keys=self.keys,
            audit=self.audit,
            wall=self._wall,
        )
        drop: set[bytes] = set()
        if mode != "off" and not a.forward_credentials:
            drop.add(b"authorization")
            if a.api_keys is not None and a.api_keys.header:
                drop.add(a.api_keys.header.encode("ascii"))
        seal = None
        if mode != "off" and a.bind_sessions:
            if not self.session_keys:  # built without a configuration's keys: this process's own
                self.session_keys = (os.urandom(32),)
            seal = SessionSeal(self.session_keys, path, max_cache=a.max_sessions)
        rp = RoutePolicy(path, auth, self.authz, self.limiter, seal, self.audit, resource, meta_url, frozenset(drop))
        self.routes[path] = rp
        return rp

    def metadata(self, path: bytes) -> bytes | None:
        """The RFC 9728 document served at ``path`` (no query), or None."""
        return self.well_known.get(path)

    async def start(self) -> None:
        """Fetch the JWKS once before serving (failures are logged; requests retry)."""
        if self.keys is not None:
            await self.keys.start()

    def tick(self, now: float | None = None) -> None:
        """The gateway's once-a-second upkeep."""
        now = self._clock() if now is None else now
        if self.keys is not None:
            self.keys.tick(now)
        if self.limiter is not None:
            self.limiter.tick(now)
        if now - self._last_upkeep >= _UPKEEP_EVERY:
            self._last_upkeep = now
            wall = self._wall()
            for rp in self.routes.values():
                rp.auth.sweep(wall)
        if self.audit is not None:
            self.audit.flush()

    def close(self) -> None:
        if self.keys is not None:
            self.keys.close()
        if self.audit is not None:
            self.audit.close()
