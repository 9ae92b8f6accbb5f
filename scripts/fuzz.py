#!/usr/bin/env python3
"""The long run of the hostile-layer harness (tests/hostile/) against the real CLI.

    python scripts/fuzz.py --seed 1 --count 500 --jobs 2 --out /tmp/fuzz-out
    python scripts/fuzz.py --seed 1 --count 0 --named          # the named cases only
    python scripts/fuzz.py --seed 1 --count 0 --bombs          # the full-size bombs
    python scripts/fuzz.py --replay /tmp/fuzz-out              # saved cases, run again

Random case ``i`` of seed ``S`` is the same on every run and machine. Every case goes
through every command (inspect, inspect --json, verify, cat, pull, verify oci:, mount);
each failure prints one line as it is found, and a table of class x command closes the
run. A failing case is saved under --out (blob, descriptor, OCI layout, the layers, and
each failed command with its output) so --replay can run it again, e.g. after a fix.
``--bombs`` builds the issue's full-size resource bombs (a 4.2-million-entry TOC, a
1,000 MiB tar-split, a 2 GiB decompression) and reports each command's peak RSS and time.

Exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import hostile  # noqa: E402 - the repository root is on sys.path only now


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="random cases' seed (default 1)")
    p.add_argument("--count", type=int, default=100, help="random cases (default 100)")
    p.add_argument("--start", type=int, default=0, help="index of the first random case")
    p.add_argument("--jobs", type=int, default=2, help="commands run at once (default 2)")
    p.add_argument("--named", action="store_true", help="also every named case (small bombs)")
    p.add_argument("--bombs", action="store_true", help="also the full-size resource bombs")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run just this named case (repeatable)")
    p.add_argument("--commands", default=",".join(hostile.COMMANDS),
                   help="comma-separated subset of " + ",".join(hostile.COMMANDS))
    p.add_argument("--out", type=Path, help="save each failing case here")
    p.add_argument("--replay", type=Path, metavar="DIR",
                   help="run the saved case in DIR (or every saved case below DIR)")
    p.add_argument("--timeout", type=float, default=60.0, help="per command (default 60 s)")
    p.add_argument("--rss-limit-mib", type=int, default=512,
                   help="peak RSS allowed per command (default 512 MiB; bombs: "
                   "--bomb-rss-mib)")
    p.add_argument("--bomb-rss-mib", type=int, default=hostile.FULL.bomb_rss_mib,
                   help="peak RSS allowed per command on a full-size bomb (default "
                   f"{hostile.FULL.bomb_rss_mib} MiB; killed at 4 times that)")
    p.add_argument("--work", type=Path, help="keep working files here (default: a temp dir)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every outcome")
    return p


class Fuzz:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        limits = hostile.Limits(timeout=args.timeout, mount_timeout=min(args.timeout, 60),
                                walk_timeout=args.timeout, rss_limit_mib=args.rss_limit_mib)
        self.runner = hostile.Runner(work, limits, jobs=args.jobs)
        self.commands = tuple(c for c in args.commands.split(",") if c)
        unknown = set(self.commands) - set(hostile.COMMANDS)
        if unknown:
            raise SystemExit(f"fuzz: unknown commands {sorted(unknown)}")
        self.table: dict[tuple[str, str], Counter[str]] = {}
        self.failures: list[hostile.Outcome] = []
        self.bomb_rows: list[hostile.Outcome] = []

    def case(self, make: Callable[[], hostile.Case] | Path, label: str, *,
             bomb: bool = False) -> None:
        """Generate (``make`` builds the case) or load (a saved case's directory), run,
        record, and save it when something failed."""
        start = time.monotonic()
        try:
            if isinstance(make, Path):
                cd = hostile.load_case(make)
                fresh = False
            else:
                cd = self.runner.prepare(make())
                fresh = True
        except Exception as exc:  # noqa: BLE001 - a generator bug is reported, not fatal
            print(f"HARNESS {label}: cannot generate or load the case: {exc!r}", flush=True)
            self.table.setdefault(("harness", "generate"), Counter())[hostile.FAILED] += 1
            return
        prepared = time.monotonic() - start
        try:
            outcomes = self.runner.run(cd, self.commands)
        except Exception as exc:  # noqa: BLE001 - a harness bug: say so, keep going
            print(f"HARNESS {cd.name}: the oracle failed: {exc!r}", flush=True)
            self.table.setdefault(("harness", "run"), Counter())[hostile.FAILED] += 1
            if fresh:
                hostile.remove_tree(cd.root)
            return
        failed = []
        for command, o in outcomes.items():
            self.table.setdefault((cd.klass, command), Counter())[o.status] += 1
            if bomb:
                self.bomb_rows.append(o)
            if o.status == hostile.FAILED:
                failed.append(o)
                print(o.line(), flush=True)
            elif self.args.verbose:
                print(f"{o.line()}  [{o.rss_mib:.0f} MiB, {o.seconds:.1f} s]", flush=True)
        self.failures += failed
        if bomb:
            print(f"  ({cd.name}: generated in {prepared:.1f} s; {cd.meta['note']})", flush=True)
        if failed and self.args.out and fresh:
            self._save(cd, failed)
        if fresh:
            hostile.remove_tree(cd.root)

    def _save(self, cd: hostile.CaseDir, failed: list[hostile.Outcome]) -> None:
        dest = self.args.out / cd.name
        if dest.exists():
            hostile.remove_tree(dest)
        dest.mkdir(parents=True)
        for part in ("in", "layers", "case.json"):
            src = cd.root / part
            if src.is_dir():
                shutil.copytree(src, dest / part, symlinks=True)
            elif src.exists():
                shutil.copy2(src, dest / part)
        (dest / "failures.json").write_text(json.dumps(
            [o.__dict__ for o in failed], indent=2, ensure_ascii=True))

    def report(self) -> int:
        commands = sorted({c for _, c in self.table}, key=_command_order)
        classes = sorted({k for k, _ in self.table})
        width = max([len(k) for k in classes] + [14])
        print()
        print("ok/refused/FAILED per class and command")
        print(" " * width + "".join(f"{c:>16}" for c in commands))
        for k in classes:
            cells = []
            for c in commands:
                n = self.table.get((k, c))
                cells.append(f"{n[hostile.OK]}/{n[hostile.REFUSED]}/{n[hostile.FAILED]}"
                             if n else "-")
            print(f"{k:<{width}}" + "".join(f"{cell:>16}" for cell in cells))
        if self.bomb_rows:
            print()
            print("resource bombs: peak RSS and time per command")
            for o in self.bomb_rows:
                print(f"  {o.case:22} {o.command:13} {o.status:8} {o.rss_mib:8.0f} MiB "
                      f"{o.seconds:8.1f} s  {o.reason[:100]}")
        total = sum(sum(n.values()) for n in self.table.values())
        print(f"\n{len(self.failures)} failed of {total} outcomes")
        harness = any(k == "harness" for k, _ in self.table)
        return 1 if self.failures or harness else 0


def _command_order(command: str) -> int:
    return hostile.COMMANDS.index(command) if command in hostile.COMMANDS else 99


def _saved_cases(root: Path) -> list[Path]:
    if (root / "case.json").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/case.json"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work_ctx = (tempfile.TemporaryDirectory(prefix="chunked-fuzz-") if args.work is None
                else None)
    work = Path(work_ctx.name) if work_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)
    fuzz = Fuzz(args, work)
    try:
        if args.replay:
            cases = _saved_cases(args.replay)
            if not cases:
                raise SystemExit(f"fuzz: no saved case (case.json) under {args.replay}")
            for path in cases:
                fuzz.case(path, path.name)
            return fuzz.report()
        names = list(args.only) or (list(hostile.NAMED) if args.named else [])
        for name in names:
            if name not in hostile.NAMED:
                raise SystemExit(f"fuzz: no named case {name!r}")
            if name in hostile.BOMBS and args.bombs and not args.only:
                continue  # run below at full size
            fuzz.case(lambda name=name: hostile.named_case(name, hostile.SMALL), name)
        for i in range(args.start, args.start + args.count):
            fuzz.case(lambda i=i: hostile.random_case(args.seed, i), f"random {i}")
        if args.bombs:
            sizes = hostile.Sizes(**{**hostile.FULL.__dict__,
                                     "bomb_rss_mib": args.bomb_rss_mib})
            for name in hostile.BOMBS:
                print(f"building {name} at full size ...", flush=True)
                fuzz.case(lambda name=name: hostile.named_case(name, sizes), name, bomb=True)
        return fuzz.report()
    finally:
        if work_ctx:
            work_ctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
