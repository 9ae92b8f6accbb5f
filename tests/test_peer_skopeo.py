"""We read what the real peer writes: Debian's skopeo 1.9.3 zstd:chunked (old format)."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from chunked import format as fmt
from chunked.oci.layout import OciLayout
from chunked.read.layer import ChunkedLayer, clean_name
from chunked.read.source import FileSource
from tests.peers import require_binaries
from tests.tarfactory import all_tars

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _skopeo() -> None:
    require_binaries("skopeo")

TARS = all_tars()


@pytest.mark.parametrize("name", ["pax-features", "gnu-features", "gnu-long", "ustar-prefix"])
def test_read_skopeo_layer(tmp_path, name):
    tar = TARS[name]
    (tmp_path / "in.tar").write_bytes(tar)
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", f"tarball:{tmp_path}/in.tar",
                    f"oci:{tmp_path}/img:t", "--dest-compress-format", "zstd:chunked"],
                   check=True, capture_output=True, timeout=120)
    layout = OciLayout(str(tmp_path / "img"))
    (desc,) = layout.manifest("t").layers
    assert fmt.OLD.checksum_key in desc.annotations
    with FileSource(layout.blob_path(desc.digest)) as src:
        layer = ChunkedLayer.open(src, desc.annotations)
        assert layer.variant is fmt.OLD and layer.checksum
        members = tarfile.open(fileobj=io.BytesIO(tar)).getmembers()
        assert [clean_name(e.name) for e in layer.entries] == \
            [clean_name(m.name) for m in members]
        tf = tarfile.open(fileobj=io.BytesIO(tar))
        for m in members:
            if m.isreg():
                assert layer.read_file(m.name) == tf.extractfile(m).read(), m.name
        layer.verify()
