"""Against upstream's own output (../shared/testvectors): what containers/storage's
current writer and Debian's skopeo 1.9.3 wrote for three tars.

Our TOC must equal theirs ignoring offsets, our tar-split must equal theirs
byte for byte, and our reader must read their blobs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from chunked import format as fmt
from chunked.builder import build_blob
from chunked.read.layer import ChunkedLayer
from chunked.read.source import FileSource
from tests.need import need

VECTORS = Path(os.environ.get("CHUNKED_TESTVECTORS",
                              Path(__file__).resolve().parents[2] / "shared" / "testvectors"))
NAMES = ["features", "gnu", "big"]



@pytest.fixture(autouse=True)
def _vectors() -> None:
    # a clone alone has no ../shared: skipped then, saying so, except under CI
    need(VECTORS.is_dir(), f"upstream test vectors not found at {VECTORS} (they come from "
         "../shared beside the clone, or CHUNKED_TESTVECTORS)", ci_only=True)


def _tar(name: str) -> bytes:
    return gzip.decompress((VECTORS / f"{name}.tar.gz").read_bytes())


def _without_offsets(toc: bytes) -> dict:
    doc = json.loads(toc)
    doc.pop("tarSplitDigest", None)
    for e in doc["entries"]:
        e.pop("offset", None)
        e.pop("endOffset", None)
    return doc


def _payload(blob: bytes, pos: fmt.Position) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob[pos.offset:pos.end])


@pytest.mark.parametrize("variant", ["current", "old"])
@pytest.mark.parametrize("name", NAMES)
def test_we_write_what_upstream_writes(name, variant):
    v = fmt.VARIANTS[variant]
    out = io.BytesIO()
    result = build_blob(io.BytesIO(_tar(name)), out, variant=v, extra_old_keys=False)
    blob = out.getvalue()
    ann = fmt.LayerAnnotations.find(result.annotations)
    assert ann.variant is v
    toc = _payload(blob, ann.toc)
    ref_toc = (VECTORS / f"{name}.{variant}.toc.json").read_bytes()
    assert _without_offsets(toc) == _without_offsets(ref_toc)
    # key order too: upstream's struct order
    assert [list(e) for e in json.loads(toc)["entries"]] == \
        [list(e) for e in json.loads(ref_toc)["entries"]]
    if v.has_tarsplit:
        tarsplit = _payload(blob, ann.tarsplit)
        assert tarsplit == (VECTORS / f"{name}.current.tarsplit.jsonl").read_bytes()
        assert json.loads(toc)["tarSplitDigest"] == "sha256:" + hashlib.sha256(
            blob[ann.tarsplit.offset:ann.tarsplit.end]).hexdigest()


@pytest.mark.parametrize("variant", ["current", "old"])
@pytest.mark.parametrize("name", NAMES)
def test_we_read_what_upstream_writes(name, variant):
    tar = _tar(name)
    annotations = json.loads((VECTORS / f"{name}.{variant}.annotations.json").read_text())
    with FileSource(VECTORS / f"{name}.{variant}.blob") as src:
        for ann in (annotations, None):  # via the annotations, and via the footer alone
            layer = ChunkedLayer.open(src, ann)
            assert layer.variant.name == variant
            tf = tarfile.open(fileobj=io.BytesIO(tar))
            for m in tf.getmembers():
                if m.isreg():
                    assert layer.read_file(m.name) == tf.extractfile(m).read(), m.name
            report = layer.verify()
        if variant == "current":
            # the current writer keeps the record padding: the layer is the input tar
            assert report.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
            assert report.tarsplit_checked


def test_upstream_toc_digest_is_checked():
    annotations = json.loads((VECTORS / "gnu.current.annotations.json").read_text())
    key = fmt.CURRENT.checksum_key
    annotations[key] = "sha256:" + "0" * 64
    with FileSource(VECTORS / "gnu.current.blob") as src, pytest.raises(
            Exception, match="TOC does not match its annotation"):
        ChunkedLayer.open(src, annotations)
