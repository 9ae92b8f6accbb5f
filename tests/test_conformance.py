"""One conformance suite, run against every format variant (current and old).

For each generated tar: build, then read back through the library, and check
what containers/storage relies on: byte-exact decompression, every entry's
metadata as Go's tar reader sees it, every file's bytes, verify().
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile

import pytest
import zstandard

from chunked import format as fmt
from chunked.builder import build_blob
from chunked.read.layer import ChunkedLayer, clean_name
from chunked.read.source import FileSource
from tests.tarfactory import all_tars

TARS = all_tars()


@pytest.fixture(params=sorted(fmt.VARIANTS))
def variant(request: pytest.FixtureRequest) -> fmt.Variant:
    return fmt.VARIANTS[request.param]


def _build(tmp_path, tar: bytes, variant: fmt.Variant, **kw):
    path = tmp_path / "layer.blob"
    with open(path, "wb") as out:
        result = build_blob(io.BytesIO(tar), out, variant=variant, **kw)
    return path, result


@pytest.mark.parametrize("name", sorted(TARS))
def test_round_trip(tmp_path, variant, name):
    tar = TARS[name]
    path, result = _build(tmp_path, tar, variant)
    blob = path.read_bytes()
    assert result.size == len(blob)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()

    # Any zstd decoder sees the input tar, trailing padding included.
    plain = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    assert plain == tar

    with FileSource(path) as src:
        layer = ChunkedLayer.open(src, result.annotations)
        assert layer.variant is (variant if variant is fmt.OLD else fmt.CURRENT)
        members = tarfile.open(fileobj=io.BytesIO(tar)).getmembers()
        assert len(layer.entries) == len(members)
        for m, e in zip(members, layer.entries, strict=True):
            assert clean_name(e.name) == clean_name(m.name)
            assert e.mode == m.mode
            assert (e.uid, e.gid) == (m.uid, m.gid)
            assert e.mtime == round(m.mtime * 10**9)
            if m.issym() or m.islnk():
                assert e.link_name == m.linkname
            if m.ischr() or m.isblk():
                assert (e.dev_major, e.dev_minor) == (m.devmajor, m.devminor)
            xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                      for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            assert (e.xattrs or {}) == xattrs
            if m.isreg():
                data = tarfile.open(fileobj=io.BytesIO(tar)).extractfile(m).read()
                assert e.size == len(data)
                assert layer.read_file(e.name) == data
        report = layer.verify()
        assert report.diff_id == result.diff_id
        assert report.tarsplit_checked == variant.has_tarsplit


def test_chunks_are_upstream_shaped(tmp_path, variant):
    path, result = _build(tmp_path, TARS["pax-features"], variant)
    with FileSource(path) as src:
        layer = ChunkedLayer.open(src, result.annotations)
        holes = layer.lookup("usr/holes.bin")
        kinds = [(c.zeros, c.size) for c in holes.chunks if c.zeros]
        # runs >= 1024 are holes of their own (the 1023 run is data)
        assert kinds == [(True, 3000), (True, 1024), (True, 200_000), (True, 4096)]
        assert len(layer.lookup("usr/random.bin").chunks) > 2
        # a file of one chunk has no chunk fields, even when it is all zeros
        zeros = layer.lookup("usr/zeros.bin")
        assert len(zeros.chunks) == 1 and not zeros.entry.chunk_size


def test_toc_json_matches_go_encoding(tmp_path, variant):
    path, result = _build(tmp_path, TARS["pax-features"], variant)
    ann = fmt.LayerAnnotations.find(result.annotations)
    blob = path.read_bytes()
    toc = zstandard.ZstdDecompressor().decompressobj().decompress(
        blob[ann.toc.offset:ann.toc.end])
    # only what JSON requires is escaped: podman 4.3 does not unescape TOC strings
    assert b"a&b<c>d" in toc
    assert "sep\u2028line".encode() in toc
    assert "caf\u00e9".encode() in toc
    assert b"ctl\\u0001\x7f" in toc
    xattrs = ChunkedLayer.open(FileSource(path), result.annotations).lookup("meta.txt").entry.xattrs
    assert base64.b64encode(xattrs["security.capability"]) == \
        b"AQAAAgAEAAAAAAAAAAAAAAAAAAA="  # CAPABILITY
    if variant is fmt.OLD:
        assert b'"accesstime":"0001-01-01T00:00:00Z"' in toc
    else:
        assert b"0001-01-01" not in toc


def test_annotations_carry_both_key_sets(tmp_path):
    _, result = _build(tmp_path, TARS["gnu-long"], fmt.CURRENT)
    a = result.annotations
    for key in ("manifest-checksum", "manifest-position"):
        assert a[fmt.CURRENT_PREFIX + key] == a[fmt.OLD_PREFIX + key]
    assert fmt.CURRENT_PREFIX + "tarsplit-position" in a
    _, only_current = _build(tmp_path, TARS["gnu-long"], fmt.CURRENT, extra_old_keys=False)
    assert not any(k.startswith(fmt.OLD_PREFIX) for k in only_current.annotations)


def test_footer_alone_locates_the_toc(tmp_path, variant):
    path, result = _build(tmp_path, TARS["gnu-long"], variant)
    with FileSource(path) as src:
        layer = ChunkedLayer.open(src)  # no annotations: the footer is all there is
        assert layer.checksum is None
        assert layer.read_file("gnu/data.bin") == ChunkedLayer.open(
            src, result.annotations).read_file("./gnu/data.bin")


def test_build_is_deterministic_and_thread_independent(tmp_path):
    tar = TARS["pax-features"]
    _, one = _build(tmp_path, tar, fmt.CURRENT, threads=1)
    _, two = _build(tmp_path, tar, fmt.CURRENT, threads=2)
    assert one.digest == two.digest


def test_large_frames_stream(tmp_path, variant):
    """A payload chunk bigger than the one-shot limit is compressed as a stream."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("huge-hole")
        data = bytes(20 << 20) + b"end"
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    path, result = _build(tmp_path, buf.getvalue(), variant)
    with FileSource(path) as src:
        layer = ChunkedLayer.open(src, result.annotations)
        assert layer.read_file("huge-hole") == data
        layer.verify()
