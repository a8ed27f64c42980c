"""An operator's mistake ends in one line naming the cause and the setting, exit status 2,
no traceback -- run as the operator runs it, ``python -m mcpfast`` in a subprocess.

Also here: ``check-config`` refuses what ``serve`` would refuse without the network, and
``TCP_NODELAY`` on the sockets that carry small answers (the demo backend's, the
gateway's to backends and to clients), checked on the sockets themselves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from gwutil import ROOT, GatewayThread, free_port
from mcpfast.demo_backend import make_listener
from rawbackend import OK_BODY, RawBackend, read_response

ENV = {**os.environ, "PYTHONWARNINGS": "ignore::RuntimeWarning"}  # a source build warns on import
BACKEND = "a=http://127.0.0.1:9/mcp"


def _run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mcpfast", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV, **kw
    )


def _one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    """The run failed with exit 2 and exactly one line on stderr naming ``words``."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def taken():
    """A port some other process listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()




def _write(tmp_path, text: str) -> str:
    p = tmp_path / "gw.toml"
    p.write_text(textwrap.dedent(text))
    return str(p)


# ---------------------------------------------------------------------------------
# Ports


def test_client_port_in_use(taken):
    line = _one_line(_run("serve", "--listen", f"127.0.0.1:{taken}", "--backend", BACKEND),
                     "server.listen", "--listen", f"127.0.0.1:{taken}", "already in use")  # fmt: skip
    assert line.startswith("startup error:")


def test_admin_port_in_use(taken):
    _one_line(
        _run("serve", "--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{taken}", "--backend", BACKEND),
        "server.admin_listen", "--admin-listen", "already in use",
    )  # fmt: skip


def test_port_in_use_with_workers_stops_instead_of_retrying(taken):
    _one_line(_run("serve", "--listen", f"127.0.0.1:{taken}", "--workers", "2", "--backend", BACKEND, timeout=30),
              "server.listen", "already in use")  # fmt: skip


def test_port_taken_after_the_check_still_gives_the_setting(taken):
    """The listener is opened for real after the probe; a port taken in between (here:
    never probed) is reported the same way, by one process or by forked workers, which
    then stop rather than be forked again and again."""
    script = textwrap.dedent(f"""
        import sys
        from mcpfast.config import load_config
        from mcpfast.preflight import StartupError
        from mcpfast.workers import run_workers
        cfg = load_config(None, {{"server.listen": "127.0.0.1:{taken}", "server.workers": int(sys.argv[1]),
                                  "backends.a.url": "http://127.0.0.1:9/mcp", "log.level": "critical"}})
        try:
            run_workers(cfg)
        except StartupError as exc:
            print("caught:", exc, file=sys.stderr)
            sys.exit(3)
    """)
    one = subprocess.run([sys.executable, "-c", script, "1"], capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV)
    assert one.returncode == 3 and "caught: server.listen (--listen)" in one.stderr and "Traceback" not in one.stderr
    two = subprocess.run([sys.executable, "-c", script, "2"], capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV)
    assert two.returncode == 2, two.stderr
    lines = two.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and all(ln.startswith("startup error: server.listen") for ln in lines), two.stderr


def test_second_demo_gives_one_line_and_leaves_nothing_running():
    port, admin = free_port(), free_port()
    args = ("demo", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}")
    first = subprocess.Popen([sys.executable, "-m", "mcpfast", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)  # fmt: skip
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while "MCP endpoint" not in seen and time.monotonic() < deadline and first.poll() is None:
            seen += first.stderr.readline()
        assert "MCP endpoint" in seen, seen
        second = _run(*args, timeout=30)
        _one_line(second, "server.listen", "--listen", f"127.0.0.1:{port}", "already in use")
        assert first.poll() is None  # the first demo is unharmed
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(15)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait(5)


def test_privileged_port_without_privilege():
    """Ports below 1024 need CAP_NET_BIND_SERVICE: run without it (setpriv drops it from
    a root test run; an ordinary user has not got it)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the privilege")
        prefix = ["setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import socket; socket.socket().bind(('127.0.0.1', 81))"],
                           capture_output=True, timeout=30)  # fmt: skip
    if probe.returncode == 0:
        pytest.skip("this system lets unprivileged processes bind port 81")
    r = subprocess.run(
        [*prefix, sys.executable, "-m", "mcpfast", "serve", "--listen", "127.0.0.1:81", "--backend", BACKEND],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV,
    )  # fmt: skip
    _one_line(r, "server.listen", "--listen", "permission denied", "below 1024")


# ---------------------------------------------------------------------------------
# check-config refuses what serve refuses


def _both(path: str, *words: str) -> None:
    """check-config and serve refuse ``path`` with the same one line."""
    check = _one_line(_run("check-config", path), *words)
    serve = _one_line(_run("serve", "--config", path), *words)
    assert check == serve


def test_no_backends(tmp_path):
    _both(_write(tmp_path, """
        [server]
        listen = "127.0.0.1:0"
    """), "backends", "none configured")  # fmt: skip


def test_listen_equal_to_admin_listen(tmp_path):
    port = free_port()
    _both(_write(tmp_path, f"""
        [server]
        listen = "127.0.0.1:{port}"
        admin_listen = "127.0.0.1:{port}"
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """), "server.admin_listen", "client listener")  # fmt: skip


def test_admin_ports_of_workers_cover_the_client_port(tmp_path):
    port = free_port()
    _both(_write(tmp_path, f"""
        [server]
        listen = "0.0.0.0:{port}"
        admin_listen = "127.0.0.1:{port - 1}"
        workers = 3
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """), "server.admin_listen", "3 workers")  # fmt: skip


def test_access_log_in_missing_directory(tmp_path):
    _both(_write(tmp_path, f"""
        [server]
        listen = "127.0.0.1:0"
        [log]
        access_log = "{tmp_path}/no/such/dir/access.log"
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """), "log.access_log", "does not exist")  # fmt: skip


def test_access_log_is_a_directory(tmp_path):
    _both(_write(tmp_path, f"""
        [server]
        listen = "127.0.0.1:0"
        [log]
        access_log = "{tmp_path}"
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """), "log.access_log", "is a directory")  # fmt: skip


def test_unreadable_session_key_file(tmp_path):
    _both(_write(tmp_path, f"""
        [server]
        listen = "127.0.0.1:0"
        [sessions]
        key_file = "{tmp_path}"
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
        [backends.b]
        url = "http://127.0.0.1:9/mcp"
        [[routes]]
        path = "/mcp"
        backends = ["a", "b"]
    """), "sessions.key_file", "cannot read")  # fmt: skip


def test_unreadable_verification_key_file(tmp_path):
    _both(_write(tmp_path, f"""
        [server]
        listen = "127.0.0.1:0"
        [auth]
        mode = "required"
        [auth.jwt]
        issuer = "https://idp.example"
        [[auth.jwt.keys]]
        public_key_file = "{tmp_path}/missing.pem"
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """), "auth.jwt.keys[0].public_key_file", "cannot read")  # fmt: skip


def test_check_config_still_prints_a_good_config(tmp_path):
    r = _run("check-config", _write(tmp_path, """
        [server]
        listen = "127.0.0.1:0"
        [cors]
        allow_origins = ["https://app.example"]
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert '"allow_origins": [\n      "https://app.example"' in r.stdout


# ---------------------------------------------------------------------------------
# TCP_NODELAY


def _nodelay(sock) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_demo_backend_listener_hands_nodelay_to_accepted_sockets():
    lst = make_listener("127.0.0.1", 0)
    try:
        c = socket.create_connection(lst.getsockname())
        conn, _ = lst.accept()
        with c, conn:
            assert _nodelay(conn)
    finally:
        lst.close()


class _TwoPieces(RawBackend):
    """Answers in two small writes with a pause between (head, then body): the pattern
    that meets a delayed ACK when Nagle is on."""

    def __init__(self) -> None:
        super().__init__("two_pieces")

    def _two_pieces(self, conn, req) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(OK_BODY))
        time.sleep(0.005)
        conn.sendall(OK_BODY)


def test_gateway_sockets_have_nodelay_and_small_pieces_relay_whole():
    be = _TwoPieces()
    try:
        with GatewayThread({"backends": {"only": {"url": be.url}}}) as gt:
            body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
            req = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Accept: application/json, text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as s:
                for _ in range(20):  # one kept-alive client connection, one pooled upstream one
                    s.sendall(req)
                    resp = read_response(s)
                    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(OK_BODY)

                def sockets():
                    pool = gt.gw.pools["only"]
                    ups = [c.transport.get_extra_info("socket") for c in pool._idle]
                    clients = [c.transport.get_extra_info("socket") for c in gt.gw.connections]
                    return [_nodelay(x) for x in ups], [_nodelay(x) for x in clients]

                ups, clients = gt.call(sockets)
                assert ups == [True] and clients == [True]
        assert be.accepted == 1 and len(be.requests) == 20
    finally:
        be.close()


def test_audit_log_in_missing_directory(tmp_path):
    _both(_write(tmp_path, f"""
        [server]
        listen = "127.0.0.1:0"
        [audit]
        sink = "{tmp_path}/no/such/dir/audit.jsonl"
        [auth]
        mode = "required"
        [[auth.api_keys.keys]]
        sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        subject = "ops"
        [backends.a]
        url = "http://127.0.0.1:9/mcp"
    """), "audit.sink", "does not exist")  # fmt: skip
