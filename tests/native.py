"""The C extensions under test beside their Python specs.

A C module that is not built skips its tests on a developer's machine, but fails them in
the test command and under CI (:mod:`tests.need`): they must never lose the C path
without a word.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tests.need import need


def c_module(name: str) -> ModuleType:
    """The built C module ``name``, or a skip (a failure under CI) saying why not."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        need(False, f"{name} is not built ({exc}); build it with "
             "`python setup.py build_ext --inplace`")
        raise AssertionError("unreachable") from None
