"""The composition root: one gateway process put together from its configuration.

The layers below know nothing of each other's upper neighbours: the pipeline serves
routes without knowing how a terminating route works, a terminating route reaches its
backends without knowing their transports.  This module is where the pieces meet:

* ``TRANSPORTS`` maps a backend's ``transport`` to what builds it behind the backend
  seam (``transport/base.py``).  A new transport is one module in ``transport/``, one
  config variant and one line here.
* ``build_gateway`` makes the ``Gateway`` with the terminating route handler (the
  virtual server, ``mux/virtual.py``), the backend factory, the admin listener and the
  legacy HTTP+SSE front (``front/legacy_sse.py``).
"""

from __future__ import annotations

from .admin.server import AdminServer
from .config import BackendConfig, Config
from .front.legacy_sse import LegacyFront
from .mux.virtual import VirtualRoute
from .pipeline.gateway import Gateway
from .transport.http_mcp import BackendLink, HttpBackend

__all__ = ["TRANSPORTS", "build_gateway", "make_backend"]


def _http(gw: Gateway, b: BackendConfig, bm, timeout: float, max_body: int):
    return HttpBackend(BackendLink(b, gw.pool_for(b, bm), timeout, max_body), b.host, b.port)


def _stdio(gw: Gateway, b: BackendConfig, bm, timeout: float, max_body: int):
    from .transport.stdio import StdioBackend

    return StdioBackend(b, response_timeout=timeout, max_line=b.max_line_bytes or max_body, count_error=gw.metrics.error)


def _sse(gw: Gateway, b: BackendConfig, bm, timeout: float, max_body: int):
    from .transport.sse_legacy import SseBackend

    return SseBackend(b, gw.pool_for(b, bm), response_timeout=timeout, max_event=max_body, count_error=gw.metrics.error)


TRANSPORTS = {"http": _http, "stdio": _stdio, "sse": _sse}


def make_backend(gw: Gateway, b: BackendConfig, bm):
    """Backend ``b`` behind the seam, for a terminating route of ``gw``."""
    cfg = gw.config
    return TRANSPORTS[b.transport](gw, b, bm, b.response_timeout or cfg.timeouts.upstream_response, cfg.limits.max_sse_event_bytes)


def build_gateway(config: Config, **kw) -> Gateway:
    """A gateway for ``config`` (``kw``: metrics, access_log, as ``Gateway`` takes)."""
    return Gateway(config, terminating=VirtualRoute, backends=make_backend, admin=AdminServer, front=LegacyFront, **kw)
