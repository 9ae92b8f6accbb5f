"""The C extensions under test beside their Python specs.

A C module that is not built skips its tests on a developer's machine, but fails them when
the ``CI`` environment variable is set: CI must never lose the C path without a word.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def c_module(name: str) -> ModuleType:
    """The built C module ``name``, or a skip (a failure under CI) saying why not."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        why = f"{name} is not built ({exc}); build it with `python setup.py build_ext --inplace`"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the C path must be tested: {why}", pytrace=False)
        pytest.skip(why)
