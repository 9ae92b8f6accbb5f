"""The batch file operations of a pull, chosen once: the C module
(``chunked/puller/_pullio.c``, the per-file system calls without the GIL) where it is
built, else its executable spec (:mod:`chunked.puller.pullio_spec`), which takes the same
job records and gives the same results, slower (``CHUNKED_PURE_PYTHON=1`` asks for it)."""

from __future__ import annotations

from types import ModuleType

from chunked import _kernels
from chunked.puller import pullio_spec

backend: ModuleType = _kernels.load("chunked.puller._pullio") or pullio_spec

NATIVE = backend is not pullio_spec

__all__ = ["NATIVE", "backend", "pullio_spec"]
