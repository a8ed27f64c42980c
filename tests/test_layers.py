"""The package's imports follow its layers and form no cycle.

The layers are declared once, in pyproject.toml (``[tool.importlinter]``): each layer
may import only those below it.  The checks here run that contract on mcpfast, and on a
copy of mcpfast with one upward import added, so the contract is shown to catch one.
Two more checks, each run on mcpfast and on small packages written here with a known
shape, so the checks themselves are shown to catch what they are for:

- the import graph (grimp, the graph library behind import-linter) has no strongly
  connected component of more than one module.  Every import counts: at module level,
  inside a function (a lazy import is still an edge), and under ``TYPE_CHECKING``;
- import-linter's ``acyclic_siblings`` contract holds for the package and each of its
  subpackages, run through import-linter itself with a configuration written here.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def import_cycles(package: str, path: pathlib.Path) -> list[list[tuple[str, str]]]:
    """The import cycles in ``package`` (found under ``path``): for each strongly
    connected component of more than one module, its imports as (importer, imported)."""
    sys.path.insert(0, str(path))
    try:
        graph = grimp.build_graph(package, cache_dir=None)
    finally:
        sys.path.remove(str(path))
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    # Tarjan's algorithm, iterative (no recursion limit on a deep graph).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return [[(a, b) for a in comp for b in edges[a] if b in comp] for comp in components]


def lint(package: str, path: pathlib.Path, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    """import-linter run on ``package`` (under ``path``) with an ``acyclic_siblings``
    contract over the package and all its subpackages."""
    cfg = tmp_path / "importlinter.ini"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            [importlinter]
            root_package = {package}

            [importlinter:contract:acyclic]
            name = No cycles between sibling modules or subpackages
            type = acyclic_siblings
            ancestors =
                {package}
            """
        )
    )
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        f"sys.exit(lint_imports(config_filename={str(cfg)!r}, no_cache=True, no_logo=True))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=path, capture_output=True, text=True, timeout=120
    )


def _shown(cycles: list[list[tuple[str, str]]]) -> str:
    return "\n".join("cycle: " + ", ".join(f"{a} -> {b}" for a, b in c) for c in cycles)


def test_mcpfast_has_no_import_cycle() -> None:
    cycles = import_cycles("mcpfast", ROOT)
    assert not cycles, _shown(cycles)


def test_mcpfast_keeps_the_acyclic_siblings_contract(tmp_path: pathlib.Path) -> None:
    run = lint("mcpfast", ROOT, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout, run.stdout


def lint_project(path: pathlib.Path) -> subprocess.CompletedProcess:
    """import-linter with the project's own contracts (pyproject.toml) on the package
    found under ``path``."""
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=path, capture_output=True, text=True, timeout=120)


def test_mcpfast_keeps_its_layers() -> None:
    run = lint_project(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Layers: each imports only those below it KEPT" in run.stdout, run.stdout
    assert "2 kept, 0 broken" in run.stdout, run.stdout


def _copy_sources(dst: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(ROOT / "mcpfast", dst / "mcpfast", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    return dst


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("wire/_upward.py", "from ..pipeline import gateway\n"),  # the lowest layer reaches up
        ("transport/_upward.py", "def late():\n    from ..mux import virtual\n    return virtual\n"),  # lazily
        ("pipeline/_upward.py", "from ..app import build_gateway\n"),  # the pipeline builds itself
    ],
    ids=["wire-to-pipeline", "transport-to-mux-lazy", "pipeline-to-app"],
)
def test_the_layers_contract_fails_on_an_upward_import(tmp_path: pathlib.Path, where: str, text: str) -> None:
    src = _copy_sources(tmp_path / "src")
    (src / "mcpfast" / where).write_text(text)
    run = lint_project(src)
    assert run.returncode != 0, run.stdout
    assert "Layers: each imports only those below it BROKEN" in run.stdout, run.stdout
    assert "mcpfast." + where[:-3].replace("/", ".") in run.stdout, run.stdout


def _write_package(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


# A small package laid out like mcpfast: a low module, a pipeline module above it and a
# subpackage above that.  ``upward`` is the one import that turns it into a cycle.
_FAKE = {
    "fakepkg/__init__.py": "",
    "fakepkg/phases.py": "DONE = 4\n",
    "fakepkg/gateway.py": "from .phases import DONE\n",
    "fakepkg/mux/__init__.py": "",
    "fakepkg/mux/virtual.py": "from ..gateway import DONE\n",
}


def test_checks_pass_a_package_without_cycle(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    _write_package(src, _FAKE)
    assert import_cycles("fakepkg", src) == []
    run = lint("fakepkg", src, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    "upward",
    [
        "from .mux.virtual import DONE\n",  # at module level
        "def build():\n    from .mux import virtual\n    return virtual\n",  # lazy, in a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .mux.virtual import DONE\n",
    ],
    ids=["module-level", "lazy", "type-checking"],
)
def test_checks_report_an_upward_import(tmp_path: pathlib.Path, upward: str) -> None:
    src = tmp_path / "src"
    _write_package(src, {**_FAKE, "fakepkg/gateway.py": _FAKE["fakepkg/gateway.py"] + upward})
    cycles = import_cycles("fakepkg", src)
    assert cycles == [[("fakepkg.gateway", "fakepkg.mux.virtual"), ("fakepkg.mux.virtual", "fakepkg.gateway")]]
    run = lint("fakepkg", src, tmp_path)
    assert run.returncode != 0, run.stdout
    assert "0 kept, 1 broken" in run.stdout, run.stdout
    assert "No cycles are allowed in fakepkg." in run.stdout, run.stdout
    assert ".gateway" in run.stdout and ".mux" in run.stdout, run.stdout
