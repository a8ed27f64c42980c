"""HTTP/1.1 parser benchmarks: compiled core (``c``) against ``httptools`` (llhttp) and
the pure-Python twin (``py``), side by side in one run.

Run: ``pytest bench/test_bench_http.py --benchmark-only --benchmark-group-by=group``.

Cases, one ``http:<case>`` group each; one benchmark iteration handles four messages,
one ``feed`` each (so the benchmark's own per-call cost weighs a quarter as much):

- ``request_keepalive``: a typical MCP ``POST /mcp`` (11 header fields: Authorization,
  Mcp-Session-Id, MCP-Protocol-Version, Content-Type, Accept, ...) with its small JSON
  body, fed to a parser that lives across iterations, as on a keep-alive connection.
  The four requests differ (ids, lengths, Mcp-Method), as consecutive ones do.
- ``request_new_conn``: the same four requests, each to a new parser and handler
  (construction included), as if each came on a new connection.
- ``response_keepalive``: four typical backend answer heads (7 fields, Content-Length
  bodies, the Date changing) on one connection.

Every contestant does the same work: it hands the head over with all header
(name, value) pairs as ``bytes`` -- for httptools that means collecting them from its
``on_header`` callbacks, which is how it is used -- and delivers the body.
Targets: c <= 1.5x httptools, c >= 20x faster than py (the keep-alive cases).
"""

from __future__ import annotations

import importlib
import os

import httptools
import pytest

C = importlib.import_module(os.environ.get("MCPFAST_CORE_MODULE", "mcpfast.wire._core"))
PY = importlib.import_module("mcpfast.wire._core_py")


def _request(i: int, method: str) -> bytes:
    body = b'{"jsonrpc":"2.0","id":%d,"method":"%s","params":{"name":"search","arguments":{"q":"x"}}}' % (i, method.encode())
    head = (
        b"POST /mcp HTTP/1.1\r\n"
        b"Host: gateway.example.com:8443\r\n"
        b"User-Agent: mcp-client/1.2.0 (python-httpx/0.27.0)\r\n"
        b"Accept: application/json, text/event-stream\r\n"
        b"Accept-Encoding: gzip, deflate\r\n"
        b"Content-Type: application/json\r\n"
        b"Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwiYXVkIjoibWNwIn0.c2lnbmF0dXJlLXBsYWNlaG9sZGVy\r\n"
        b"Mcp-Session-Id: 3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c\r\n"
        b"MCP-Protocol-Version: 2025-06-18\r\n"
        b"Mcp-Method: " + method.encode() + b"\r\n"
        b"Connection: keep-alive\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


REQUESTS = [_request(i, m) for i, m in enumerate(["tools/call", "tools/list", "resources/read", "ping"], start=7)]
def _response(i: int) -> bytes:
    body = b'{"jsonrpc":"2.0","id":%d,"result":{"content":[],"isError":false}}' % i
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Date: Thu, 17 Jul 2025 10:00:%02d GMT\r\n"
        b"Server: uvicorn\r\n"
        b"Content-Type: application/json\r\n"
        b"Mcp-Session-Id: 3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c\r\n"
        b"Cache-Control: no-cache, no-transform\r\n"
        b"Vary: Origin\r\n"
        b"Content-Length: %d\r\n\r\n" % (i // 2, len(body))
    )
    return head + body


RESPONSES = [_response(i) for i in (7, 8, 99, 1000)]


class OurHandler:
    """The gateway's shape of handler: keep the head, collect the body."""

    __slots__ = ("body", "done", "head")

    def __init__(self) -> None:
        self.head = None
        self.body = []
        self.done = 0

    def on_request(self, head) -> None:
        self.head = head
        self.body = []

    on_response = on_request

    def on_interim(self, head) -> None:
        pass

    def on_body(self, chunk) -> None:
        self.body.append(chunk)

    def on_request_end(self, trailers) -> None:
        self.done += 1

    on_response_end = on_request_end


class LlhttpHandler:
    """The same for httptools: collect the URL and header pairs it reports one by one."""

    __slots__ = ("body", "done", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.done = 0

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done += 1


def _check(handler, impl: str, want_headers: int, messages: int) -> None:
    assert handler.done >= messages
    if impl == "httptools":
        assert len(handler.headers) == want_headers
    else:
        assert len(handler.head.headers) == want_headers


# What each contestant is made of: (parser class, handler class), per message kind.
CLASSES = {
    "request": {
        "c": (C.RequestParser, OurHandler),
        "httptools": (httptools.HttpRequestParser, LlhttpHandler),
        "py": (PY.RequestParser, OurHandler),
    },
    "response": {
        "c": (C.ResponseParser, OurHandler),
        "httptools": (httptools.HttpResponseParser, LlhttpHandler),
        "py": (PY.ResponseParser, OurHandler),
    },
}


def _new(kind: str, impl: str):
    """A new (handler, parser) pair: one connection."""
    parser_class, handler_class = CLASSES[kind][impl]
    handler = handler_class()
    return handler, parser_class(handler)


FEED = {"c": "feed", "py": "feed", "httptools": "feed_data"}
IMPLS = ("c", "httptools", "py")


def _make_keepalive(case: str, kind: str, messages: list[bytes], nheaders: int, impl: str):
    @pytest.mark.benchmark(group=f"http:{case}")
    def bench(benchmark):
        handler, parser = _new(kind, impl)
        feed = getattr(parser, FEED[impl])

        def run():
            for message in messages:
                feed(message)

        benchmark(run)
        _check(handler, impl, nheaders, len(messages))

    bench.__name__ = f"test_{case}__{impl}"
    return bench


def _make_new_conn(impl: str):
    parser_class, handler_class = CLASSES["request"][impl]
    feed_name = FEED[impl]

    @pytest.mark.benchmark(group="http:request_new_conn")
    def bench(benchmark):
        last = []

        def run():
            for message in REQUESTS:
                handler = handler_class()
                getattr(parser_class(handler), feed_name)(message)
            last[:] = [handler]

        benchmark(run)
        _check(last[0], impl, 11, 1)

    bench.__name__ = f"test_request_new_conn__{impl}"
    return bench


for _impl in IMPLS:
    globals()[f"test_request_keepalive__{_impl}"] = _make_keepalive("request_keepalive", "request", REQUESTS, 11, _impl)
    globals()[f"test_request_new_conn__{_impl}"] = _make_new_conn(_impl)
    globals()[f"test_response_keepalive__{_impl}"] = _make_keepalive("response_keepalive", "response", RESPONSES, 7, _impl)
