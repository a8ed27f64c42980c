"""The official MCP conformance suite, server scenarios, straight at a fixture backend and
through the gateway: mcpfast must not lose a single check that passes directly.

Theory of operation: ``tests/fixtures/conformance_server.py`` (the real Python SDK) is the
backend; it exposes the fixed tool, resource and prompt names the suite's server scenarios
call. One module-scoped fixture starts it as a subprocess (ended by its PID), puts an
in-process gateway in front of it, and runs every server scenario of the pinned suite
(``npm @modelcontextprotocol/conformance``, installed with Node 22 by
``.ci/install-node.sh`` into ``.ci/node/``) twice: at the backend's URL and at the
gateway's. The tests then read the two result sets:

* every scenario in ``DIRECT_MUST_PASS`` passes directly, so a broken fixture or SDK
  upgrade fails loudly here instead of quietly shrinking what the gateway is held to;
* nothing that passes directly fails, warns or goes missing through the gateway;
* one test per scenario, so the report shows each scenario's verdict by name.

What fails directly, and why. With ``mcp`` 2.3.0 and suite 0.1.16 nothing does: all 32
server scenarios, 47 checks, pass. ``DIRECT_GAPS`` below is where a scenario goes when a
future SDK or suite cannot pass it, with the reason; those are then not held against the
gateway either (nothing to lose). One scenario passes only thanks to a fixture shim:

* ``server-sse-polling`` sends its raw tools/call and resuming GET with
  ``MCP-Protocol-Version: 2025-03-26`` inside a session that negotiated 2025-11-25. The
  Python SDK decides from that header alone whether to send the SSE priming event and
  whether a tool may close its stream mid-call, so without the fixture's
  ``SessionVersionShim`` it does neither: the scenario reports 2 warnings
  (``server-sse-priming-event``, ``server-sse-retry-field``), 0 passes, and the
  resumption path (priming, early close, ``GET`` + ``Last-Event-ID`` replay) goes
  untested through the gateway. ``--no-version-shim`` on the fixture shows this.

No suite available (no npm, no network): the tests skip with the installer's reason, or
fail when ``MCPFAST_REQUIRE_CONFORMANCE=1`` (for CI, where a skip would hide the check).
``MCPFAST_CONFORMANCE_REPORT=path.json`` writes both result sets there for inspection.
Runtime: about 6 s once installed (a first install adds ~10 s of download).
"""

from __future__ import annotations

import json
import os
import time

import conformance as cf
import pytest
from gwutil import GatewayThread

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(900)]

# Every server scenario of suite 0.1.16 (``conformance list --server``). Each must pass
# directly with every verdict SUCCESS; move one to DIRECT_GAPS (with the reason) only when
# the SDK genuinely cannot pass it.
DIRECT_MUST_PASS = [
    "server-initialize",
    "logging-set-level",
    "ping",
    "completion-complete",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-logging",
    "tools-call-error",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
    "json-schema-2020-12",
    "elicitation-sep1034-defaults",
    "server-sse-polling",
    "server-sse-multiple-streams",
    "elicitation-sep1330-enums",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
    "dns-rebinding-protection",
]

# Scenarios that do not fully pass directly: {scenario: why}. Empty for mcp 2.3.0 with
# suite 0.1.16 (see the module docstring for the one that needs a fixture shim).
DIRECT_GAPS: dict[str, str] = {}

RUN_TIMEOUT = 180.0  # seconds per suite run; a healthy run takes ~3 s


def _verdicts(checks: dict) -> dict[str, dict]:
    """The checks that are verdicts (INFO entries only log the exchange)."""
    return {cid: c for cid, c in checks.items() if c["status"] != "INFO"}


def _describe(scenario: str, checks: dict) -> str:
    return "\n".join(
        f"  {scenario}/{cid}: {c['status']}" + (f" ({c['error']})" if c.get("error") else "")
        for cid, c in _verdicts(checks).items()
    ) or f"  {scenario}: no verdicts"


@pytest.fixture(scope="module")
def runs():
    launcher = cf.require_suite()
    started = time.monotonic()
    with cf.start_fixture() as (_proc, backend_url):
        direct = cf.run_suite(backend_url, RUN_TIMEOUT, launcher=launcher)
        with GatewayThread({"backends": {"conformance": {"url": backend_url}}}) as gt:
            through = cf.run_suite(gt.url(), RUN_TIMEOUT, launcher=launcher)
    result = {"direct": direct, "gateway": through, "wall_s": round(time.monotonic() - started, 2)}
    if path := os.environ.get("MCPFAST_CONFORMANCE_REPORT"):
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def test_suite_ran_every_scenario(runs):
    for label in ("direct", "gateway"):
        r = runs[label]
        assert not r["timed_out"], f"{label} suite run exceeded {RUN_TIMEOUT}s:\n{r['output'][-3000:]}"
        ran = set(r["scenarios"])
        expected = set(DIRECT_MUST_PASS) | set(DIRECT_GAPS)
        assert ran == expected, (
            f"{label}: the suite (v{r['suite_version']}) ran a different scenario set; "
            f"not run: {sorted(expected - ran)}, new: {sorted(ran - expected)} "
            "(a new suite version? update DIRECT_MUST_PASS / DIRECT_GAPS)"
        )


def test_direct_baseline(runs):
    """Every scenario the fixture is built for passes straight at the backend."""
    direct = runs["direct"]
    broken = []
    for scenario in DIRECT_MUST_PASS:
        checks = direct["scenarios"].get(scenario, {})
        verdicts = _verdicts(checks)
        if not verdicts or any(c["status"] != "SUCCESS" for c in verdicts.values()):
            broken.append(_describe(scenario, checks))
    assert not broken, (
        "the conformance fixture fails scenarios it is meant to pass directly "
        "(a fixture or SDK regression, not the gateway):\n" + "\n".join(broken) + "\n\n" + cf.format_summary(direct)
    )


def test_gateway_loses_no_check(runs):
    """Every check that passes at the backend passes through mcpfast too."""
    lost = cf.compare(runs["direct"], runs["gateway"])
    assert not lost, (
        f"{len(lost)} check(s) pass directly but not through the gateway:\n  "
        + "\n  ".join(lost)
        + "\n\ndirect:\n"
        + cf.format_summary(runs["direct"])
        + "\n\nthrough the gateway:\n"
        + cf.format_summary(runs["gateway"])
    )


@pytest.mark.parametrize("scenario", DIRECT_MUST_PASS + sorted(DIRECT_GAPS))
def test_scenario(runs, scenario):
    """One scenario: its direct verdicts, and the same or better through the gateway."""
    direct = runs["direct"]["scenarios"].get(scenario)
    through = runs["gateway"]["scenarios"].get(scenario)
    assert direct is not None, f"{scenario} did not run directly"
    assert through is not None, f"{scenario} did not run through the gateway"
    if scenario not in DIRECT_GAPS:
        verdicts = _verdicts(direct)
        failing = not verdicts or any(c["status"] != "SUCCESS" for c in verdicts.values())
        assert not failing, f"{scenario} fails directly:\n{_describe(scenario, direct)}"
    lost = cf.compare({"scenarios": {scenario: direct}}, {"scenarios": {scenario: through}})
    assert not lost, (
        "lost through the gateway:\n  " + "\n  ".join(lost) + "\nthrough the gateway:\n" + _describe(scenario, through)
    )
