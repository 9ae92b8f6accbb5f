"""chunked pull: an image's root filesystem written into DEST, fetching only what is new."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from chunked.builder import build_blob
from chunked.oci.layout import OciLayout, write_image
from tests.clirun import COMMAND, chunked
from tests.hostile.process import run_process
from tests.need import need_root
from tests.peers import Registry, skopeo_copy
from tests.trees import features_image, full_tree, gnu_tar_root, hardlink_groups, implicit_dirs

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root("a pull with owners and devices")



def _push_tars(tmp_path: Path, registry: Registry, name: str,
               tars: list[bytes]) -> list[dict]:
    layout = OciLayout(str(tmp_path / f"img-{name.replace('/', '-').replace(':', '-')}"))
    layout.init()
    layers = []
    for tar in tars:
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(tar), out)
        layout.commit_blob(result.digest)
        layers.append((result.descriptor(), result.diff_id))
    write_image(layout, "t", layers)
    skopeo_copy(f"oci:{layout.path}:t", f"docker://{registry.host}/{name}")
    return [d for d, _ in layers]


def _tar(files: dict[str, bytes | tuple[str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in files.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if isinstance(content, tuple):
                ti.type = tarfile.SYMTYPE if content[0] == "sym" else tarfile.LNKTYPE
                ti.linkname = content[1]
                tf.addfile(ti)
            else:
                ti.size = len(content)
                tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def test_pull_equals_tar_extraction(tmp_path: Path, registry: Registry) -> None:
    ref, root = features_image(tmp_path, registry, "pull/features:1")
    dest = tmp_path / "dest"
    p = chunked("pull", f"docker://{ref}", str(dest), "--tls-verify=false",
                "--cache", str(tmp_path / "cache"), "--json")
    assert p.returncode == 0, p.stderr
    untimed = implicit_dirs(root)
    got, want = full_tree(dest, untimed=untimed), full_tree(root, untimed=untimed)
    assert set(got) == set(want)
    for path in sorted(want):
        assert got[path] == want[path], path
    assert hardlink_groups(dest) == hardlink_groups(root)


def test_update_fetches_only_what_changed(tmp_path: Path, registry: Registry) -> None:
    rng = random.Random(4)
    v1 = {f"lib/file-{i:03d}.bin": rng.randbytes(200_000) for i in range(60)}
    v2 = dict(v1)
    changed = {"lib/file-007.bin": rng.randbytes(200_000), "lib/new.bin": rng.randbytes(300_000)}
    v2.update(changed)
    _push_tars(tmp_path, registry, "pull/app:1", [_tar(v1)])
    (layer2,) = _push_tars(tmp_path, registry, "pull/app:2", [_tar(v2)])
    cache = str(tmp_path / "cache")
    p = chunked("pull", f"docker://{registry.host}/pull/app:1", str(tmp_path / "v1"),
                "--tls-verify=false", "--cache", cache, "-q")
    assert p.returncode == 0, p.stderr

    mark = registry.mark()
    p = chunked("pull", f"docker://{registry.host}/pull/app:2", str(tmp_path / "v2"),
                "--tls-verify=false", "--cache", cache, "--json")
    assert p.returncode == 0, p.stderr
    moved = registry.blob_bytes(mark, layer2["digest"])
    # compressed size of the changed and added files, from our own reader
    from chunked.oci.layout import OciRef
    from chunked.read.image import open_oci

    image = open_oci(OciRef.parse(f"oci:{tmp_path / 'img-pull-app-2'}:t"))
    layer = image.layers[0].layer
    toc = layer.toc_pos.length
    frames = sum(layer.lookup(n).compressed_size for n in changed)
    image.close()
    assert moved <= toc + 1.2 * frames, (moved, toc, frames)
    for name, data in v2.items():
        assert (tmp_path / "v2" / name).read_bytes() == data
    summary = json.loads(p.stdout)
    assert summary["filesFetched"] == 2 and summary["filesReused"] == 59


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-parent", "hardlink-out"])
def test_hostile_layers_are_refused(tmp_path: Path, registry: Registry, case: str) -> None:
    tars = {
        "dotdot": [_tar({"ok": b"fine", "../escape": b"pwned"})],
        "absolute": [_tar({"/abs-escape": b"pwned"})],
        "symlink-parent": [_tar({"link": ("sym", "/"), "link/tmp/escape-symlink": b"pwned"})],
        "hardlink-out": [_tar({"h": ("hard", "../../etc/passwd")})],
    }[case]
    _push_tars(tmp_path, registry, f"hostile/{case}:1", tars)
    dest = tmp_path / "box" / "dest"
    dest.parent.mkdir()
    p = chunked("pull", f"docker://{registry.host}/hostile/{case}:1", str(dest),
                "--tls-verify=false", "--no-cache")
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert "refusing" in p.stderr or "outside" in p.stderr
    # nothing outside DEST: the box holds at most the empty destination
    assert [x.name for x in (tmp_path / "box").iterdir()] in ([], ["dest"])
    assert not Path("/tmp/escape-symlink").exists() and not Path("/abs-escape").exists()


def test_corrupt_content_fails_cleanly(tmp_path: Path, registry: Registry) -> None:
    """A layer whose bytes do not match the digests its TOC claims."""
    rng = random.Random(8)
    (desc,) = _push_tars(tmp_path, registry, "hostile/digest:1",
                         [_tar({"a.bin": rng.randbytes(300_000)})])
    blob = registry.root / "docker/registry/v2/blobs/sha256" / desc["digest"][7:9] / \
        desc["digest"][7:] / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a.bin's frames
    blob.write_bytes(bytes(data))
    p = chunked("pull", f"docker://{registry.host}/hostile/digest:1",
                str(tmp_path / "dest"), "--tls-verify=false", "--no-cache")
    assert p.returncode != 0 and "a.bin" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dest" / "a.bin").exists()
    assert not [n for n in os.listdir(tmp_path / "dest") if n.startswith(".chunked-tmp")]


def _big_file(seed: int, size: int) -> bytes:
    """Random bytes with runs of zeros (holes) and of repeated text: many chunks, some of
    them zeros chunks, compressible in parts."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        n = rng.randrange(1 << 16, 1 << 20)
        out += bytes(n) if kind < 0.2 else (b"text %d\n" % n) * (n // 12) if kind < 0.5 \
            else rng.randbytes(n)
    return bytes(out[:size])


def test_a_big_file_is_written_as_it_arrives(tmp_path: Path, registry: Registry) -> None:
    """A 160 MiB file of many chunks (holes among them) is streamed to disk: the pull's
    peak memory stays below the file's size, and the file is exact."""
    big = _big_file(11, 160 << 20)
    files = {"small.txt": b"small\n", "data/big.bin": big, "data/after.txt": b"after\n"}
    _push_tars(tmp_path, registry, "pull/big:1", [_tar(files)])
    dest = tmp_path / "dest"
    run = run_process([*COMMAND, "pull",
                       f"docker://{registry.host}/pull/big:1", str(dest), "--tls-verify=false",
                       "--no-cache", "-q"], env=dict(os.environ), timeout=300)
    assert run.rc == 0, run.stderr
    rss_kib = run.rss_kib
    for name, content in files.items():
        assert (dest / name).read_bytes() == content, name
    # blocks of the holes are not allocated
    assert os.stat(dest / "data/big.bin").st_blocks * 512 < len(big)
    assert rss_kib < 140 << 10, f"peak RSS {rss_kib >> 10} MiB for a 160 MiB file"


def test_corrupt_chunk_of_a_streamed_file_fails_cleanly(tmp_path: Path,
                                                        registry: Registry) -> None:
    rng = random.Random(9)
    (desc,) = _push_tars(tmp_path, registry, "hostile/big:1",
                         [_tar({"big.bin": rng.randbytes(24 << 20)})])
    blob = registry.root / "docker/registry/v2/blobs/sha256" / desc["digest"][7:9] / \
        desc["digest"][7:] / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) * 2 // 3] ^= 0xFF  # in big.bin's frames, past its first batches
    blob.write_bytes(bytes(data))
    p = chunked("pull", f"docker://{registry.host}/hostile/big:1",
                str(tmp_path / "dest"), "--tls-verify=false", "--no-cache")
    assert p.returncode != 0 and "big.bin" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path / "dest") == []  # no file, no temporary file


def _complete(d: Path) -> list[Path]:
    """Regular files of ``d`` under a final name (not a pull's temporary one)."""
    if not d.is_dir():
        return []
    return [p for p in d.iterdir()
            if not p.name.startswith(".chunked-tmp") and p.is_file()]


def test_killed_pull_resumes(tmp_path: Path, registry: Registry) -> None:
    """A pull killed mid-way leaves only complete files under their final names; the next
    pull keeps those in place, fetches only the rest, and the tree is the image's."""
    from tests.proxy import Proxy, ProxyOptions

    rng = random.Random(6)
    size = 100_000
    files = {f"d/f{i:03d}.bin": rng.randbytes(size) for i in range(240)}
    tar = _tar(files)
    (desc,) = _push_tars(tmp_path, registry, "pull/crash:1", [tar])
    # 24 MB at 4 MB/s: files land one after another for about 6 s
    slow = Proxy(registry.url, ProxyOptions(bandwidth=4e6))
    dest = tmp_path / "dest"
    cache = str(tmp_path / "cache")
    try:
        proc = subprocess.Popen([*COMMAND, "pull",
                                 f"docker://{slow.host}/pull/crash:1", str(dest),
                                 "--tls-verify=false", "--cache", cache, "-q"])
        try:
            deadline = time.monotonic() + 120
            while len(_complete(dest / "d")) < 10 and proc.poll() is None:
                assert time.monotonic() < deadline, "no file landed within 120 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the pull ended before it was killed"
    finally:
        slow.close()
    # died mid-pull: some files, not all, and each one under a final name is complete
    kept = _complete(dest / "d")
    assert 10 <= len(kept) < len(files), len(kept)
    for p in kept:
        assert p.read_bytes() == files[f"d/{p.name}"], p.name

    mark = registry.mark()
    p = chunked("pull", f"docker://{registry.host}/pull/crash:1", str(dest),
                "--tls-verify=false", "--cache", cache, "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["reusedBy"]["inPlace"] == len(kept), (summary, len(kept))
    assert summary["filesFetched"] == len(files) - len(kept), summary
    # the registry's own log: the second run asked for less than the layer, by at least
    # the kept files' frames (random bytes: a frame is no smaller than its file)
    moved = registry.blob_bytes(mark, desc["digest"])
    assert 0 < moved < desc["size"], (moved, desc["size"])
    assert moved <= desc["size"] - len(kept) * size + 64 * 1024, (moved, desc["size"], len(kept))
    # the tree is the image's (GNU tar's extraction of the layer): every file with its
    # bytes and metadata, nothing else, no temporary left
    root = gnu_tar_root(tmp_path, [tar])
    untimed = implicit_dirs(root)
    got, want = full_tree(dest, untimed=untimed), full_tree(root, untimed=untimed)
    assert sorted(got) == sorted(want)
    for path in sorted(want):
        assert got[path] == want[path], path


# -- reuse of what earlier pulls wrote -----------------------------------------------------

def _pull(registry: Registry, ref: str, dest: Path, cache: Path, *extra: str) -> dict:
    p = chunked("pull", f"docker://{registry.host}/{ref}", str(dest), "--tls-verify=false",
                "--cache", str(cache), "--json", *extra)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _versions(rng: random.Random) -> tuple[dict[str, bytes], dict[str, bytes]]:
    v1 = {f"lib/file-{i:03d}.bin": rng.randbytes(50_000) for i in range(30)}
    v1["big/blob.bin"] = rng.randbytes(3 << 20)  # many chunks
    v2 = dict(v1)
    v2["lib/file-003.bin"] = rng.randbytes(50_000)
    big = bytearray(v1["big/blob.bin"])
    big[1 << 20:(1 << 20) + 4096] = rng.randbytes(4096)  # a change in the middle
    v2["big/blob.bin"] = bytes(big)
    return v1, v2


def test_update_reuses_files_and_chunks_of_an_earlier_pull(tmp_path: Path,
                                                           registry: Registry) -> None:
    v1, v2 = _versions(random.Random(11))
    _push_tars(tmp_path, registry, "reuse/app:1", [_tar(v1)])
    (layer2,) = _push_tars(tmp_path, registry, "reuse/app:2", [_tar(v2)])
    cache = tmp_path / "store"
    _pull(registry, "reuse/app:1", tmp_path / "v1", cache)
    mark = registry.mark()
    s = _pull(registry, "reuse/app:2", tmp_path / "v2", cache)
    for name, data in v2.items():
        assert (tmp_path / "v2" / name).read_bytes() == data, name
    # unchanged files came from the first pull's tree; the big file only fetched the chunks
    # around its change
    assert s["filesReused"] == 29 and s["filesFetched"] == 2
    assert s["reusedBy"]["copy"] + s["reusedBy"]["reflink"] == 29
    assert s["bytesReused"] > 29 * 50_000 + (2 << 20)
    moved = registry.blob_bytes(mark, layer2["digest"])
    assert moved < 1 << 20, moved  # the big file alone is 3 MiB of incompressible frames


def test_changed_local_file_is_fetched_not_copied(tmp_path: Path, registry: Registry) -> None:
    """An earlier pull's tree is a hint: a file changed there since fails its digest check
    and is fetched instead, and the chunk of a changed large file likewise."""
    v1, v2 = _versions(random.Random(12))
    _push_tars(tmp_path, registry, "reuse/tamper:1", [_tar(v1)])
    _push_tars(tmp_path, registry, "reuse/tamper:2", [_tar(v2)])
    cache = tmp_path / "store"
    _pull(registry, "reuse/tamper:1", tmp_path / "v1", cache)
    victim = tmp_path / "v1" / "lib/file-010.bin"
    victim.write_bytes(b"X" * len(v1["lib/file-010.bin"]))  # same size, other bytes
    with open(tmp_path / "v1" / "big/blob.bin", "r+b") as f:
        f.write(b"Y" * 4096)  # inside the big file's first chunk
    s = _pull(registry, "reuse/tamper:2", tmp_path / "v2", cache)
    for name, data in v2.items():
        assert (tmp_path / "v2" / name).read_bytes() == data, name
    assert s["filesFetched"] == 3 and s["filesReused"] == 28


def test_hardlink_shares_inodes_only_where_metadata_match(tmp_path: Path,
                                                          registry: Registry) -> None:
    v1, _ = _versions(random.Random(13))
    tar1 = _tar(v1)
    # v2: the same bytes, but one file with another mode: it must not share an inode
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar1)) as src, \
            tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isreg() else None
            if m.name == "lib/file-000.bin":
                m.mode = 0o600
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    _push_tars(tmp_path, registry, "reuse/link:1", [tar1])
    _push_tars(tmp_path, registry, "reuse/link:2", [buf.getvalue()])
    cache = tmp_path / "store"
    _pull(registry, "reuse/link:1", tmp_path / "v1", cache)
    s = _pull(registry, "reuse/link:2", tmp_path / "v2", cache, "--hardlink")
    assert s["reusedBy"]["hardlink"] == len(v1) - 1 and s["bytesFetched"] == 0
    for name, data in v1.items():
        a, b = tmp_path / "v1" / name, tmp_path / "v2" / name
        assert b.read_bytes() == data
        if name == "lib/file-000.bin":
            assert a.stat().st_ino != b.stat().st_ino and b.stat().st_mode & 0o7777 == 0o600
        else:
            assert a.stat().st_ino == b.stat().st_ino
            assert b.stat().st_mtime_ns == 1_700_000_000 * 10**9


def test_reflink_where_the_file_system_can(xfs: Path, tmp_path: Path,
                                           registry: Registry) -> None:
    v1, v2 = _versions(random.Random(14))
    _push_tars(tmp_path, registry, "reuse/clone:1", [_tar(v1)])
    _push_tars(tmp_path, registry, "reuse/clone:2", [_tar(v2)])
    cache = xfs / "store"
    _pull(registry, "reuse/clone:1", xfs / "v1", cache)
    s = _pull(registry, "reuse/clone:2", xfs / "v2", cache)
    assert s["reusedBy"]["reflink"] == 29 and s["reusedBy"]["copy"] == 0, s["reusedBy"]
    for name, data in v2.items():
        assert (xfs / "v2" / name).read_bytes() == data
    # with --hardlink too: a clone is preferred, so the trees keep separate inodes
    s = _pull(registry, "reuse/clone:2", xfs / "v3", cache, "--hardlink")
    assert s["reusedBy"]["hardlink"] == 0 and s["reusedBy"]["reflink"] >= 29
    # the clones share their extents with the first tree (FIEMAP's "shared" flag)
    out = subprocess.run(["filefrag", "-v", str(xfs / "v2" / "lib/file-000.bin")],
                         capture_output=True, text=True, check=True).stdout
    assert "shared" in out, out


def test_files_the_mount_cached_are_not_fetched(tmp_path: Path, registry: Registry) -> None:
    """The lazy mount's cache is part of the local store: files read through a mount are
    copied (or cloned) from it by a later pull, checked, not fetched again."""
    rng = random.Random(15)
    files = {f"app/f{i}.bin": rng.randbytes(60_000) for i in range(6)}
    (desc,) = _push_tars(tmp_path, registry, "reuse/mounted:1", [_tar(files)])
    cache = tmp_path / "store"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", f"docker://{registry.host}/reuse/mounted:1", str(mnt),
                "--tls-verify=false", "--cache", str(cache))
    assert p.returncode == 0, p.stderr
    try:
        for name in ("app/f0.bin", "app/f1.bin"):
            assert (mnt / name).read_bytes() == files[name]
    finally:
        chunked("umount", str(mnt))
    mark = registry.mark()
    s = _pull(registry, "reuse/mounted:1", tmp_path / "dest", cache)
    for name, data in files.items():
        assert (tmp_path / "dest" / name).read_bytes() == data
    assert s["filesReused"] == 2 and s["filesFetched"] == 4, s
    # a one-chunk file is copied from its cache entry whole, a larger one chunk by chunk
    by = s["reusedBy"]
    assert by["copy"] + by["reflink"] + by["chunks"] == 2 and by["copy"] + by["reflink"] >= 1
    # the two files' frames were not asked for again: four files' worth at most
    assert registry.blob_bytes(mark, desc["digest"]) < 4 * 61_000 + 2048
