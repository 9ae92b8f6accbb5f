"""chunked mount: a real FUSE mount of a multi-layer image's merged root filesystem."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .layers import MERGED, MTIME, make_image

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                       reason="needs /dev/fuse and fusermount3"),
]


def chunked(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chunked.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(params=["all-chunked", "gzip-lower"])
def mounted(tmp_path, request):
    """A mount of the two-layer image, with the lower layer zstd:chunked or gzip."""
    ref = make_image(tmp_path / "img", gzip_lower=request.param == "gzip-lower")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", ref, str(mnt), "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        yield mnt
    finally:
        chunked("umount", str(mnt))
    assert not os.path.ismount(mnt)


def test_mount_shows_the_merged_tree(mounted: Path):
    on_disk = {str(p.relative_to(mounted)) for p in mounted.rglob("*")}
    assert on_disk == set(MERGED)
    for path, content in MERGED.items():
        p = mounted / path
        st = p.lstat()
        assert st.st_mtime == MTIME, path
        if isinstance(content, bytes):
            assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o777 == 0o644
            assert p.read_bytes() == content, path
        elif isinstance(content, tuple):
            assert os.readlink(p) == content[1]
        else:
            assert stat.S_ISDIR(st.st_mode)


def test_mount_is_read_only(mounted: Path):
    with pytest.raises(OSError) as exc:
        (mounted / "new.txt").write_bytes(b"x")
    assert exc.value.errno in (errno.EROFS, errno.EACCES)


def test_random_reads(mounted: Path):
    data = MERGED["usr/big.bin"]
    assert isinstance(data, bytes)
    with open(mounted / "usr/big.bin", "rb") as f:
        for offset, size in ((0, 10), (4095, 3), (500_000, 70_000), (len(data) - 5, 100)):
            f.seek(offset)
            assert f.read(size) == data[offset:offset + size]


def _apply_whiteouts(stage: Path, root: Path) -> None:
    """Apply (and remove) the whiteouts a freshly extracted layer holds to root."""
    for wh in sorted(stage.rglob(".wh.*")):
        rel = wh.parent.relative_to(stage)
        if wh.name == ".wh..wh..opq":
            lower = root / rel
            if lower.is_dir():
                shutil.rmtree(lower)
                lower.mkdir()
        else:
            victim = root / rel / wh.name[len(".wh."):]
            if victim.is_dir() and not victim.is_symlink():
                shutil.rmtree(victim)
            elif victim.exists() or victim.is_symlink():
                victim.unlink()
        wh.unlink()


def _apply_with_tar(tars: list[bytes], root: Path) -> None:
    """The reference: each layer extracted in order with GNU tar, whiteouts applied."""
    root.mkdir()
    for i, tar in enumerate(tars):
        stage = root.parent / f"stage{i}"
        stage.mkdir()
        subprocess.run(["tar", "-x", "-C", str(stage)], input=tar, check=True)
        _apply_whiteouts(stage, root)
        subprocess.run(["cp", "-a", f"{stage}/.", str(root)], check=True)


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        kind = stat.S_IFMT(st.st_mode)
        content = (os.readlink(p) if p.is_symlink() else
                   p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
        out[str(p.relative_to(root))] = (kind, st.st_mode & 0o7777, int(st.st_mtime), content)
    return out


def test_registry_image_with_gzip_layer_equals_tar_extraction(tmp_path, registry):
    from tests.layers import LOWER, UPPER, make_tar
    from tests.peers import skopeo_copy

    ref = f"{registry.host}/mount/mixed:1"
    skopeo_copy(make_image(tmp_path / "img", gzip_lower=True), f"docker://{ref}")
    _apply_with_tar([make_tar(LOWER), make_tar(UPPER)], tmp_path / "ref")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        got, want = _tree(mnt), _tree(tmp_path / "ref")
        assert set(got) == set(want)
        for path in want:
            kind, mode, mtime, content = want[path]
            if kind == stat.S_IFDIR:  # cp -a gives dirs the time of extraction
                assert got[path][:2] == (kind, mode), path
            else:
                assert got[path] == want[path], path
    finally:
        chunked("umount", str(mnt))


def test_stats_while_mounted(mounted: Path):
    before = json.loads(chunked("stats", str(mounted), "--json").stdout)
    assert all(layer["bytesFetched"] == 0 for layer in before["layers"])
    (mounted / "usr/big.bin").read_bytes()
    after = json.loads(chunked("stats", str(mounted), "--json").stdout)
    assert sum(layer["filesFetched"] for layer in after["layers"]) == 1
    assert sum(layer["bytesFetched"] for layer in after["layers"]) > 0


def test_prefetch_fetches_everything_in_the_background(tmp_path):
    ref = make_image(tmp_path / "img")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", ref, str(mnt), "--prefetch", "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = json.loads(chunked("stats", str(mnt), "--json").stdout)
            if all(layer["filesFetched"] for layer in stats["layers"]):
                break
            time.sleep(0.1)
        fetched = sum(layer["chunksFetched"] for layer in stats["layers"])
        assert fetched > 0 and all(layer["filesFetched"] for layer in stats["layers"])
        assert (mnt / "usr/big.bin").read_bytes() == MERGED["usr/big.bin"]
        after = json.loads(chunked("stats", str(mnt), "--json").stdout)
        assert sum(layer["chunksFetched"] for layer in after["layers"]) == fetched
    finally:
        chunked("umount", str(mnt))


def _full_tree(root: Path) -> dict[str, tuple]:
    """Everything the issue asks a mount to preserve, per path."""
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        kind = stat.S_IFMT(st.st_mode)
        content = (os.readlink(p) if p.is_symlink() else
                   p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
        xattrs = {} if p.is_symlink() else {
            n: os.getxattr(p, n) for n in os.listxattr(p) if n.startswith("user.")}
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        mtime = None if stat.S_ISDIR(st.st_mode) else int(st.st_mtime)
        out[str(p.relative_to(root))] = (kind, st.st_mode & 0o7777, st.st_uid, st.st_gid,
                                         mtime, rdev, content, xattrs)
    return out


def _hardlink_groups(root: Path) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, set()).add(str(p.relative_to(root)))
    return {frozenset(g) for g in groups.values()}


@pytest.mark.skipif(os.geteuid() != 0, reason="extracting devices and owners needs root")
def test_every_feature_through_the_mount_equals_tar(tmp_path, registry):
    """Devices, fifos, owners, setuid bits, xattrs, hard links, odd names, holes: the mount
    of [features (chunked), lower (gzip), upper (chunked)] equals GNU tar's extraction."""
    from chunked.builder import build_blob
    from chunked.oci import OciLayout, write_image
    from tests.layers import LOWER, UPPER, _gzip_layer, make_tar
    from tests.peers import skopeo_copy
    from tests.tarfactory import features_tar

    tars = [features_tar(), make_tar(LOWER), make_tar(UPPER)]
    layout = OciLayout(str(tmp_path / "img"))
    layout.init()
    layers = []
    for i, tar in enumerate(tars):
        if i == 1:
            layers.append(_gzip_layer(layout, tar))
            continue
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(tar), out)
        layout.commit_blob(result.digest)
        layers.append((result.descriptor(), result.diff_id))
    write_image(layout, "all", layers)
    ref = f"{registry.host}/mount/features:1"
    skopeo_copy(f"oci:{tmp_path / 'img'}:all", f"docker://{ref}")

    root = tmp_path / "ref"
    root.mkdir()
    for i, tar in enumerate(tars):
        stage = tmp_path / f"stage{i}"
        stage.mkdir()
        subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=user.*", "--same-owner",
                        "-p", "--numeric-owner", "-C", str(stage)], input=tar, check=True)
        _apply_whiteouts(stage, root)
        subprocess.run(["cp", "-a", "--preserve=all", f"{stage}/.", str(root)], check=True)

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        got, want = _full_tree(mnt), _full_tree(root)
        assert set(got) == set(want)
        for path in sorted(want):
            assert got[path] == want[path], path
        assert _hardlink_groups(mnt) == _hardlink_groups(root)
    finally:
        chunked("umount", str(mnt))
