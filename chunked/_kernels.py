"""The compiled kernels, each optional: where one was not built (no compiler, no
libcrypto), or ``CHUNKED_PURE_PYTHON=1`` is set, callers use its Python twin instead,
which the tests hold to the same results.

``CHUNKED_PURE_PYTHON=1`` exists so the test suite can run the Python paths on a machine
that has the C ones (``scripts/test.sh`` does, for the unit tests)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON = os.environ.get("CHUNKED_PURE_PYTHON") == "1"


def load(name: str) -> ModuleType | None:
    """The compiled module ``name`` (``chunked._native``...), or None."""
    if PURE_PYTHON:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
