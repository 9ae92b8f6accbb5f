#!/usr/bin/env python3
"""A pull and a first lazy read behind a registry refusing multi-range requests, against
the same behind a normal registry.

The Debian rootfs image (benchmarks/bench_build.py, built as zstd:chunked) in Debian's
docker-registry, behind two emulated WAN links (100 Mbit/s shared, 20 ms per request): one
passes requests on as they are, the other answers 501 to any request for several ranges,
as GHCR's CDN does. Measured on each, fresh each time (--no-cache):

* `chunked pull` of the image;
* a first lazy read: `chunked cat` of a 2.9 MB binary (usr/bin/python3.11) and of a few
  small files (one command each).

Every timed step starts after sync and a 2 s pause; the links take turns.
Usage: python benchmarks/bench_wild.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_build import DEFAULT_CACHE, make_rootfs_tar  # noqa: E402
from benchmarks.common import best_and_median, compile_bytecode  # noqa: E402
from tests.clirun import COMMAND  # noqa: E402
from tests.peers import skopeo_copy, start_registry  # noqa: E402
from tests.proxy import Proxy, ProxyOptions  # noqa: E402

GOAL = 1.1
READS = ("usr/bin/python3.11", "usr/lib/os-release", "etc/passwd", "etc/debian_version")


def settle() -> None:
    os.sync()
    time.sleep(2)


def chunked(*args: str) -> None:
    subprocess.run([*COMMAND, *args], check=True,
                   capture_output=True, cwd=REPO)


def measure(proxy: Proxy, work: Path, tag: str, r: dict[str, float]) -> None:
    ref = f"docker://{proxy.host}/bench/wild:1"
    settle()
    proxy.bytes_sent = proxy.requests = 0
    t0 = time.monotonic()
    chunked("pull", ref, str(work / f"pull-{tag}"), "--tls-verify=false", "--no-cache", "-q")
    r[f"{tag}_pull_s"] = time.monotonic() - t0
    r[f"{tag}_pull_bytes"] = proxy.bytes_sent
    r[f"{tag}_pull_requests"] = proxy.requests
    settle()
    proxy.bytes_sent = proxy.requests = 0
    t0 = time.monotonic()
    for path in READS:
        subprocess.run([*COMMAND, "cat", ref, path,
                        "--tls-verify=false"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, cwd=REPO)
    r[f"{tag}_read_s"] = time.monotonic() - t0
    r[f"{tag}_read_bytes"] = proxy.bytes_sent
    r[f"{tag}_read_requests"] = proxy.requests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bandwidth-mbit", type=float, default=100.0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    compile_bytecode()

    work = Path(tempfile.mkdtemp(prefix="chunked-bench-wild-", dir="/var/tmp"))
    rootfs = make_rootfs_tar(DEFAULT_CACHE, None)
    registry = start_registry(work / "registry")
    wan = {"delay": args.delay_ms / 1000, "bandwidth": args.bandwidth_mbit * 1e6 / 8}
    normal = Proxy(registry.url, ProxyOptions(**wan))
    refusing = Proxy(registry.url, ProxyOptions(multirange_status=501, **wan))
    runs: list[dict[str, float]] = []
    try:
        chunked("build", str(rootfs), "--image", f"oci:{work / 'img'}:1", "-q")
        skopeo_copy(f"oci:{work / 'img'}:1", f"docker://{registry.host}/bench/wild:1")
        for i in range(args.runs):
            r: dict[str, float] = {}
            order = [("normal", normal), ("501", refusing)]
            for tag, proxy in order if i % 2 == 0 else order[::-1]:
                measure(proxy, work / f"run-{i}", tag, r)
            runs.append(r)
            print(f"[bench] run {i + 1}/{args.runs} done", file=sys.stderr)
    finally:
        normal.close()
        refusing.close()
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    best, median = best_and_median(runs)
    if args.json:
        print(json.dumps({"runs": runs, "best": best, "median": median}, indent=2))
        return 0
    print(f"Debian rootfs image ({rootfs.stat().st_size >> 20} MiB tar); "
          f"{args.bandwidth_mbit:.0f} Mbit/s, {args.delay_ms:.0f} ms per request; "
          f"best of {len(runs)} (median)")
    for step, name in (("pull", "chunked pull"), ("read", "first lazy reads (4 cat)")):
        for tag, label in (("normal", "normal registry"), ("501", "501 to multi-range")):
            print(f"  {name:<26} {label:<20} {best[f'{tag}_{step}_s']:7.2f} s "
                  f"({median[f'{tag}_{step}_s']:.2f})  {best[f'{tag}_{step}_bytes'] / 2**20:8.2f}"
                  f" MiB  {best[f'{tag}_{step}_requests']:6.0f} requests")
        t = best[f"501_{step}_s"] / best[f"normal_{step}_s"]
        b = best[f"501_{step}_bytes"] / best[f"normal_{step}_bytes"]
        ok = "ok" if t <= GOAL and b <= GOAL else "MISSED"
        print(f"  goal ({name}): time {t:.2f}x, bytes {b:.2f}x the normal registry's "
              f"(<= {GOAL}) {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
