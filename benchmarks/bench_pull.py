#!/usr/bin/env python3
"""`chunked pull` against podman 4.3's partial pull and a full pull, first pull and update.

One run, the same two images in one local registry (Debian's docker-registry on
127.0.0.1): v1 is the Debian rootfs that benchmarks/bench_build.py makes, v2 is v1 with
some files changed and a few added. Each is measured directly on loopback and through a
proxy sharing 100 Mbit/s among all connections with 20 ms per request:

* chunked pull REF DEST (fresh store for the first pull; the update reuses what v1 left);
* podman 4.3 pull with enable_partial_images (fresh storage; the update on top of v1);
* a full pull: skopeo copy docker://... dir: then zstd -dc | tar -x.

Bytes are counted by the proxy. Usage: python benchmarks/bench_pull.py [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_build import DEFAULT_CACHE, make_rootfs_tar  # noqa: E402
from benchmarks.bench_mount import full_pull  # noqa: E402
from tests.peers import make_podman, skopeo_copy, start_registry  # noqa: E402
from tests.proxy import Proxy, ProxyOptions  # noqa: E402

GOAL_VS_PODMAN = 0.8


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


def chunked(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "chunked.cli", *args], check=True,
                   capture_output=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bandwidth-mbit", type=float, default=100.0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="chunked-bench-pull-", dir="/var/tmp"))
    v1 = make_rootfs_tar(DEFAULT_CACHE, None)
    v2 = work / "v2.tar"
    n_changed = make_v2(v1, v2)
    registry = start_registry(work / "registry")
    results: dict[str, dict[str, float]] = {}
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
            r: dict[str, float] = {}
            run = work / label
            run.mkdir()
            try:
                store = str(run / "store")
                for step, tag in (("first", "1"), ("update", "2")):
                    ref = f"docker://{host}/bench/os:{tag}"
                    proxy.bytes_sent = 0
                    t0 = time.monotonic()
                    chunked("pull", ref, str(run / f"chunked-{tag}"), "--tls-verify=false",
                            "--cache", store, "-q")
                    r[f"chunked_{step}_s"] = time.monotonic() - t0
                    r[f"chunked_{step}_bytes"] = proxy.bytes_sent
                # podman refuses a runroot path longer than 50 characters
                with make_podman(Path(tempfile.mkdtemp(prefix="cbp-", dir="/tmp")),
                                 [host]) as podman:
                    for step, tag in (("first", "1"), ("update", "2")):
                        proxy.bytes_sent = 0
                        t0 = time.monotonic()
                        result = podman.pull(f"{host}/bench/os:{tag}")
                        r[f"podman_{step}_s"] = time.monotonic() - t0
                        r[f"podman_{step}_bytes"] = proxy.bytes_sent
                        r[f"podman_{step}_partial"] = float(result.partial)
                        if not result.ok or not result.partial:
                            print(f"[bench] podman {label} {step}: rc={result.returncode} "
                                  f"{result.log.strip().splitlines()[-1:]}", file=sys.stderr)
                for step, tag in (("first", "1"), ("update", "2")):
                    proxy.bytes_sent = 0
                    pull_dir = run / f"full-{tag}"
                    pull_dir.mkdir()
                    r[f"full_{step}_s"], _ = full_pull(f"{host}/bench/os:{tag}", pull_dir)
                    r[f"full_{step}_bytes"] = proxy.bytes_sent
            finally:
                proxy.close()
            results[label] = r
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"v1: {v1} ({v1.stat().st_size / 2**20:.0f} MiB tar); v2: {n_changed} files "
          "changed or added")
    for label, r in results.items():
        print(f"\n[{label}]")
        for step in ("first", "update"):
            c, p, f = (r[f"chunked_{step}_s"], r[f"podman_{step}_s"], r[f"full_{step}_s"])
            cb, pb, fb = (r[f"chunked_{step}_bytes"], r[f"podman_{step}_bytes"],
                          r[f"full_{step}_bytes"])
            partial = "partial" if r[f"podman_{step}_partial"] else "NOT partial"
            print(f"  {step:>6}: chunked {c:6.2f} s {cb / 2**20:7.1f} MiB | podman ({partial}) "
                  f"{p:6.2f} s {pb / 2**20:7.1f} MiB | full pull {f:6.2f} s "
                  f"{fb / 2**20:7.1f} MiB")
            print(f"          bytes vs podman {cb / max(pb, 1):.2f}x (goal <= 1) "
                  f"{'ok' if cb <= pb else 'MISSED'}; time vs podman {c / p:.2f}x (goal <= "
                  f"{GOAL_VS_PODMAN}) {'ok' if c <= GOAL_VS_PODMAN * p else 'MISSED'}; time vs "
                  f"full pull {c / f:.2f}x (goal <= 1) {'ok' if c <= f else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
