"""Which modules the build also compiles, and the digest that ties a compiled module to
its source.  Standard library only: ``setup.py`` loads this file by path at build time
(before the package can be imported) and ``mcpfast/__init__.py`` uses it at import."""

from __future__ import annotations

import hashlib
import os
import re

# Python modules on the request path, each compiled with the .pxd beside it (setup.py).
COMPILED = ("observe", "server", "upstream", "heads", "gateway", "mux.names", "mux.rewrite", "mux.token", "mux.client", "mux.virtual")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def module_path(name: str, package_dir: str = PACKAGE_DIR) -> str:
    """``mux.client`` -> <package_dir>/mux/client (no suffix)."""
    return os.path.join(package_dir, *name.split("."))


def source_digest(name: str, package_dir: str = PACKAGE_DIR) -> str | None:
    """SHA-256 over the module's ``.py`` and ``.pxd``; None if either is missing."""
    h = hashlib.sha256()
    for ext in (".py", ".pxd"):
        try:
            with open(module_path(name, package_dir) + ext, "rb") as f:
                h.update(f.read())
        except OSError:
            return None
    return h.hexdigest()


_CIMPORT = re.compile(rb"^from mcpfast\.([\w.]+) cimport", re.M)


def cimports(name: str, package_dir: str = PACKAGE_DIR) -> set[str]:
    """The other compiled modules whose C declarations ``name``'s ``.pxd`` cimports: a
    compiled ``name`` only loads beside the compiled builds of those."""
    try:
        with open(module_path(name, package_dir) + ".pxd", "rb") as f:
            found = _CIMPORT.findall(f.read())
    except OSError:
        return set()
    return {m.decode() for m in found} & set(COMPILED)


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
