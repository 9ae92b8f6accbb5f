"""The real peer reads ours: podman 4.3 pulls a layer we built through its partial-pull path.

We build an image with `chunked build --image`, push it unchanged with skopeo to
Debian's docker-registry, and pull it with Debian's podman configured for partial
pulls. podman must log "Retrieved partial blob" (no fallback), and the image's files
must equal the tar's. podman 4.3's reader (containers/storage 1.43) drops uid/gid and
mtimes and skips fifos and devices, so content, modes and symlinks are compared.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from chunked import format as fmt
from tests.clirun import COMMAND
from tests.peers import PARTIAL_OK, Podman, Registry, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.interop


def _tar() -> bytes:
    rng = random.Random(5)
    buf = io.BytesIO()

    def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
            mode: int = 0o644, link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, 1_700_000_000, link
        ti.size = len(data or b"")
        tf.addfile(ti, io.BytesIO(data or b""))

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add("etc", kind=tarfile.DIRTYPE, mode=0o755)
        add("etc/os-release", b"NAME=chunked\n")
        add("etc/empty")
        add("usr", kind=tarfile.DIRTYPE, mode=0o755)
        add("usr/bin", kind=tarfile.DIRTYPE, mode=0o755)
        add("usr/bin/tool", rng.randbytes(500_000), mode=0o755)
        add("usr/bin/alias", kind=tarfile.SYMTYPE, mode=0o777, link="tool")
        add("usr/bin/hard", kind=tarfile.LNKTYPE, mode=0o755, link="usr/bin/tool")
        text = b"".join(b"%d some log line here\n" % i for i in range(40_000))
        add("usr/share.txt", text)
        add("usr/holes.bin", rng.randbytes(10_000) + bytes(100_000) + rng.randbytes(3000))
        add("usr/zeros", bytes(300_000))
        add("names", kind=tarfile.DIRTYPE, mode=0o755)
        for n in ("with space", "caf\u00e9-\u65e5\u672c", "a&b<c>d"):
            add(f"names/{n}", n.encode() + b"\n")
        add("tmp", kind=tarfile.DIRTYPE, mode=0o1777)
    return buf.getvalue()


def _build_and_push(tmp_path: Path, registry_ref: str, *extra: str) -> dict:
    tar = _tar()
    (tmp_path / "in.tar").write_bytes(tar)
    image = f"oci:{tmp_path / 'image'}:t"
    p = subprocess.run([*COMMAND, "build", str(tmp_path / "in.tar"),
                        "--image", image, "-q", *extra], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    skopeo_copy(image, f"docker://{registry_ref}")
    (layer,) = skopeo_inspect(f"docker://{registry_ref}", raw=True)["layers"]
    return layer


def _check_tree(root: Path, tar: bytes) -> None:
    tf = tarfile.open(fileobj=io.BytesIO(tar))
    seen = set()
    for m in tf.getmembers():
        p = root / m.name
        seen.add(m.name)
        if m.isreg() or m.islnk():
            src = tf.getmember(m.linkname) if m.islnk() else m
            assert p.read_bytes() == tf.extractfile(src).read(), m.name
            assert p.stat().st_mode & 0o7777 == src.mode, m.name
            if m.islnk():  # one inode, not a copy
                assert p.stat().st_ino == (root / m.linkname).stat().st_ino, m.name
        elif m.issym():
            assert os.readlink(p) == m.linkname
        elif m.isdir():
            assert p.is_dir(), m.name
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert on_disk == seen


@pytest.mark.parametrize("variant", ["current", "old"])
def test_podman_43_pulls_our_layer_partially(tmp_path: Path, registry: Registry,
                                             registry_repo: str, podman: Podman,
                                             variant: str) -> None:
    ref = f"{registry_repo}:{variant}"
    layer = _build_and_push(tmp_path, ref, "--format", variant)
    keys = set(layer["annotations"])
    assert fmt.OLD.checksum_key in keys
    if variant == "current":
        assert fmt.CURRENT.tarsplit_key in keys

    mark = registry.mark()
    result = podman.pull(ref)
    assert result.ok, result.log[-3000:]
    assert PARTIAL_OK in result.log, result.log[-3000:]
    assert result.partial_digests == [layer["digest"]]
    assert result.fallback_reasons == []
    blob_gets = [r for r in registry.requests(mark) if r.blob_digest == layer["digest"]]
    assert blob_gets and all(r.status == 206 for r in blob_gets)

    _check_tree(podman.image_mount(ref), _tar())
    podman.image_unmount(ref)
    podman.rmi(ref)
