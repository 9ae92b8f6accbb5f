#!/usr/bin/env python3
"""Every benchmark, then one table of every ratio against its goal.

Each benchmark still runs alone (``python benchmarks/bench_X.py``); this runs them one
after another with ``--json`` and reads their figures. The goals are the issues' latest:
build and pull from issue 12, the store (issue 9), convert (issue 10) and registries that
refuse many ranges (issue 11). A benchmark that fails shows as ERROR with its last line,
and the others go on. ``--only build,toc`` runs some; ``--quick`` asks each for one run.
Each benchmark's JSON (the seconds and bytes behind its ratios) is kept in
/var/tmp/chunked-bench/run_all/NAME.json.
Takes about 40 minutes in full on the project's 2-core VM; keep the machine idle.
Usage: python benchmarks/run_all.py [--only NAMES] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAVED = Path("/var/tmp/chunked-bench/run_all")  # each benchmark's last JSON


@dataclass
class Row:
    bench: str
    metric: str
    value: float | None
    goal: str  # "<= 0.8" or ">= 25"
    unit: str = "x"

    @property
    def ok(self) -> bool | None:
        if self.value is None:
            return None
        op, bound = self.goal.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)


def _build(d: dict[str, Any]) -> list[Row]:
    r = d["ratios"]
    return [Row("build", "wall vs zstd -3 -T1", r["wall_chunked_over_zstd3_T1"], "<= 1.0"),
            Row("build", "throughput vs skopeo", r["throughput_chunked_over_skopeo"], ">= 25"),
            Row("build", "output size vs skopeo", r["size_chunked_over_skopeo"], "<= 1.0")]


def _build_small(d: dict[str, Any]) -> list[Row]:
    return [Row("build", f"small files: {r.metric}", r.value, r.goal) for r in _build(d)]


def _build_large(d: dict[str, Any]) -> list[Row]:
    return [Row("build", f"large files: {r.metric}", r.value, r.goal) for r in _build(d)]


def _toc(d: dict[str, Any]) -> list[Row]:
    return [Row("toc", "decode + index, per 27k entries", d["index_ms_per_27k_entries"],
                "<= 50", " ms")]


def _pull(d: dict[str, Any]) -> list[Row]:
    rows = []
    for net in ("loopback", "wan"):
        sm = d["networks"][net]["summary"]
        for step in ("first", "update"):
            ratio = sm[f"chunked_{step}"]["best_s"] / sm[f"podman_{step}"]["best_s"]
            # the goal is on loopback; the WAN is shown against the same bound
            rows.append(Row("pull", f"{net} {step}: time vs podman partial", ratio, "<= 0.8"))
        rows.append(Row("pull", f"{net} first: bytes vs podman",
                        sm["chunked_first"]["bytes"] / sm["podman_first"]["bytes"], "<= 1.0"))
        for step in ("first", "update"):
            if "peak_rss_mib" in sm[f"chunked_{step}"]:
                rows.append(Row("pull", f"{net} {step}: peak RSS",
                                sm[f"chunked_{step}"]["peak_rss_mib"], "<= 128", " MiB"))
    return rows


def _mount(d: dict[str, Any]) -> list[Row]:
    lo = d["loopback"]
    return [Row("mount", "loopback: every file vs full pull",
                lo["mount_all_files_s"] / lo["full_pull_s"], "<= 1.0"),
            Row("mount", "loopback: ready (TOC in, first ls)", lo.get("mount_ready_s"),
                "<= 0.3", " s"),
            Row("mount", "WAN: first byte sooner than full pull",
                d["wan"]["full_pull_s"] / d["wan"]["mount_first_byte_s"], ">= 10")]


def _store(d: dict[str, Any]) -> list[Row]:
    b = d["best"] if "best" in d else {k: v["best"] for k, v in d["summary"].items()}
    return [Row("store", "first output sooner than podman partial",
                b["partial_s"] / b["store_s"], ">= 4"),
            Row("store", "first output sooner than full pull", b["full_s"] / b["store_s"],
                ">= 10"),
            Row("store", "bytes, share of the image", b["store_bytes"] / d["blob_bytes"],
                "<= 0.15"),
            Row("store", "warm run vs local storage", b["store_warm_s"] / b["full_warm_s"],
                "<= 1.2")]


def _convert(d: dict[str, Any]) -> list[Row]:
    b = d["best"]
    return [Row("convert", "speed vs skopeo", b["skopeo_s"] / b["chunked_s"], ">= 10"),
            Row("convert", "wall vs the floor", b["chunked_s"] / b["floor_s"], "<= 1.0")]


def _wild(d: dict[str, Any]) -> list[Row]:
    b = d["best"]
    rows = []
    for step, name in (("pull", "pull"), ("read", "first reads")):
        rows.append(Row("wild", f"501 registry: {name} time vs normal",
                        b[f"501_{step}_s"] / b[f"normal_{step}_s"], "<= 1.1"))
        rows.append(Row("wild", f"501 registry: {name} bytes vs normal",
                        b[f"501_{step}_bytes"] / b[f"normal_{step}_bytes"], "<= 1.1"))
    return rows


# name -> (script, arguments, arguments with --quick, rows from its JSON)
BENCHES: dict[str, tuple[str, list[str], list[str], Callable[[dict[str, Any]], list[Row]]]] = {
    "build": ("bench_build.py", ["--runs", "3"], ["--runs", "1"], _build),
    "build-small": ("bench_build.py", ["--runs", "3", "--corpus", "small-files"],
                    ["--runs", "1", "--corpus", "small-files"], _build_small),
    "build-large": ("bench_build.py", ["--runs", "3", "--corpus", "large-files"],
                    ["--runs", "1", "--corpus", "large-files"], _build_large),
    "toc": ("bench_toc.py", [], ["--runs", "2"], _toc),
    "pull": ("bench_pull.py", ["--runs", "3"], ["--runs", "1"], _pull),
    "mount": ("bench_mount.py", [], [], _mount),
    "store": ("bench_store.py", ["--runs", "3"], ["--runs", "1"], _store),
    "convert": ("bench_convert.py", ["--runs", "2"], ["--runs", "1"], _convert),
    "wild": ("bench_wild.py", ["--runs", "2"], ["--runs", "1"], _wild),
}


def run(name: str, quick: bool) -> tuple[list[Row], str, float]:
    script, args, quick_args, rows = BENCHES[name]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / script),
                        *(quick_args if quick else args), "--json"],
                       capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - t0
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [], f"exit {p.returncode}: {last}", seconds
    try:
        doc = json.loads(p.stdout)
        # every figure behind the table, for whoever quotes or checks it
        SAVED.mkdir(parents=True, exist_ok=True)
        (SAVED / f"{name}.json").write_text(p.stdout)
        return rows(doc), "", seconds
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        return [], f"unreadable output: {exc!r}", seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated, of {', '.join(BENCHES)}")
    ap.add_argument("--quick", action="store_true", help="one run each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in names:
        print(f"[run_all] {name}...", file=sys.stderr, flush=True)
        got, error, seconds = run(name, args.quick)
        print(f"[run_all] {name}: {seconds:.0f} s{' ' + error if error else ''}",
              file=sys.stderr, flush=True)
        rows += got
        if error:
            errors[name] = error
    if args.json:
        print(json.dumps({"rows": [{**r.__dict__, "ok": r.ok} for r in rows],
                          "errors": errors}, indent=2))
        return 0
    width = max((len(r.metric) for r in rows), default=10)
    print(f"{'bench':<8} {'metric':<{width}} {'value':>9}  {'goal':<8} verdict")
    for r in rows:
        value = "n/a" if r.value is None else f"{r.value:.2f}{r.unit}"
        verdict = {True: "ok", False: "MISSED", None: "not measured"}[r.ok]
        print(f"{r.bench:<8} {r.metric:<{width}} {value:>9}  {r.goal:<8} {verdict}")
    for name, error in errors.items():
        print(f"{name:<8} ERROR {error}")
    met = sum(1 for r in rows if r.ok)
    print(f"\n{met} of {len(rows)} goals met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
