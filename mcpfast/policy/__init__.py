"""Policy: who calls (auth), what they may do (authz), how often (ratelimit), and the
record of every refusal (audit).  See ``engine.py`` for how the gateway calls it and
``docs/policy.md`` for the configuration."""

from .audit import AuditLog
from .auth import Authenticator
from .authz import Authorizer, Decision, compile_globs
from .config import POLICY_SECTIONS, PolicyConfig, build_policy_config
from .engine import Policy, RoutePolicy
from .jwks import KeySource
from .principal import KIND_ANONYMOUS, KIND_APIKEY, KIND_JWT, Principal
from .ratelimit import RateLimiter
from .refusal import (
    CODE_FORBIDDEN,
    CODE_INVALID_PARAMS,
    CODE_RATE_LIMITED,
    CODE_UNAUTHORIZED,
    AuthError,
    Refusal,
)
from .sessions import SessionSeal

__all__ = [
    "AuditLog",
    "Authenticator",
    "Authorizer",
    "Decision",
    "compile_globs",
    "POLICY_SECTIONS",
    "PolicyConfig",
    "build_policy_config",
    "Policy",
    "RoutePolicy",
    "KeySource",
    "Principal",
    "KIND_JWT",
    "KIND_APIKEY",
    "KIND_ANONYMOUS",
    "RateLimiter",
    "AuthError",
    "Refusal",
    "CODE_UNAUTHORIZED",
    "CODE_FORBIDDEN",
    "CODE_RATE_LIMITED",
    "CODE_INVALID_PARAMS",
    "SessionSeal",
]
