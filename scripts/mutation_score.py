"""Each module's mutation score from ``mutmut results --all true``.

A mutant counts as killed when a test failed on it, or when it made a test hang or crash
(a timeout or a signal is a failure CI reports too). Survivors, mutants no fast test
reached ("no tests") and "suspicious" ones count against the score. Mutants left "not
checked" (a run of a sample, ``CHUNKED_MUTATION_SAMPLE``) are left out of it: the score is
then an estimate from the sample, and the table says of how many.

    python scripts/mutation_score.py RESULTS MODULE.py ... [--survivors FILE]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

DETECTED = {"killed", "timeout", "segfault"}
UNCHECKED = "not checked"
_LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+?)\s*$")
_FUNC = re.compile(r"\.(x_|xǁ)")


def module_of(mutant: str) -> str:
    m = _FUNC.search(mutant)
    return mutant[: m.start()] if m else mutant.rpartition(".")[0]


def module_name(path: str) -> str:
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("modules", nargs="+")
    p.add_argument("--survivors")
    args = p.parse_args(argv)

    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    left: list[tuple[str, str]] = []
    with open(args.results, encoding="utf-8") as f:
        for line in f:
            m = _LINE.match(line)
            if not m:
                continue
            name, status = m["name"], m["status"]
            counts[module_of(name)][status] += 1
            if status not in DETECTED and status != UNCHECKED:
                left.append((name, status))

    print(f"{'module':36} {'mutants':>7} {'killed':>7} {'left':>5} {'score':>7}  left by kind")
    all_ok = True
    for path in args.modules:
        c = counts.get(module_name(path), collections.Counter())
        unchecked = c.pop(UNCHECKED, 0)
        total = sum(c.values())
        killed = sum(n for s, n in c.items() if s in DETECTED)
        score = 100.0 * killed / total if total else 0.0
        all_ok &= total > 0 and score >= 90.0
        kinds = ", ".join(f"{s} {n}" for s, n in sorted(c.items()) if s not in DETECTED)
        if unchecked:
            kinds += f"{', ' if kinds else ''}(a sample of {total} of {total + unchecked})"
        print(f"{path:36} {total:7} {killed:7} {total - killed:5} {score:6.1f}%  {kinds}")
    if args.survivors:
        with open(args.survivors, "w", encoding="utf-8") as f:
            f.writelines(f"{name}: {status}\n" for name, status in sorted(left))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
