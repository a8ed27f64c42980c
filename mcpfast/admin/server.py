"""The admin listener: ``/metrics`` (Prometheus text format), ``/healthz`` (the process
is alive and its loop turns) and ``/readyz`` (configuration loaded, listeners open, every
backend accepts TCP connections).

It is a separate listener so operators can keep it off the public interface.  It reuses
the protocol core's request parser; answers are small and built in one write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..wire.core import ProtocolError, RequestParser
from ..transport.http_mcp import tcp_probe
from ..wire.rpcerrors import status_reason

__all__ = ["AdminServer"]

READY_CACHE_SECONDS = 2.0
PROBE_TIMEOUT = 1.0


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, admin: "AdminServer") -> None:
        self.admin = admin
        self.parser = RequestParser(self, max_header_bytes=8192, max_headers=64, max_body_bytes=0)
        self.transport = None
        self.head = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._send(exc.status, b"text/plain", str(exc).encode(), close=True)

    def on_request(self, head) -> None:
        self.head = head

    def on_body(self, chunk) -> None:
        pass

    def on_request_end(self, trailers) -> None:
        head = self.head
        path = head.target.partition(b"?")[0]
        if head.method not in (b"GET", b"HEAD"):
            self._send(405, b"text/plain", b"method not allowed\n", close=not head.keep_alive)
        elif path == b"/metrics":
            self._send(200, CONTENT_TYPE_LATEST.encode(), generate_latest(self.admin.gateway.metrics.registry), close=not head.keep_alive)
        elif path == b"/healthz":
            self._send(200, b"application/json", b'{"status":"ok"}', close=not head.keep_alive)
        elif path == b"/readyz":
            asyncio.get_running_loop().create_task(self._ready(head.keep_alive))
        else:
            self._send(404, b"text/plain", b"not found\n", close=not head.keep_alive)

    async def _ready(self, keep_alive: bool) -> None:
        ok, detail = await self.admin.readiness()
        body = orjson.dumps({"status": "ready" if ok else "not ready", "backends": detail})
        self._send(200 if ok else 503, b"application/json", body, close=not keep_alive)

    def _send(self, status: int, ctype: bytes, body: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, status_reason(status), ctype, len(body), b"Connection: close\r\n" if close else b"", body)
        )
        if close:
            self.transport.close()


class AdminServer:
    # ``gateway``: the running gateway; this module reads its status only.
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.server: asyncio.AbstractServer | None = None
        self._ready_at = 0.0
        self._ready: tuple[bool, dict] = (False, {})

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _AdminProtocol(self), host, port)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def readiness(self) -> tuple[bool, dict]:
        now = time.monotonic()
        if now - self._ready_at < READY_CACHE_SECONDS:
            return self._ready
        gw = self.gateway
        detail: dict[str, str] = {}

        async def probe(b) -> None:
            end = gw.backends.get(b.name)
            if end is not None:  # a terminating route's backend: it knows how to tell
                try:
                    why = await asyncio.wait_for(end.probe(), PROBE_TIMEOUT)
                except asyncio.TimeoutError:
                    why = "unreachable: TimeoutError"
                detail[b.name] = "reachable" if why is None else why
                return
            why = await tcp_probe(b.host, b.port, PROBE_TIMEOUT)  # a passthrough route's backend
            detail[b.name] = "reachable" if why is None else why

        await asyncio.gather(*(probe(b) for b in gw.config.backends))
        ok = gw.ready and not gw.draining and all(v == "reachable" for v in detail.values())
        self._ready = (ok, detail)
        self._ready_at = now
        return self._ready

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
