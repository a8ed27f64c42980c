"""The per-request metric families (plain counters and histograms on the loop thread)
must expose exactly what prometheus_client's own classes would."""

from __future__ import annotations

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
