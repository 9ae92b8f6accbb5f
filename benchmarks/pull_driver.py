#!/usr/bin/env python3
"""Iterate on `chunked pull` quickly: bench_pull.py's v1/v2 images built once and kept, a
registry started on them, then only the asked phases timed (loopback, behind the same
counting proxy as bench_pull.py), each timed run alone under the benchmark lock.

Usage: python benchmarks/pull_driver.py [--runs N] [--first] [--update] [--hardlink]
       [--podman] [--keep]
The images live in /var/tmp/chunked-bench/pull-driver (made on first use). Times are
wall-clock, with the CPU time of the pull beside them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_build import DEFAULT_CACHE, make_rootfs_tar  # noqa: E402
from benchmarks.bench_pull import make_v2  # noqa: E402
from benchmarks.common import compile_bytecode  # noqa: E402
from tests.clirun import COMMAND  # noqa: E402
from tests.peers import Podman, make_podman, skopeo_copy, start_registry  # noqa: E402
from tests.proxy import Proxy, ProxyOptions  # noqa: E402

WORK = DEFAULT_CACHE / "pull-driver"
LOCK = "/tmp/chunked-bench.lock"
# ext4 without a journal skips inodes freed less than 60 s ago (360 s while their table
# block is dirty) when it allocates one, testing each in turn: creating files right after
# a large delete costs several times more. Our own deletes are waited out.
DELETED = WORK / "deleted-at"
QUIET_AFTER_DELETE = 70.0


def wait_out_deletes() -> None:
    try:
        left = QUIET_AFTER_DELETE - (time.time() - DELETED.stat().st_mtime)
    except FileNotFoundError:
        return
    if left > 0:
        print(f"[driver] waiting {left:.0f} s after the last delete", file=sys.stderr)
        time.sleep(left)


def locked(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU (children's user + sys) seconds of fn, run alone under the lock."""
    os.sync()
    with open(LOCK, "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        os.sync()
        time.sleep(2)
        c0 = os.times()
        t0 = time.monotonic()
        fn()
        wall = time.monotonic() - t0
        c1 = os.times()
    return wall, (c1.children_user - c0.children_user) + (c1.children_system
                                                          - c0.children_system)


def build(registry_host: str) -> None:
    v1 = make_rootfs_tar(DEFAULT_CACHE, None)
    v2 = WORK / "v2.tar"
    make_v2(v1, v2)
    for tag, tar in (("1", v1), ("2", v2)):
        subprocess.run([*COMMAND, "build", str(tar), "--image",
                        f"oci:{WORK / 'img'}:{tag}", "-q"], check=True, cwd=REPO)
        skopeo_copy(f"oci:{WORK / 'img'}:{tag}", f"docker://{registry_host}/bench/os:{tag}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--first", action="store_true")
    ap.add_argument("--update", action="store_true")
    ap.add_argument("--hardlink", action="store_true")
    ap.add_argument("--podman", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the trees (print where)")
    ap.add_argument("--code", action="append", metavar="DIR",
                    help="run chunked from this source tree (repeatable: each in turn, "
                         "for before/after in one run; default this one)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    registry = start_registry(WORK / "registry")
    podmans: list[Podman] = []
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    proxy = None
    try:
        if not (WORK / "built").exists():
            build(registry.host)
            (WORK / "built").touch()
        proxy = Proxy(registry.url, ProxyOptions())
        host = proxy.host
        wait_out_deletes()

        codes = [Path(c).resolve() for c in args.code or [REPO]]
        code = codes[0]

        def pull(tag: str, dest: Path, store: Path, *extra: str) -> None:
            subprocess.run([*COMMAND, "pull",
                            f"docker://{host}/bench/os:{tag}", str(dest),
                            "--tls-verify=false", "--cache", str(store), "-q", *extra],
                           check=True, cwd=code, stdout=subprocess.DEVNULL)

        def report(what: str, wall_cpu: tuple[float, float]) -> None:
            print(f"{what:<28} {wall_cpu[0]:6.2f} s  (cpu {wall_cpu[1]:5.2f} s)", flush=True)

        for i, code in ((i, c) for i in range(args.runs) for c in codes):
            rep = scratch / f"r{i}-{len(list(scratch.iterdir()))}"
            rep.mkdir()
            store = rep / "store"
            if len(codes) > 1:
                print(f"[{code}]", flush=True)
            if args.first or args.update or args.hardlink:
                report("chunked first",
                       locked(lambda rep=rep, store=store: pull("1", rep / "c1", store)))
                shutil.copytree(store, rep / "store-h")
            if args.update:
                report("chunked update",
                       locked(lambda rep=rep, store=store: pull("2", rep / "c2", store)))
            if args.hardlink:
                report("chunked update --hardlink",
                       locked(lambda rep=rep: pull("2", rep / "c2h", rep / "store-h",
                                                   "--hardlink")))
            if args.podman and code == codes[-1]:
                pd = make_podman(Path(tempfile.mkdtemp(prefix="cbd-", dir="/tmp")), [host])
                podmans.append(pd)  # closing deletes: at the end
                for step, tag in (("first", "1"), ("update", "2")):
                    report(f"podman {step}",
                           locked(lambda pd=pd, tag=tag: pd.pull(f"{host}/bench/os:{tag}")))
    finally:
        for pd in podmans:
            pd.close()
        if proxy is not None:
            proxy.close()
        registry.stop()
        if args.keep:
            print(f"kept {scratch}")
        else:
            subprocess.run(["rm", "-rf", str(scratch)], check=False)
            os.sync()
            DELETED.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
