"""Build script: compiles the protocol core ``mcpfast/_core.pyx`` and the gateway's hot
modules.

Metadata lives in pyproject.toml; this file only describes the extensions.

* ``mcpfast.wire._core`` is written in Cython (``_core.pyx`` and its ``.pxi`` parts), with a
  pure-Python twin (``wire._core_py``) as the reference it is tested against.
* The modules named in ``mcpfast/_compiled.py`` (the listener, the connection pool, the
  pipeline, the HTTP backend client, observability, the wire heads, the multiplexer's
  hot modules, the stdio backend and the message-level answer it shares with legacy SSE) are ordinary Python modules that are *also* compiled: the ``.pxd`` beside each declares its hot classes as
  extension types with C-typed attributes and C-callable methods, so the request path
  skips dictionary lookups and Python calls between them (an empty ``.pxd``: the module's
  classes stay Python classes, only its code is compiled).  The ``.py`` file stays the
  one source; ``MCPFAST_NO_EXTENSIONS=1`` at run time imports it as plain Python.
  The build records a hash of each source (``_build_stamp.py``, the core's ``.pyx``,
  ``.pxd`` and ``.pxi`` files included) so that a compiled module older than an edited
  source is noticed at import (see ``mcpfast/__init__.py``).

Set ``MCPFAST_DEBUG_BUILD=1`` at build time for a debug core: invariant checks
(``MCPFAST_DEBUG`` in the C code), bounds checks and line tracing, so a failure can be
chased with coverage or a debugger inside the compiled parser.
"""

import importlib.util
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("MCPFAST_DEBUG_BUILD", "") not in ("", "0")
HERE = os.path.dirname(os.path.abspath(__file__))

# The list of compiled modules and their source digest, shared with mcpfast/__init__.py;
# loaded by path because the package itself cannot be imported before it is built.
_spec = importlib.util.spec_from_file_location("_mcpfast_compiled", os.path.join(HERE, "mcpfast", "_compiled.py"))
_compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compiled)
COMPILED = _compiled.COMPILED

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
# The compiled Python modules keep Python semantics: annotations are documentation, not
# C types (only the .pxd types are), and integer division and indexing behave as in Python.
module_directives = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
}
macros = []
extra_compile_args = ["-O2"]
if DEBUG:
    directives.update(linetrace=True, profile=True)
    macros += [("MCPFAST_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    extra_compile_args = ["-O0", "-g3"]


# Digests of the sources as cythonize reads them below (not as they are when the build
# ends: a source edited during the build must not be stamped as built).
# The core's digest covers its .pyx, .pxd and the .pxi files they include.
SOURCE_DIGESTS = {name: _compiled.source_digest(name) for name in (_compiled.CORE, *COMPILED)}


def write_stamp(package_dir: str) -> None:
    lines = [
        '"""Written by setup.py: digests of the sources the compiled modules were built from."""',
        "",
        "DIGESTS = {",
        *(f'    "{name}": "{digest}",' for name, digest in SOURCE_DIGESTS.items()),
        "}",
        "",
    ]
    with open(os.path.join(package_dir, "_build_stamp.py"), "w") as f:
        f.write("\n".join(lines))


class BuildExt(build_ext):
    """Writes the stamp only once every extension is built, beside the built modules.  A
    failed build leaves the previous stamp, which still describes the modules on disk, so
    their sources (now newer) run instead of them."""

    def run(self) -> None:
        super().run()
        write_stamp(os.path.join(HERE, "mcpfast") if self.inplace else os.path.join(self.build_lib, "mcpfast"))


core = Extension(
    "mcpfast.wire._core",
    ["mcpfast/wire/_core.pyx"],
    define_macros=macros,
    extra_compile_args=extra_compile_args,
)
modules = [
    Extension(f"mcpfast.{name}", [f"mcpfast/{name.replace('.', '/')}.py"], extra_compile_args=["-O2"])
    for name in COMPILED
]

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        [core],
        compiler_directives=directives,
        # Rebuild when an included .pxi changes, not only the .pyx.
        force=DEBUG,
    )
    + cythonize(modules, compiler_directives=module_directives),
)
