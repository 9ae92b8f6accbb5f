#!/usr/bin/env python3
"""Streaming gzip decompression throughput: the stdlib against python-isal and zlib-ng.

What ``chunked convert`` does with a gzip layer: the compressed bytes arrive through a file
object a piece at a time (at most --piece bytes per read, 64 KiB by default, as a socket
hands them out) and the decompressed tar is read from the decoder 1 MiB at a time (what
chunked.format.tar asks for). Every importable candidate is timed on each input, candidates
taking turns over --runs rounds; the best wall time counts. MB/s is decompressed output,
MB = 10^6 bytes; "x stdlib" is against ``gzip.GzipFile``, what chunked.read.tarlayer uses today.
One process; the *_threaded readers decompress in one extra thread (their own design).

Inputs, made once under --cache-dir (not timed):

* rootfs: ``gzip -6`` of the Debian rootfs tar benchmarks/bench_build.py caches there;
* mixed: 64 MiB, 7 of every 8 64 KiB blocks random bytes, the 8th text (as a layer of
  already-compressed files is), ``gzip -6``.

Usage: python benchmarks/bench_gzip.py [--runs 3] [--piece 65536] [--cache-dir DIR]
Exit status 1 if a candidate's output length was wrong.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import importlib.metadata
import io
import random
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_CACHE = Path("/var/tmp/chunked-bench")
OUT_READ = 1 << 20
MIXED_SIZE = 64 << 20
MIXED_BLOCK = 64 << 10

Runner = Callable[[BinaryIO], int]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Piecewise(io.RawIOBase):
    """A file handed out at most ``piece`` bytes per call, as a network stream would be."""

    def __init__(self, path: Path, piece: int):
        self._f = open(path, "rb", buffering=0)
        self._piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        return self._f.readinto(view[: self._piece]) or 0

    def close(self) -> None:
        self._f.close()
        super().close()


# ------------------------------------------------------------------------------ inputs


def gzip6(src: Path, dst: Path) -> None:
    tmp = dst.with_suffix(".part")
    with open(tmp, "wb") as out:
        if shutil.which("gzip"):
            subprocess.run(["gzip", "-6", "-c", str(src)], stdout=out, check=True)
        else:  # same deflate (zlib) at the same level
            with open(src, "rb") as f, gzip.GzipFile(fileobj=out, mode="wb",
                                                     compresslevel=6) as gz:
                shutil.copyfileobj(f, gz, OUT_READ)
    tmp.rename(dst)


def rootfs_input(cache: Path) -> tuple[Path, int] | None:
    tar = cache / "rootfs.tar"
    if not tar.exists():
        log(f"skipping rootfs: no {tar} (python benchmarks/bench_build.py makes it)")
        return None
    gz = cache / "rootfs.tar.gz"
    if not gz.exists() or gz.stat().st_mtime < tar.stat().st_mtime:
        log(f"making {gz} (gzip -6)")
        gzip6(tar, gz)
    return gz, tar.stat().st_size


def mixed_input(cache: Path) -> tuple[Path, int]:
    gz = cache / "mixed-64M.gz"
    if not gz.exists():
        log(f"making {gz} (gzip -6)")
        rng = random.Random(0)
        text = "".join(f"{i:06d} usr/share/doc/pkg-{i % 97}/changelog.Debian.gz 0644 root\n"
                       for i in range(MIXED_BLOCK // 40)).encode()[:MIXED_BLOCK]
        raw = cache / "mixed-64M.bin"
        with open(raw, "wb") as f:
            for i in range(MIXED_SIZE // MIXED_BLOCK):
                f.write(text if i % 8 == 7 else rng.randbytes(MIXED_BLOCK))
        gzip6(raw, gz)
        raw.unlink()
    return gz, MIXED_SIZE


def warm_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


# -------------------------------------------------------------------------- candidates


def _drain(stream: BinaryIO) -> int:
    total = 0
    with stream:
        while piece := stream.read(OUT_READ):
            total += len(piece)
    return total


def _file_runner(module: str, opener: str, **kwargs: Any) -> Callable[[], Runner]:
    def load() -> Runner:
        make = getattr(importlib.import_module(module), opener)
        return lambda raw: _drain(make(fileobj=raw, mode="rb", **kwargs))
    return load


def _threaded_runner(module: str) -> Callable[[], Runner]:
    def load() -> Runner:
        mod = importlib.import_module(module)
        return lambda raw: _drain(mod.open(raw, "rb", threads=1))
    return load


def _decompressobj_runner(module: str) -> Callable[[], Runner]:
    """The zlib-style API by hand, output bounded by max_length as a streaming reader's is."""
    def load() -> Runner:
        mod = importlib.import_module(module)

        def run(raw: BinaryIO) -> int:
            total = 0
            d = mod.decompressobj(31)
            while piece := raw.read(OUT_READ):  # Piecewise caps it at --piece
                while True:
                    out = d.decompress(piece, OUT_READ)
                    total += len(out)
                    if d.eof:  # next member, if any
                        piece = d.unused_data.lstrip(b"\0")
                        d = mod.decompressobj(31)
                        if not piece:
                            break
                        continue
                    piece = d.unconsumed_tail
                    if not piece and len(out) < OUT_READ:
                        break
            return total
        return run
    return load


def _ours() -> Runner:
    from chunked.read.gzipstream import open_gzip
    return lambda raw: _drain(open_gzip(raw))


CANDIDATES: list[tuple[str, Callable[[], Runner]]] = [
    ("stdlib gzip.GzipFile", _file_runner("gzip", "GzipFile")),
    ("stdlib zlib.decompressobj", _decompressobj_runner("zlib")),
    ("isal igzip.IGzipFile", _file_runner("isal.igzip", "IGzipFile")),
    ("isal isal_zlib.decompressobj", _decompressobj_runner("isal.isal_zlib")),
    ("isal igzip_threaded (1 thread)", _threaded_runner("isal.igzip_threaded")),
    ("zlib-ng gzip_ng.GzipFile", _file_runner("zlib_ng.gzip_ng", "GzipFile")),
    ("zlib-ng zlib_ng.decompressobj", _decompressobj_runner("zlib_ng.zlib_ng")),
    ("zlib-ng gzip_ng_threaded (1 thread)", _threaded_runner("zlib_ng.gzip_ng_threaded")),
    ("chunked.read.gzipstream.open_gzip", _ours),
]
BASELINE = "stdlib gzip.GzipFile"


def versions() -> str:
    found = [f"zlib {zlib.ZLIB_RUNTIME_VERSION}"]
    for dist in ("isal", "zlib-ng"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"where the inputs live (default {DEFAULT_CACHE})")
    p.add_argument("--runs", type=int, default=3, help="rounds; the best counts (3)")
    p.add_argument("--piece", type=int, default=64 << 10,
                   help="most compressed bytes one read returns (65536)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.piece < 1:
        p.error("--runs and --piece must be at least 1")

    runners: dict[str, Runner] = {}
    for name, load in CANDIDATES:
        try:
            runners[name] = load()
        except ImportError as exc:
            print(f"{name:38} skipped: not importable ({exc})")
    print(f"python {sys.version.split()[0]}, {versions()}; compressed input read "
          f"{args.piece} bytes at a time, output read {OUT_READ >> 20} MiB at a time; "
          f"best of {args.runs}")

    cache: Path = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    inputs = [("rootfs", rootfs_input(cache)), ("mixed", mixed_input(cache))]
    failed = False
    for label, found in inputs:
        if found is None:
            continue
        gz, size = found
        warm_cache(gz)
        print(f"\n{label}: {gz} {gz.stat().st_size:,} bytes -> {size:,} bytes "
              f"(compressed to {gz.stat().st_size / size:.1%})")
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.runs):
            for name, run in runners.items():
                raw = Piecewise(gz, args.piece)
                wall0, cpu0 = time.perf_counter(), time.process_time()
                try:
                    got = run(raw)
                finally:
                    raw.close()
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                if got != size:
                    print(f"{name}: WRONG: {got:,} bytes out, not {size:,}")
                    failed = True
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
        base = best.get(BASELINE)
        print(f"{'candidate':38} {'MB/s':>8} {'x stdlib':>9} {'wall s':>8} {'cpu s':>8}")
        for name, (wall, cpu) in best.items():
            ratio = f"{base[0] / wall:9.2f}" if base else f"{'-':>9}"
            print(f"{name:38} {size / wall / 1e6:8.1f} {ratio} {wall:8.3f} {cpu:8.3f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
