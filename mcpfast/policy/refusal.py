"""How policy says no: one exception type that carries the whole answer.

A ``Refusal`` holds what the gateway writes back -- HTTP status, JSON-RPC error code and
message, extra header lines already encoded -- plus a ``reason`` code for the audit
event and the metrics.  Reason codes are a closed set (the constants below), so they
are safe as Prometheus label values and never carry a token, a key or a claim value.

JSON-RPC codes.  JSON-RPC 2.0 §5.1 leaves -32000..-32099 to the implementation; MCP
already uses -32000 (connection closed), -32001 (request timeout), -32020..-32022 and
-32042, so the gateway's own refusals take -32030..-32032.  A denial answered as if
the tool did not exist uses -32602 (invalid params), the code MCP servers give for an
unknown tool, prompt or resource (MCP "Tools: Error Handling"; SEP-2164 for resources).
"""

from __future__ import annotations

from ..wire.rpcerrors import FORBIDDEN, INVALID_PARAMS, RATE_LIMITED, SESSION_NOT_FOUND, UNAUTHORIZED

__all__ = [
    "Refusal",
    "AuthError",
    "CODE_UNAUTHORIZED",
    "CODE_FORBIDDEN",
    "CODE_RATE_LIMITED",
    "CODE_INVALID_PARAMS",
    "CODE_SESSION_NOT_FOUND",
    "AUTH_REASONS",
]

CODE_UNAUTHORIZED = UNAUTHORIZED
CODE_FORBIDDEN = FORBIDDEN
CODE_RATE_LIMITED = RATE_LIMITED
CODE_INVALID_PARAMS = INVALID_PARAMS
CODE_SESSION_NOT_FOUND = SESSION_NOT_FOUND

# Authentication reason codes (audit ``reason``, metric label).
MISSING_CREDENTIALS = "missing_credentials"
UNSUPPORTED_SCHEME = "unsupported_scheme"
TOKEN_IN_QUERY = "token_in_query"
MALFORMED_TOKEN = "malformed_token"
ALG_NOT_ALLOWED = "alg_not_allowed"
UNKNOWN_KID = "unknown_kid"
NO_MATCHING_KEY = "no_matching_key"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
ISSUED_IN_FUTURE = "issued_in_future"
WRONG_ISSUER = "wrong_issuer"
WRONG_AUDIENCE = "wrong_audience"
MISSING_CLAIM = "missing_claim"
INVALID_CLAIM = "invalid_claim"
UNKNOWN_API_KEY = "unknown_api_key"
INSUFFICIENT_SCOPE = "insufficient_scope"
KEYS_UNAVAILABLE = "keys_unavailable"

AUTH_REASONS = frozenset(
    (MISSING_CREDENTIALS, UNSUPPORTED_SCHEME, TOKEN_IN_QUERY, MALFORMED_TOKEN, ALG_NOT_ALLOWED, UNKNOWN_KID,
     NO_MATCHING_KEY, BAD_SIGNATURE, EXPIRED, NOT_YET_VALID, ISSUED_IN_FUTURE, WRONG_ISSUER, WRONG_AUDIENCE,
     MISSING_CLAIM, INVALID_CLAIM, UNKNOWN_API_KEY, INSUFFICIENT_SCOPE, KEYS_UNAVAILABLE)
)  # fmt: skip

# Later-stage reasons.
DENIED = "denied"  # an authorization rule or the default said no
DENIED_SCOPE = "insufficient_scope"  # an allow rule needs scopes the caller lacks
RATE_LIMITED = "rate_limited"
SESSION_MISMATCH = "session_mismatch"


class Refusal(Exception):
    """A request the policy answers itself.

    ``headers`` is zero or more complete header lines (``Name: value\\r\\n``) to add to
    the answer, e.g. ``WWW-Authenticate`` or ``Retry-After``.  ``rule`` names the
    authorization rule or rate limit that decided, when one did.
    """

    __slots__ = ("status", "code", "message", "headers", "reason", "rule")

    def __init__(
        self, status: int, code: int, message: str, reason: str, headers: bytes = b"", rule: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.reason = reason
        self.rule = rule

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code}, {self.message!r}, reason={self.reason!r})"


class AuthError(Refusal):
    """Authentication failed (401), was refused outright (400) or the caller lacks a
    required scope (403).  ``headers`` holds the ``WWW-Authenticate`` line."""

    __slots__ = ()
