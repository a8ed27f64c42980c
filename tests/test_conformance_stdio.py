"""The official MCP conformance suite through the gateway to the conformance fixture run as
a stdio backend: the gateway must not lose a check that passes against the fixture itself.

Theory of operation: the suite speaks only Streamable HTTP, so the reference is the fixture
(``tests/fixtures/conformance_server.py``, the real Python SDK) served over HTTP and tested
directly; the subject is the same server code run with ``--transport stdio`` as a child of
an in-process gateway, in both stdio modes: ``per_session`` (route ``/mcp``, a child per
client session) and ``shared`` (route ``/shared``, one child for every session). One
module-scoped gateway, one suite run per target (the helpers and the scenario list are
those of ``tests/conformance.py`` and ``tests/test_conformance.py``).

The SSE-stream checks of SEP-1699 (priming event, ``retry:``, closing the stream mid-call
and resuming with ``Last-Event-ID``, several answer streams at once) hold too: a stdio
child's messages carry no event ids, so the gateway numbers and records them itself for a
2025-11-25 client, and the backends here are configured with ``poll_after`` so that a
call still running after 50 ms has its stream closed and is resumed, which is what the
suite's ``test_reconnection`` tool asks of a server. ``STDIO_GAPS`` lists what is lost
with the reason, check by check, and is exact both ways (a listed check that starts
passing fails the test); it is empty.

Everything -- the DNS-rebinding checks included, which the gateway answers itself at its
own HTTP front -- passes through the gateway over stdio as it does directly.

No suite (no npm, no network): skipped with the installer's reason, or failed when
``MCPFAST_REQUIRE_CONFORMANCE=1``. ``MCPFAST_CONFORMANCE_REPORT=path.json`` writes the three
result sets there. Runtime: about 30 s, most of it the per-session mode starting a Python
child (~0.8 s) for each of the suite's client sessions.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import conformance as cf
import httpx
import pytest
from gwutil import GatewayThread
from test_conformance import DIRECT_GAPS, DIRECT_MUST_PASS, RUN_TIMEOUT, _describe, _verdicts

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(900)]
pytest.importorskip("mcpfast.transport.stdio", reason="stdio backend not merged yet")

MODES = {"per_session": "/mcp", "shared": "/shared"}

# "scenario/check-id" -> why it cannot pass over stdio (it passes directly).  None now.
STDIO_GAPS: dict[str, str] = {}


def _stdio_backend(mode: str) -> dict:
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(cf.FIXTURE), "--transport", "stdio"],
        "cwd": str(cf.ROOT),
        "mode": mode,
        "max_processes": 32,
        "spawn_rate": 50.0,
        "poll_after": 0.05,
    }


@pytest.fixture(scope="module")
def launcher():
    return cf.require_suite()


@pytest.fixture(scope="module")
def gateway(launcher):
    cfg = {
        "backends": {f"conf_{m}": _stdio_backend(m) for m in MODES},
        "routes": [{"path": path, "backends": [f"conf_{m}"]} for m, path in MODES.items()],
    }
    with GatewayThread(cfg) as gt:
        yield gt


@pytest.fixture(scope="module")
def runs(launcher, gateway):
    with cf.start_fixture() as (_proc, backend_url):
        result = {"direct": cf.run_suite(backend_url, RUN_TIMEOUT, launcher=launcher)}
    for mode, path in MODES.items():
        result[mode] = cf.run_suite(gateway.url(path), RUN_TIMEOUT, launcher=launcher)
    if report := os.environ.get("MCPFAST_CONFORMANCE_REPORT"):
        with open(report, "w") as f:
            json.dump(result, f, indent=1)
    return result


def test_suite_ran_every_scenario(runs):
    expected = set(DIRECT_MUST_PASS) | set(DIRECT_GAPS)
    for label, r in runs.items():
        assert not r["timed_out"], f"{label} suite run exceeded {RUN_TIMEOUT}s:\n{r['output'][-3000:]}"
        assert set(r["scenarios"]) == expected, (
            f"{label}: not run {sorted(expected - set(r['scenarios']))}, new {sorted(set(r['scenarios']) - expected)}"
        )


def test_direct_reference_passes(runs):
    """The comparison means something only if the fixture passes directly."""
    direct = runs["direct"]
    broken = [
        _describe(s, direct["scenarios"].get(s, {}))
        for s in DIRECT_MUST_PASS
        if not _verdicts(direct["scenarios"].get(s, {}))
        or any(c["status"] != "SUCCESS" for c in _verdicts(direct["scenarios"][s]).values())
    ]
    assert not broken, "the fixture fails directly:\n" + "\n".join(broken)
    assert set(STDIO_GAPS) <= cf.outcomes(direct, "SUCCESS"), "a listed gap does not even pass directly"


@pytest.mark.parametrize("mode", MODES)
def test_gateway_over_stdio_loses_no_check(runs, mode):
    """Every check passing directly passes through the gateway over stdio, except the listed
    gaps -- and each listed gap is really lost (the list stays exact)."""
    lost = {line.split(":", 1)[0]: line for line in cf.compare(runs["direct"], runs[mode])}
    unexpected = [line for key, line in sorted(lost.items()) if key not in STDIO_GAPS]
    assert not unexpected, (
        f"{len(unexpected)} check(s) pass directly but not through the gateway over stdio ({mode}):\n  "
        + "\n  ".join(unexpected)
        + "\n\ndirect:\n"
        + cf.format_summary(runs["direct"])
        + f"\n\nthrough the gateway ({mode}):\n"
        + cf.format_summary(runs[mode])
    )
    now_passing = sorted(set(STDIO_GAPS) - set(lost))
    assert not now_passing, f"listed as gaps but passing over stdio ({mode}); drop them from STDIO_GAPS: {now_passing}"
    failures = cf.outcomes(runs[mode], "FAILURE") | cf.outcomes(runs[mode], "WARNING")
    assert not failures, f"through the gateway ({mode}): {sorted(failures)}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", DIRECT_MUST_PASS + sorted(DIRECT_GAPS))
def test_scenario(runs, mode, scenario):
    """One scenario over one stdio mode: what passes directly passes here, gaps aside."""
    direct = runs["direct"]["scenarios"].get(scenario)
    through = runs[mode]["scenarios"].get(scenario)
    assert direct is not None and through is not None, f"{scenario} did not run (direct: {direct is not None})"
    lost = [
        line
        for line in cf.compare({"scenarios": {scenario: direct}}, {"scenarios": {scenario: through}})
        if line.split(":", 1)[0] not in STDIO_GAPS
    ]
    assert not lost, (
        "lost through the gateway over stdio:\n  " + "\n  ".join(lost) + "\n" + _describe(scenario, through)
    )


HEADERS = {"Accept": "text/event-stream, application/json", "Content-Type": "application/json"}


def _session(h: httpx.Client, url: str) -> dict:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = h.post(url, json=init, headers=HEADERS)
    assert r.status_code == 200, r.text
    hdrs = {**HEADERS, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    assert h.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs).status_code == 202
    return hdrs


def _events(text: str) -> list[tuple[str | None, str | None, str]]:
    """(id, retry, data) of each event of an event stream body."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in block.splitlines())
        out.append((fields.get("id"), fields.get("retry"), fields.get("data", "")))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_reconnection_as_the_suite_does_it(gateway, mode):
    """``test_reconnection`` sent as the suite sends it (its stale ``MCP-Protocol-Version:
    2025-03-26`` included): a priming event with an id and ``retry:``, the stream closed
    before the result (``poll_after``), and the result on a ``GET`` with the last id; and
    three concurrent ``tools/list`` each answered as an event stream."""
    url = gateway.url(MODES[mode])
    with httpx.Client(timeout=30) as h:
        hdrs = {**_session(h, url), "MCP-Protocol-Version": "2025-03-26"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "test_reconnection", "arguments": {}}}
        r = h.post(url, json=call, headers=hdrs)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        events = _events(r.text)
        assert events[0][0] and events[0][1] == "1000" and events[0][2] == ""
        assert not any('"result"' in data for _, _, data in events), "the stream should end before the result"
        r = h.get(url, headers={**hdrs, "Last-Event-ID": events[-1][0]})
        assert r.status_code == 200, r.text
        msg = json.loads(_events(r.text)[-1][2])
        assert msg["id"] == 1 and msg["result"]["content"][0]["text"].startswith("Reconnection test completed successfully.")

        def tools_list(i: int) -> dict:
            body = {"jsonrpc": "2.0", "id": 1000 + i, "method": "tools/list", "params": {}}
            r = h.post(url, json=body, headers=hdrs)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
            return json.loads(_events(r.text)[-1][2])

        with ThreadPoolExecutor(3) as pool:
            lists = list(pool.map(tools_list, range(3)))
        for i, got in enumerate(lists):
            assert got["id"] == 1000 + i and "test_reconnection" in {t["name"] for t in got["result"]["tools"]}
        h.delete(url, headers=hdrs)
