#!/usr/bin/env python3
"""Time to a container's first output: `chunked store` against podman 4.3's own pulls.

The Debian rootfs that benchmarks/bench_build.py makes (with python3) is built as a
zstd:chunked image and pushed to Debian's docker-registry on 127.0.0.1, behind a proxy
sharing 100 Mbit/s among all connections with 20 ms per request (the emulated WAN;
--loopback measures without it). For each contender, on fresh podman storage, the time
from the start of `podman pull IMG` to the first line `podman run --rm IMG python3 -c
'print(42)'` prints:

* store: podman 4.3 with `chunked store` as its additional layer store (fresh cache);
* podman partial: podman 4.3's own partial pull (enable_partial_images), then the run;
* full pull: podman 4.3 pulling the layer whole, then the run.

Then a second run of the same image, warm: the store's against the full pull's (a run from
local storage). Bytes and requests are counted by the proxy; for the store, where the
time goes: the pull (lookups, TOC and tar-split fetch), and the run (first reads).

Method: every timed step is preceded by sync and a 2 s pause (not timed); contenders take
turns, rotated over --runs repetitions; nothing is deleted until the end, as a large
delete slows the writes that follow it on this VM. Times are the best of N, the median is
shown too. Usage: python benchmarks/bench_store.py [--runs N] [--loopback] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_build import DEFAULT_CACHE, make_rootfs_tar  # noqa: E402
from benchmarks.common import compile_bytecode  # noqa: E402
from tests.clirun import COMMAND as CHUNKED  # noqa: E402
from tests.peers import Podman, make_podman, skopeo_copy, start_registry  # noqa: E402
from tests.proxy import Proxy, ProxyOptions  # noqa: E402

CONTENDERS = ("store", "partial", "full")
NAMES = {"store": "chunked store", "prefetch": "chunked store --prefetch",
         "partial": "podman partial pull", "full": "full pull"}
GOALS = {"partial": 4.0, "full": 10.0}  # the store at least this many times sooner
GOAL_BYTES = 0.15  # of the image's blob
GOAL_WARM = 1.2  # a warm run against one from local storage
IN_CONTAINER = ("python3", "-c", "print(42)")  # what the timed container runs


def chunked(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHUNKED, *args], check=True,
                          capture_output=True, text=True, cwd=REPO)


def settle() -> None:
    os.sync()
    time.sleep(2)


def first_output(podman: Podman, ref: str) -> float:
    """Seconds until `podman run --rm REF python3 -c 'print(42)'` prints its line."""
    t0 = time.monotonic()
    proc = subprocess.Popen(podman.command("run", "--rm", ref, *IN_CONTAINER), env=podman.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - t0
    _, err = proc.communicate(timeout=300)
    if line.strip() != "42" or proc.returncode != 0:
        raise RuntimeError(f"podman run gave {line!r}, exit {proc.returncode}: {err[-2000:]}")
    return elapsed


def measure(kind: str, proxy: Proxy, ref: str, work: Path, r: dict[str, float],
            podmans: list[Podman]) -> None:
    store = None
    if kind in ("store", "prefetch"):
        store = work / "store"
        store.mkdir()
        chunked("store", str(store), "--tls-verify=false", "--cache", str(work / "cache"),
                *(["--prefetch"] if kind == "prefetch" else []))
    # podman refuses a runroot path longer than 50 characters
    podman = make_podman(Path(tempfile.mkdtemp(prefix="cbs-", dir="/tmp")), [proxy.host],
                         partial=kind == "partial", mount_program="", layer_store=store)
    podmans.append(podman)
    settle()
    proxy.bytes_sent = proxy.requests = 0
    t0 = time.monotonic()
    pulled = podman.pull(ref)
    r[f"{kind}_pull_s"] = time.monotonic() - t0
    if not pulled.ok:
        raise RuntimeError(f"{kind}: podman pull failed: {pulled.log[-2000:]}")
    r[f"{kind}_pull_bytes"] = proxy.bytes_sent
    run_s = first_output(podman, ref)
    r[f"{kind}_run_s"] = run_s
    r[f"{kind}_s"] = r[f"{kind}_pull_s"] + run_s
    r[f"{kind}_bytes"] = proxy.bytes_sent
    r[f"{kind}_requests"] = proxy.requests
    if kind == "store":
        layers = json.loads(chunked("stats", str(store), "--json").stdout)["layers"]
        r["store_open_s"] = sum(x["openSeconds"] for x in layers)
        r["store_files_fetched"] = sum(x["filesFetched"] for x in layers)
        r["store_fetch_requests"] = sum(x["requests"] for x in layers)
    settle()
    r[f"{kind}_warm_s"] = first_output(podman, ref)


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for r in runs for k in r})
    return {k: {"best": min(r[k] for r in runs), "median": statistics.median(r[k] for r in runs)}
            for k in keys}


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=2, metavar="N")
    ap.add_argument("--loopback", action="store_true", help="no emulated WAN")
    ap.add_argument("--prefetch", action="store_true",
                    help="also measure the store with --prefetch")
    ap.add_argument("--bandwidth-mbit", type=float, default=100.0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    compile_bytecode()

    work = Path(tempfile.mkdtemp(prefix="chunked-bench-store-", dir="/var/tmp"))
    rootfs = make_rootfs_tar(DEFAULT_CACHE, None)
    registry = start_registry(work / "registry")
    opts = ProxyOptions() if args.loopback else ProxyOptions(
        delay=args.delay_ms / 1000, bandwidth=args.bandwidth_mbit * 1e6 / 8)
    proxy = Proxy(registry.url, opts)
    podmans: list[Podman] = []
    runs: list[dict[str, float]] = []
    try:
        chunked("build", str(rootfs), "--image", f"oci:{work / 'img'}:1", "-q")
        skopeo_copy(f"oci:{work / 'img'}:1", f"docker://{registry.host}/bench/py:1")
        index = json.loads((work / "img/index.json").read_text())
        manifest = json.loads((work / "img/blobs/sha256" /
                               index["manifests"][0]["digest"].split(":")[1]).read_text())
        blob_size = sum(x["size"] for x in manifest["layers"])
        ref = f"{proxy.host}/bench/py:1"
        contenders = CONTENDERS + (("prefetch",) if args.prefetch else ())
        for i in range(args.runs):
            n = len(contenders)
            order = contenders[i % n:] + contenders[:i % n]
            print(f"[bench] run {i + 1}/{args.runs}: {', '.join(order)}", file=sys.stderr)
            r: dict[str, float] = {}
            for kind in order:
                rep = work / f"run-{i + 1}-{kind}"
                rep.mkdir()
                measure(kind, proxy, ref, rep, r, podmans)
            runs.append(r)
    finally:
        for podman in podmans:
            podman.close()
        for store in work.glob("run-*/store"):
            subprocess.run([*CHUNKED, "umount", str(store)],
                           capture_output=True, cwd=REPO)
        proxy.close()
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    sm = summarize(runs)
    if args.json:
        print(json.dumps({"runs": runs, "summary": sm, "blob_bytes": blob_size}, indent=2))
        return 0
    net = "loopback" if args.loopback else \
        f"{args.bandwidth_mbit:.0f} Mbit/s, {args.delay_ms:.0f} ms per request"
    print(f"{rootfs.stat().st_size / 2**20:.0f} MiB rootfs, zstd:chunked blob "
          f"{blob_size / 2**20:.1f} MiB; {net}; best of {args.runs} (median)")
    print(f"  {'':<22} {'pull':>8} {'to 42':>8} {'total':>8} {'MiB':>8} {'reqs':>6} "
          f"{'warm run':>9}")
    for kind in NAMES:
        if f"{kind}_s" not in sm:
            continue
        b = {k: sm[f"{kind}_{k}"]["best"] for k in ("pull_s", "run_s", "s", "bytes",
                                                   "requests", "warm_s")}
        print(f"  {NAMES[kind]:<22} {b['pull_s']:8.2f} {b['run_s']:8.2f} {b['s']:8.2f} "
              f"{b['bytes'] / 2**20:8.1f} {b['requests']:6.0f} {b['warm_s']:9.2f}   "
              f"(total median {sm[f'{kind}_s']['median']:.2f})")
    s = sm["store_s"]["best"]
    print(f"  store: TOC and tar-split fetch {sm['store_open_s']['best']:.2f} s, "
          f"{sm['store_files_fetched']['best']:.0f} files read in "
          f"{sm['store_fetch_requests']['best']:.0f} requests")
    for kind, goal in GOALS.items():
        ratio = sm[f"{kind}_s"]["best"] / s
        print(f"  goal: {ratio:.1f}x sooner than {NAMES[kind]} (>= {goal:.0f}x) "
              f"{verdict(ratio >= goal)}")
    frac = sm["store_bytes"]["best"] / blob_size
    print(f"  goal: bytes {100 * frac:.1f}% of the image (<= {100 * GOAL_BYTES:.0f}%) "
          f"{verdict(frac <= GOAL_BYTES)}")
    warm = sm["store_warm_s"]["best"] / sm["full_warm_s"]["best"]
    print(f"  goal: warm run {warm:.2f}x a run from local storage (<= {GOAL_WARM}) "
          f"{verdict(warm <= GOAL_WARM)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
