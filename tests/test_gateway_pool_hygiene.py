"""A backend that answers HEAD with a body (wrong, but it happens) must not leave those
bytes on a pooled connection for the next client's request to read as its answer."""

from __future__ import annotations

from gwutil import GatewayThread
from rawbackend import RawBackend, http_request, post, status_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


def test_stray_bytes_after_an_answer_retire_the_upstream_connection():
    backend = RawBackend("ok")  # answers every request, HEAD included, with a body
    gt = GatewayThread({"backends": {"only": {"url": backend.url}}}).start()
    try:
        head = http_request(gt.port, b"HEAD /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        assert status_of(head) == 200
        for _ in range(5):
            assert status_of(http_request(gt.port, post("/mcp", CALL))) == 200
        assert backend.accepted >= 2  # the poisoned connection was not reused
    finally:
        gt.stop()
        backend.close()
