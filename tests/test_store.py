"""chunked store: the additional layer store, with the real podman 4.3.1, registry and FUSE.

What podman 4.3 does with the store (containers/image 5.23, containers/storage 1.43): for
each layer it stats ``STORE/<base64 ref>/<blob digest>/{diff,info,blob}``, creates ``use``,
reads ``info``, symlinks its layer's ``diff`` to the store's, and removes the layer
directory (rmdir) to release it. The TOC-digest scheme of containers/image >= 5.31 is
checked at the filesystem level, as no such podman runs here.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import chunked
from tests.layers import UPPER, make_tar
from tests.peers import (
    Podman,
    Registry,
    _umount_below,
    make_podman,
    require_binaries,
    skopeo_inspect,
    start_registry,
)
from tests.storeimages import GZIP_TOP, OS_RELEASE, runnable_tar
from tests.trees import full_tree, gnu_tar_root, hardlink_groups, implicit_dirs, push_image

pytestmark = pytest.mark.interop



class Store:
    """A running ``chunked store`` at ``mnt``; its server's log at ``log``."""

    def __init__(self, mnt: Path, *extra: str):
        require_binaries("fusermount3")
        mnt.mkdir()
        self.mnt = mnt
        p = chunked("store", str(mnt), "--tls-verify=false", "--no-cache", *extra)
        assert p.returncode == 0, p.stderr
        self.log = Path(p.stdout.split("log ")[-1].rstrip(")\n"))

    def stats(self) -> dict[str, dict]:
        p = chunked("stats", str(self.mnt), "--json")
        assert p.returncode == 0, p.stderr
        return {layer["digest"]: layer for layer in json.loads(p.stdout)["layers"]}

    def layer_dir(self, ref: str, key: str) -> Path:
        return self.mnt / base64.b64encode(ref.encode()).decode() / key

    def stop(self) -> None:
        if os.path.ismount(self.mnt):
            if chunked("umount", str(self.mnt)).returncode != 0:
                _umount_below(self.mnt)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def store_podman(tmp_path: Path, registry: Registry, store: Store) -> Iterator[Podman]:
    p = make_podman(tmp_path / "podman", [registry.host], mount_program="",
                    layer_store=store.mnt)
    try:
        yield p
    finally:
        p.close()  # before the store goes: its overlay mounts use the store's diff/


def skopeo_copy_layout(layout: Path, tag: str, ref: str) -> None:
    from tests.peers import skopeo_copy

    skopeo_copy(f"oci:{layout}:{tag}", f"docker://{ref}")


def _layers(ref: str) -> list[dict]:
    manifest = skopeo_inspect(f"docker://{ref}", raw=True)
    return list(manifest["layers"])  # type: ignore[arg-type]


def _no_warnings(log: str) -> None:
    warnings = [line for line in log.splitlines() if "level=warn" in line]
    assert not warnings, "\n".join(warnings)


# ------------------------------------------------------------------ podman 4.3 on the store


def test_podman_pulls_nothing_but_the_toc_and_runs(tmp_path: Path, registry: Registry,
                                                   store: Store, store_podman: Podman) -> None:
    ref = push_image(tmp_path, registry, "store/run:1", [("chunked", runnable_tar())])
    (layer,) = _layers(ref)
    mark = registry.mark()
    pulled = store_podman.pull(ref)
    assert pulled.ok, pulled.log[-3000:]
    _no_warnings(pulled.log)
    assert f"Skipping blob {layer['digest']} (already present)" in pulled.log
    # the layer's blob was read by range only: its TOC and tar-split, once
    reads = [r for r in registry.requests(mark) if r.blob_digest == layer["digest"]]
    assert reads and all(r.status == 206 for r in reads), reads
    toc = int(layer["annotations"]["io.github.containers.zstd-chunked.manifest-position"]
              .split(":")[1])
    assert sum(r.size for r in reads) < 4 * toc + 4096 < layer["size"] // 10
    assert store.stats()[layer["digest"]]["refs"] == 1

    run = store_podman.run("run", "--rm", ref, "cat", "/etc/os-release", timeout=120)
    assert run.returncode == 0, run.stderr
    _no_warnings(run.stderr)
    assert run.stdout.encode() == OS_RELEASE
    st = store.stats()[layer["digest"]]
    assert st["filesFetched"] >= 3  # cat, libc, the loader: fetched as read
    # and no more than the files the container read: not the whole layer
    assert st["bytesFetched"] < layer["size"] - toc

    removed = store_podman.run("rmi", ref)  # podman warns when a store answers otherwise
    assert removed.returncode == 0, removed.stderr
    _no_warnings(removed.stderr)
    released = store.stats()[layer["digest"]]
    assert released["refs"] == 0 and released["released"]


def test_container_root_equals_gnu_tar(tmp_path: Path, registry: Registry, store: Store,
                                       store_podman: Podman) -> None:
    """A chunked base with every entry kind, a chunked layer with whiteouts and an opaque
    directory, and a gzip layer podman pulls itself: the container's root equals GNU tar's
    extraction with the whiteouts applied."""
    tars = [runnable_tar(features=True), make_tar(UPPER), make_tar(GZIP_TOP)]
    ref = push_image(tmp_path, registry, "store/three:1",
                     [("chunked", tars[0]), ("chunked", tars[1]), ("gzip", tars[2])])
    layers = _layers(ref)
    pulled = store_podman.pull(ref)
    assert pulled.ok, pulled.log[-3000:]
    _no_warnings(pulled.log)
    for layer in layers[:2]:
        assert f"Skipping blob {layer['digest']} (already present)" in pulled.log
    assert f"Skipping blob {layers[2]['digest']}" not in pulled.log  # gzip: pulled whole
    stats = store.stats()
    assert sorted(stats) == sorted(x["digest"] for x in layers[:2])
    assert all(s["refs"] == 1 for s in stats.values())

    expected = gnu_tar_root(tmp_path, tars)
    ctr = store_podman.check("create", ref, "/bin/sh").strip()
    root = Path(store_podman.check("mount", ctr).strip())
    try:
        # overlayfs lists a whiteout of a directory only one layer has, and then does not
        # find it: podman's own storage shows the same for this image
        vanished: set[str] = set()
        untimed = implicit_dirs(expected)
        got = full_tree(root, vanished, untimed)
        assert vanished == {"old/gone"}
        want = full_tree(expected, untimed=untimed)
        # podman adds the mount points of a container it created, nothing else
        added = {p for p in set(got) - set(want)
                 if p in ("run/.containerenv", "etc/hosts", "etc/resolv.conf", "etc/hostname")}
        assert {p: got[p] for p in set(got) - added} == want
        assert hardlink_groups(root) == hardlink_groups(expected)
    finally:
        store_podman.run("umount", ctr)
        store_podman.run("rm", "-f", ctr)

    # Pushed to another repository, with layers from the store. podman 4.3 exports every
    # stored layer uncompressed (containers/image 5.23 storage_src) and compresses it again,
    # and its blob info cache learns no location from a layer the store provided: the
    # layers get new digests, but the config (so the DiffIDs) stays, and each pushed layer
    # decompresses to its DiffID. The store's layers were read through `blob`.
    copy = registry.ref("store/three-copy:1")
    pushed = store_podman.run("push", "--tls-verify=false", ref, f"docker://{copy}",
                              timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    original = skopeo_inspect(f"docker://{ref}", raw=True)
    copied = skopeo_inspect(f"docker://{copy}", raw=True)
    assert copied["config"]["digest"] == original["config"]["digest"]  # type: ignore[index]
    diff_ids = skopeo_inspect(f"docker://{ref}", config=True)["rootfs"]["diff_ids"]  # type: ignore[index]
    for layer, diff_id in zip(copied["layers"], diff_ids, strict=True):  # type: ignore[arg-type]
        blob = registry.blob_path(layer["digest"])
        plain = subprocess.run(["gzip", "-dc", str(blob)], capture_output=True, check=True)
        assert "sha256:" + hashlib.sha256(plain.stdout).hexdigest() == diff_id

    store_podman.rmi(ref)
    stats = store.stats()
    for layer in layers[:2]:
        assert stats[layer["digest"]]["refs"] == 0 and stats[layer["digest"]]["released"]


# ------------------------------------------------------------------ the filesystem itself


def _info(path: Path) -> dict:
    return json.loads((path / "info").read_bytes())


def test_both_key_schemes_and_every_info_field(tmp_path: Path, registry: Registry,
                                               store: Store) -> None:
    tars = [runnable_tar(), make_tar(UPPER)]
    ref = push_image(tmp_path, registry, "store/keys:1", [("chunked", t) for t in tars])
    config = skopeo_inspect(f"docker://{ref}", config=True)
    diff_ids = config["rootfs"]["diff_ids"]  # type: ignore[index]
    for layer, tar, diff_id in zip(_layers(ref), tars, diff_ids, strict=True):
        toc = layer["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"]
        by_blob = store.layer_dir(ref, layer["digest"])
        assert sorted(os.listdir(by_blob)) == ["blob", "diff", "info"]
        assert _info(by_blob) == {
            "compressed-diff-digest": layer["digest"], "compressed-size": layer["size"],
            "diff-digest": diff_id, "diff-size": len(tar), "compression": 4,
            "toc-digest": toc, "flags": {"expected-layer-diffid": diff_id}}
        by_toc = store.layer_dir(ref, toc)
        assert _info(by_toc) == {
            "compressed-size": layer["size"], "diff-size": len(tar), "compression": 4,
            "toc-digest": toc, "flags": {"expected-layer-diffid": diff_id}}
        assert sorted(os.listdir(by_toc / "diff")) == sorted(os.listdir(by_blob / "diff"))
        blob = (by_blob / "blob").read_bytes()
        assert len(blob) == layer["size"]
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]


def test_diff_is_the_overlay_format(tmp_path: Path, registry: Registry, store: Store) -> None:
    ref = push_image(tmp_path, registry, "store/overlay:1", [("chunked", make_tar(UPPER))])
    (layer,) = _layers(ref)
    diff = store.layer_dir(ref, layer["digest"]) / "diff"
    names = {str(p.relative_to(diff)) for p in diff.rglob("*")}
    assert not any(".wh." in n for n in names)
    for gone in ("etc/old.conf", "gone"):  # whiteouts: character devices 0/0
        st = (diff / gone).lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, gone
    assert os.getxattr(diff / "opq", "trusted.overlay.opaque") == b"y"
    with pytest.raises(OSError) as exc:
        os.getxattr(diff / "etc", "trusted.overlay.opaque")
    assert exc.value.errno == errno.ENODATA
    assert (diff / "opq/upper").read_bytes() == UPPER["opq/upper"]
    assert (diff / "etc/replace.conf").read_bytes() == UPPER["etc/replace.conf"]


def test_use_and_release_count(tmp_path: Path, registry: Registry, store: Store) -> None:
    ref = push_image(tmp_path, registry, "store/use:1", [("chunked", make_tar(UPPER))])
    (layer,) = _layers(ref)
    d = store.layer_dir(ref, layer["digest"])
    for _ in range(2):  # what containers/storage does, and the answer it wants: ENOENT
        with pytest.raises(FileNotFoundError):
            open(d / "use", "w")
    assert store.stats()[layer["digest"]]["refs"] == 2
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            os.rmdir(d)
    released = store.stats()[layer["digest"]]
    assert released["refs"] == 0 and released["released"]
    # released, then looked up again: served as before
    assert (d / "diff/new.txt").read_bytes() == UPPER["new.txt"]
    with pytest.raises(OSError) as exc:
        (d / "diff/new.txt").write_bytes(b"x")
    assert exc.value.errno in (errno.EROFS, errno.EACCES)


def test_names_that_are_not_layers_are_enoent(tmp_path: Path, registry: Registry,
                                              store: Store) -> None:
    tar = make_tar(UPPER)
    ref = push_image(tmp_path, registry, "store/names:1", [("gzip", tar), ("chunked", tar)])
    gz, chunked_layer = _layers(ref)
    b64 = base64.b64encode(ref.encode()).decode()
    bad = [
        "not base64!", "bm90IGEgcmVmZXJlbmNl",  # base64 of "not a reference"
        base64.b64encode(b"\xff\xfe").decode(), base64.b64encode(b"UPPER/Case:1").decode(),
        base64.b64encode(registry.ref("store/absent:1").encode()).decode(),
        f"{b64}/sha256:{'0' * 64}", f"{b64}/not-a-digest", f"{b64}/{gz['digest']}",
        f"{b64}/{chunked_layer['digest']}/use", f"{b64}/{chunked_layer['digest']}/nope",
    ]
    for name in bad:
        with pytest.raises(OSError) as exc:
            os.stat(store.mnt / name)
        assert exc.value.errno in (errno.ENOENT, errno.EINVAL), name
    assert os.path.ismount(store.mnt)
    assert (store.layer_dir(ref, chunked_layer["digest"]) / "diff/new.txt").exists()


# ------------------------------------------------------------------ faults


def test_registry_dies_mid_read_and_comes_back(tmp_path: Path, store: Store) -> None:
    reg = start_registry(tmp_path / "reg")
    try:
        files = {"a.txt": b"first\n", "big.bin": os.urandom(1 << 20)}
        ref = push_image(tmp_path, reg, "faults/store:1", [("chunked", make_tar(files))])
        (layer,) = _layers(ref)
        diff = store.layer_dir(ref, layer["digest"]) / "diff"
        assert (diff / "a.txt").read_bytes() == files["a.txt"]
        reg.kill()
        with pytest.raises(OSError) as exc:
            (diff / "big.bin").read_bytes()
        assert exc.value.errno == errno.EIO
        assert os.path.ismount(store.mnt)
        reg.restart()  # same port, same storage
        assert (diff / "big.bin").read_bytes() == files["big.bin"]
    finally:
        reg.stop()


def test_corrupt_chunk_is_eio(tmp_path: Path, registry: Registry, store: Store) -> None:
    files = {"a.txt": b"kept\n", "big.bin": os.urandom(300_000)}
    tar = make_tar(files)
    ref = push_image(tmp_path, registry, "faults/corrupt:1", [("chunked", tar)])
    (layer,) = _layers(ref)
    data_path = registry.blob_path(layer["digest"])
    blob = bytearray(data_path.read_bytes())
    blob[len(blob) // 4] ^= 0xFF  # inside the data frames, far from TOC and tar-split
    data_path.write_bytes(bytes(blob))
    diff = store.layer_dir(ref, layer["digest"]) / "diff"
    assert (diff / "a.txt").read_bytes() == files["a.txt"]
    for _ in range(2):  # nothing wrong was kept: the second read fails the same way
        with pytest.raises(OSError) as exc:
            (diff / "big.bin").read_bytes()
        assert exc.value.errno == errno.EIO
    with pytest.raises(OSError) as exc:
        (store.layer_dir(ref, layer["digest"]) / "blob").read_bytes()
    assert exc.value.errno == errno.EIO
    assert os.path.ismount(store.mnt)
    assert "big.bin" in store.log.read_text()


def test_concurrent_lookups_resolve_once_and_share_the_layer(tmp_path: Path,
                                                             registry: Registry,
                                                             store: Store) -> None:
    """The engine resolves layers in parallel: each reference's manifest is fetched once,
    and a layer two references share is opened once (one TOC request)."""
    import concurrent.futures as cf

    ref = push_image(tmp_path, registry, "store/many:1", [("chunked", make_tar(UPPER))])
    (layer,) = _layers(ref)
    manifest_digest = skopeo_inspect(f"docker://{ref}")["Digest"]
    pinned = f"{ref.rsplit(':', 1)[0]}@{manifest_digest}"
    both = f"{ref}@{manifest_digest}"  # what podman passes when given both: the digest wins
    mark = registry.mark()
    dirs = [store.layer_dir(r, layer["digest"]) / "diff" for r in (ref, pinned, both)] * 12
    with cf.ThreadPoolExecutor(len(dirs)) as pool:
        listings = list(pool.map(lambda d: sorted(os.listdir(d)), dirs))
    assert all(x == listings[0] for x in listings) and "new.txt" in listings[0]
    requests = registry.requests(mark)
    manifests = [r for r in requests if "/manifests/" in r.path]
    assert len(manifests) == 3, manifests  # one per name
    assert len([r for r in requests if r.blob_digest == layer["digest"]]) == 1
    (stats,) = store.stats().values()
    assert sorted(stats["images"]) == sorted({ref, pinned})  # "both" resolves as "pinned"


HOSTILE = ["zeros-chunk-single", "chunk-offset-shifted", "toc-points-elsewhere-current",
           "toc-points-elsewhere-old", "uid-gid-2e32", "dangling-hardlink",
           "non-utf8-name-raw"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_layers_are_refused_or_served_right(tmp_path: Path, registry: Registry,
                                                     store: Store, name: str) -> None:
    """A hostile layer (tests/hostile/) is not served (ENOENT: the engine then pulls it
    itself), or every file the store serves is what GNU tar extracts from it, or EIO."""
    from tests import hostile

    case = hostile.write_case(hostile.named_case(name, hostile.SMALL), tmp_path / "case")
    ref = registry.ref(f"hostile/{name}:1")
    skopeo_copy_layout(case.root / "in" / "layout", hostile.TAG, ref)
    descriptor = json.loads((case.root / "in" / "descriptor.json").read_text())
    diff = store.layer_dir(ref, descriptor["digest"]) / "diff"
    try:
        os.stat(diff)
    except FileNotFoundError:  # refused (a lie, or no tar-split to check the TOC with)
        assert descriptor["digest"] not in store.stats()
        return
    truth = case.layer.tree or {}
    served = 0
    for p in diff.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        key = os.fsencode(p.relative_to(diff))
        try:
            data = p.read_bytes()
        except OSError as exc:
            assert exc.errno == errno.EIO, p
            continue
        node = truth.get(key)
        assert node is not None and node.kind == "file", key
        assert hashlib.sha256(data).hexdigest() == node.sha.removeprefix("sha256:"), key
        served += 1
    assert os.path.ismount(store.mnt)
