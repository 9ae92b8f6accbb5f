"""Every kind of layer answers the one protocol (chunked.read.protocol.LayerReader) alike.

The same tar is written as each kind of layer a registry serves (zstd:chunked, current and
old format; gzip; plain zstd; plain tar) into an ``oci:`` layout, opened the way every
command opens it, and each must give the same entries, files, bytes and hard-link
resolution for every path. Hard links that chain, loop or point at nothing are resolved,
or refused, the same way by every kind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from chunked import format as fmt
from chunked.builder import build_blob
from chunked.errors import FormatError, NotFoundError
from chunked.oci.layout import OciLayout, OciRef, write_image
from chunked.read.image import LayerPolicy, MergedView, open_oci
from chunked.read.layer import ChunkedLayer, clean_name
from chunked.read.protocol import (
    KIND_CHUNKED,
    KIND_GZIP,
    KIND_TAR,
    KIND_ZSTD,
    MAX_LINK_HOPS,
    LayerReader,
)
from chunked.read.tarlayer import TarLayer
from tests.clirun import chunked
from tests.need import need_fuse
from tests.tarfactory import MTIME, all_tars

# name -> (how the blob is written, policy it is opened with, the kind it must say, class)
KINDS = {
    "zstd:chunked": ("current", LayerPolicy(), KIND_CHUNKED, ChunkedLayer),
    "zstd:chunked-old": ("old", LayerPolicy(), KIND_CHUNKED, ChunkedLayer),
    "zstd:chunked-old-whole": ("old", LayerPolicy(whole_if_unchecked=True), KIND_ZSTD,
                               TarLayer),
    "gzip": ("gzip", LayerPolicy(), KIND_GZIP, TarLayer),
    "zstd": ("zstd", LayerPolicy(), KIND_ZSTD, TarLayer),
    "tar": ("tar", LayerPolicy(), KIND_TAR, TarLayer),
}
_MEDIA = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
          "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
          "tar": "application/vnd.oci.image.layer.v1.tar"}


def _write(path: Path, tar: bytes, how: str) -> str:
    """A one-layer image of ``tar`` written ``how``; its oci: reference."""
    layout = OciLayout(str(path))
    layout.init()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    if how in ("current", "old"):
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(tar), out,
                                variant=fmt.OLD if how == "old" else fmt.CURRENT)
        layout.commit_blob(result.digest)
        desc = result.descriptor()
    else:
        blob = {"gzip": lambda t: gzip.compress(t, mtime=0),
                "zstd": zstandard.ZstdCompressor().compress,
                "tar": bytes}[how](tar)
        desc = {"mediaType": _MEDIA[how], "digest": layout.put_bytes(blob), "size": len(blob)}
    write_image(layout, "v1", [(desc, diff_id)])
    return f"oci:{path}:v1"


def _open_all(tmp_path: Path, tar: bytes, kinds: list[str]) -> Iterator[dict[str, LayerReader]]:
    images = []
    try:
        layers = {}
        for name in kinds:
            how, policy, _kind, _cls = KINDS[name]
            image = open_oci(OciRef.parse(_write(tmp_path / name, tar, how)), policy)
            images.append(image)
            layers[name] = image.layers[0].layer
        yield layers
    finally:
        for image in images:
            image.close()


@pytest.fixture
def open_all(tmp_path):
    """``open_all(tar[, kinds])``: the tar opened as every kind (or those named), closed
    after the test."""
    gens = []

    def open_(tar: bytes, kinds: list[str] | None = None) -> dict[str, LayerReader]:
        gen = _open_all(tmp_path / f"t{len(gens)}", tar, list(KINDS) if kinds is None else kinds)
        gens.append(gen)
        return next(gen)

    yield open_
    for gen in gens:
        gen.close()


def _tar(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """A tar of (name, "file"|"dir"|"link", content or hard link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, what, arg in members:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode = MTIME, 0o644
            if what == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif what == "link":
                assert isinstance(arg, str)
                ti.type, ti.linkname = tarfile.LNKTYPE, arg
                tf.addfile(ti)
            else:
                assert isinstance(arg, bytes)
                ti.size = len(arg)
                tf.addfile(ti, io.BytesIO(arg))
    return buf.getvalue()


def _entry(e: fmt.TocEntry) -> tuple[object, ...]:
    return (e.name, e.type, e.link_name, e.mode, e.size, e.uid, e.gid, e.modtime,
            e.dev_major, e.dev_minor, dict(e.xattrs or {}), e.digest or None)


def _resolved(layer: LayerReader, path: str) -> object:
    try:
        return layer.lookup(path).entry.name
    except FormatError as exc:
        return ("FormatError", str(exc))


def _content(layer: LayerReader, path: str) -> bytes | None:
    info = layer.lookup(path)
    if info.entry.type != fmt.TYPE_REG:
        return None
    whole = layer.read_file(path)
    assert b"".join(layer.iter_file(info)) == whole
    return whole


@pytest.mark.parametrize("tar_name", sorted(all_tars()))
def test_every_kind_answers_the_protocol_alike(open_all, tar_name):
    tar = all_tars()[tar_name]
    layers = open_all(tar)
    for name, layer in layers.items():
        _how, _policy, kind, cls = KINDS[name]
        assert isinstance(layer, LayerReader), name
        assert isinstance(layer, cls), name
        assert layer.kind == kind, name
        assert layer.tarsplit_checked is (name != "zstd:chunked-old"), name
        # no kind carries another's format objects
        assert hasattr(layer, "variant") is (cls is ChunkedLayer), name
    base = layers["zstd:chunked"]
    paths = sorted(base.files)
    want_entries = [_entry(e) for e in base.entries]
    want = {p: (_resolved(base, p), base.files[p].entry.type) for p in paths}
    want_content = {p: _content(base, p) for p in paths if not isinstance(want[p][0], tuple)}
    diff_id = base.verify().diff_id
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    for name, layer in layers.items():
        assert sorted(layer.files) == paths, name
        assert [_entry(e) for e in layer.entries] == want_entries, name
        assert {p: (_resolved(layer, p), layer.files[p].entry.type) for p in paths} == want, \
            name
        for p, content in want_content.items():
            assert _content(layer, p) == content, (name, p)
        assert layer.verify().diff_id == diff_id, name
        with pytest.raises(NotFoundError):
            layer.lookup("no/such/file")


def test_a_path_given_twice_is_in_entries_twice_and_in_files_once(open_all):
    # (a zstd:chunked layer cannot hold one: its builder refuses, as containers/storage's)
    tar = _tar([("etc", "dir", b""), ("etc/conf", "file", b"first\n"),
                ("etc/conf", "file", b"second\n"), ("hard", "link", "etc/conf")])
    for name, layer in open_all(tar, ["gzip", "zstd", "tar"]).items():
        names = [clean_name(e.name) for e in layer.entries]
        assert names == ["etc", "etc/conf", "etc/conf", "hard"], name
        assert sorted(layer.files) == ["etc", "etc/conf", "hard"], name
        assert layer.read_file("hard") == layer.read_file("etc/conf") == b"second\n", name


def _chain(n: int) -> list[tuple[str, str, bytes | str]]:
    """data, then l1 -> data, l2 -> l1, ..., ln -> l(n-1): n hard links to follow from ln."""
    return [("data", "file", b"at the end of the chain\n")] + [
        (f"l{i}", "link", "data" if i == 1 else f"l{i - 1}") for i in range(1, n + 1)]


def test_a_hard_link_chain_resolves_to_its_end_in_every_kind(open_all):
    longest = f"l{MAX_LINK_HOPS}"
    for name, layer in open_all(_tar(_chain(MAX_LINK_HOPS))).items():
        for i in (1, 2, MAX_LINK_HOPS):
            info = layer.lookup(f"l{i}")
            assert info is layer.files["data"], (name, i)
        assert layer.read_file(longest) == b"at the end of the chain\n", name
        # the merged view and its lookups share the resolution
        view = MergedView([layer])
        assert view.lookup(longest)[1] is layer.files["data"], name


def test_a_chain_longer_than_the_bound_is_refused_in_every_kind(open_all):
    for name, layer in open_all(_tar(_chain(MAX_LINK_HOPS + 1))).items():
        assert layer.lookup(f"l{MAX_LINK_HOPS}") is layer.files["data"], name
        with pytest.raises(FormatError, match=f"longer than {MAX_LINK_HOPS} links"):
            layer.lookup(f"l{MAX_LINK_HOPS + 1}")


def test_a_hard_link_cycle_is_a_format_error_in_every_kind(open_all):
    tar = _tar([("a", "link", "b"), ("b", "link", "c"), ("c", "link", "a"),
                ("self", "link", "./self"), ("into", "link", "a")])
    for name, layer in open_all(tar).items():
        for path in ("a", "b", "c", "self", "into"):
            with pytest.raises(FormatError, match="cycle") as exc:
                layer.lookup(path)
            assert str(exc.value).startswith(f"{path}: hard link"), (name, str(exc.value))
            assert "\n" not in str(exc.value)


def test_a_dangling_hard_link_is_a_format_error_in_every_kind(open_all):
    tar = _tar([("dir", "dir", b""), ("data", "file", b"x"), ("gone", "link", "missing"),
                ("via", "link", "gone"), ("todir", "link", "dir")])
    for name, layer in open_all(tar).items():
        with pytest.raises(FormatError, match=r"^gone: hard link to 'missing', which is "
                                              "not in the layer$"):
            layer.lookup("gone")
        with pytest.raises(FormatError, match=r"^via: hard link \(by way of 'gone'\) to "
                                              "'missing', which is not in the layer$"):
            layer.lookup("via")
        # no tar links to a directory; a tree that did would loop through it
        with pytest.raises(FormatError, match="which is a directory"):
            layer.lookup("todir")
        assert layer.read_file("data") == b"x", name


@pytest.mark.interop
@pytest.mark.parametrize("how", ["current", "gzip"])
def test_a_mount_shares_a_chain_and_leaves_out_bad_links(tmp_path, how):
    """Through FUSE: a chain's names are one inode; a cycle's and a dangling link's names
    are left out (each logged), and the rest of the layer mounts."""
    need_fuse()
    tar = _tar(_chain(3) + [("a", "link", "b"), ("b", "link", "a"), ("gone", "link", "x")])
    ref = _write(tmp_path / "img", tar, how)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chunked("mount", ref, str(mnt), "--no-cache")
    assert p.returncode == 0, p.stderr
    log = re.search(r"log (\S+)\)", p.stdout)
    try:
        assert sorted(os.listdir(mnt)) == ["data", "l1", "l2", "l3"]
        inodes = {(mnt / n).stat().st_ino for n in ("data", "l1", "l2", "l3")}
        assert len(inodes) == 1
        assert (mnt / "l3").stat().st_nlink == 4
        assert (mnt / "l3").read_bytes() == b"at the end of the chain\n"
    finally:
        chunked("umount", str(mnt))
    assert not os.path.ismount(mnt)
    assert log is not None, p.stdout  # where the serving process logs
    said = Path(log.group(1)).read_text()
    assert "a: hard link (by way of 'b') to 'a' leads round in a cycle" in said
    assert "gone: hard link to 'x', which is not in the layer" in said
