"""What the benchmarks share."""

from __future__ import annotations

import statistics


def best_and_median(runs: list[dict[str, float]]
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Per figure, the best (lowest) and the median over the runs."""
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return best, median
