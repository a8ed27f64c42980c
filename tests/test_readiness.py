"""``/readyz`` asks each backend of a terminating route whether it can take work now
(``probe()`` of the backend seam), whatever its transport: a stdio backend whose program
exists and is not backing off after crashes, a legacy HTTP+SSE backend whose event stream
opens, a Streamable HTTP backend that accepts a connection.  Judged on a real gateway
with its admin listener, real children and real servers."""

from __future__ import annotations

import os
import sys

import httpx
import pytest

from gwutil import INIT, MCP_HEADERS as HEADERS, ROOT, GatewayThread, backend_process, free_port

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")
RAW = os.path.join(ROOT, "tests", "fixtures", "stdio_raw.py")


def _ready(admin: int) -> tuple[int, dict]:
    r = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=10)
    return r.status_code, r.json()["backends"]


def test_readiness_asks_every_backend_kind():
    dead = free_port()  # nothing listens here
    with backend_process(SERVER, "--transport", "sse", "--port", "0", "--name", "legacy") as (_, sse_url):
        admin = free_port()
        cfg = {
            "server": {"admin_listen": f"127.0.0.1:{admin}"},
            "backends": {
                "child": {"transport": "stdio", "command": sys.executable, "args": [SERVER, "--transport", "stdio"], "cwd": ROOT},
                "crasher": {"transport": "stdio", "command": sys.executable, "args": ["-I", "-S", RAW, "--exit-now", "3"]},
                "legacy": {"transport": "sse", "url": sse_url},
                "gone": {"transport": "sse", "url": f"http://127.0.0.1:{dead}/sse"},
            },
        }
        with GatewayThread(cfg) as gt:
            status, detail = _ready(admin)
            assert status == 503  # one backend is not reachable: not ready
            assert detail["child"] == "reachable"
            assert detail["legacy"] == "reachable"
            assert detail["gone"] != "reachable"
            assert detail["crasher"] == "reachable"  # its program exists; nothing says it fails yet
            # Its sessions fail with a clear error; the others keep working.
            with httpx.Client(timeout=20) as h:
                r = h.post(gt.url("/mcp/crasher"), json=INIT, headers=HEADERS)
                assert r.status_code >= 500 and "crasher" in r.text
                r = h.post(gt.url("/mcp/child"), json=INIT, headers=HEADERS)
                assert r.status_code == 200


def test_a_stdio_backend_whose_program_is_missing_is_not_ready(tmp_path):
    admin = free_port()
    missing = str(tmp_path / "no-such-program")
    # Built without the startup checks (they would refuse it): readiness must say so too.
    cfg = {
        "server": {"admin_listen": f"127.0.0.1:{admin}"},
        "backends": {"gone": {"transport": "stdio", "command": missing}},
    }
    with GatewayThread(cfg):
        status, detail = _ready(admin)
        assert status == 503
        assert "not found" in detail["gone"]
