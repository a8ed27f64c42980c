"""Shared fixtures.

``core`` runs a test once over each implementation of the protocol core: ids ``py``
(the pure-Python twin, the reference) and ``c`` (the compiled extension).  A test that
needs the compiled core and does not find it fails -- the suite is run on a build.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/feeding.py and friends

from feeding import MODES  # noqa: E402


def _load(impl: str):
    if impl == "py":
        return importlib.import_module("mcpfast.wire._core_py")
    # MCPFAST_CORE_MODULE names a stand-in compiled module (tools/build_part.py builds
    # one component alone during development); the default is the real extension.
    return importlib.import_module(os.environ.get("MCPFAST_CORE_MODULE", "mcpfast.wire._core"))


@pytest.fixture(params=["py", "c"])
def core(request):
    """The protocol core module under test (``mcpfast.wire._core_py`` or ``mcpfast.wire._core``)."""
    return _load(request.param)


@pytest.fixture
def py_core():
    return _load("py")


@pytest.fixture
def c_core():
    return _load("c")


@pytest.fixture(params=MODES)
def feed_mode(request):
    """How input is split across ``feed`` calls: whole, bytewise or random."""
    return request.param
