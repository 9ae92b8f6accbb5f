#!/usr/bin/env python3
"""What opening a layer costs every command: TOC decode, index, tar-split check.

The Debian rootfs that benchmarks/bench_build.py makes, built once as a zstd:chunked blob;
then, best of N in this process: the TOC decoded (msgspec) and indexed (ChunkedLayer.open without
the tar-split check), and with it. Goal (issue 12): decode and index at most 50 ms for a
27,000-entry TOC, scaled here by the entry count.
Usage: python benchmarks/bench_toc.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_build import DEFAULT_CACHE, make_rootfs_tar  # noqa: E402
from chunked.builder import build_blob  # noqa: E402
from chunked.read.layer import ChunkedLayer  # noqa: E402
from chunked.read.source import FileSource  # noqa: E402

GOAL_MS_PER_27K = 50.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tar = make_rootfs_tar(DEFAULT_CACHE, None)
    blob = DEFAULT_CACHE / "rootfs.zstd-chunked"
    ann_path = DEFAULT_CACHE / "rootfs.zstd-chunked.json"
    if not blob.exists() or not ann_path.exists():
        with open(tar, "rb") as src, open(blob, "wb") as out:
            result = build_blob(src, out)
        ann_path.write_text(json.dumps(result.annotations))
    annotations = json.loads(ann_path.read_text())
    timings: dict[str, list[float]] = {"index": [], "index_and_check": []}
    entries = 0
    for _ in range(args.runs):
        for key, check in (("index", False), ("index_and_check", True)):
            with FileSource(blob) as source:
                t0 = time.perf_counter()
                layer = ChunkedLayer.open(source, annotations, check=check)
                timings[key].append(time.perf_counter() - t0)
                entries = len(layer.toc.entries)
    best = {k: min(v) * 1000 for k, v in timings.items()}
    per_27k = best["index"] * 27_000 / entries
    doc = {"entries": entries, "best_ms": best, "index_ms_per_27k_entries": per_27k,
           "goal_ms_per_27k": GOAL_MS_PER_27K}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{entries} TOC entries (rootfs {tar.stat().st_size >> 20} MiB); best of {args.runs}")
    print(f"  decode and index: {best['index']:.1f} ms ({per_27k:.1f} ms per 27,000 entries; "
          f"goal <= {GOAL_MS_PER_27K:.0f}) {'ok' if per_27k <= GOAL_MS_PER_27K else 'MISSED'}")
    print(f"  with the tar-split check: {best['index_and_check']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
