"""Which protocol core ``mcpfast.wire.core`` loads.

A normal install must run the compiled core: if the extension failed to build or
import, ``mcpfast.wire.core`` would quietly fall back to the pure-Python twin (with only a
warning) and everything would still pass -- just many times slower.  These tests make
that fallback a failure.  ``MCPFAST_NO_EXTENSIONS=1`` must select the twin, without
even importing the extension.  Each case runs in a fresh interpreter so that no
earlier import in the test process decides the answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORTS = ["RequestParser", "ResponseParser", "RequestHead", "ResponseHead", "SSEParser", "SSEEvent",
           "encode_sse_event", "scan_jsonrpc", "Envelope", "splice", "splice_many", "NDJSONFramer"]  # fmt: skip

PROBE = f"""
import json, sys, warnings
warnings.simplefilter("error")  # the fallback warning would fail the import
import mcpfast.wire.core as core
impl = sys.modules["mcpfast.wire._core" if core.IMPLEMENTATION == "c" else "mcpfast.wire._core_py"]
print(json.dumps({{
    "implementation": core.IMPLEMENTATION,
    "same": {{name: getattr(core, name) is getattr(impl, name) for name in {EXPORTS!r}}},
    "extension_imported": "mcpfast.wire._core" in sys.modules,
    "extension_file": getattr(sys.modules.get("mcpfast.wire._core"), "__file__", None),
}}))
"""


def probe(no_extensions: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MCPFAST_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["MCPFAST_NO_EXTENSIONS"] = no_extensions
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("value", [None, "", "0"])
def test_compiled_core_is_the_default(value):
    got = probe(value)
    assert got["implementation"] == "c"
    assert all(got["same"].values()), got["same"]
    assert got["extension_file"].endswith((".so", ".pyd"))


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_extensions_selects_the_python_twin(value):
    got = probe(value)
    assert got["implementation"] == "py"
    assert all(got["same"].values()), got["same"]
    assert not got["extension_imported"]


@pytest.mark.skipif(
    os.environ.get("MCPFAST_NO_EXTENSIONS", "") not in ("", "0"), reason="this run asked for the Python core"
)
def test_compiled_core_in_this_process():
    import mcpfast.wire._core
    import mcpfast.wire.core

    assert mcpfast.wire.core.IMPLEMENTATION == "c"
    assert mcpfast.wire.core.RequestParser is mcpfast.wire._core.RequestParser
    assert mcpfast.wire.core.ResponseParser is mcpfast.wire._core.ResponseParser
    assert mcpfast.wire.core.ProtocolError is mcpfast.wire._core.ProtocolError


def test_stub_is_valid_python_and_both_cores_implement_it():
    """The contract ``_core.pyi`` parses, and every public class and function it names
    exists in the compiled core and in the twin."""
    import ast
    import gc
    import pathlib
    import warnings

    import mcpfast.wire._core as c_core
    import mcpfast.wire._core_py as py_core

    source = pathlib.Path(c_core.__file__).with_name("_core.pyi").read_text()
    # Objects other tests left behind are finalized first, not inside the parse: their
    # ResourceWarnings would be errors here, raised in the middle of building the tree.
    gc.collect()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an invalid escape in a docstring is a defect too
            tree = ast.parse(source)
    finally:
        gc.enable()
    names = [
        n.name for n in tree.body
        if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and not n.name.startswith("_")
        and not (isinstance(n, ast.ClassDef) and any(getattr(b, "id", "") == "Protocol" for b in n.bases))
    ]  # fmt: skip
    assert {"RequestParser", "ResponseParser", "SSEParser", "scan_jsonrpc", "splice", "NDJSONFramer"} <= set(
        names
    )
    for name in names:
        assert hasattr(c_core, name), f"compiled core lacks {name}"
        assert hasattr(py_core, name), f"twin lacks {name}"


# --- the compiled gateway modules -------------------------------------------------------
# The request-path modules (``mcpfast.COMPILED``) are Python sources that the build also
# compiles (setup.py); mcpfast/__init__.py picks which of the two is imported.
MODULES_PROBE = """
import json, sys, warnings
caught = []
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import mcpfast
    import importlib
    for n in mcpfast.COMPILED:
        importlib.import_module("mcpfast." + n)
    import mcpfast.wire.core
    try:
        import mcpfast.wire._core
        core_error = None
    except ImportError as exc:
        core_error = str(exc)
    caught = [str(x.message) for x in w]
print(json.dumps({
    "files": {n: sys.modules["mcpfast." + n].__file__ for n in mcpfast.COMPILED},
    "from_source": sorted(mcpfast.FROM_SOURCE),
    "core": mcpfast.wire.core.IMPLEMENTATION,
    "core_error": core_error,
    "warnings": caught,
}))
"""


def probe_modules(env_extra: dict, root: str = ROOT) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MCPFAST_NO_EXTENSIONS"}
    env.update(env_extra)
    env["PYTHONPATH"] = root
    out = subprocess.run([sys.executable, "-c", MODULES_PROBE], cwd=root, env=env, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_gateway_modules_are_compiled_in_a_normal_install():
    got = probe_modules({})
    assert got["from_source"] == []
    assert got["warnings"] == []
    assert got["core"] == "c" and got["core_error"] is None
    for name, path in got["files"].items():
        assert path.endswith((".so", ".pyd")), f"{name} was imported from {path}"


def test_no_extensions_imports_the_gateway_sources():
    got = probe_modules({"MCPFAST_NO_EXTENSIONS": "1"})
    assert sorted(got["from_source"]) == sorted(["wire._core", *got["files"]])
    # The twin runs; the compiled core stays importable (the tests compare the two).
    assert got["core"] == "py" and got["core_error"] is None
    for name, path in got["files"].items():
        assert path.endswith(name.replace(".", "/") + ".py"), path


@pytest.mark.parametrize("edited", ["pipeline.gateway", "mux.virtual"])
def test_an_edited_source_is_not_shadowed_by_an_old_build(tmp_path, edited):
    """A copy of the package with one source changed after the build: the stale compiled
    module must not run; the source does, and a warning says to rebuild."""
    import shutil

    import mcpfast

    pkg = tmp_path / "mcpfast"
    shutil.copytree(os.path.dirname(mcpfast.__file__), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    src = pkg.joinpath(*edited.split(".")).with_suffix(".py")
    src.write_text(src.read_text() + "\n# edited after the build\n")
    got = probe_modules({}, root=str(tmp_path))
    # The multiplexer's virtual server cimports the gateway's Exchange: it follows the
    # gateway to its source; nothing builds on mux.virtual.
    expected = {"pipeline.gateway": ["mux.virtual", "pipeline.gateway"], "mux.virtual": ["mux.virtual"]}[edited]
    assert got["from_source"] == expected
    assert got["files"][edited] == str(src)
    for n in expected:
        assert got["files"][n].endswith(n.replace(".", "/") + ".py"), got["files"][n]
    others = [n for n in got["files"] if n not in expected]
    assert others and all(got["files"][n].endswith((".so", ".pyd")) for n in others)
    assert any(edited in w and "rebuild" in w for w in got["warnings"]), got["warnings"]
    assert got["core"] == "c"


@pytest.mark.parametrize(
    "edited",
    [f"wire/{f}" for f in ("_http.pxi", "_jsonrpc_decl.pxi", "_debug.pxi", "_core.pyx", "_core.pxd", "_ndjson.pxi", "_ndjson_decl.pxi")],
)
def test_an_edited_core_source_is_not_shadowed_by_an_old_build(tmp_path, edited):
    """The compiled core is built from _core.pyx, its .pxd and the .pxi files they
    include: after an edit of any of them the old build must not run.  The twin does,
    and so do the sources of the modules that cimport the core, with a warning; the
    stale extension cannot be imported by name either."""
    import shutil

    import mcpfast

    pkg = tmp_path / "mcpfast"
    shutil.copytree(os.path.dirname(mcpfast.__file__), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    src = pkg / edited
    src.write_text(src.read_text() + "\n# edited after the build\n")
    got = probe_modules({}, root=str(tmp_path))
    expected = sorted(["wire._core", "pipeline.gateway", "transport.http_mcp", "mux.virtual", "transport.listener", "transport.pool"])
    assert got["from_source"] == expected
    assert got["core"] == "py"
    assert "older than its source" in got["core_error"] and "rebuild" in got["core_error"]
    for n in [n for n in expected if n != "wire._core"]:
        assert got["files"][n] == str(pkg.joinpath(*n.split(".")).with_suffix(".py")), got["files"][n]
    others = [n for n in got["files"] if n not in expected]
    assert others and all(got["files"][n].endswith((".so", ".pyd")) for n in others), got["files"]
    assert any("_core" in w and "twin" in w and "rebuild" in w for w in got["warnings"]), got["warnings"]


def test_the_core_digest_covers_what_the_build_compiles():
    """The files the core's digest reads are the package files Cython's own dependency
    tracking lists for _core.pyx (what makes cythonize rebuild it)."""
    from Cython.Build.Dependencies import create_dependency_tree

    from mcpfast._compiled import PACKAGE_DIR, core_sources

    deps = create_dependency_tree().all_dependencies(os.path.join(PACKAGE_DIR, "wire", "_core.pyx"))
    ours = {os.path.relpath(d, PACKAGE_DIR) for d in deps if os.path.abspath(d).startswith(PACKAGE_DIR + os.sep)}
    assert sorted(core_sources()) == sorted(ours)
    core_files = ("_core.pyx", "_core.pxd", "_http.pxi", "_http_decl.pxi", "_sse.pxi", "_jsonrpc.pxi", "_ndjson.pxi", "_ndjson_decl.pxi")
    assert {f"wire/{f}" for f in core_files} <= ours


def test_a_failed_build_leaves_the_stamp_of_the_modules_on_disk(tmp_path):
    """The build stamps the sources only when every extension is built: a build that
    fails on an edited source must leave the old stamp, so the old compiled module (and
    those that build on it) stay recognised as older than the source."""
    import shutil

    import mcpfast

    root = tmp_path / "src"
    root.mkdir()
    for f in ("setup.py", "pyproject.toml"):
        shutil.copy2(os.path.join(ROOT, f), root / f)
    # copy2 keeps times, so cythonize skips every unchanged module (their .c are newer).
    shutil.copytree(os.path.dirname(mcpfast.__file__), root / "mcpfast", ignore=shutil.ignore_patterns("__pycache__"))
    stamp = root / "mcpfast" / "_build_stamp.py"
    before = stamp.read_text()
    src = root / "mcpfast" / "transport" / "listener.py"
    src.write_text(src.read_text() + "\ndef broken(:\n")
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, capture_output=True,
                       text=True, timeout=600, check=False)  # fmt: skip
    assert r.returncode != 0, r.stdout[-2000:]
    assert stamp.read_text() == before
    src.write_text(src.read_text().replace("\ndef broken(:\n", "\n# edited\n"))
    got = probe_modules({}, root=str(root))
    assert got["from_source"] == ["mux.virtual", "pipeline.gateway", "transport.listener"]


def test_cimport_dependencies_are_read_from_the_pxd_files():
    from mcpfast._compiled import cimports, with_dependents

    assert cimports("mux.virtual") >= {"pipeline.gateway", "transport.http_mcp", "mux.names"}
    assert "transport.pool" in cimports("transport.http_mcp")
    assert cimports("observe") == set()
    # Everything that reaches the upstream module's C layout, directly or not.
    assert with_dependents({"transport.pool"}) == {"transport.pool", "transport.http_mcp", "mux.virtual"}
    # Everything that reaches the core's C layout.
    assert "wire._core" in cimports("transport.listener")
    assert with_dependents({"wire._core"}) == {
        "wire._core", "transport.listener", "transport.pool", "pipeline.gateway", "transport.http_mcp", "mux.virtual"
    }


def test_installed_packages_carry_the_pxd_files():
    """A wheel must ship each compiled module's .pxd: the import-time digest covers the
    .py and its .pxd, so a missing .pxd would make an installed gateway run its slow
    source.  Every compiled module's .pxd matches a package-data pattern of its package."""
    import fnmatch

    import tomllib

    import mcpfast

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    for name in mcpfast.COMPILED:
        package, _, module = ("mcpfast." + name).rpartition(".")
        assert os.path.exists(os.path.join(ROOT, *package.split("."), module + ".pxd")), name
        assert any(fnmatch.fnmatch(module + ".pxd", pat) for pat in package_data.get(package, [])), (name, package)
    # And the core's sources, which its digest covers.
    from mcpfast._compiled import core_sources

    for rel in core_sources():
        package, _, leaf = ("mcpfast/" + rel).rpartition("/")
        assert any(fnmatch.fnmatch(leaf, pat) for pat in package_data[package.replace("/", ".")]), rel
