"""Running the ``chunked`` command as a user would, for tests, benchmarks and scripts: one
helper instead of a copy per file.

The command runs as ``python -m chunked.cli`` with this interpreter, so it is the package
under test (the checkout's, through the development install), never another ``chunked``
on PATH."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COMMAND = (sys.executable, "-m", "chunked.cli")


def chunked(*args: str | Path, text: bool = True, timeout: float | None = 300,
            check: bool = False, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None, input: Any = None,
            capture: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """Run ``chunked ARGS...`` and return what it did (output captured unless
    ``capture`` is false; ``check`` raises on a non-zero exit)."""
    if capture and "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([*COMMAND, *map(str, args)], text=text, timeout=timeout,
                          check=check, env=None if env is None else dict(env), cwd=cwd,
                          input=input, **kwargs)
