"""Build script: compiles the protocol core ``mcpfast/_core.pyx``.

Metadata lives in pyproject.toml; this file only describes the extension.
Set ``MCPFAST_DEBUG_BUILD=1`` at build time for a debug core: invariant checks
(``MCPFAST_DEBUG`` in the C code), bounds checks and line tracing, so a failure can be
chased with coverage or a debugger inside the compiled parser.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MCPFAST_DEBUG_BUILD", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
macros = []
extra_compile_args = ["-O2"]
if DEBUG:
    directives.update(linetrace=True, profile=True)
    macros += [("MCPFAST_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    extra_compile_args = ["-O0", "-g3"]

extensions = [
    Extension(
        "mcpfast._core",
        ["mcpfast/_core.pyx"],
        define_macros=macros,
        extra_compile_args=extra_compile_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        # Rebuild when an included .pxi changes, not only the .pyx.
        force=DEBUG,
    ),
)
