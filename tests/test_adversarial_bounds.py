"""Per-client resource bounds, tried as an attacker would: one client address holding
thousands of sockets, thousands of GET streams from one principal, half-closed streams,
pipelined bodies behind a long answer.  Each test is judged by what the backend saw
(its request counter, the connections it had closed) and by what the other clients got."""

from __future__ import annotations

import socket
import time

import orjson

from gwutil import GatewayThread
from rawbackend import RawBackend, body_of, post, read_response, status_of

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


def _wait(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_two_pipelined_answers_in_one_read_are_both_delivered():
    """Both answers are already in the client's socket buffer when it starts reading:
    each arrives whole and in order, and nothing of the second is lost."""
    good = RawBackend("ok")
    gt = GatewayThread({"backends": {"good": {"url": good.url}}}).start()
    try:
        with socket.create_connection(("127.0.0.1", gt.port), timeout=5) as s:
            s.sendall(post("/mcp", CALL) + post("/mcp", CALL.replace(b'"id":7', b'"id":8')))
            assert _wait(lambda: len(good.requests) == 2)
            # The gateway has written both answers once its connection is idle again.
            assert _wait(lambda: gt.call(lambda: all(c.active is None and not c.queue for c in gt.gw.connections)))
            time.sleep(0.05)
            r1 = read_response(s)
            r2 = read_response(s)
            assert orjson.loads(body_of(r1))["id"] == 7
            assert orjson.loads(body_of(r2))["id"] == 8
            assert status_of(r2) == 200
    finally:
        gt.stop()
        good.close()
