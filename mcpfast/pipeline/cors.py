"""Cross-origin access for browser clients: the ``[cors]`` section and the fields it
adds to answers.

Theory of operation.  ``OPTIONS`` on an MCP path is answered by the gateway itself
(``Exchange.start``), never forwarded: 204 with ``Allow`` naming the methods the route
accepts.  When ``[cors]`` is configured and the request's ``Origin`` is one of
``cors.allow_origins``, the answer is a CORS preflight answer (Fetch standard, "CORS
protocol"): ``Access-Control-Allow-Origin`` echoing that origin, the allowed methods and
request headers, and how long a browser may keep it.  Every other answer to such an
origin carries ``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers`` (so
a page can read ``Mcp-Session-Id``).  An origin not in the list gets no CORS field at
all, so the browser keeps the page from reading the answer.  Origins in
``cors.allow_origins`` also pass the ``server.allowed_origins`` check: an origin trusted
with CORS is trusted to call.

The fields are made once per origin (a bounded cache) and added where the client head is
finished, so an answer without ``Origin`` -- every non-browser client -- pays one
attribute test.  A backend's own ``Access-Control-*`` fields are dropped on a route with
CORS configured: two ``Access-Control-Allow-Origin`` fields make a browser refuse the
answer.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..validate import ConfigError, HeaderName, Section, decode, origin_patterns

__all__ = ["CorsConfig", "CorsPolicy", "build_cors_config", "CORS_RESPONSE_FIELDS"]

#: Request headers an MCP client in a browser sends (Streamable HTTP, and the stateless
#: revision's ``Mcp-Method``/``Mcp-Name``).
DEFAULT_ALLOW_HEADERS = (
    "Content-Type", "Accept", "Authorization", "Mcp-Session-Id", "Mcp-Protocol-Version", "Last-Event-ID",
    "Mcp-Method", "Mcp-Name",
)  # fmt: skip
#: Answer headers a page must be able to read: the session id after ``initialize``, the
#: protocol version, and the authentication challenge (RFC 9728 discovery).
DEFAULT_EXPOSE_HEADERS = ("Mcp-Session-Id", "Mcp-Protocol-Version", "WWW-Authenticate")

#: Backend answer fields dropped when CORS is configured (the gateway sets its own).
CORS_RESPONSE_FIELDS = frozenset(
    (b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-expose-headers",
     b"access-control-allow-methods", b"access-control-allow-headers", b"access-control-max-age")
)  # fmt: skip


class CorsConfig(Section):
    allow_origins: tuple[str, ...] = ()
    allow_headers: tuple[HeaderName, ...] = DEFAULT_ALLOW_HEADERS
    expose_headers: tuple[HeaderName, ...] = DEFAULT_EXPOSE_HEADERS
    max_age: Annotated[int, msgspec.Meta(ge=0, le=86400)] = 600  # seconds a browser may keep a preflight answer
    allow_credentials: bool = False  # Access-Control-Allow-Credentials: true (cookies)


def build_cors_config(raw: dict[str, Any]) -> CorsConfig | None:
    """The ``[cors]`` section, or None when it is absent (no CORS fields at all)."""
    if "cors" not in raw:
        return None
    c = decode(raw["cors"], CorsConfig, "cors")
    if c.allow_credentials and "*" in c.allow_origins:
        raise ConfigError("cors.allow_credentials", 'cannot be true with allow_origins = ["*"]')
    return msgspec.structs.replace(c, allow_origins=origin_patterns(c.allow_origins, "cors.allow_origins"))


class CorsPolicy:
    """The compiled ``[cors]`` section.  ``origins`` is an ``OriginPolicy`` over
    ``allow_origins``."""

    __slots__ = ("origins", "_answer", "_preflight", "_cache")
    MAX_CACHED = 256

    def __init__(self, cfg: CorsConfig, origins) -> None:
        self.origins = origins
        cred = b"Access-Control-Allow-Credentials: true\r\n" if cfg.allow_credentials else b""
        expose = ", ".join(cfg.expose_headers).encode("ascii")
        self._answer = cred + (b"Access-Control-Expose-Headers: " + expose + b"\r\n" if expose else b"") + b"Vary: Origin\r\n"
        self._preflight = (
            cred
            + b"Access-Control-Allow-Headers: " + ", ".join(cfg.allow_headers).encode("ascii") + b"\r\n"
            + b"Access-Control-Max-Age: %d\r\n" % cfg.max_age
            + b"Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n"
        )  # fmt: skip
        self._cache: dict[bytes, bytes] = {}

    def _allow_origin(self, origin: bytes | None) -> bytes:
        """``Access-Control-Allow-Origin: <origin>`` for an allowed origin, else b""."""
        if origin is None:
            return b""
        line = self._cache.get(origin)
        if line is None:
            # The parser refused CR, LF and NUL in field values: the origin is safe to echo.
            line = b"Access-Control-Allow-Origin: " + origin + b"\r\n" if self.origins.allows(origin) else b""
            if len(self._cache) < self.MAX_CACHED:
                self._cache[origin] = line
        return line

    def answer_fields(self, origin: bytes | None) -> bytes:
        """Fields added to an ordinary answer to ``origin``."""
        line = self._allow_origin(origin)
        return line + self._answer if line else b""

    def preflight_fields(self, origin: bytes | None, methods: bytes) -> bytes:
        """Fields of the answer to a preflight from ``origin``; b"" for an origin not allowed."""
        line = self._allow_origin(origin)
        if not line:
            return b""
        return line + b"Access-Control-Allow-Methods: " + methods + b"\r\n" + self._preflight
