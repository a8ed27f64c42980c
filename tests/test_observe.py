"""The per-request metric families (plain counters and histograms on the loop thread)
must expose exactly what prometheus_client's own classes would."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mcpfast.observe import _GATEWAY_BUCKETS, Metrics


def _samples(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_histogram_matches_prometheus_client():
    values = [0.0, 0.00002, 0.000021, 0.0001, 0.3, 1.0, 7.0] + [i * 0.00013 for i in range(50)]
    ours = Metrics()
    bm = ours.for_backend("/mcp", "b1")
    ref_reg = CollectorRegistry()
    ref = Histogram(
        "mcpfast_gateway_duration_seconds", "x", ["backend"], buckets=_GATEWAY_BUCKETS, registry=ref_reg
    ).labels("b1")
    for v in values:
        bm.gateway.observe(v)
        ref.observe(v)
    name = "mcpfast_gateway_duration_seconds_"
    got = _samples(generate_latest(ours.registry).decode(), name)
    want = _samples(generate_latest(ref_reg).decode(), name)
    # prometheus_client also emits a _created sample; everything else must be identical.
    assert got == [w for w in want if "_created" not in w]
    n = sum(v <= 0.00002 for v in values)  # a value equal to a bound counts in that bucket
    assert f'{name}bucket{{backend="b1",le="2e-05"}} {float(n)}' in got


def test_request_counter_labels_and_cap():
    m = Metrics()
    bm = m.for_backend("/mcp", "b1")
    for _ in range(3):
        bm.count("tools/call", "echo", "ok")
    text = generate_latest(m.registry).decode()
    assert 'mcpfast_requests_total{backend="b1",method="tools/call",outcome="ok",route="/mcp",tool="echo"} 3.0' in text
    for i in range(2000):  # a client inventing tool names cannot grow the label set without bound
        bm.count("tools/call", f"t{i}", "ok")
    lines = _samples(generate_latest(m.registry).decode(), "mcpfast_requests_total")
    assert len(lines) <= 2 * 512 + 2
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines) == 2003.0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mcpfast.observe import _HTTP_METHODS, AccessLog, log_path, method_label, session_tag, tool_label  # noqa: E402

_text = st.text(max_size=40)
_raw = st.binary(max_size=40)


@settings(max_examples=400, deadline=None)
@given(
    t=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    client=_text, http=_raw, path=_raw, sid=st.none() | _raw, method=_text, tool=_text,
    backend=st.none() | _text, status=st.integers(0, 999), nbytes=st.integers(0, 2**40),
)  # fmt: skip
def test_access_log_lines_are_json_with_every_field(t, client, http, path, sid, method, tool, backend, status, nbytes):
    """Whatever a client puts in a path, a session id or a tool name, each row becomes
    exactly one line of valid JSON that reads back to the values logged (in their logged
    form: labels, the path without query values, the session id's tag)."""
    log = AccessLog("off")
    row = (t, client, http, path, sid, method, tool, backend, status, "ok", nbytes, 12, 34)
    data = log.format([row, row])
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    rec = orjson.loads(lines[0])
    assert list(rec) == list(AccessLog.FIELDS)
    assert rec["client"] == client and rec["path"] == log_path(path).decode("latin-1")
    assert rec["http"] == (http.decode("latin-1") if http in _HTTP_METHODS else "other")
    assert rec["session"] == session_tag(sid)
    assert rec["method"] == method_label(method) and rec["tool"] == tool_label(tool) and rec["backend"] == backend
    assert (rec["status"], rec["outcome"], rec["bytes"], rec["gateway_us"], rec["upstream_us"]) == (
        status, "ok", nbytes, 12, 34,
    )  # fmt: skip
    assert rec["time"].endswith("Z") and rec["time"][:4].isdigit()


def test_log_files_are_reopened_by_name_after_rotation(tmp_path):
    """What SIGHUP does: the access log and the audit log each write on to a fresh file
    at their configured path once the old one was moved away."""
    from mcpfast.policy.audit import DENIED, AuditLog

    access_path, audit_path = tmp_path / "access.log", tmp_path / "audit.log"
    access, audit = AccessLog(str(access_path)), AuditLog(str(audit_path))
    row = (0.0, "127.0.0.1", b"POST", b"/mcp", None, "tools/call", "echo", "b", 200, "ok", 1, 1, 1)
    access.rows.append(row)
    access.flush()
    audit.event(DENIED, "rule", client="127.0.0.1", method="tools/call", tool="x", status=403)
    audit.flush()
    access_path.rename(tmp_path / "access.log.1")
    audit_path.rename(tmp_path / "audit.log.1")
    access.reopen()
    audit.reopen()
    access.rows.append(row)
    access.close()
    audit.event(DENIED, "rule", client="127.0.0.1", method="tools/call", tool="y", status=403)
    audit.close()
    for new, old in ((access_path, "access.log.1"), (audit_path, "audit.log.1")):
        assert len(new.read_text().splitlines()) == 1
        assert len((tmp_path / old).read_text().splitlines()) == 1
    assert orjson.loads(audit_path.read_text())["tool"] == "y"


def test_sse_gauge_exposed_like_prometheus_client():
    m = Metrics()
    bm = m.for_backend("/mcp", "b1")
    bm.sse.inc()
    bm.sse.inc()
    bm.sse.dec()
    text = generate_latest(m.registry).decode()
    assert 'mcpfast_sse_streams_open{backend="b1"} 1.0' in text
    assert "# TYPE mcpfast_sse_streams_open gauge" in text
