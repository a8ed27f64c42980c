"""Rate limits: token buckets keyed by principal, client IP, tool, method, backend.

Theory of operation.  Each ``[[ratelimit.limits]]`` entry is one ``Limit``: a rate
(tokens per second), a burst (bucket size), the dimensions its buckets are keyed by,
and optional method/tool/backend globs saying which requests it counts.  A request
takes one token from the bucket of every limit that applies to it -- all or nothing:
if any bucket is short, no bucket is charged, and the answer is the time until that
bucket holds a token again (``Retry-After``).

A bucket is two floats (tokens, last update) refilled lazily when touched; nothing runs
per bucket in the background.  A bucket that has refilled to its burst is
indistinguishable from a missing one, so it can be dropped: ``sweep`` does that (from
the gateway's tick, and when a table is full).  The key table of each limit holds at
most ``max_keys`` buckets; when it is full even after a sweep, new keys share a single
*overflow* bucket of that limit.  So a flood of distinct keys (random client addresses,
invented tool names) costs bounded memory, does not reset anyone's bucket, and is
itself rate-limited as one caller.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .authz import compile_globs
from .config import LimitConfig, RateLimitConfig
from .principal import Principal

__all__ = ["RateLimiter", "Limit"]

_INDEX_MAX = 1024
_PRINCIPAL, _IP, _OTHER = range(3)
_SWEEP_EVERY = 1.0  # seconds between forced sweeps of a full table


class Limit:
    __slots__ = ("id", "dims", "rate", "burst", "methods", "tools", "backends", "table", "max_keys",
                 "overflow", "overflowed", "_swept", "_key", "dim", "filtered")  # fmt: skip

    def __init__(self, lc: LimitConfig, max_keys: int) -> None:
        self.id = lc.id
        self.dims = lc.key
        self.rate = lc.rate
        self.burst = lc.burst
        self.methods = compile_globs(lc.methods) if lc.methods is not None else None
        self.tools = compile_globs(lc.tools) if lc.tools is not None else None
        self.backends = compile_globs(lc.backends) if lc.backends is not None else None
        self.table: dict[object, list[float]] = {}
        self.max_keys = max_keys
        self.overflow = [lc.burst, 0.0]
        self.overflowed = 0  # requests that used the overflow bucket
        self._swept = -math.inf
        self._key = self._key_fn(lc.key)
        # The two commonest keys are read inline by the limiter; the rest go through _key.
        self.dim = {("principal",): _PRINCIPAL, ("ip",): _IP}.get(tuple(lc.key), _OTHER)
        self.filtered = self.tools is not None or self.backends is not None

    @staticmethod
    def _key_fn(dims: tuple[str, ...]) -> Callable[[Principal, str, str | None, str | None], object]:
        # One dimension: the value itself is the dict key (no tuple to build).
        getters = {
            "principal": lambda p, m, n, b: p.key,
            "ip": lambda p, m, n, b: p.client_ip,
            # A URI can be megabytes long: a bucket key holds at most its first 512
            # characters, so the table's size does not depend on what clients send.
            "tool": lambda p, m, n, b: n[:512] if n else "",
            "method": lambda p, m, n, b: m,
            "backend": lambda p, m, n, b: b or "",
        }
        if len(dims) == 1:
            return getters[dims[0]]
        gs = tuple(getters[d] for d in dims)
        return lambda p, m, n, b: tuple(g(p, m, n, b) for g in gs)

    def applies(self, method: str, name: str | None, backend: str | None) -> bool:
        if self.tools is not None and (name is None or not self.tools(name)):
            return False
        if self.backends is not None and (backend is None or not self.backends(backend)):
            return False
        return True

    def bucket(self, key: object, now: float) -> list[float]:
        table = self.table
        b = table.get(key)
        if b is None:
            if len(table) >= self.max_keys:
                if now - self._swept >= _SWEEP_EVERY:
                    self.sweep(now)
                if len(table) >= self.max_keys:
                    self.overflowed += 1
                    return self.overflow
            b = table[key] = [self.burst, now]
        return b

    def sweep(self, now: float) -> int:
        """Drop buckets that have refilled completely; returns how many."""
        self._swept = now
        rate, burst = self.rate, self.burst
        dead = [k for k, (tokens, t) in self.table.items() if tokens + (now - t) * rate >= burst]
        for k in dead:
            del self.table[k]
        return len(dead)


class RateLimiter:
    """All limits of one configuration."""

    __slots__ = ("limits", "_index", "_clock")

    def __init__(self, cfg: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = tuple(Limit(lc, cfg.max_keys) for lc in cfg.limits)
        self._index: dict[str, tuple[Limit, ...]] = {}
        self._clock = clock

    def _for_method(self, method: str) -> tuple[Limit, ...]:
        ls = self._index.get(method)
        if ls is None:
            ls = tuple(lim for lim in self.limits if lim.methods is None or lim.methods(method))
            if len(self._index) < _INDEX_MAX:
                self._index[method] = ls
        return ls

    def check(self, principal: Principal, method: str, name: str | None = None, backend: str | None = None) -> float:
        """Take a token for this request: 0.0 when allowed, else seconds until allowed."""
        return self.check_limit(principal, method, name, backend)[0]

    def check_limit(
        self, principal: Principal, method: str, name: str | None = None, backend: str | None = None
    ) -> tuple[float, str | None]:
        """``(retry_after, limit id)``: ``(0.0, None)`` when allowed.

        Written flat on purpose (this runs on every request): the per-method list and the
        bucket table are read inline, and only a miss calls a helper."""
        limits = self._index.get(method)
        if limits is None:
            limits = self._for_method(method)
        if not limits:
            return 0.0, None
        now = self._clock()
        first = more = None  # buckets to charge (a list only when several limits apply)
        for lim in limits:
            if lim.filtered and not lim.applies(method, name, backend):
                continue
            d = lim.dim
            if d == _PRINCIPAL:
                key: object = principal.key
            elif d == _IP:
                key = principal.client_ip
            else:
                key = lim._key(principal, method, name, backend)
            b = lim.table.get(key)
            if b is None:
                b = lim.bucket(key, now)
            tokens = b[0] + (now - b[1]) * lim.rate
            if tokens > lim.burst:
                tokens = lim.burst
            b[0] = tokens
            b[1] = now
            if tokens < 1.0:
                return (1.0 - tokens) / lim.rate, lim.id
            if first is None:
                first = b
            elif more is None:
                more = [b]
            else:
                more.append(b)
        # Every bucket had a token: charge them all (none was charged above, so a
        # refusal by a later limit cost the earlier ones nothing).
        if first is not None:
            first[0] -= 1.0
            if more is not None:
                for b in more:
                    b[0] -= 1.0
        return 0.0, None

    def sweep(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        return sum(lim.sweep(now) for lim in self.limits)

    def tick(self, now: float | None = None, every: float = 10.0) -> None:
        """Periodic upkeep: sweep each table at most every ``every`` seconds (a sweep is
        a pass over the table; full tables also sweep themselves when they must)."""
        now = self._clock() if now is None else now
        for lim in self.limits:
            if lim.table and now - lim._swept >= every:
                lim.sweep(now)

    @property
    def keys(self) -> int:
        return sum(len(lim.table) for lim in self.limits)
