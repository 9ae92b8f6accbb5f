#!/usr/bin/env python3
"""`chunked convert` against skopeo's conversion and against the physical floor.

The Debian rootfs that benchmarks/bench_build.py makes is pushed as a one-layer gzip image
(gzip -6) to Debian's docker-registry on 127.0.0.1. Measured, registry to registry:

* chunked convert docker://REG/bench/gz:1 docker://REG/bench/cv-N:1 (no cache record);
* skopeo 1.9.3 copy --dest-compress-format zstd:chunked, the same way, with a fresh blob
  info cache (else it substitutes blobs it pushed before);
* the floor: `gzip -dc` of the layer into a file, then `chunked build` of that tar (two
  steps, their times added): what conversion costs with nothing overlapped and no network.

Every timed step starts after sync and a 2 s pause; nothing is deleted until the end.
Usage: python benchmarks/bench_convert.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
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
from tests.peers import isolated_blob_cache, skopeo_copy, start_registry  # noqa: E402

GOAL_VS_SKOPEO = 10.0


def settle() -> None:
    os.sync()
    time.sleep(2)


def timed(cmd: list[str], rss: dict[str, float] | None = None, key: str = "",
          **kw: object) -> float:
    """Seconds the command took; its peak RSS in MiB into ``rss[key]`` if given."""
    settle()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            **kw)  # type: ignore[call-overload]
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    if rss is not None:
        rss[key] = usage.ru_maxrss / 1024
    return elapsed


def gzip_layer(tar: Path, out: Path) -> None:
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with open(tar, "rb") as src, gzip.open(tmp, "wb", compresslevel=6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(out)


def gzip_image(work: Path, tar: Path, gz: Path) -> str:
    """An OCI layout of one gzip layer; returns its oci: reference."""
    from chunked.oci.layout import OciLayout, write_image

    layout = OciLayout(str(work / "gz-img"))
    layout.init()
    def sha256(path: Path) -> str:
        # streamed: a child forked from a large parent reports the parent's RSS as its own
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                h.update(piece)
        return "sha256:" + h.hexdigest()

    digest = sha256(gz)
    shutil.copyfile(gz, layout.blob_path(digest))
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
            "size": gz.stat().st_size}
    write_image(layout, "1", [(desc, sha256(tar))])
    return f"oci:{layout.path}:1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    compile_bytecode()

    tar = make_rootfs_tar(DEFAULT_CACHE, None)
    gz = DEFAULT_CACHE / "rootfs.tar.gz"
    gzip_layer(tar, gz)
    work = Path(tempfile.mkdtemp(prefix="chunked-bench-convert-", dir="/var/tmp"))
    registry = start_registry(work / "registry")
    py = [*COMMAND]
    runs: list[dict[str, float]] = []
    try:
        skopeo_copy(gzip_image(work, tar, gz), f"docker://{registry.host}/bench/gz:1")
        src = f"docker://{registry.host}/bench/gz:1"
        for i in range(args.runs):
            r: dict[str, float] = {}
            r["chunked_s"] = timed([*py, "convert", src,
                                    f"docker://{registry.host}/bench/cv-{i}:1",
                                    "--tls-verify=false", "--no-cache", "-q"], r,
                                   "chunked_rss_mib", cwd=REPO)
            r["skopeo_s"] = timed(isolated_blob_cache([
                "skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                "--dest-tls-verify=false", "--dest-compress-format", "zstd:chunked", src,
                f"docker://{registry.host}/bench/sk-{i}:1"]), r, "skopeo_rss_mib")
            plain = work / f"plain-{i}.tar"
            r["floor_gunzip_s"] = timed(["sh", "-c", f"gzip -dc {gz} > {plain}"])
            r["floor_build_s"] = timed([*py, "build", str(plain), "-o",
                                        str(work / f"floor-{i}.blob"), "-q"], cwd=REPO)
            r["floor_s"] = r["floor_gunzip_s"] + r["floor_build_s"]
            runs.append(r)
            print(f"[bench] run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()),
                  file=sys.stderr)
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    best, median = best_and_median(runs)
    if args.json:
        print(json.dumps({"runs": runs, "best": best, "median": median}, indent=2))
        return 0
    print(f"{tar.stat().st_size / 2**20:.0f} MiB rootfs tar, {gz.stat().st_size / 2**20:.1f} "
          f"MiB gzip layer; registry on loopback; best of {len(runs)} (median)")
    for key, name in (("chunked", "chunked convert"), ("skopeo", "skopeo copy (zstd:chunked)"),
                      ("floor", "floor: gzip -dc, then build")):
        rss = f", peak RSS {best[key + '_rss_mib']:.0f} MiB" if key + "_rss_mib" in best else ""
        print(f"  {name:<30} {best[key + '_s']:7.2f} s ({median[key + '_s']:.2f}){rss}")
    print(f"  floor parts: gzip -dc {best['floor_gunzip_s']:.2f} s, chunked build "
          f"{best['floor_build_s']:.2f} s")
    ratio = best["skopeo_s"] / best["chunked_s"]
    print(f"  goal: {ratio:.1f}x skopeo's speed (>= {GOAL_VS_SKOPEO:.0f}x) "
          f"{'ok' if ratio >= GOAL_VS_SKOPEO else 'MISSED'}")
    floor = best["chunked_s"] / best["floor_s"]
    print(f"  goal: {floor:.2f}x the floor's wall time (<= 1) {'ok' if floor <= 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
