#!/usr/bin/env python3
"""`chunked pull` against podman 4.3's partial pull and a full pull, first pull and update.

The same two images in one local registry (Debian's docker-registry on 127.0.0.1): v1 is
the Debian rootfs that benchmarks/bench_build.py makes, v2 is v1 with some files changed
and a few added. Each is measured directly on loopback and through a proxy sharing
100 Mbit/s among all connections with 20 ms per request:

* chunked pull REF DEST (fresh store for the first pull; the update reuses what v1 left),
  and the update once more with --hardlink (an option, reported apart from the goals);
* podman 4.3 pull with enable_partial_images (fresh storage; the update on top of v1);
* a full pull: skopeo copy docker://... dir: then zstd -dc | tar -x.

Method: creating files costs the kernel up to 5x more while earlier runs' writeback is
still going on, so every timed run is preceded by sync and a 2 s pause (not timed). The
whole measurement is repeated --runs times (default 2), each time on fresh destinations,
stores and podman storage, with the tools' order rotated so none always goes first or
last; the trees are kept until the end, as deleting them would slow the runs that follow.
Times are the best of N (the median is shown too); ratios and goals use the best times.
Bytes are counted by the proxy. Usage: python benchmarks/bench_pull.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_build import DEFAULT_CACHE, make_rootfs_tar  # noqa: E402
from benchmarks.bench_mount import full_pull  # noqa: E402
from benchmarks.common import compile_bytecode  # noqa: E402
from tests.clirun import COMMAND  # noqa: E402
from tests.peers import Podman, make_podman, skopeo_copy, start_registry  # noqa: E402
from tests.proxy import Proxy, ProxyOptions  # noqa: E402

GOAL_VS_PODMAN = 0.8
GOAL_RSS_MIB = 128  # issue 12: a pull's peak RSS, whatever the image
TOOLS = ("chunked", "podman", "full")
STEPS = (("first", "1"), ("update", "2"))
# the report's rows per step: (key prefix, name)
ROWS = {
    "first": (("chunked", "chunked"), ("podman", "podman"), ("full", "full pull")),
    "update": (("chunked", "chunked"), ("chunked_hardlink", "chunked --hardlink"),
               ("podman", "podman"), ("full", "full pull")),
}


def make_v2(v1: Path, v2: Path, every: int = 300) -> int:
    """v1 with every Nth regular file rewritten and two files added; returns files changed."""
    rng = random.Random(2)
    changed = 0
    with tarfile.open(v1) as src, tarfile.open(v2, "w", format=tarfile.PAX_FORMAT) as dst:
        n = 0
        for m in src:
            data = src.extractfile(m).read() if m.isreg() else None
            if m.isreg():
                n += 1
                if n % every == 0 and data:
                    data = data[: len(data) // 2] + rng.randbytes(min(4096, len(data)))
                    m.size = len(data)
                    changed += 1
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
        for name in ("opt/new-1.bin", "opt/new-2.bin"):
            ti = tarfile.TarInfo(name)
            payload = rng.randbytes(1 << 20)
            ti.size = len(payload)
            dst.addfile(ti, io.BytesIO(payload))
    return changed + 2


def chunked(*args: str) -> int | None:
    """Run one command; its peak RSS in KiB, by GNU time where it is installed (a C
    program: it adds a millisecond, where a launcher interpreter would add 15)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss.name] \
            if os.path.exists("/usr/bin/time") else []
        subprocess.run([*timed, *COMMAND, *args], check=True,
                       capture_output=True, cwd=REPO)
        text = rss.read().strip().splitlines()
    return int(text[-1]) if timed and text and text[-1].isdigit() else None


def settle() -> None:
    """Wait out earlier runs' writeback: while it goes on, creating files costs up to 5x."""
    os.sync()
    time.sleep(2)


def measure_chunked(proxy: Proxy, host: str, rep: Path, r: dict[str, float]) -> None:
    store = rep / "store"
    for step, tag in STEPS:
        settle()
        proxy.bytes_sent = 0
        t0 = time.monotonic()
        rss = chunked("pull", f"docker://{host}/bench/os:{tag}", str(rep / f"chunked-{tag}"),
                      "--tls-verify=false", "--cache", str(store), "-q")
        r[f"chunked_{step}_s"] = time.monotonic() - t0
        if rss is not None:
            r[f"chunked_{step}_rss_mib"] = rss / 1024
        r[f"chunked_{step}_bytes"] = proxy.bytes_sent
        if step == "first":
            # The --hardlink update needs the store as v1 left it: with the normal update's
            # record in it, it would link v2's changed files from there and fetch nothing.
            # The store holds only the records of pulls, so copying it is cheap.
            shutil.copytree(store, rep / "store-hardlink")
    settle()
    proxy.bytes_sent = 0
    t0 = time.monotonic()
    chunked("pull", f"docker://{host}/bench/os:2", str(rep / "chunked-2-hardlink"),
            "--tls-verify=false", "--cache", str(rep / "store-hardlink"), "--hardlink", "-q")
    r["chunked_hardlink_update_s"] = time.monotonic() - t0
    r["chunked_hardlink_update_bytes"] = proxy.bytes_sent


def measure_podman(proxy: Proxy, host: str, label: str, r: dict[str, float],
                   podmans: list[Podman]) -> None:
    # podman refuses a runroot path longer than 50 characters
    podman = make_podman(Path(tempfile.mkdtemp(prefix="cbp-", dir="/tmp")), [host])
    # closing resets and deletes the storage: left to the end like the other trees
    podmans.append(podman)
    for step, tag in STEPS:
        settle()
        proxy.bytes_sent = 0
        t0 = time.monotonic()
        result = podman.pull(f"{host}/bench/os:{tag}")
        r[f"podman_{step}_s"] = time.monotonic() - t0
        r[f"podman_{step}_bytes"] = proxy.bytes_sent
        r[f"podman_{step}_partial"] = float(result.partial)
        if not result.ok or not result.partial:
            print(f"[bench] podman {label} {step}: rc={result.returncode} "
                  f"{result.log.strip().splitlines()[-1:]}", file=sys.stderr)


def measure_full(proxy: Proxy, host: str, rep: Path, r: dict[str, float]) -> None:
    for step, tag in STEPS:
        pull_dir = rep / f"full-{tag}"
        pull_dir.mkdir()
        settle()
        proxy.bytes_sent = 0
        r[f"full_{step}_s"], _ = full_pull(f"{host}/bench/os:{tag}", pull_dir)
        r[f"full_{step}_bytes"] = proxy.bytes_sent


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per row: best and median time over the runs; bytes (equal in every run) of the best."""
    out: dict[str, dict[str, float]] = {}
    for step, rows in ROWS.items():
        for tool, _ in rows:
            key = f"{tool}_{step}"
            times = [r[f"{key}_s"] for r in runs]
            best = min(range(len(runs)), key=times.__getitem__)
            s = {"best_s": times[best], "median_s": statistics.median(times),
                 "bytes": runs[best][f"{key}_bytes"], "best_run": best + 1}
            if tool == "podman":
                s["partial_runs"] = sum(r[f"{key}_partial"] for r in runs)
            rss = [r[f"{key}_rss_mib"] for r in runs if f"{key}_rss_mib" in r]
            if rss:
                s["peak_rss_mib"] = max(rss)  # the worst run: a bound, not a best case
            out[key] = s
    return out


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=2, metavar="N",
                    help="repetitions; times are the best of N (default 2)")
    ap.add_argument("--bandwidth-mbit", type=float, default=100.0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="chunked-bench-pull-", dir="/var/tmp"))
    v1 = make_rootfs_tar(DEFAULT_CACHE, None)
    v2 = work / "v2.tar"
    n_changed = make_v2(v1, v2)
    registry = start_registry(work / "registry")
    results: dict[str, list[dict[str, float]]] = {}
    orders: dict[str, list[list[str]]] = {}
    podmans: list[Podman] = []
    try:
        for tag, tar in (("1", v1), ("2", v2)):
            chunked("build", str(tar), "--image", f"oci:{work / 'img'}:{tag}", "-q")
            skopeo_copy(f"oci:{work / 'img'}:{tag}", f"docker://{registry.host}/bench/os:{tag}")
        for label, opts in (
            ("loopback", ProxyOptions()),
            ("wan", ProxyOptions(delay=args.delay_ms / 1000,
                                 bandwidth=args.bandwidth_mbit * 1e6 / 8)),
        ):
            proxy = Proxy(registry.url, opts)
            host = proxy.host
            results[label], orders[label] = [], []
            try:
                for i in range(args.runs):
                    # rotated, so that no tool always runs first (or last) in a repetition
                    order = TOOLS[i % len(TOOLS):] + TOOLS[:i % len(TOOLS)]
                    print(f"[bench] {label} run {i + 1}/{args.runs}: {', '.join(order)}",
                          file=sys.stderr)
                    rep = work / label / f"run-{i + 1}"
                    rep.mkdir(parents=True)
                    r: dict[str, float] = {}
                    for tool in order:
                        if tool == "chunked":
                            measure_chunked(proxy, host, rep, r)
                        elif tool == "podman":
                            measure_podman(proxy, host, label, r, podmans)
                        else:
                            measure_full(proxy, host, rep, r)
                    results[label].append(r)
                    orders[label].append(list(order))
            finally:
                proxy.close()
    finally:
        for podman in podmans:
            podman.close()
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    summaries = {label: summarize(runs) for label, runs in results.items()}
    if args.json:
        networks: dict[str, Any] = {
            label: {"runs": [{"order": o, **r}
                             for o, r in zip(orders[label], runs, strict=True)],
                    "summary": summaries[label]}
            for label, runs in results.items()}
        print(json.dumps({"runs": args.runs, "v2_files_changed": n_changed,
                          "networks": networks}, indent=2))
        return 0
    print(f"v1: {v1} ({v1.stat().st_size / 2**20:.0f} MiB tar); v2: {n_changed} files "
          f"changed or added; times: best of {args.runs} (median)")
    for label, sm in summaries.items():
        print(f"\n[{label}]")
        for step, rows in ROWS.items():
            for j, (tool, name) in enumerate(rows):
                s = sm[f"{tool}_{step}"]
                if tool == "podman":
                    n_partial = int(s["partial_runs"])
                    name += (" (partial)" if n_partial == args.runs else
                             f" (partial in {n_partial}/{args.runs})")
                print(f"  {step if j == 0 else '':>6}  {name:<24} {s['best_s']:7.2f} s "
                      f"({s['median_s']:6.2f}) {s['bytes'] / 2**20:8.1f} MiB")
            c, p, f = (sm[f"{t}_{step}"] for t in ("chunked", "podman", "full"))
            print(f"          goals, best of {args.runs}: bytes vs podman "
                  f"{c['bytes'] / max(p['bytes'], 1):.2f}x (<= 1) "
                  f"{verdict(c['bytes'] <= p['bytes'])}; time vs podman "
                  f"{c['best_s'] / p['best_s']:.2f}x (<= {GOAL_VS_PODMAN}) "
                  f"{verdict(c['best_s'] <= GOAL_VS_PODMAN * p['best_s'])}; time vs full pull "
                  f"{c['best_s'] / f['best_s']:.2f}x (<= 1) {verdict(c['best_s'] <= f['best_s'])}")
            if "peak_rss_mib" in c:
                print(f"          chunked pull's peak RSS {c['peak_rss_mib']:.0f} MiB "
                      f"(<= {GOAL_RSS_MIB}) {verdict(c['peak_rss_mib'] <= GOAL_RSS_MIB)}")
            if step == "update":
                h = sm["chunked_hardlink_update"]
                print(f"          with --hardlink (an option, not the goal): time vs podman "
                      f"{h['best_s'] / p['best_s']:.2f}x; time vs full pull "
                      f"{h['best_s'] / f['best_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
