"""The debug-build switch: ``MCPFAST_DEBUG_BUILD=1`` at build time gives a core with its
invariant checks compiled in (plus bounds checks and line tracing), and that core passes
the parser suites.  The release core installed by the README's command is not one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ["tests/test_http_request.py", "tests/test_http_response.py", "tests/test_sse.py", "tests/test_jsonrpc.py",
          "tests/test_ndjson.py"]  # fmt: skip


@pytest.fixture(scope="module")
def debug_core(tmp_path_factory):
    out = tmp_path_factory.mktemp("debug-core")
    env = {**os.environ, "MCPFAST_DEBUG_BUILD": "1"}
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "build_part.py"), "all", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_release_core_is_not_a_debug_build():
    import mcpfast.wire._core

    assert mcpfast.wire._core.DEBUG_BUILD is False


def test_debug_core_has_its_checks_and_passes_the_parser_suites(debug_core):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, str(debug_core)]),
        "MCPFAST_CORE_MODULE": "_core_all",
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import _core_all; print(_core_all.DEBUG_BUILD)"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "True", probe.stderr
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITES],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout.splitlines()[-1]
