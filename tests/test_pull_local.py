"""chunked.puller.pull on images in oci: layouts built here: no registry, and no root
(run as root, owners and a device are checked too)."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from chunked.builder import build_blob
from chunked.cache.chunks import ContentCache
from chunked.errors import ChunkedError, VerifyError
from chunked.oci.layout import OciLayout, write_image
from chunked.puller import files, pullio_spec
from chunked.puller.destination import UnsafePathError
from chunked.puller.pull import PullSummary, pull_image
from chunked.read.image import open_image
from tests.layers import MERGED, make_image
from tests.native import c_module

ROOT = os.geteuid() == 0
MTIME = 1_700_000_000


@pytest.fixture(params=["c", "python"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The pull's batch file operations in C, or in their Python spec."""
    if request.param == "c":
        monkeypatch.setattr(files, "pullio", c_module("chunked.puller._pullio"))
    else:
        monkeypatch.setattr(files, "pullio", pullio_spec)
    return request.param


def _layout(path: Path, tars: list[bytes], tag: str = "t") -> str:
    """An image of one chunked layer per tar; its oci: reference."""
    layout = OciLayout(str(path))
    layout.init()
    layers = []
    for tar in tars:
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(tar), out)
        layout.commit_blob(result.digest)
        layers.append((result.descriptor(), result.diff_id))
    write_image(layout, tag, layers)
    return f"oci:{path}:{tag}"


def _pull(ref: str, dest: Path, cache: Path | None = None, **kw: object) -> PullSummary:
    image = open_image(ref)
    try:
        return pull_image(image, str(dest), cache=ContentCache(str(cache)) if cache else None,
                          **kw)  # type: ignore[arg-type]
    finally:
        image.close()


def _ti(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: object
        ) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, MTIME
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            ti.size = len(data) if data is not None else 0
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _files_tar(files_: dict[str, bytes]) -> bytes:
    return _tar([(_ti(name), data) for name, data in files_.items()])


def _features() -> bytes:
    rng = random.Random(1)
    holes = bytes(5000) + rng.randbytes(9000) + bytes(300_000) + rng.randbytes(70_000) + \
        bytes(8192)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_ti("etc", tarfile.DIRTYPE, 0o755), None),
        (_ti("etc/hello.txt", uid=1000, gid=1000), b"hello\n"),
        (_ti("etc/empty"), b""),
        (_ti("etc/xattr.txt", pax_headers={"SCHILY.xattr.user.note": "kept"}), b"x\n"),
        (_ti("usr", tarfile.DIRTYPE, 0o755), None),
        (_ti("usr/random.bin", mode=0o755), rng.randbytes(400_000)),
        (_ti("usr/big.bin"), rng.randbytes(3 << 20)),  # many chunks
        (_ti("usr/holes.bin"), holes),
        (_ti("usr/zeros.bin"), bytes(2 << 20)),
        (_ti("usr/link", tarfile.SYMTYPE, 0o777, linkname="random.bin"), None),
        (_ti("usr/abs-link", tarfile.SYMTYPE, 0o777, linkname="/etc/hello.txt"), None),
        (_ti("usr/dangling", tarfile.SYMTYPE, 0o777, linkname="../nowhere"), None),
        (_ti("usr/hard", tarfile.LNKTYPE, linkname="usr/random.bin"), None),
        (_ti("bin", tarfile.DIRTYPE, 0o755), None),
        (_ti("bin/suid", mode=0o4755), b"#!/bin/sh\n"),
        (_ti("tmp", tarfile.DIRTYPE, 0o1777), None),
        (_ti("dev", tarfile.DIRTYPE, 0o755), None),
        (_ti("dev/fifo", tarfile.FIFOTYPE), None),
        (_ti("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (_ti("a/b/c", tarfile.DIRTYPE, 0o700), None),  # parents the tar omits
        (_ti("a/b/c/deep.txt", mode=0o600), b"deep\n"),
        (_ti("epoch", mtime=0), b"epoch\n"),
    ]
    return _tar(members)


def _expected(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name: m for m in tf.getmembers()}


def _check_tree(dest: Path, tar: bytes, skipped: list[str]) -> None:
    """DEST holds exactly the tar's entries: types, content, modes, times, links (and
    owners, as root); a device only as root."""
    want = _expected(tar)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        contents = {m.name: tf.extractfile(m).read() for m in tf.getmembers()  # type: ignore[union-attr]
                    if m.isreg()}
    got = {str(p.relative_to(dest)) for p in dest.rglob("*")}
    implied = {"a", "a/b"}  # parents made as tar makes them: 0755
    devices = {n for n, m in want.items() if m.ischr() or m.isblk()}
    if ROOT:
        assert skipped == []
    else:
        assert sorted(skipped) == sorted(devices)
        want = {n: m for n, m in want.items() if n not in devices}
    assert got == set(want) | implied
    for name in implied:
        assert stat.S_IMODE((dest / name).lstat().st_mode) == 0o755
    for name, m in want.items():
        p = dest / name
        st = p.lstat()
        if m.issym():
            assert stat.S_ISLNK(st.st_mode) and os.readlink(p) == m.linkname, name
        elif m.islnk():
            assert st.st_ino == (dest / m.linkname).lstat().st_ino, name
            continue
        elif m.isdir():
            assert stat.S_ISDIR(st.st_mode), name
        elif m.isfifo():
            assert stat.S_ISFIFO(st.st_mode), name
        elif m.ischr():
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3), name
        else:
            assert stat.S_ISREG(st.st_mode) and p.read_bytes() == contents[name], name
        if not m.issym():
            assert stat.S_IMODE(st.st_mode) == m.mode, name
        assert st.st_mtime_ns == int(m.mtime) * 10**9, name
        if ROOT:
            assert (st.st_uid, st.st_gid) == (m.uid, m.gid), name
    # the zeros chunks stay holes (a file of zeros only is one plain chunk, as upstream)
    holes = dest / "usr/holes.bin"
    assert holes.stat().st_blocks * 512 < len(contents["usr/holes.bin"]) - 300_000
    assert os.getxattr(dest / "etc/xattr.txt", "user.note") == b"kept"
    assert not [p for p in dest.rglob(".chunked-tmp-*")]


def test_first_pull_equals_the_tar(tmp_path: Path, backend: str) -> None:
    tar = _features()
    ref = _layout(tmp_path / "img", [tar])
    s = _pull(ref, tmp_path / "dest", tmp_path / "cache")
    _check_tree(tmp_path / "dest", tar, s.skipped)
    assert s.files_reused == 0 and s.files_fetched == 9  # every non-empty regular file
    # and again into the same tree: every file is already in place
    s = _pull(ref, tmp_path / "dest", tmp_path / "cache")
    _check_tree(tmp_path / "dest", tar, s.skipped)
    assert s.reused_by["inPlace"] == 10 and s.bytes_fetched == 0  # the empty one too


def _versions() -> tuple[dict[str, bytes], dict[str, bytes]]:
    rng = random.Random(11)
    v1 = {f"lib/file-{i:03d}.bin": rng.randbytes(50_000) for i in range(30)}
    v1["big/blob.bin"] = rng.randbytes(3 << 20)  # many chunks
    v2 = dict(v1)
    v2["lib/file-003.bin"] = rng.randbytes(50_000)
    big = bytearray(v1["big/blob.bin"])
    big[1 << 20:(1 << 20) + 4096] = rng.randbytes(4096)  # a change in the middle
    v2["big/blob.bin"] = bytes(big)
    v2["moved/file-010.bin"] = v1["lib/file-010.bin"]  # the same bytes under a new name
    return v1, v2


def test_an_update_reuses_the_earlier_pull(tmp_path: Path, backend: str) -> None:
    v1, v2 = _versions()
    ref1 = _layout(tmp_path / "img1", [_files_tar(v1)])
    ref2 = _layout(tmp_path / "img2", [_files_tar(v2)])
    cache = tmp_path / "cache"
    first = _pull(ref1, tmp_path / "v1", cache)
    assert first.files_fetched == 31 and first.files_reused == 0
    s = _pull(ref2, tmp_path / "v2", cache)
    for name, data in v2.items():
        assert (tmp_path / "v2" / name).read_bytes() == data, name
    # 29 unchanged files and the moved one from the first tree; the big file only fetched
    # the chunks around its change, the rest of it came from the first tree's copy
    assert s.reused_by["copy"] + s.reused_by["reflink"] == 30, s.reused_by
    assert s.files_fetched == 2 and s.files_reused == 30
    assert s.bytes_reused > 30 * 50_000 + (2 << 20)
    assert s.bytes_fetched < first.bytes_fetched // 3
    # a changed file in the earlier tree is a hint only: checked, found wrong, fetched
    (tmp_path / "v1" / "lib/file-000.bin").write_bytes(bytes(50_000))
    s = _pull(ref2, tmp_path / "v3", cache)
    assert (tmp_path / "v3" / "lib/file-000.bin").read_bytes() == v2["lib/file-000.bin"]
    assert s.files_fetched <= 2 and s.files_reused >= 29  # v2's tree has it right now


def test_hardlinks_to_the_earlier_pull_only_where_metadata_match(tmp_path: Path,
                                                                 backend: str) -> None:
    v1, _ = _versions()
    ref = _layout(tmp_path / "img", [_files_tar(v1)])
    cache = tmp_path / "cache"
    _pull(ref, tmp_path / "v1", cache)
    s = _pull(ref, tmp_path / "v2", cache, hardlink=True)
    by = s.reused_by
    assert s.bytes_fetched == 0
    if ROOT:  # the entries' owner (0:0) is the first tree's: their inodes can be shared
        assert by["hardlink"] + by["reflink"] == 31, by
    else:  # the first tree's files are ours, not 0:0 as the entries say: copies
        assert by["copy"] + by["reflink"] == 31 and by["hardlink"] == 0, by
    for name, data in v1.items():
        a, b = tmp_path / "v1" / name, tmp_path / "v2" / name
        assert b.read_bytes() == data
        assert (a.stat().st_ino == b.stat().st_ino) == (by["hardlink"] == 31)
        assert b.stat().st_mtime_ns == MTIME * 10**9


@pytest.mark.parametrize("gzip_lower", [False, True], ids=["chunked", "gzip-lower"])
def test_whiteouts_across_layers(tmp_path: Path, gzip_lower: bool) -> None:
    ref = make_image(tmp_path / "img", gzip_lower=gzip_lower)
    dest = tmp_path / "dest"
    _pull(ref, dest)
    got = {str(p.relative_to(dest)) for p in dest.rglob("*")}
    assert got == set(MERGED)
    for name, content in MERGED.items():
        p = dest / name
        if content is None:
            assert p.is_dir() and not p.is_symlink(), name
        elif isinstance(content, tuple):
            assert os.readlink(p) == content[1], name
        else:
            assert p.read_bytes() == content, name


def test_names_in_an_old_tree_are_replaced_never_written_through(tmp_path: Path) -> None:
    """Pulling into a tree that holds other files and a symlink under names the image
    has: each is replaced by the image's entry, and the symlink's target is untouched."""
    ref = make_image(tmp_path / "img")
    dest = tmp_path / "dest"
    (dest / "usr").mkdir(parents=True)
    (dest / "usr/big.bin").write_bytes(b"stale")
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    (dest / "new.txt").symlink_to(outside)  # a symlink where the image has a file
    _pull(ref, dest)
    assert (dest / "usr/big.bin").read_bytes() == MERGED["usr/big.bin"]
    assert not (dest / "new.txt").is_symlink() and (dest / "new.txt").read_bytes() == \
        b"added\n"
    assert outside.read_bytes() == b"precious"


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-parent", "hardlink-out",
                                  "dotdot-in-later-layer"])
def test_path_traversal_is_refused_before_anything_is_written(tmp_path: Path,
                                                              case: str) -> None:
    ok = (_ti("ok"), b"fine")
    layers = {
        "dotdot": [[ok, (_ti("../escape"), b"pwned")]],
        "absolute": [[ok, (_ti("/abs-escape"), b"pwned")]],
        "symlink-parent": [[(_ti("link", tarfile.SYMTYPE, linkname=str(tmp_path)), None),
                            (_ti("link/escape-symlink"), b"pwned")]],
        "hardlink-out": [[ok, (_ti("h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)]],
        "dotdot-in-later-layer": [[ok], [(_ti("a/../../escape"), b"pwned")]],
    }[case]
    ref = _layout(tmp_path / "img", [_tar(members) for members in layers])
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(UnsafePathError) as exc:
        _pull(ref, box / "dest")
    assert "refusing" in str(exc.value) or "outside" in str(exc.value)
    assert list(box.iterdir()) == []  # not even DEST was made
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape-symlink").exists()


def test_a_symlinked_directory_in_the_destination_is_refused(tmp_path: Path) -> None:
    ref = _layout(tmp_path / "img", [_tar([(_ti("etc", tarfile.DIRTYPE, 0o755), None),
                                           (_ti("etc/passwd"), b"pwned")])])
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        _pull(ref, dest)
    assert list(outside.iterdir()) == []


def _corrupt(ref: str, at: float) -> None:
    """Flip a byte of the image's (only) layer blob, ``at`` of the way into it."""
    path = ref[len("oci:"):].rpartition(":")[0]
    layout = OciLayout(path)
    (layer,) = layout.manifest("t").layers
    blob = Path(layout.blob_path(layer.digest))
    data = bytearray(blob.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))


@pytest.fixture(params=["windowed", "streamed"])
def how_fetched(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "streamed":  # written as its chunks arrive, not once all are here
        monkeypatch.setattr(files, "STREAM_AT", 1 << 20)
    return request.param


def test_a_corrupted_chunk_fails_and_leaves_no_file(tmp_path: Path, backend: str,
                                                    how_fetched: str) -> None:
    rng = random.Random(8)
    ref = _layout(tmp_path / "img", [_files_tar({"a.bin": rng.randbytes(4 << 20)})])
    _corrupt(ref, 2 / 3)  # inside a.bin's frames, past its first chunks
    dest = tmp_path / "dest"
    with pytest.raises(ChunkedError) as exc:
        _pull(ref, dest)
    assert isinstance(exc.value, VerifyError) or "a.bin" in str(exc.value)
    assert "a.bin" in str(exc.value)
    assert os.listdir(dest) == []  # no file, no temporary file


def test_corrupted_file_among_good_ones(tmp_path: Path, backend: str) -> None:
    """The pull fails; whatever is under a final name is complete and right."""
    rng = random.Random(9)
    content = {f"f{i:02d}.bin": rng.randbytes(60_000) for i in range(20)}
    ref = _layout(tmp_path / "img", [_files_tar(content)])
    _corrupt(ref, 0.5)
    dest = tmp_path / "dest"
    with pytest.raises(ChunkedError):
        _pull(ref, dest)
    names = os.listdir(dest)
    assert len(names) < len(content) and not [n for n in names if n.startswith(".chunked")]
    for name in names:
        assert (dest / name).read_bytes() == content[name], name


def test_a_fifo_where_an_earlier_pull_left_a_file_is_a_miss(tmp_path: Path,
                                                             backend: str) -> None:
    """The earlier pull's files are hints: one replaced by a fifo (no writer) must not
    block the pull on its open; the file is fetched instead."""
    import threading
    v1, _ = _versions()
    ref = _layout(tmp_path / "img", [_files_tar(v1)])
    cache = tmp_path / "cache"
    _pull(ref, tmp_path / "v1", cache)
    victim = tmp_path / "v1" / "lib/file-000.bin"
    victim.unlink()
    os.mkfifo(victim)
    done: list[PullSummary] = []
    t = threading.Thread(target=lambda: done.append(_pull(ref, tmp_path / "v2", cache)),
                         daemon=True)
    t.start()
    t.join(120)  # a deadline against a hang, not a measure of speed
    if t.is_alive():
        fd = os.open(victim, os.O_WRONLY | os.O_NONBLOCK)  # let the blocked open return
        os.close(fd)
        t.join(30)
        pytest.fail("the pull blocked opening a fifo left where an earlier pull's file was")
    (s,) = done
    assert (tmp_path / "v2" / "lib/file-000.bin").read_bytes() == v1["lib/file-000.bin"]
    assert s.files_fetched == 1 and s.files_reused == len(v1) - 1


def test_the_mounts_cached_chunks_are_used_and_never_hard_linked(tmp_path: Path,
                                                                backend: str) -> None:
    """What a lazy mount fetched into the shared cache is local: a one-chunk file found
    there is copied from it (never hard-linked: the cache touches and evicts its files),
    and only the rest comes from the layer."""
    import hashlib
    v1, _ = _versions()
    ref = _layout(tmp_path / "img", [_files_tar(v1)])
    cache = ContentCache(str(tmp_path / "cache"))
    data = v1["lib/file-007.bin"]
    cache.put("sha256:" + hashlib.sha256(data).hexdigest(), data)
    entry = cache.path("sha256:" + hashlib.sha256(data).hexdigest())
    assert entry is not None
    image = open_image(ref)
    try:
        s = pull_image(image, str(tmp_path / "dest"), cache=cache, hardlink=True)
    finally:
        image.close()
    got = tmp_path / "dest" / "lib/file-007.bin"
    assert got.read_bytes() == data
    assert got.stat().st_ino != os.stat(entry).st_ino
    assert s.files_fetched == len(v1) - 1 and s.files_reused == 1
    assert s.reused_by["copy"] + s.reused_by["reflink"] == 1 and s.reused_by["hardlink"] == 0
    assert s.bytes_reused == len(data)
