"""Which modules the build also compiles, and the digest that ties a compiled module to
its source.  Standard library only: ``setup.py`` loads this file by path at build time
(before the package can be imported) and ``mcpfast/__init__.py`` uses it at import."""

from __future__ import annotations

import hashlib
import os

# Python modules on the request path, each compiled with the .pxd beside it (setup.py).
COMPILED = ("observe", "server", "upstream", "gateway", "mux.names", "mux.rewrite", "mux.token", "mux.client", "mux.virtual")

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
