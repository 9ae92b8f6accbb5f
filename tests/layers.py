"""A multi-layer OCI image built by the tests: deletes, replaces, opaque directories."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from chunked.builder import build_blob
from chunked.oci.layout import OciLayout, write_image

MTIME = 1_700_000_000

# Each layer: name -> content (bytes), None for a directory, or ("link", target).
LOWER: dict[str, object] = {
    "etc": None, "etc/keep.conf": b"keep\n", "etc/old.conf": b"old\n",
    "etc/replace.conf": b"version 1\n", "gone": None, "gone/file": b"bye\n",
    "opq": None, "opq/lower-only": b"hidden by opaque\n",
    "usr": None, "usr/big.bin": bytes(range(256)) * 4000, "usr/link": ("link", "big.bin"),
}
UPPER: dict[str, object] = {
    "etc": None, "etc/.wh.old.conf": b"", "etc/replace.conf": b"version 2\n",
    ".wh.gone": b"", "opq": None, "opq/.wh..wh..opq": b"", "opq/upper": b"new\n",
    "new.txt": b"added\n",
}
# What the merged root filesystem holds.
MERGED: dict[str, object] = {
    "etc": None, "etc/keep.conf": b"keep\n", "etc/replace.conf": b"version 2\n",
    "opq": None, "opq/upper": b"new\n", "usr": None, "usr/big.bin": LOWER["usr/big.bin"],
    "usr/link": ("link", "big.bin"), "new.txt": b"added\n",
}


def make_tar(files: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in files.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = MTIME
            if content is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif isinstance(content, tuple):
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, content[1], 0o777
                tf.addfile(ti)
            else:
                assert isinstance(content, bytes)
                ti.size, ti.mode = len(content), 0o644
                tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def _gzip_layer(layout: OciLayout, tar: bytes) -> tuple[dict[str, object], str]:
    blob = gzip.compress(tar, mtime=0)
    digest = layout.put_bytes(blob)
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
            "size": len(blob)}
    return desc, "sha256:" + hashlib.sha256(tar).hexdigest()


def make_image(path: Path, tag: str = "v1", *, gzip_lower: bool = False) -> str:
    """Write a two-layer OCI layout at path (the lower layer gzip if asked, as in images
    converted only in part); return its oci: reference."""
    layout = OciLayout(str(path))
    layout.init()
    layers = []
    for files in (LOWER, UPPER):
        if gzip_lower and files is LOWER:
            layers.append(_gzip_layer(layout, make_tar(files)))
            continue
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(make_tar(files)), out)
        layout.commit_blob(result.digest)
        layers.append((result.descriptor(), result.diff_id))
    write_image(layout, tag, layers)
    return f"oci:{path}:{tag}"
