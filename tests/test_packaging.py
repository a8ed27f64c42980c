"""What an install of mcpfast pulls in: the MCP Python SDK is an extra, for the demo and
the tests only.  A production install has no SDK, so the gateway must import and run
without it, and ``mcpfast demo`` must say what to install instead of failing with a
traceback.  The interpreter here has the SDK; the subprocesses below hide it with a
meta-path finder that refuses ``mcp`` and every ``mcp.*`` module, as a missing package
would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs first in each subprocess: from here on ``import mcp`` fails as if it were not installed.
NO_SDK = textwrap.dedent(
    """
    import sys

    class NoSDK:
        def find_spec(self, fullname, path=None, target=None):
            if fullname == "mcp" or fullname.startswith("mcp."):
                raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
            return None

    sys.meta_path.insert(0, NoSDK())
    for _name in [m for m in sys.modules if m == "mcp" or m.startswith("mcp.")]:
        del sys.modules[_name]
    """
)


def _requirement_name(req: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", req.strip()).group(0).lower().replace("_", "-")


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_the_sdk_is_an_extra_not_a_dependency():
    project = _project()
    assert "mcp" not in {_requirement_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    # `pip install 'mcpfast[demo]'` for the demo; the test extra (what CI installs) has it too.
    for extra in ("demo", "test"):
        assert "mcp" in {_requirement_name(r) for r in extras[extra]}, extra


def _run_without_sdk(code: str, *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ROOT
    env["PYTHONWARNINGS"] = "ignore"  # a rebuild notice (mcpfast/__init__.py) is not the output under test
    return subprocess.run(
        [sys.executable, "-c", NO_SDK + textwrap.dedent(code), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_finder_hides_the_sdk():
    r = _run_without_sdk("import mcp\n")
    assert r.returncode != 0
    assert "ModuleNotFoundError" in r.stderr and "'mcp'" in r.stderr


def test_the_gateway_imports_and_checks_a_config_without_the_sdk(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[server]\nlisten = "127.0.0.1:9999"\nadmin_listen = "127.0.0.1:9998"\n'
        '[backends.a]\nurl = "http://127.0.0.1:7000/mcp"\n'
        '[backends.b]\nurl = "http://127.0.0.1:7001/mcp"\n'
        '[[routes]]\npath = "/mcp"\nbackends = ["a"]\n'
        '[[routes]]\npath = "/both"\nbackends = ["a", "b"]\n'
    )
    r = _run_without_sdk(
        """
        import importlib, json, pkgutil, sys
        import mcpfast.cli, mcpfast.pipeline.gateway, mcpfast.config
        import mcpfast

        # Every module of the package but the demo backend (the one that uses the SDK)
        # and the ``python -m mcpfast`` entry point.
        names = [m.name for m in pkgutil.walk_packages(mcpfast.__path__, "mcpfast.")]
        for name in names:
            if name not in ("mcpfast.demo_backend", "mcpfast.__main__"):
                importlib.import_module(name)
        print(json.dumps(sorted(names)))
        sys.stdout.flush()
        sys.argv = ["mcpfast", "check-config", sys.argv[1]]
        mcpfast.cli.main()
        """,
        str(conf),
    )
    assert r.returncode == 0, r.stderr
    first, _, rest = r.stdout.partition("\n")
    imported = json.loads(first)
    assert {"mcpfast.pipeline.gateway", "mcpfast.config", "mcpfast.cli", "mcpfast.workers", "mcpfast.demo_backend"} <= set(imported)
    assert any(n.startswith("mcpfast.mux.") for n in imported) and any(n.startswith("mcpfast.policy.") for n in imported)
    doc = json.loads(rest)
    assert doc["server"]["listen"] == "127.0.0.1:9999"
    assert [r["path"] for r in doc["routes"]] == ["/mcp", "/both"]


def test_demo_without_the_sdk_says_what_to_install():
    r = _run_without_sdk(
        """
        import sys
        from mcpfast.cli import main
        sys.argv = ["mcpfast", "demo", "--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:1"]
        main()
        """
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "mcpfast[demo]" in lines[0] and "Traceback" not in r.stderr
