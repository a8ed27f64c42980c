"""mcpfast: a fast gateway for the Model Context Protocol.

The modules on the request path -- ``server``, ``upstream``, ``gateway``, ``observe``
and the multiplexer's ``mux.names``, ``mux.rewrite``, ``mux.token``, ``mux.client``, ``mux.virtual`` --
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
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings

from ._compiled import COMPILED, module_path, source_digest, with_dependents

__version__ = "0.1.0"


def _has_extension(name: str) -> bool:
    return any(os.path.exists(module_path(name) + sfx) for sfx in importlib.machinery.EXTENSION_SUFFIXES)


def _modules_from_source() -> set[str]:
    """The compiled modules that must be imported from their ``.py`` instead."""
    if os.environ.get("MCPFAST_NO_EXTENSIONS", "") not in ("", "0"):
        return set(COMPILED)
    built = [n for n in COMPILED if _has_extension(n)]
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
            + " (rebuild with: pip install -e .)",
            RuntimeWarning,
            stacklevel=2,
        )
        stale |= dependents
    return stale


class _SourceFinder:
    """A meta-path finder that loads the named submodules from their ``.py`` files."""

    def __init__(self, names: set[str]) -> None:
        self.names = {f"{__name__}.{n}" for n in names}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, module_path(fullname.split(".", 1)[1]) + ".py")


FROM_SOURCE = frozenset(_modules_from_source())
if FROM_SOURCE:
    sys.meta_path.insert(0, _SourceFinder(set(FROM_SOURCE)))
