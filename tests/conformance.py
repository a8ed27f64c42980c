"""Run the official MCP conformance suite against a URL and read back every check.

Theory of operation: the suite (npm ``@modelcontextprotocol/conformance``, Node >= 22) is
installed by ``.ci/install-node.sh`` into ``.ci/node/``; that script also writes the
launcher ``.ci/node/conformance``, which runs the suite's CLI on the Node installed beside
it. ``conformance server --url URL --suite all -o DIR`` runs every server scenario one after
another, each with fresh TS-SDK client connections, and writes one
``DIR/server-<scenario>-<ISO timestamp>/checks.json`` per scenario: a JSON array of checks
``{id, name, description, status, errorMessage?, details?, ...}`` where ``status`` is
SUCCESS, FAILURE, WARNING, SKIPPED or INFO (INFO entries are a log of the exchange, not
verdicts). A scenario that throws writes no file; it only shows in the closing
``=== SUMMARY ===`` lines on stdout (``✓|✗ <scenario>: N passed, M failed``), so both
are read and a scenario without a file becomes one synthetic FAILURE.

Everything is bounded: the install, the fixture's start, and the suite run each have a
timeout; processes started here are ended by PID.

    result = run_suite("http://127.0.0.1:PORT/mcp")
    result["scenarios"]["tools-list"]["tools-list"]["status"]  # -> "SUCCESS"
    compare(direct, through)  # checks that pass directly but not through a gateway
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = ROOT / ".ci" / "install-node.sh"
LAUNCHER = ROOT / ".ci" / "node" / "conformance"
FIXTURE = ROOT / "tests" / "fixtures" / "conformance_server.py"

# Precedence when one scenario reports the same check id more than once.
_RANK = {"FAILURE": 4, "WARNING": 3, "SUCCESS": 2, "SKIPPED": 1, "INFO": 0}
_SUMMARY_LINE = re.compile(r"^[\u2713\u2717] (\S+): (\d+) passed, (\d+) failed")
_RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


# --- the suite ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def suite_status(timeout: float = 600.0) -> tuple[Path | None, str]:
    """``(launcher, "")`` when the suite can run here, else ``(None, reason)``.

    Runs ``.ci/install-node.sh`` (a no-op taking milliseconds once installed; a first
    install fetches ~240 MB from the npm registry). Cached for the process.
    """
    if not INSTALL_SCRIPT.exists():
        return None, f"{INSTALL_SCRIPT} is missing"
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        return None, f"cannot run bash: {exc}"
    except subprocess.TimeoutExpired:
        return None, f"{INSTALL_SCRIPT.name} did not finish within {timeout:.0f}s"
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        return None, f"{INSTALL_SCRIPT.name} exited {proc.returncode}: {tail}"
    if not os.access(LAUNCHER, os.X_OK):
        return None, f"{INSTALL_SCRIPT.name} succeeded but {LAUNCHER} is not executable"
    return LAUNCHER, ""


def ensure_suite() -> Path | None:
    """The conformance launcher, installing Node 22 and the suite first if needed; ``None``
    if they cannot be had (``suite_status()[1]`` says why)."""
    return suite_status()[0]


def not_available(reason: str) -> None:
    """In a test: skip with ``reason`` (loudly: it says what was NOT RUN), or fail when
    ``MCPFAST_REQUIRE_CONFORMANCE`` is set (CI, where a skip would hide the check)."""
    import pytest

    if os.environ.get("MCPFAST_REQUIRE_CONFORMANCE", "") not in ("", "0"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_suite() -> Path:
    """In a test: the conformance launcher, or a skip / failure (``not_available``)."""
    launcher = ensure_suite()
    if launcher is None:
        not_available(f"MCP conformance suite unavailable, NOT RUN: {suite_status()[1]}")
    return launcher  # type: ignore[return-value]


def suite_version(launcher: Path = LAUNCHER) -> str:
    pkg = launcher.parent / "node_modules" / "@modelcontextprotocol" / "conformance" / "package.json"
    try:
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def list_scenarios(launcher: Path | None = None, timeout: float = 60.0) -> list[str]:
    """Every server scenario name the installed suite knows (what ``--suite all`` runs)."""
    launcher = launcher or ensure_suite()
    if launcher is None:
        raise RuntimeError(f"conformance suite unavailable: {suite_status()[1]}")
    proc = subprocess.run(
        [str(launcher), "list", "--server"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return re.findall(r"^\s+- (\S+)", proc.stdout, re.M)


# --- the fixture backend -----------------------------------------------------------------


def _end(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End a process we started, by its PID: SIGTERM, then SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


@contextlib.contextmanager
def start_fixture(*extra_args: str, timeout: float = 30.0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``tests/fixtures/conformance_server.py`` on a free 127.0.0.1 port.

    Yields ``(proc, url)`` once it printed ``READY <url>``; ends it on exit. Its stderr goes
    to a temporary file, shown in the error if it dies before it is ready.
    """
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, str(FIXTURE), "--port", "0", *extra_args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            url = _await_ready(proc, timeout)
            if url is None:
                err.seek(0)
                raise RuntimeError(
                    f"conformance fixture not ready within {timeout:.0f}s "
                    f"(exit code {proc.poll()}):\n{err.read()[-3000:]}"
                )
            # Keep draining stdout so a chatty server can never block on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
            yield proc, url
        finally:
            _end(proc)


def _await_ready(proc: subprocess.Popen[str], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if not line:  # EOF: the process died
                return None
            if line.startswith("READY "):
                return line.split(None, 1)[1].strip()
    return None


# --- running the suite and reading its results --------------------------------------------


def run_suite(
    url: str,
    timeout: float = 300.0,
    *,
    scenarios: list[str] | None = None,
    suite: str = "all",
    launcher: Path | None = None,
) -> dict[str, Any]:
    """Run the suite's server scenarios against ``url`` and return every check.

    ``suite="all"`` includes the scenarios the suite marks *pending*; ``scenarios`` runs
    just those names instead (one CLI run each). Returns::

        {"url", "suite_version", "returncode", "timed_out", "duration_s", "output",
         "scenarios": {scenario: {check_id: {"status", "name", "description", "error"}}},
         "totals": {"scenarios", "checks", "passed", "failed", "warnings"}}

    ``checks`` counts SUCCESS + FAILURE, the suite's own denominator. On a timeout the
    suite is ended and what it finished is returned with ``timed_out`` set.
    """
    launcher = launcher or ensure_suite()
    if launcher is None:
        raise RuntimeError(f"conformance suite unavailable: {suite_status()[1]}")
    runs = [["--scenario", s] for s in scenarios] if scenarios else [["--suite", suite]]
    started = time.monotonic()
    deadline = started + timeout
    result: dict[str, Any] = {"url": url, "suite_version": suite_version(launcher), "timed_out": False}
    output: list[str] = []
    summary: set[str] = set()
    parsed: dict[str, dict[str, dict[str, Any]]] = {}
    rc = 0
    with tempfile.TemporaryDirectory(prefix="mcp-conformance-") as out_dir:
        for args in runs:
            left = deadline - time.monotonic()
            if left <= 0:
                result["timed_out"] = True
                break
            proc = subprocess.Popen(
                [str(launcher), "server", "--url", url, *args, "-o", out_dir],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "NO_COLOR": "1"},
            )
            try:
                text, _ = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                _end(proc)
                text, _ = proc.communicate()
                result["timed_out"] = True
            output.append(text)
            rc = rc or proc.returncode
            for line in text.splitlines():
                if m := _SUMMARY_LINE.match(line):
                    summary.add(m.group(1))
            if args[0] == "--scenario" and not result["timed_out"]:
                summary.add(args[1])  # single-scenario runs print no summary
        parsed = _read_results(Path(out_dir))
    for name in summary - parsed.keys():
        # The scenario threw before it could write checks.json.
        parsed[name] = {
            name: {"status": "FAILURE", "name": name, "description": "scenario ran", "error": "scenario threw; see output"}
        }
    result["returncode"] = rc
    result["duration_s"] = round(time.monotonic() - started, 2)
    result["output"] = "".join(output)
    result["scenarios"] = dict(sorted(parsed.items()))
    result["totals"] = _totals(result["scenarios"])
    return result


def _read_results(out_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    scenarios: dict[str, dict[str, dict[str, Any]]] = {}
    for d in sorted(out_dir.iterdir()):
        m = _RESULT_DIR.match(d.name)
        if not m or not (d / "checks.json").is_file():
            continue
        checks = scenarios.setdefault(m.group(1), {})
        for c in json.loads((d / "checks.json").read_text()):
            entry = {
                "status": c.get("status", "FAILURE"),
                "name": c.get("name", ""),
                "description": c.get("description", ""),
                "error": c.get("errorMessage"),
            }
            old = checks.get(c["id"])
            if old is None or _RANK.get(entry["status"], 4) > _RANK.get(old["status"], 4):
                checks[c["id"]] = entry
    return scenarios


def _totals(scenarios: dict[str, dict[str, dict[str, Any]]]) -> dict[str, int]:
    statuses = [c["status"] for checks in scenarios.values() for c in checks.values()]
    passed, failed = statuses.count("SUCCESS"), statuses.count("FAILURE")
    return {
        "scenarios": len(scenarios),
        "checks": passed + failed,
        "passed": passed,
        "failed": failed,
        "warnings": statuses.count("WARNING"),
    }


def outcomes(result: dict[str, Any], status: str) -> set[str]:
    """``"scenario/check-id"`` for every check with ``status``."""
    return {
        f"{scenario}/{check_id}"
        for scenario, checks in result["scenarios"].items()
        for check_id, check in checks.items()
        if check["status"] == status
    }


def compare(direct: dict[str, Any], through: dict[str, Any]) -> list[str]:
    """Every check that passes directly but not through (e.g. the gateway), one line each:
    ``"scenario/check-id: SUCCESS -> FAILURE (error)"``; ``MISSING`` if it did not run."""
    lost = []
    for key in sorted(outcomes(direct, "SUCCESS")):
        scenario, check_id = key.split("/", 1)
        got = through.get("scenarios", {}).get(scenario, {}).get(check_id)
        if got is None:
            lost.append(f"{key}: SUCCESS -> MISSING")
        elif got["status"] != "SUCCESS":
            lost.append(f"{key}: SUCCESS -> {got['status']}" + (f" ({got['error']})" if got.get("error") else ""))
    return lost


def format_summary(result: dict[str, Any]) -> str:
    """One line per scenario and a total, for test output and humans."""
    lines = []
    for scenario, checks in result["scenarios"].items():
        st = [c["status"] for c in checks.values()]
        lines.append(
            f"{scenario}: {st.count('SUCCESS')} passed, {st.count('FAILURE')} failed, {st.count('WARNING')} warnings"
        )
    t = result["totals"]
    lines.append(
        f"total: {t['scenarios']} scenarios, {t['passed']}/{t['checks']} checks passed, {t['failed']} failed, "
        f"{t['warnings']} warnings in {result['duration_s']}s (suite v{result['suite_version']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/conformance.py [URL]: run against a URL, or the fixture
    if (path := ensure_suite()) is None:
        sys.exit(f"conformance suite unavailable: {suite_status()[1]}")
    if len(sys.argv) > 1:
        print(format_summary(run_suite(sys.argv[1])))
    else:
        with start_fixture() as (_, fixture_url):
            print(format_summary(run_suite(fixture_url)))
