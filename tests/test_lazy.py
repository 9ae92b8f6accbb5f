"""Lazy for real: through `chunked mount` of a registry image, only what is read moves.

An image of more than 100 MiB is pushed to Debian's docker-registry on 127.0.0.1.
Bytes are counted at the server (its access log): mounting moves the manifest,
the config and the TOC; reading one ~1 MiB file moves that file's frames.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest

from chunked import format as fmt
from chunked.oci.layout import OciRef
from chunked.read.image import open_oci
from tests.clirun import chunked
from tests.peers import Registry, skopeo_copy

pytestmark = pytest.mark.interop

TARGET = "data/target.bin"


def _big_tar(path: Path) -> bytes:
    rng = random.Random(9)
    target = rng.randbytes(1 << 20)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(104):  # 104 MiB of incompressible files
            data = rng.randbytes(1 << 20) if i != 50 else target
            ti = tarfile.TarInfo(TARGET if i == 50 else f"data/file-{i:03d}.bin")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return target



def test_mount_reads_only_what_is_read(tmp_path: Path, registry: Registry,
                                       registry_repo: str) -> None:
    target = _big_tar(tmp_path / "big.tar")
    image = f"oci:{tmp_path / 'img'}:1"
    p = chunked("build", str(tmp_path / "big.tar"), "--image", image, "-q")
    assert p.returncode == 0, p.stderr
    desc = json.loads(p.stdout)
    assert desc["size"] > 100 << 20
    ref = f"{registry_repo}:1"
    skopeo_copy(image, f"docker://{ref}")

    local = open_oci(OciRef.parse(image))
    layer = local.layers[0].layer
    # what opening moves: the TOC and the tar-split, which the TOC is checked against
    assert layer.tarsplit_pos is not None
    # (one range: they lie next to each other, 8 bytes of frame header apart)
    toc_bytes = layer.tarsplit_pos.end - layer.toc_pos.offset
    frames = layer.lookup(TARGET).compressed_size
    local.close()

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mark = registry.mark()
    p = chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        mounted = registry.blob_bytes(mark, desc["digest"])
        assert mounted <= toc_bytes, (mounted, toc_bytes)
        assert len(os.listdir(mnt / "data")) == 104
        assert registry.blob_bytes(mark, desc["digest"]) == mounted  # metadata: no I/O

        mark = registry.mark()
        assert (mnt / TARGET).read_bytes() == target
        moved = registry.blob_bytes(mark, desc["digest"])
        assert moved <= 1.1 * frames + 64 * 1024, (moved, frames)
        print(f"mount moved {mounted} B (TOC and tar-split {toc_bytes} B); reading {TARGET} moved "
              f"{moved} B for {frames} B of frames; layer {desc['size']} B")
    finally:
        chunked("umount", str(mnt))


def test_mount_refuses_a_toc_that_does_not_match(tmp_path: Path, registry: Registry,
                                                 registry_repo: str) -> None:
    """A TOC that does not match its annotation: mount refuses with one line."""
    from chunked.oci.layout import OciLayout
    from tests.layers import make_image

    image = make_image(tmp_path / "img")
    layout = OciLayout(str(tmp_path / "img"))
    manifest = layout.read_json(layout.tagged("v1").digest)
    key = fmt.CURRENT.checksum_key
    manifest["layers"][0]["annotations"][key] = "sha256:" + "0" * 64
    manifest["layers"][0]["annotations"].pop(fmt.OLD.checksum_key)
    data = json.dumps(manifest).encode()
    layout.tag("bad", layout.put_bytes(data), len(data))
    ref = f"{registry_repo}:bad"
    skopeo_copy(f"oci:{tmp_path / 'img'}:bad", f"docker://{ref}")
    del image
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache")
    assert p.returncode != 0
    assert "TOC does not match its annotation" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(mnt)
