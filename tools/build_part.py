"""Build one component of the compiled core on its own, for development.

``python tools/build_part.py http`` compiles a module ``_core_http`` holding only
``mcpfast/wire/_http.pxi`` (plus the shared debug include) into ``build/parts/``.  Run the
test suite against it with::

    PYTHONPATH=.:build/parts MCPFAST_CORE_MODULE=_core_http python -m pytest tests/test_http_parser.py

so work on one component does not wait for the others to compile.  The real build is
``pip install -e .`` (setup.py), which compiles them all into ``mcpfast.wire._core``.
"""

from __future__ import annotations

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(os.path.dirname(HERE), "mcpfast", "wire")


PARTS = ("http", "sse", "jsonrpc", "ndjson")


def main(part: str, out: str | None = None) -> None:
    """Build ``_core_<part>`` into ``out`` (default build/parts); part "all" is the whole
    core under another name (e.g. a debug build beside the installed release one)."""
    out = out or os.path.join(os.path.dirname(HERE), "build", "parts")
    os.makedirs(out, exist_ok=True)
    name = f"_core_{part}"
    parts = PARTS if part == "all" else (part,)
    with open(os.path.join(out, name + ".pxd"), "w") as f:
        f.write("".join(f'include "_{p}_decl.pxi"\n' for p in parts))
    with open(os.path.join(out, name + ".pyx"), "w") as f:
        f.write(
            "# cython: language_level=3\n"
            "from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE\n"
            "from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE\n"
            "from libc.string cimport memcpy, memchr\n"
            "from mcpfast.wire.errors import ProtocolError\n"
            'include "_debug.pxi"\n'
            + "".join(f'include "_{p}.pxi"\n' for p in parts)
        )
    debug = os.environ.get("MCPFAST_DEBUG_BUILD", "") not in ("", "0")
    ext = Extension(
        name,
        [os.path.join(out, name + ".pyx")],
        extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
        define_macros=[("MCPFAST_DEBUG", "1")] if debug else [],
    )
    directives = {"language_level": 3, "boundscheck": debug, "wraparound": debug, "cdivision": True}
    dist = Distribution({"ext_modules": cythonize([ext], include_path=[PKG, out], compiler_directives=directives, force=True)})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = out
    cmd.build_temp = os.path.join(out, "tmp")
    cmd.ensure_finalized()
    cmd.run()
    print(f"built {name} into {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
