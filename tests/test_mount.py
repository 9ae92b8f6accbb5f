"""chunked mount: a real FUSE mount of a multi-layer image's merged root filesystem."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import pytest

from tests.clirun import chunked
from tests.layers import MERGED, MTIME, make_image
from tests.need import need_fuse, need_root
from tests.trees import features_image, full_tree, hardlink_groups

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _fuse() -> None:
    need_fuse()



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


def test_every_feature_through_the_mount_equals_tar(tmp_path, registry):
    need_root("extracting devices and owners")  # (the reference extraction with GNU tar)
    """Devices, fifos, owners, setuid bits, xattrs, hard links, odd names, holes: the mount
    of [features (chunked), lower (gzip), upper (chunked)] equals GNU tar's extraction."""
    ref, root = features_image(tmp_path, registry, "mount/features:1")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", f"docker://{ref}", str(mnt), "--tls-verify=false", "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        got, want = full_tree(mnt), full_tree(root)
        assert set(got) == set(want)
        for path in sorted(want):
            assert got[path] == want[path], path
        assert hardlink_groups(mnt) == hardlink_groups(root)
    finally:
        chunked("umount", str(mnt))


def test_disk_cache_serves_a_second_mount(tmp_path):
    """Chunks fetched once are kept on disk by digest; a new mount reads them from there."""
    ref = make_image(tmp_path / "img")
    cache = tmp_path / "cache"
    for round_ in range(2):
        mnt = tmp_path / f"mnt{round_}"
        mnt.mkdir()
        p = chunked("mount", ref, str(mnt), "--cache", str(cache))
        assert p.returncode == 0, p.stderr
        try:
            assert (mnt / "usr/big.bin").read_bytes() == MERGED["usr/big.bin"]
            stats = json.loads(chunked("stats", str(mnt), "--json").stdout)
        finally:
            chunked("umount", str(mnt))
        fetched = sum(layer["bytesFetched"] for layer in stats["layers"])
        assert (fetched > 0) if round_ == 0 else (fetched == 0), (round_, fetched)
    shown = json.loads(chunked("cache", "show", "--cache", str(cache), "--json").stdout)
    assert shown["entries"] > 0
    chunked("cache", "prune", "--cache", str(cache))
    shown = json.loads(chunked("cache", "show", "--cache", str(cache), "--json").stdout)
    assert shown["entries"] == 0
