"""chunked mount: a real FUSE mount of a multi-layer image's merged root filesystem."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from tests.clirun import chunked
from tests.layers import LOWER, MERGED, MTIME, UPPER, make_image, make_tar
from tests.need import need_fuse, need_root
from tests.trees import features_image, full_tree, hardlink_groups, implicit_dirs

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


def _frames(blob: bytes) -> list[tuple[int, int, int, int]]:
    """The blob's zstd frames as zstandard (not our reader) walks them: (start, end) in the
    blob and (start, end) of what each decompresses to in the tar; skippable frames (TOC,
    tar-split, footer) left out."""
    out, pos, raw = [], 0, 0
    while pos < len(blob):
        if int.from_bytes(blob[pos:pos + 4], "little") & 0xFFFFFFF0 == 0x184D2A50:
            pos += 8 + int.from_bytes(blob[pos + 4:pos + 8], "little")
            continue
        d = zstandard.ZstdDecompressor().decompressobj()
        n = len(d.decompress(blob[pos:]))
        end = len(blob) - len(d.unused_data)
        out.append((pos, end, raw, raw + n))
        pos, raw = end, raw + n
    return out


def _layer_files(img: Path, i: int) -> dict[str, int]:
    """Layer ``i`` of the test image ([LOWER, UPPER]): per regular file with content, the
    bytes a fetch of it moves: its frames' compressed size (zstd:chunked: the frames that
    hold its tar data) or the file's size (gzip: read from the local conversion)."""
    index = json.loads((img / "index.json").read_text())
    manifest = json.loads((img / "blobs/sha256" / index["manifests"][0]["digest"][7:])
                          .read_text())
    desc = manifest["layers"][i]
    tar = make_tar((LOWER, UPPER)[i])
    members = [m for m in tarfile.open(fileobj=io.BytesIO(tar)) if m.isreg() and m.size]
    if desc["mediaType"].endswith("gzip"):
        return {m.name: m.size for m in members}
    frames = _frames((img / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    assert b"".join(_frame_bytes(img, desc, frames)) == tar  # the walk covers the tar
    return {m.name: sum(end - start for start, end, lo, hi in frames
                        if lo < m.offset_data + m.size and hi > m.offset_data)
            for m in members}


def _frame_bytes(img: Path, desc: dict, frames: list[tuple[int, int, int, int]]
                 ) -> list[bytes]:
    blob = (img / "blobs/sha256" / desc["digest"][7:]).read_bytes()
    return [zstandard.ZstdDecompressor().decompressobj().decompress(blob[a:b])
            for a, b, _, _ in frames]


def test_stats_while_mounted(mounted: Path, tmp_path: Path):
    before = json.loads(chunked("stats", str(mounted), "--json").stdout)
    assert all(layer["bytesFetched"] == 0 for layer in before["layers"])
    (mounted / "usr/big.bin").read_bytes()
    p = chunked("stats", str(mounted), "--json")
    assert p.returncode == 0, p.stderr
    lower, upper = json.loads(p.stdout)["layers"]
    # the big file alone: its frames (a zstd:chunked lower layer), or its bytes from the
    # local conversion of a gzip one
    sizes = _layer_files(tmp_path / "img", 0)
    assert (lower["filesFetched"], lower["bytesFetched"]) == (1, sizes["usr/big.bin"])
    assert (upper["filesFetched"], upper["bytesFetched"]) == (0, 0)


def test_prefetch_fetches_everything_in_the_background(tmp_path):
    ref = make_image(tmp_path / "img")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # every file with content of every layer (those the upper one hides too), each by
    # its frames and nothing else
    want = [_layer_files(tmp_path / "img", i) for i in range(2)]
    p = chunked("mount", ref, str(mnt), "--prefetch", "--no-cache")
    assert p.returncode == 0, p.stderr
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = json.loads(chunked("stats", str(mnt), "--json").stdout)
            if [layer["filesFetched"] for layer in stats["layers"]] == list(map(len, want)):
                break
            time.sleep(0.1)
        fetched = sum(layer["chunksFetched"] for layer in stats["layers"])
        for layer, sizes in zip(stats["layers"], want, strict=True):
            assert layer["filesFetched"] == len(sizes), (layer, sizes)
            assert layer["bytesFetched"] == sum(sizes.values()), (layer, sizes)
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
        untimed = implicit_dirs(root)
        got, want = full_tree(mnt, untimed=untimed), full_tree(root, untimed=untimed)
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
