"""mcpfast: a fast gateway for the Model Context Protocol.

The modules on the request path (``_compiled.COMPILED``: the listener, the pool, the
pipeline, the HTTP backend client, observability and the multiplexer's hot modules)
are plain Python that the build also compiles (see ``setup.py``).  Python imports an
extension module in preference to the ``.py`` beside it, so this package decides which
of the two runs:

* ``MCPFAST_NO_EXTENSIONS=1``: the sources, always (and the pure-Python protocol core,
  see ``core.py``);
* a compiled module whose source changed since the build (its digest differs from the
  one ``setup.py`` recorded in ``_build_stamp.py``): the source, with a warning, so an
  edit is never silently shadowed by an old build -- and so do the compiled modules whose
  ``.pxd`` cimports it (``_compiled.with_dependents``);
* otherwise the compiled module.

The compiled protocol core ``_core`` is checked the same way, over ``_core.pyx``, its
``.pxd`` and the ``.pxi`` files they include: when it is older than those, ``core.py``
runs the pure-Python twin instead, the compiled modules that cimport the core run from
source, and ``import mcpfast.wire._core`` fails with the reason.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings

from ._compiled import COMPILED, CORE, module_path, source_digest, with_dependents

__version__ = "0.1.0"

_NO_EXTENSIONS = os.environ.get("MCPFAST_NO_EXTENSIONS", "") not in ("", "0")


def _has_extension(name: str) -> bool:
    return any(os.path.exists(module_path(name) + sfx) for sfx in importlib.machinery.EXTENSION_SUFFIXES)


def _modules_from_source() -> set[str]:
    """The compiled modules that must be imported from their ``.py`` instead (``CORE``:
    the core's twin instead of the compiled core)."""
    if _NO_EXTENSIONS:
        return {CORE, *COMPILED}
    built = [n for n in (CORE, *COMPILED) if _has_extension(n)]
    if not built:
        return set()
    try:
        from ._build_stamp import DIGESTS
    except ImportError:
        DIGESTS = {}
    stale = {n for n in built if DIGESTS.get(n) != source_digest(n)}
    if stale:
        # A compiled module that cimports a stale one reaches into its C layout: it runs
        # from source too (it could not load beside a pure-Python build of it anyway).
        dependents = with_dependents(stale) - stale
        warnings.warn(
            f"mcpfast: compiled {', '.join(sorted(stale))} older than the source; running the source"
            + (f" (and of {', '.join(sorted(dependents))}, which build on it)" if dependents else "")
            + (" (for _core: its pure-Python twin)" if CORE in stale else "")
            + " (rebuild with: pip install -e .)",
            RuntimeWarning,
            stacklevel=2,
        )
        stale |= dependents
    return stale


class _SourceFinder:
    """A meta-path finder that loads the named submodules from their ``.py`` files, and
    refuses a compiled core older than its source (it has no ``.py``: ``core.py`` picks
    the twin)."""

    def __init__(self, names: set[str], stale_core: bool) -> None:
        self.names = {f"{__name__}.{n}" for n in names if n != CORE}
        self.core = f"{__name__}.{CORE}" if stale_core else None

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.core:
            raise ImportError(
                f"{fullname}: the compiled core is older than its source (rebuild with: pip install -e .)", name=fullname
            )
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, module_path(fullname.split(".", 1)[1]) + ".py")


FROM_SOURCE = frozenset(_modules_from_source())
if FROM_SOURCE:
    # Under MCPFAST_NO_EXTENSIONS the compiled core stays importable (the tests compare
    # it with the twin); only a stale one is refused.
    sys.meta_path.insert(0, _SourceFinder(set(FROM_SOURCE), stale_core=CORE in FROM_SOURCE and not _NO_EXTENSIONS))
