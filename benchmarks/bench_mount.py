#!/usr/bin/env python3
"""Lazy mount against a full pull, on loopback and through a WAN emulation.

One run, one image (a Debian bookworm rootfs built as a zstd:chunked layer; the tar is
the one benchmarks/bench_build.py makes and caches), Debian's docker-registry on
127.0.0.1 behind a loopback proxy that shares 100 Mbit/s among all connections and
adds 20 ms to every request. Measured:

1. time to the first byte of a chosen file: `chunked mount` + open + read, against a
   full pull (`skopeo copy docker://... dir:` then `zstd -dc | tar -x`);
2. bytes moved by each (counted by the proxy);
3. warm sequential read throughput of the largest file through the mount, against
   reading the extracted copy from local disk;
4. reading every file through a fresh mount with --prefetch, against the full pull.

Usage: python benchmarks/bench_mount.py [--tar PATH] [--file PATH-IN-IMAGE] [--json]
       [--bandwidth-mbit 100] [--delay-ms 20]
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
from benchmarks.common import compile_bytecode  # noqa: E402
from tests.clirun import COMMAND  # noqa: E402
from tests.peers import skopeo_copy, start_registry  # noqa: E402
from tests.proxy import Proxy, ProxyOptions  # noqa: E402

GOAL_FIRST_BYTE_X = 10.0
GOAL_WARM_NATIVE = 0.5


def chunked(*args: str) -> str:
    p = subprocess.run([*COMMAND, *args], capture_output=True,
                       text=True, cwd=REPO)
    if p.returncode:
        raise SystemExit(f"chunked {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def drop_caches() -> None:
    # so that "local disk" and the extracted copy are not just RAM
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(1 << 20):
            n += len(piece)
    return n


def full_pull(ref: str, work: Path) -> tuple[float, Path]:
    """skopeo copy to a dir, then extract the layer: the file is there at the end."""
    start = time.monotonic()
    dest = work / "pulled"
    skopeo_copy(f"docker://{ref}", f"dir:{dest}", "--src-tls-verify=false")
    manifest = json.loads((dest / "manifest.json").read_text())
    root = work / "rootfs"
    root.mkdir()
    for layer in manifest["layers"]:
        blob = dest / layer["digest"].split(":")[1]
        subprocess.run(f"zstd -dc {blob} | tar -x -C {root}", shell=True, check=True)
    return time.monotonic() - start, root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tar", type=Path, help="input tar (default: the cached Debian rootfs)")
    ap.add_argument("--file", default="usr/bin/perl", help="the file whose first byte counts")
    ap.add_argument("--bandwidth-mbit", type=float, default=100.0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    compile_bytecode()

    tar = args.tar or make_rootfs_tar(DEFAULT_CACHE, None)
    work = Path(tempfile.mkdtemp(prefix="chunked-bench-mount-"))
    image = f"oci:{work / 'img'}:1"
    chunked("build", str(tar), "--image", image, "-q")
    registry = start_registry(work / "registry")
    results: dict[str, dict[str, float]] = {}
    try:
        skopeo_copy(image, f"docker://{registry.host}/bench/rootfs:1")
        for label, opts in (
            ("loopback", ProxyOptions()),
            ("wan", ProxyOptions(delay=args.delay_ms / 1000,
                                 bandwidth=args.bandwidth_mbit * 1e6 / 8)),
        ):
            proxy = Proxy(registry.url, opts)
            ref = f"{proxy.host}/bench/rootfs:1"
            r: dict[str, float] = {}
            try:
                # 1. first byte through a lazy mount
                mnt = work / f"mnt-{label}"
                mnt.mkdir()
                proxy.bytes_sent = 0
                t0 = time.monotonic()
                chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache")
                os.listdir(mnt)  # ready: the TOC in, a first ls answered
                r["mount_ready_s"] = time.monotonic() - t0
                with open(mnt / args.file, "rb") as f:
                    f.read(1)
                r["mount_first_byte_s"] = time.monotonic() - t0
                r["mount_first_byte_bytes"] = proxy.bytes_sent
                # 3. warm sequential reads of the largest file
                largest = max((p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink()),
                              key=lambda p: p.stat().st_size)
                read_all(largest)
                t0 = time.monotonic()
                size = read_all(largest)
                r["warm_mount_MBps"] = size / (time.monotonic() - t0) / 1e6
                chunked("umount", str(mnt))
                # 4. every file through a fresh mount (prefetching, as a user reading
                # everything would ask for)
                proxy.bytes_sent = 0
                t0 = time.monotonic()
                chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache",
                        "--prefetch")
                total = 0
                for p in sorted(mnt.rglob("*")):
                    if p.is_file() and not p.is_symlink():
                        total += read_all(p)
                r["mount_all_files_s"] = time.monotonic() - t0
                r["mount_all_files_bytes"] = proxy.bytes_sent
                chunked("umount", str(mnt))
                # 2. full pull
                proxy.bytes_sent = 0
                pull_dir = work / f"pull-{label}"
                pull_dir.mkdir()
                r["full_pull_s"], root = full_pull(ref, pull_dir)
                r["full_pull_bytes"] = proxy.bytes_sent
                drop_caches()
                read_all(root / largest.relative_to(mnt))
                t0 = time.monotonic()
                read_all(root / largest.relative_to(mnt))
                r["warm_local_MBps"] = size / (time.monotonic() - t0) / 1e6
                r["largest_file_bytes"] = size
                subprocess.run(["rm", "-rf", str(pull_dir)], check=True)
            finally:
                if os.path.ismount(work / f"mnt-{label}"):
                    chunked("umount", str(work / f"mnt-{label}"))
                proxy.close()
            results[label] = r
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"image: {tar} ({tar.stat().st_size / 2**20:.1f} MiB tar); file {args.file}")
    for label, r in results.items():
        fb = r["full_pull_s"] / r["mount_first_byte_s"]
        warm = r["warm_mount_MBps"] / r["warm_local_MBps"]
        every = r["mount_all_files_s"] / r["full_pull_s"]
        print(f"\n[{label}]")
        print(f"  first byte: mount {r['mount_first_byte_s']:.2f} s "
              f"({r['mount_first_byte_bytes'] / 2**20:.2f} MiB moved), full pull "
              f"{r['full_pull_s']:.2f} s ({r['full_pull_bytes'] / 2**20:.1f} MiB moved): "
              f"{fb:.1f}x sooner (goal >= {GOAL_FIRST_BYTE_X:.0f}x) "
              f"{'ok' if fb >= GOAL_FIRST_BYTE_X else 'MISSED'}")
        print(f"  warm sequential read of a {r['largest_file_bytes'] / 2**20:.1f} MiB file: "
              f"mount {r['warm_mount_MBps']:.0f} MB/s, local disk "
              f"{r['warm_local_MBps']:.0f} MB/s: {warm:.0%} of native (goal >= 50%) "
              f"{'ok' if warm >= GOAL_WARM_NATIVE else 'MISSED'}")
        print(f"  mount ready (TOC in, first ls answered): {r['mount_ready_s']:.2f} s "
              f"(goal <= 0.3 s) {'ok' if r['mount_ready_s'] <= 0.3 else 'MISSED'}")
        print(f"  every file through the mount: {r['mount_all_files_s']:.2f} s "
              f"({r['mount_all_files_bytes'] / 2**20:.1f} MiB moved) vs full pull "
              f"{r['full_pull_s']:.2f} s: {every:.2f}x (goal <= 1) "
              f"{'ok' if every <= 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
