"""What a hostile client can make the gateway record, and what the records may hold.

Two classes of attack, each judged by what the backend received and by the bytes the
gateway wrote:

* amplification -- megabyte-long and many distinct tool names and methods, with and
  without credentials: ``/metrics`` and the access log grow by a bounded amount per
  request, refused names never reach the backend, and nothing a client chose is
  recorded before it is authenticated;
* secrets -- a real ``mcpfast serve`` process driven with known secrets planted in every
  place a client or the configuration can put one (tokens valid and invalid, query
  strings, session ids, a backend's ``bearer_token``, a header value) on a passthrough
  and a multiplexed route: no log file, no byte of stdout or stderr and no ``/metrics``
  scrape contains any of them.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys

import orjson
import pytest
from prometheus_client import generate_latest

from gwutil import ROOT, GatewayThread, free_port, stop_process, wait_port as _wait_port
from mcpfast.mux.token import new_key_text
from mcpfast.observe import METHOD_LABELS
from rawbackend import RawBackend, post, read_response, status_of

API_KEY = "k-" + "a1" * 20
VERSION = b"2025-06-18"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _call(name: str, rid: int = 1, method: str = "tools/call") -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": {"name": name, "arguments": {}}})


def _exchange(s: socket.socket, raw: bytes) -> bytes:
    s.sendall(raw)
    resp = read_response(s)
    assert resp, "the gateway closed the connection"
    return resp


# --- amplification ------------------------------------------------------------------------


@pytest.fixture
def gated(tmp_path):
    backend = RawBackend("ok")
    access, audit = tmp_path / "access.log", tmp_path / "audit.log"
    gt = GatewayThread(
        {
            "backends": {"b": {"url": backend.url}},
            "log": {"access_log": str(access)},
            "auth": {"mode": "required", "api_keys": {"keys": [{"sha256": _sha(API_KEY), "subject": "alice"}]}},
            "authz": {"default": "allow", "rules": [{"id": "no-reads", "effect": "deny", "methods": ["resources/read"]}]},
            "ratelimit": {"limits": [{"id": "per-uri", "key": ["principal", "tool"], "rate": 1000, "burst": 1000,
                                      "methods": ["resources/subscribe"]}]},
            "audit": {"sink": str(audit)},
        }
    ).start()
    try:
        yield gt, backend, access, audit
    finally:
        gt.stop()
        backend.close()


def _flush(gt) -> None:
    gt.call(gt.gw.access.flush)
    gt.call(gt.gw.policy.audit.flush)


def _metrics(gt) -> str:
    return gt.call(lambda: generate_latest(gt.gw.metrics.registry).decode())


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


# Per access-log line: every field is bounded (path 256 bytes, names 128 characters,
# session as 12 hex digits); a line is about 300 bytes in practice.
LINE_BOUND = 1024


def test_long_and_many_names_are_bounded_before_and_after_authentication(gated):
    gt, backend, access, audit = gated
    auth = b"Authorization: Bearer %s\r\n" % API_KEY.encode()
    with socket.create_connection(("127.0.0.1", gt.port), timeout=30) as s:
        r = _exchange(s, post("/mcp", _call("echo"), auth))
        assert status_of(r) == 200
    assert len(backend.requests) == 1
    _flush(gt)
    m0 = _metrics(gt)
    n_lines0 = len(_lines(access))

    huge = "t" * (1 << 20)  # a megabyte-long name and method
    long_names = [f"{i:03d}" + "n" * (64 << 10) for i in range(100)]  # 100 distinct 64 KiB names
    valid_names = [f"tool.{i:03d}_" + "v" * 100 for i in range(100)]  # 100 distinct names of the MCP grammar
    sent = 0
    with socket.create_connection(("127.0.0.1", gt.port), timeout=30) as s:
        # Without credentials: nothing the client chose may be recorded.
        for body, want in (
            [(_call(huge), 400), (_call("x", method=huge), 400)]
            + [(_call(n), 400) for n in long_names]
            + [(_call("x", rid=i, method=n), 400) for i, n in enumerate(long_names)]
            + [(_call(n), 401) for n in valid_names]
            + [(_call("x", method="x/" + n), 401) for n in valid_names]
        ):
            r = _exchange(s, post("/mcp", body))
            assert status_of(r) == want, r[:200]
            sent += 1
    _flush(gt)
    assert len(backend.requests) == 1  # none of it reached the backend
    m1 = _metrics(gt)
    assert len(m1) - len(m0) < 4096, len(m1) - len(m0)  # a few new (method, outcome) series, no names
    for n in valid_names[:3] + long_names[:3]:
        assert n[:40] not in m1
    lines = _lines(access)[n_lines0:]
    assert len(lines) == sent
    assert max(len(line) for line in lines) <= LINE_BOUND
    for line in lines:
        rec = orjson.loads(line)
        assert rec["tool"] is None and rec["method"] in METHOD_LABELS, rec

    # With credentials: overlong names are still refused before anything sees them;
    # valid ones reach the backend and are labelled, a bounded number of times.
    n_lines1 = len(_lines(access))
    sent = 0
    with socket.create_connection(("127.0.0.1", gt.port), timeout=30) as s:
        for body, want in (
            [(_call(huge), 400), (_call("x", method=huge), 400)]
            + [(_call(n), 400) for n in long_names]
            + [(_call("x", rid=i, method=n), 400) for i, n in enumerate(long_names)]
            + [(_call(n), 200) for n in valid_names]
            + [(_call("x", method="x/" + n), 200) for n in valid_names]
        ):
            r = _exchange(s, post("/mcp", body, auth))
            assert status_of(r) == want, r[:200]
            sent += 1
        # A batch carrying one overlong name is refused whole.
        batch = b"[" + _call("echo", 1) + b"," + _call(huge, 2) + b"]"
        assert status_of(_exchange(s, post("/mcp", batch, auth))) == 400
        # A long resource URI that policy denies: the audit line is cut, not amplified.
        read = orjson.dumps({"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": "file:///" + huge}})
        assert status_of(_exchange(s, post("/mcp", read, auth))) == 403
        # Long URIs allowed through: the policy's decision memo and rate-limit table
        # keep no long keys.
        for i, n in enumerate(long_names[:20]):
            sub = orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "resources/subscribe", "params": {"uri": n}})
            assert status_of(_exchange(s, post("/mcp", sub, auth))) == 200
        sent += 22
    _flush(gt)
    got = [orjson.loads(body) for _, body in backend.requests[1:]]
    assert [g["params"]["name"] for g in got[:100]] == valid_names
    assert [g["method"] for g in got[100:200]] == ["x/" + n for n in valid_names]
    assert [g["params"]["uri"] for g in got[200:]] == long_names[:20]
    assert len(got) == 220  # not one refused message arrived
    policy = gt.gw.policy
    assert all(k[2] is None or len(k[2]) <= 512 for k in policy.authz._memo)
    assert sum(len(str(k)) for lim in policy.limiter.limits for k in lim.table) < 20 * 1024
    m2 = _metrics(gt)
    for n in valid_names:
        assert f'tool="{n}"' in m2  # recorded after authentication
    assert len(m2) - len(m1) < 100 * 300 + 4096, len(m2) - len(m1)
    assert max(len(line) for line in m2.splitlines()) < 1024
    lines = _lines(access)[n_lines1:]
    assert len(lines) == sent
    assert max(len(line) for line in lines) <= LINE_BOUND
    methods = {orjson.loads(line)["method"] for line in lines}
    assert methods <= METHOD_LABELS and "other" in methods and "invalid" in methods
    audit_lines = _lines(audit)
    assert audit_lines and max(len(line) for line in audit_lines) < 1024
    assert any(orjson.loads(a)["method"] == "resources/read" for a in audit_lines)


def test_query_values_and_session_ids_stay_out_of_the_access_log(gated):
    gt, backend, access, _ = gated
    auth = b"Authorization: Bearer %s\r\n" % API_KEY.encode()
    sid = b"Mcp-Session-Id: SIDVALUE\r\n"
    with socket.create_connection(("127.0.0.1", gt.port), timeout=10) as s:
        r = _exchange(s, post("/mcp?api_key=QVALUE1&x=QVALUE2&QVALUE3", _call("echo"), auth))
        assert status_of(r) == 200
        _exchange(s, post("/mcp?v=QVALUE5", _call("echo"), auth + sid))
        r = _exchange(s, post("/mcp?access_token=QVALUE4", _call("echo"), sid))
        assert status_of(r) == 400  # a token in the query string is refused ...
    _flush(gt)
    # ... and the backend got the query as sent (the gateway changes only what it logs).
    assert backend.requests[0][0].split(b" ")[1] == b"/mcp?api_key=QVALUE1&x=QVALUE2&QVALUE3"
    text = access.read_bytes()
    for secret in (b"QVALUE", b"SIDVALUE"):
        assert secret not in text
    a, b, c = (orjson.loads(line) for line in text.splitlines())
    assert a["path"] == "/mcp?api_key=<redacted>&x=<redacted>&<redacted>"
    assert c["path"] == "/mcp?access_token=<redacted>"
    assert b["session"] == c["session"] and len(b["session"]) == 12  # correlates, reveals nothing


# --- no secret in any output ------------------------------------------------------------------






def _session_of(resp: bytes) -> bytes | None:
    for line in resp.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"mcp-session-id":
            return v.strip()
    return None


def _get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n" % (path.encode(), extra)


def _delete(path: str, extra: bytes = b"") -> bytes:
    return b"DELETE %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (path.encode(), extra)


def test_no_secret_reaches_a_log_stdout_stderr_or_metrics(tmp_path):
    """Every secret planted in the traffic or the configuration is searched for in every
    byte the gateway process wrote about it."""
    valid_key = "VALIDKEY" + "7" * 24
    other_key = "OTHERKEY" + "8" * 24
    backend_token = "BACKENDTOKEN" + "9" * 20
    header_secret = "HEADERSECRET" + "6" * 20
    secrets = {
        "valid bearer": valid_key, "other bearer": other_key, "invalid bearer": "BADTOKEN" + "5" * 24,
        "jwt-like": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.SIGNATURESECRET4",
        "query token": "QUERYTOKEN" + "4" * 20, "query api key": "QUERYAPIKEY" + "3" * 20,
        "bare query": "BAREQUERY" + "2" * 20, "api-key header": "HDRKEY" + "1" * 24,
        "backend bearer_token": backend_token, "backend header": header_secret,
        "made-up session": "MADEUPSESSION" + "0" * 20,
    }  # fmt: skip
    passthrough, alpha, beta = RawBackend("mux"), RawBackend("mux"), RawBackend("mux")
    for b in (passthrough, alpha, beta):
        b.sid_prefix = b"BACKENDSESSION-" + b"x" * 16 + b"-"
    secrets["backend session"] = "BACKENDSESSION-"
    port, admin = free_port(), free_port()
    access, audit = tmp_path / "access.log", tmp_path / "audit.log"
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
[log]
access_log = "{access}"
level = "debug"
[sessions]
key = "{new_key_text()}"
[auth]
mode = "required"
[auth.api_keys]
header = "X-API-Key"
[[auth.api_keys.keys]]
sha256 = "{_sha(valid_key)}"
subject = "alice"
[[auth.api_keys.keys]]
sha256 = "{_sha(other_key)}"
subject = "bob"
[authz]
default = "allow"
[[authz.rules]]
id = "no-shell"
effect = "deny"
tools = ["shell"]
[audit]
sink = "{audit}"
[backends.plain]
url = "{passthrough.url}"
bearer_token = "{backend_token}"
[backends.alpha]
url = "{alpha.url}"
[backends.alpha.headers]
X-Backend-Secret = "{header_secret}"
[backends.beta]
url = "{beta.url}"
[[routes]]
path = "/mcp"
backends = ["plain"]
[[routes]]
path = "/mux"
backends = ["alpha", "beta"]
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpfast", "serve", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_port(port)
        _wait_port(admin)
        alice = b"Authorization: Bearer %s\r\n" % valid_key.encode()
        bob = b"Authorization: Bearer %s\r\n" % other_key.encode()
        ver = b"MCP-Protocol-Version: %s\r\n" % VERSION
        init = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                             "params": {"protocolVersion": VERSION.decode(), "capabilities": {}}})  # fmt: skip
        statuses = []
        sids = {}
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:

            def ex(raw: bytes) -> bytes:
                r = _exchange(s, raw)
                statuses.append(status_of(r))
                return r

            for route in ("/mcp", "/mux"):
                r = ex(post(route, init, alice))
                assert status_of(r) == 200, r
                sids[route] = _session_of(r)
                sh = b"Mcp-Session-Id: %s\r\n" % sids[route]
                tool = "echo" if route == "/mcp" else "alpha__echo"
                assert status_of(ex(post(route, _call(tool), alice + sh + ver))) == 200
                # Tokens and keys in the query string, with and without valid credentials.
                for q in (f"?access_token={secrets['query token']}", f"?api_key={secrets['query api key']}",
                          f"?{secrets['bare query']}", f"?token={secrets['query token']}&a=1"):  # fmt: skip
                    ex(post(route + q, _call(tool), alice + sh + ver))
                    ex(post(route + q, _call(tool)))
                # Invalid, malformed and other principals' credentials.
                for cred in (b"Authorization: Bearer %s\r\n" % secrets["invalid bearer"].encode(),
                             b"Authorization: Bearer %s\r\n" % secrets["jwt-like"].encode(),
                             b"X-API-Key: %s\r\n" % secrets["api-key header"].encode(),
                             b"Authorization: Basic %s\r\n" % secrets["invalid bearer"].encode()):  # fmt: skip
                    assert ex(post(route, _call(tool), cred + sh + ver)).split(b" ")[1] in (b"401", b"400")
                # Another principal holding this session: refused and audited.
                assert status_of(ex(post(route, _call(tool), bob + sh + ver))) in (403, 404)
                # A made-up session id, a denied tool (audited with the session), a GET
                # stream refused, a DELETE.
                made_up = b"Mcp-Session-Id: %s\r\n" % secrets["made-up session"].encode()
                ex(post(route, _call(tool), alice + made_up + ver))
                ex(post(route, _call("shell" if route == "/mcp" else "alpha__shell"), alice + sh + ver))
                ex(post(route, _call(tool), made_up + ver))
                ex(_get(route + f"?api_key={secrets['query api key']}", made_up))
                ex(_delete(route, alice + sh + ver))
                ex(_delete(route, alice + sh + ver))  # the session is gone: the same id once more
            # Unknown paths and an unknown method, with secrets in them.
            ex(post(f"/nowhere?token={secrets['query token']}", _call("echo"), alice))
            ex(b"BREW /mcp?api_key=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % secrets["query api key"].encode())
        assert 200 in statuses and 401 in statuses and 403 in statuses
        # The backends did get what they must: the configured credentials, the sessions.
        head0 = passthrough.requests[0][0]
        assert b"Authorization: Bearer " + backend_token.encode() in head0
        assert any(header_secret.encode() in h for h, _ in alpha.requests)
        with socket.create_connection(("127.0.0.1", admin), timeout=10) as s:
            metrics = _exchange(s, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"mcpfast_requests_total" in metrics
    finally:
        out, err = stop_process(proc, 20)
        for b in (passthrough, alpha, beta):
            b.close()
    assert proc.returncode == 0, err[-2000:]
    outputs = {
        "access log": access.read_bytes(),
        "audit log": audit.read_bytes(),
        "stdout": out,
        "stderr": err,
        "/metrics": metrics,
    }
    assert len(outputs["access log"].splitlines()) >= len(statuses)
    assert outputs["audit log"].count(b"\n") >= 10 and outputs["stderr"]
    # The sessions the gateway issued (a backend's on the passthrough route, a sealed
    # token on the multiplexed one) are credentials as well.
    secrets |= {f"session {r}": v.decode() for r, v in sids.items()}
    secrets["API key sha256"] = _sha(valid_key)
    for where, data in outputs.items():
        for what, secret in secrets.items():
            assert secret.encode() not in data, f"{what} found in {where}"
    # What the logs do say: query keys, and the sessions as tags that correlate.
    recs = [json.loads(line) for line in outputs["access log"].splitlines()]
    assert any(r["path"] == "/mcp?api_key=<redacted>" for r in recs)
    tags = {r["session"] for r in recs if r["session"] is not None}
    assert tags and all(len(t) == 12 for t in tags)
    events = [json.loads(line) for line in outputs["audit log"].splitlines()]
    assert {e["event"] for e in events} >= {"auth_failure", "denied", "session_refused"}
    assert any(e["session"] in tags for e in events)  # audit and access lines correlate



def test_check_config_shows_no_backend_secret(tmp_path):
    """The effective configuration an operator prints (and may paste into a ticket):
    backend credentials, the session key and a backend URL's query values are hidden."""
    from click.testing import CliRunner

    from mcpfast.cli import main

    f = tmp_path / "gw.toml"
    f.write_text(
        f'[sessions]\nkey = "{new_key_text()}"\n'
        '[backends.a]\nurl = "http://127.0.0.1:1/mcp?apikey=URLSECRET&v=2"\nbearer_token = "BEARERSECRET"\n'
        '[backends.b]\nurl = "http://127.0.0.1:2/mcp"\n[backends.b.headers]\nX-K = "HDRSECRET"\n'
        '[[routes]]\npath = "/mcp"\nbackends = ["a", "b"]\n'
    )
    r = CliRunner().invoke(main, ["check-config", str(f)])
    assert r.exit_code == 0, r.output
    for secret in ("URLSECRET", "BEARERSECRET", "HDRSECRET", f.read_text().split('"')[1]):
        assert secret not in r.output
    assert json.loads(r.output)["backends"]["a"]["url"] == "http://127.0.0.1:1/mcp?apikey=<redacted>&v=<redacted>"
