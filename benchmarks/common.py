"""What the benchmarks share."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_bytecode() -> None:
    """Write the package's bytecode, as installing it from a wheel does: run from a source
    tree under PYTHONDONTWRITEBYTECODE (set in some environments), every `chunked` run
    would compile its modules anew (about 50 ms here), which no installed copy pays."""
    for package in ("chunked", "fuse"):  # fuse/ is chunked.fuse
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / package)],
                       check=True, stdout=subprocess.DEVNULL)


def best_and_median(runs: list[dict[str, float]]
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Per figure, the best (lowest) and the median over the runs."""
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return best, median
