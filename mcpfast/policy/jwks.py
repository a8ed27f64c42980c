"""Verification keys from config plus a JWKS URL, refreshed without blocking the loop.

Theory of operation.  ``KeySource`` holds the current ``KeySet`` (config keys first,
then the issuer's JWKS) and replaces it whole after each successful fetch.  Readers
never wait: the authenticator reads ``current`` synchronously.  Fetches happen

- once at start (``start()``), so the first request normally finds keys;
- in the background when the set is older than ``refresh_interval`` (``tick``);
- on demand when a token names a ``kid`` we do not know -- the issuer may have
  rotated.  Such a refresh is *single-flight* (concurrent requests share one fetch) and
  *rate-limited*: at most one attempt per ``min_interval`` seconds, whatever the
  trigger.  A flood of tokens with random kids therefore costs the issuer one request
  per interval, and the requests in between are refused at once.

Why a small HTTP GET over asyncio streams instead of ``urllib`` in an executor: the
gateway's loop must never block, a thread pool can be exhausted or left hanging by a
stalled issuer (a thread cannot be cancelled; ``asyncio.wait_for`` cancels a socket
read), and the response size must be bounded before it is read.  The response is parsed
by the gateway's own HTTP/1.1 ``ResponseParser`` (chunked, Content-Length and
read-until-close framings), so this adds no second HTTP implementation.  TLS comes from
asyncio (``ssl.create_default_context()``, system trust store).  Redirects are not
followed: a JWKS URL is configuration, and a redirect is more likely an error or an
attack than something to obey silently.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..wire.core import ProtocolError, ResponseParser
from .keys import KeySet, VerifyKey, keys_from_jwks

__all__ = ["KeySource", "FetchError", "http_get"]

log = logging.getLogger("mcpfast.policy")


class FetchError(Exception):
    """The JWKS could not be fetched or parsed."""


class _Collector:
    """ResponseParser handler that keeps one response, refusing bodies over a bound.
    Faults are recorded, not raised: exceptions must not cross the parser's frames."""

    __slots__ = ("status", "body", "size", "limit", "done", "too_big")

    def __init__(self, limit: int) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.done = False
        self.too_big = False

    def on_interim(self, head) -> None:
        pass

    def on_response(self, head) -> None:
        self.status = head.status
        if head.content_length > self.limit:
            self.too_big = True

    def on_body(self, chunk) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_big = True
        elif not self.too_big:
            self.body.append(bytes(chunk))

    def on_response_end(self, trailers) -> None:
        self.done = True


async def http_get(url: str, *, timeout: float, max_bytes: int, ssl_context: ssl.SSLContext | None = None) -> bytes:
    """GET ``url`` (http or https) and return the body of a 200 answer."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"unsupported URL {url!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ctx = None
    if parts.scheme == "https":
        ctx = ssl_context or ssl.create_default_context()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_hdr = f"[{host}]" if ":" in host else host
    if parts.port:
        host_hdr += f":{parts.port}"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host_hdr}\r\nAccept: application/json, application/jwk-set+json\r\n"
        f"User-Agent: mcpfast\r\nConnection: close\r\n\r\n"
    ).encode("ascii")

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None)
        try:
            writer.write(request)
            got = _Collector(max_bytes)
            parser = ResponseParser(got)
            while not got.done:
                data = await reader.read(65536)
                if data:
                    parser.feed(data)
                else:
                    parser.feed_eof()
                    break
                if got.too_big:
                    break
            if got.too_big:
                raise FetchError(f"JWKS larger than {max_bytes} bytes")
            if not got.done:
                raise FetchError("connection closed before the answer was complete")
            if got.status != 200:
                raise FetchError(f"answered HTTP {got.status}")
            return b"".join(got.body)
        except ProtocolError as exc:
            raise FetchError(f"malformed HTTP answer: {exc}") from None
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        raise FetchError(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        raise FetchError(f"cannot connect: {exc.strerror or exc}") from None


Fetcher = Callable[[str], Awaitable[bytes]]


class KeySource:
    """Config keys plus, optionally, the keys of one JWKS URL."""

    __slots__ = (
        "current", "url", "_static", "_allowed", "refresh_interval", "min_interval", "_fetch", "_clock",
        "_inflight", "_last_attempt", "_last_success", "_listeners", "fetches", "failures", "last_error",
    )  # fmt: skip

    def __init__(
        self,
        static: Iterable[VerifyKey] = (),
        url: str | None = None,
        *,
        algorithms: Iterable[str] = (),
        refresh_interval: float = 300.0,
        min_interval: float = 30.0,
        timeout: float = 5.0,
        max_bytes: int = 1 << 20,
        fetch: Fetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = tuple(static)
        self.current = KeySet(self._static)
        self.url = url
        self._allowed = frozenset(algorithms)
        self.refresh_interval = refresh_interval
        self.min_interval = min_interval
        if fetch is None:

            async def fetch(u: str) -> bytes:
                return await http_get(u, timeout=timeout, max_bytes=max_bytes)

        self._fetch = fetch
        self._clock = clock
        self._inflight: asyncio.Future | None = None
        self._last_attempt = -math.inf
        self._last_success = -math.inf
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self.fetches = 0  # attempts made (the number of requests the issuer saw)
        self.failures = 0
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, j, *, clock: Callable[[], float] = time.monotonic) -> "KeySource":
        """The key source an ``[auth.jwt]`` section (``JwtConfig``) describes."""
        return cls(
            j.keys,
            j.jwks_url,
            algorithms=j.algorithms,
            refresh_interval=j.jwks_refresh_seconds,
            min_interval=j.jwks_min_refresh_seconds,
            timeout=j.jwks_timeout_seconds,
            max_bytes=j.jwks_max_bytes,
            clock=clock,
        )

    @property
    def dynamic(self) -> bool:
        return self.url is not None

    def on_change(self, callback: Callable[[frozenset[str]], None]) -> None:
        """``callback(removed_kids)`` after every successful refresh."""
        self._listeners.append(callback)

    def refresh(self) -> asyncio.Future | None:
        """Start a fetch (or join the one in flight) and return its future, or ``None``
        when there is no URL, no running loop, or the last attempt was too recent."""
        if self.url is None:
            return None
        if self._inflight is not None:
            return self._inflight
        now = self._clock()
        if now - self._last_attempt < self.min_interval:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._last_attempt = now
        self._inflight = loop.create_task(self._run())
        return self._inflight

    def retry_after(self) -> float:
        """Seconds until a refresh may be attempted again."""
        return max(0.0, self.min_interval - (self._clock() - self._last_attempt))

    async def _run(self) -> None:
        self.fetches += 1
        try:
            try:
                body = await self._fetch(self.url)  # type: ignore[arg-type]
                doc: Any = orjson.loads(body)
                keys, skipped = keys_from_jwks(doc, self._allowed)
            except Exception as exc:  # FetchError, KeyError_, JSON errors -- and anything unforeseen
                self.failures += 1
                self.last_error = str(exc)
                log.warning("JWKS refresh failed", extra={"fields": {"url": self.url, "error": str(exc)}})
                return
            for problem in skipped:
                log.info("JWKS key skipped", extra={"fields": {"url": self.url, "key": problem}})
            old = self.current
            self.current = KeySet(self._static + tuple(keys))
            self._last_success = self._clock()
            self.last_error = None
            removed = old.kids - self.current.kids
            for cb in self._listeners:
                cb(removed)
        finally:
            self._inflight = None

    def tick(self, now: float | None = None) -> None:
        """Background refresh when the fetched keys are older than ``refresh_interval``."""
        if self.url is None or self._inflight is not None:
            return
        now = self._clock() if now is None else now
        if now - self._last_success >= self.refresh_interval:
            self.refresh()

    async def start(self) -> None:
        """First fetch; a failure is logged, not fatal (requests retry, rate-limited)."""
        fut = self.refresh()
        if fut is not None:
            await fut

    def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None
