"""Which gateway process can serve a session, with stdio backends: two real gateway
processes sharing one session key, as two replicas behind a load balancer would.

A per-session stdio child lives in the process that started it.  The session token names
it with that process's instance id, so another process knows at once that it cannot
serve it: it answers 404 (the client opens a new session) without a hang and without
starting a child of its own for a session it does not hold.  A shared child is any
process's: each runs its own, and a session opened in one is served by the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from gwutil import INIT, MCP_HEADERS as HEADERS, ROOT, free_port, wait_port
from mcpfast.mux.token import new_key_text

pytestmark = pytest.mark.e2e

SERVER = os.path.join(ROOT, "tests", "fixtures", "sdk_server.py")


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


class Replica:
    def __init__(self, tmp, name: str, key_file: str, mode: str) -> None:
        self.port = free_port()
        cfg = tmp / f"{name}.toml"
        cfg.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n[log]\naccess_log = "off"\nlevel = "warning"\n'
            f'[sessions]\nkey_file = "{key_file}"\n'
            f'[backends.e2e]\ntransport = "stdio"\ncommand = {json.dumps(sys.executable)}\n'
            f'args = [{json.dumps(SERVER)}, "--transport", "stdio"]\ncwd = {json.dumps(ROOT)}\nmode = "{mode}"\n'
        )
        self.proc = subprocess.Popen([sys.executable, "-m", "mcpfast", "serve", "--config", str(cfg)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return err.decode("utf-8", "replace")


@pytest.fixture
def replicas(tmp_path, request):
    key = tmp_path / "session.key"
    key.write_text(new_key_text() + "\n")
    os.chmod(key, 0o600)
    made = [Replica(tmp_path, n, str(key), request.param) for n in ("a", "b")]
    yield made
    for r in made:
        r.stop()


def _open(h: httpx.Client, url: str) -> dict:
    r = h.post(url, json=INIT, headers=HEADERS)
    assert r.status_code == 200, r.text
    hdrs = {**HEADERS, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    r = h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
    assert r.status_code == 202
    return hdrs


def _call(h: httpx.Client, url: str, hdrs: dict, text: str) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}
    return h.post(url, json=body, headers=hdrs)


@pytest.mark.parametrize("replicas", ["per_session"], indirect=True)
def test_a_per_session_child_is_served_by_its_process_only(replicas):
    a, b = replicas
    with httpx.Client(timeout=20) as h:
        hdrs = _open(h, a.url)
        r = _call(h, a.url, hdrs, "on a")
        assert r.status_code == 200 and "on a" in r.text
        assert len(_children(a.proc.pid)) == 1  # the session's child
        # The same session at the other replica: 404 at once, no child started there.
        r = _call(h, b.url, hdrs, "on b")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == -32001
        r = h.get(b.url, headers={**hdrs, "Accept": "text/event-stream"})
        assert r.status_code == 404
        assert _children(b.proc.pid) == []
        # The client opens a new session there, which works; the first one still works at a.
        hdrs_b = _open(h, b.url)
        r = _call(h, b.url, hdrs_b, "new on b")
        assert r.status_code == 200 and "new on b" in r.text
        r = _call(h, a.url, hdrs, "still on a")
        assert r.status_code == 200 and "still on a" in r.text


@pytest.mark.parametrize("replicas", ["shared"], indirect=True)
def test_a_shared_child_session_is_served_by_any_process(replicas):
    a, b = replicas
    with httpx.Client(timeout=20) as h:
        hdrs = _open(h, a.url)
        for url, text in ((a.url, "one"), (b.url, "two"), (a.url, "three"), (b.url, "four")):
            r = _call(h, url, hdrs, text)
            assert r.status_code == 200 and text in r.text, (url, r.text)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_children(b.proc.pid)) != 1:
            time.sleep(0.05)
        assert len(_children(a.proc.pid)) == 1 and len(_children(b.proc.pid)) == 1


def _alive(pid: int) -> bool:
    """Is ``pid`` a process that has not been reaped (a zombie counts as gone)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("mode", ["per_session", "shared"])
def test_gateway_sigterm_leaves_no_child_behind(tmp_path, mode):
    key = tmp_path / "session.key"
    key.write_text(new_key_text() + "\n")
    gw = Replica(tmp_path, "solo", str(key), mode)
    try:
        with httpx.Client(timeout=20) as h:
            sessions = [_open(h, gw.url) for _ in range(3)]
            for hdrs in sessions:
                assert _call(h, gw.url, hdrs, "x").status_code == 200
        kids = _children(gw.proc.pid)
        assert len(kids) == (3 if mode == "per_session" else 1)
        # Their own children too: the SDK server is one process, but a group stop must
        # not leave anything of the group.
        groups = {os.getpgid(k) for k in kids}
        assert all(g == k for g, k in zip(sorted(groups), sorted(kids)))  # each leads its group
    finally:
        err = gw.stop()
    assert gw.proc.returncode == 0, err
    assert not any(_alive(k) for k in kids), [k for k in kids if _alive(k)]
    for g in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(g, 0)
