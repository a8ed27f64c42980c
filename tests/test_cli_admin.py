"""The command line, the configuration file and the admin listener, exercised as a user
would: ``mcpfast`` subprocesses, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from gwutil import ROOT, free_port, wait_port as _wait_port
from mcpfast import __version__
from mcpfast.cli import main
from mcpfast.config import ConfigError, build_config, load_config
from rawbackend import RawBackend

CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}




def test_version_and_help():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    for cmd in ([], ["serve"], ["check-config"], ["demo"]):
        r = CliRunner().invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["serve", "--help"])
    for flag in ("--listen", "--backend", "--config", "--admin-listen", "--pool-size", "--upstream-timeout",
                 "--max-body-bytes", "--backlog", "--log-level", "--log-format", "--workers"):
        assert flag in r.output


def test_check_config_prints_effective_config(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text(
        '[server]\nlisten = "127.0.0.1:9999"\nadmin_listen = "127.0.0.1:9998"\n'
        '[timeouts]\nupstream_response = 12\n'
        '[backends.weather]\nurl = "http://127.0.0.1:7000/mcp"\npool_size = 8\n'
        '[backends.weather.headers]\nAuthorization = "Bearer s3cret"\n'
    )
    r = CliRunner().invoke(main, ["check-config", str(f)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["server"]["listen"] == "127.0.0.1:9999"
    assert doc["timeouts"]["upstream_response"] == 12.0
    assert doc["backends"]["weather"]["pool_size"] == 8
    assert doc["routes"] == [{"path": "/mcp", "backends": ["weather"], "sse_path": "/sse", "messages_path": "/messages"}]
    assert "s3cret" not in r.output  # secrets are not printed


@pytest.mark.parametrize(
    "toml,key",
    [
        ('[server]\nlisten = "nope"\n', "server.listen"),
        ('[server]\nlisten = 80\n', "server.listen"),
        ("[timeouts]\nidle = -1\n", "timeouts.idle"),
        ('[backends.a]\nurl = "ftp://x/"\n', "backends.a.url"),
        ("[backends.a]\npool_size = 3\n", "backends.a.url"),
        ('[limits]\nmax_body_bytez = 3\n', "limits.max_body_bytez"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[backends."bad name"]\nurl = "http://x/"\n', "backends.bad name"),
        ('[backends.a]\nurl = "http://x/"\n[[routes]]\npath = "/m"\nbackends = ["b"]\n', "routes[0].backends"),
        ("this is = not toml [", "config"),
    ],
)
def test_check_config_errors_name_the_key(tmp_path, toml, key):
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    r = CliRunner().invoke(main, ["check-config", str(f)])
    assert r.exit_code == 2
    assert f"configuration error: {key}:" in r.output


def test_flags_override_file(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text('[server]\nlisten = "127.0.0.1:1111"\n[backends.a]\nurl = "http://127.0.0.1:1/mcp"\n')
    cfg = load_config(str(f), {"server.listen": "127.0.0.1:2222", "backends.a.url": "http://127.0.0.1:2/mcp"})
    assert cfg.server.listen == ("127.0.0.1", 2222)
    assert cfg.backend("a").port == 2


def test_several_backends_get_a_path_each():
    cfg = build_config({"backends": {"a": {"url": "http://127.0.0.1:1/mcp"}, "b": {"url": "http://127.0.0.1:2/x"}}})
    assert [(r.path, r.backends) for r in cfg.routes] == [("/mcp/a", ("a",)), ("/mcp/b", ("b",))]
    with pytest.raises(ConfigError) as e:
        build_config({"backends": {"a": {"url": "http://127.0.0.1:1/mcp"}}, "routes": [{"path": "x", "backend": "a"}]})
    assert e.value.key == "routes[0].path"




def test_serve_metrics_health_ready_and_access_log(tmp_path):
    backend = RawBackend("ok")
    port, admin = free_port(), free_port()
    log_path = tmp_path / "access.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpfast", "serve", "--listen", f"127.0.0.1:{port}", "--backend", f"b1={backend.url}",
         "--admin-listen", f"127.0.0.1:{admin}", "--access-log", str(log_path), "--log-level", "warning"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_port(port)
        _wait_port(admin)
        t_first = time.time()
        with httpx.Client(timeout=5) as h:
            for _ in range(3):
                r = h.post(f"http://127.0.0.1:{port}/mcp", json=CALL, headers={"Mcp-Session-Id": "abc"})
                assert r.status_code == 200 and r.json()["result"] == {"ok": True}
            assert h.get(f"http://127.0.0.1:{admin}/healthz").json() == {"status": "ok"}
            ready = h.get(f"http://127.0.0.1:{admin}/readyz")
            assert ready.status_code == 200 and ready.json()["backends"] == {"b1": "reachable"}
            m = h.get(f"http://127.0.0.1:{admin}/metrics").text
        assert 'mcpfast_requests_total{backend="b1",method="tools/call",outcome="ok",route="/mcp",tool="echo"} 3.0' in m
        assert 'mcpfast_gateway_duration_seconds_count{backend="b1"} 3.0' in m
        assert 'mcpfast_upstream_duration_seconds_count{backend="b1"} 3.0' in m
        assert "mcpfast_upstream_connections" in m and "mcpfast_sse_streams_open" in m
        backend.close()  # now the backend is gone: not ready, and requests get 502
        time.sleep(2.1)  # readiness answers are cached for 2 s
        with httpx.Client(timeout=5) as h:
            assert h.get(f"http://127.0.0.1:{admin}/readyz").status_code == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 3
    rec = lines[0]
    assert rec["method"] == "tools/call" and rec["tool"] == "echo" and rec["backend"] == "b1"
    assert rec["status"] == 200 and rec["client"] == "127.0.0.1"
    # The session id is logged as a short keyed hash: the same on every line, never the id.
    assert len(rec["session"]) == 12 and rec["session"] != "abc"
    assert {line["session"] for line in lines} == {rec["session"]}
    assert rec["gateway_us"] >= 0 and rec["upstream_us"] > 0 and rec["bytes"] > 0
    for k in ("time", "http", "path", "outcome"):
        assert k in rec
    # The row's wall-clock time is derived from the monotonic clock (one reading per
    # request): it must still be the time the request was served.
    import datetime

    logged = datetime.datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert t_first - 0.5 <= logged.timestamp() <= t_first + 5, (rec["time"], t_first)


def test_serve_without_backend_is_a_config_error():
    r = CliRunner().invoke(main, ["serve", "--listen", "127.0.0.1:0"])
    assert r.exit_code == 2 and "backends" in r.output


def test_demo_starts_and_serves_an_sdk_client():
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpfast", "demo", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_port(port, 30)
        code = (
            "import asyncio\nfrom mcp import Client\n"
            "async def main():\n"
            f"    async with Client('http://127.0.0.1:{port}/mcp') as c:\n"
            "        names = sorted(t.name for t in (await c.list_tools()).tools)\n"
            "        r = await c.call_tool('add', {'a': 2, 'b': 3})\n"
            "        print(names, r.content[0].text)\n"
            "asyncio.run(main())\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "['add', 'countdown', 'echo', 'now'] 5.0" in out.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def test_workers_share_the_port_and_a_dead_worker_is_replaced(tmp_path):
    backend = RawBackend("ok")
    port = free_port()
    log_path = tmp_path / "access.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpfast", "serve", "--listen", f"127.0.0.1:{port}", "--backend", f"b1={backend.url}",
         "--workers", "2", "--access-log", str(log_path), "--log-level", "warning"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_port(port)
        deadline = time.monotonic() + 10
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _children(proc.pid)
        assert len(first) == 2
        with httpx.Client(timeout=5) as h:
            for _ in range(4):
                assert h.post(f"http://127.0.0.1:{port}/mcp", json=CALL).json()["result"] == {"ok": True}
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = _children(proc.pid)
            if len(now) == 2 and first[0] not in now:
                break
            time.sleep(0.05)
        now = _children(proc.pid)
        assert len(now) == 2 and first[0] not in now and first[1] in now
        time.sleep(0.5)  # let the replacement bind its socket
        for _ in range(6):  # a new connection each: the kernel spreads them over both workers
            with httpx.Client(timeout=5) as h:
                assert h.post(f"http://127.0.0.1:{port}/mcp", json=CALL).json()["result"] == {"ok": True}
        # SIGHUP is passed on and reopens the log: the workers survive it.
        rotated = tmp_path / "access.log.1"
        log_path.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert sorted(_children(proc.pid)) == sorted(now)
        with httpx.Client(timeout=5) as h:
            assert h.post(f"http://127.0.0.1:{port}/mcp", json=CALL).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        backend.close()
    assert proc.returncode == 0
    assert log_path.exists()  # written after the reopen
    assert len(log_path.read_text().splitlines()) >= 1
