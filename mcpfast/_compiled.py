"""Which modules the build also compiles, and the digest that ties a compiled module to
its source.  Standard library only: ``setup.py`` loads this file by path at build time
(before the package can be imported) and ``mcpfast/__init__.py`` uses it at import."""

from __future__ import annotations

import hashlib
import os
import re

# Python modules on the request path, each compiled with the .pxd beside it (setup.py).
COMPILED = (
    "observe", "transport.base", "transport.listener", "transport.pool", "wire.heads", "pipeline.gateway", "mux.names", "mux.rewrite",
    "mux.token", "transport.http_mcp", "mux.virtual", "transport.messages", "transport.stdio",
)  # fmt: skip

# The protocol core, written in Cython: _core.pyx, the _core.pxd beside it and the .pxi
# files they include.  Its pure-Python twin (_core_py) runs when it cannot (core.py).
CORE = "wire._core"

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def module_path(name: str, package_dir: str = PACKAGE_DIR) -> str:
    """``transport.http_mcp`` -> <package_dir>/transport/http_mcp (no suffix)."""
    return os.path.join(package_dir, *name.split("."))


_INCLUDE = re.compile(rb'^[ \t]*include[ \t]+"([^"]+)"', re.M)


def core_sources(package_dir: str = PACKAGE_DIR) -> list[str] | None:
    """The files the compiled core is built from, relative to ``package_dir``:
    ``wire/_core.pyx``, ``wire/_core.pxd`` and every file they ``include``, transitively,
    each once in the order met; None if one is missing."""
    out: list[str] = []
    core = CORE.replace(".", "/")
    todo = [core + ".pyx", core + ".pxd"]
    while todo:
        name = todo.pop(0)
        if name in out:
            continue
        try:
            with open(os.path.join(package_dir, name), "rb") as f:
                text = f.read()
        except OSError:
            return None
        out.append(name)
        todo += [os.path.normpath(os.path.join(os.path.dirname(name), m.decode())) for m in _INCLUDE.findall(text)]
    return out


def source_digest(name: str, package_dir: str = PACKAGE_DIR) -> str | None:
    """SHA-256 over the module's ``.py`` and ``.pxd`` (for the core: over each of its
    ``core_sources``, named); None if one is missing."""
    h = hashlib.sha256()
    if name == CORE:
        files = core_sources(package_dir)
        if files is None:
            return None
        for rel in files:
            try:
                with open(os.path.join(package_dir, rel), "rb") as f:
                    data = f.read()
            except OSError:
                return None
            h.update(b"%s\0%d\0" % (rel.encode(), len(data)))
            h.update(data)
        return h.hexdigest()
    for ext in (".py", ".pxd"):
        try:
            with open(module_path(name, package_dir) + ext, "rb") as f:
                h.update(f.read())
        except OSError:
            return None
    return h.hexdigest()


_CIMPORT = re.compile(rb"^from mcpfast\.([\w.]+) cimport", re.M)


def cimports(name: str, package_dir: str = PACKAGE_DIR) -> set[str]:
    """The other compiled modules (the core included) whose C declarations ``name``'s
    ``.pxd`` cimports: a compiled ``name`` only loads beside the compiled builds of those."""
    try:
        with open(module_path(name, package_dir) + ".pxd", "rb") as f:
            found = _CIMPORT.findall(f.read())
    except OSError:
        return set()
    return {m.decode() for m in found} & {CORE, *COMPILED}


def with_dependents(names: set[str], package_dir: str = PACKAGE_DIR) -> set[str]:
    """``names`` plus every compiled module that cimports one of them, transitively."""
    out = set(names)
    deps = {n: cimports(n, package_dir) for n in COMPILED}
    grew = True
    while grew:
        grew = False
        for n, d in deps.items():
            if n not in out and d & out:
                out.add(n)
                grew = True
    return out
