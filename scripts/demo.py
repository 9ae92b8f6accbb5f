#!/usr/bin/env python3
"""The main job, end to end, on the bundled fixtures.

1. build a zstd:chunked layer and a one-layer OCI image from fixtures/rootfs.tar;
2. verify it, list it, read one file from it;
3. push it unchanged with skopeo to Debian's docker-registry on 127.0.0.1;
4. pull it with podman 4.3 configured for partial pulls, and check podman took
   the partial path and that the files it wrote equal the tar's;
5. pull it with `chunked pull` into a directory, check every file against the tar, and
   pull it again into a second directory, which reuses the first instead of fetching.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures.make_fixtures import make  # noqa: E402
from tests.clirun import COMMAND  # noqa: E402
from tests.peers import PARTIAL_OK, make_podman, skopeo_copy, start_registry  # noqa: E402


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def chunked(*args: str) -> str:
    cmd = [*COMMAND, *args]
    print("$ chunked " + " ".join(args), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout


def main() -> int:
    tar_path = REPO / "fixtures" / "rootfs.tar"
    if not tar_path.exists():
        make(tar_path)
    work = Path(tempfile.mkdtemp(prefix="chunked-demo-"))
    step("build")
    desc = json.loads(chunked("build", str(tar_path), "-o", str(work / "layer.blob"),
                              "--image", f"oci:{work / 'image'}:demo", "-q"))
    (work / "layer.json").write_text(json.dumps(desc))
    print(json.dumps(desc, indent=2))
    print(f"tar {tar_path.stat().st_size} bytes -> layer {desc['size']} bytes")

    step("verify, inspect, cat")
    print(chunked("verify", str(work / "layer.blob"), "--descriptor", str(work / "layer.json"),
                  "-q").strip())
    print("\n".join(chunked("inspect", str(work / "layer.blob")).splitlines()[:8]) + "\n...")
    print(chunked("cat", str(work / "layer.blob"), "etc/os-release").strip())

    step("push with skopeo, partial pull with podman 4.3")
    registry = start_registry(work / "registry")
    try:
        ref = f"{registry.host}/demo/rootfs:1"
        skopeo_copy(f"oci:{work / 'image'}:demo", f"docker://{ref}")
        print(f"pushed to {ref}")
        with make_podman(work / "podman", [registry.host]) as podman:
            result = podman.pull(ref)
            if not result.ok or PARTIAL_OK not in result.log:
                print(result.log[-3000:], file=sys.stderr)
                print("demo: FAILED: podman did not pull the layer partially", file=sys.stderr)
                return 1
            line = next(x for x in result.log.splitlines() if PARTIAL_OK in x)
            print("podman:", line.split("msg=", 1)[-1])
            root = podman.image_mount(ref)
            tf = tarfile.open(fileobj=io.BytesIO(tar_path.read_bytes()))
            checked = 0
            for m in tf.getmembers():
                if m.isreg() and not Path(m.name).name.startswith(".wh."):
                    if (root / m.name).read_bytes() != tf.extractfile(m).read():
                        print(f"demo: FAILED: {m.name} differs", file=sys.stderr)
                        return 1
                    checked += 1
            print(f"podman's copy of all {checked} regular files equals the tar's")
            podman.image_unmount(ref)

        step("partial pull with chunked")
        store = str(work / "store")
        for dest in ("rootfs-a", "rootfs-b"):
            print(chunked("pull", f"docker://{ref}", str(work / dest), "--tls-verify=false",
                          "--cache", store, "-q").strip())
        tf = tarfile.open(fileobj=io.BytesIO(tar_path.read_bytes()))
        checked = 0
        for m in tf.getmembers():
            if m.isreg() and not Path(m.name).name.startswith(".wh."):
                for dest in ("rootfs-a", "rootfs-b"):
                    if (work / dest / m.name).read_bytes() != tf.extractfile(m).read():
                        print(f"demo: FAILED: {dest}/{m.name} differs", file=sys.stderr)
                        return 1
                checked += 1
        print(f"both pulled trees hold all {checked} regular files exactly as the tar")
    finally:
        registry.stop()
    shutil.rmtree(work, ignore_errors=True)
    step("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
