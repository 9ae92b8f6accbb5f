"""``chunked.verify``: every check there is, on a layer blob or a whole image."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chunked import format as fmt
from chunked.api.image import PathLike, load_descriptor, open_image
from chunked.errors import VerifyError

# progress(layer index, total bytes of its files) -> a callback taking bytes read so far
Progress = Callable[[int, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class LayerReport:
    """What verifying one layer found (all of it good: a mismatch raises instead)."""

    digest: str  # the blob's sha256, as read (held to its descriptor's when one is known)
    format: str
    files: int
    chunks: int
    bytes: int
    diff_id: str  # the sha256 of the tar it decompresses to
    toc_checksum: str | None  # what the TOC was checked against (its annotation)
    tarsplit_checked: bool

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "format": self.format, "files": self.files,
                "chunks": self.chunks, "bytes": self.bytes, "diffID": self.diff_id,
                "tocChecksum": self.toc_checksum, "tarSplitChecked": self.tarsplit_checked}


@dataclass(frozen=True)
class VerifyReport:
    target: str
    layers: tuple[LayerReport, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "layers": [r.as_dict() for r in self.layers]}


def verify(target: PathLike, *, descriptor: PathLike | Mapping[str, str] | None = None,
           tls_verify: bool = True, creds: str | None = None, authfile: str | None = None,
           platform: str | None = None, progress: Progress | None = None) -> VerifyReport:
    """Check everything a digest covers in ``target`` (a layer blob, ``oci:`` or
    ``docker://``), or raise :class:`~chunked.VerifyError` (or another
    :class:`~chunked.ChunkedError`) naming the first thing wrong.

    For each layer: every file read through the TOC (chunk and file digests, tar-split
    CRC-64), the layer decompressed as any zstd reader would and its tar held entry by entry
    against the TOC and byte for byte against the tar-split, and the blob's own sha256.
    For an image, the blob against the manifest's descriptor and the tar against the
    config's DiffID; for a blob, against ``descriptor`` when given (its size and digest,
    its annotations locating and checking the TOC)."""
    name = os.fspath(target)
    if descriptor is not None and not isinstance(descriptor, Mapping):
        _, desc = load_descriptor(descriptor)
        expected_blob = desc.digest if desc is not None else ""
    else:
        expected_blob = ""
    with open_image(name, tls_verify=tls_verify, creds=creds, authfile=authfile,
                    platform=platform, descriptor=descriptor) as image:
        reports: list[LayerReport] = []
        for il in image.layers:
            expected = [il.descriptor.digest or expected_blob, il.descriptor.diff_id]
            layer = il._layer
            total = sum(e.size for e in layer.entries if e.type == fmt.TYPE_REG)
            step = _accumulate(progress(il.index, total) if progress else None)
            r = layer.verify(progress=step)
            where = f"layer {il.index}" if image.manifest is not None else name
            if expected[0] and r.blob_digest != expected[0]:
                raise VerifyError(f"{where}: the blob is {r.blob_digest}, its descriptor says "
                                  f"{expected[0]}")
            if expected[1] and r.diff_id != expected[1]:
                raise VerifyError(f"{where} ({il.descriptor.digest}) decompresses to "
                                  f"{r.diff_id}, the config's diff_id is {expected[1]}")
            reports.append(LayerReport(r.blob_digest, il.format, r.files, r.chunks, r.bytes,
                                       r.diff_id, r.toc_checked_against or None,
                                       r.tarsplit_checked))
    return VerifyReport(name, tuple(reports))


def _accumulate(advance: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """Increments turned into totals, for a progress callback that takes totals."""
    if advance is None:
        return None
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        advance(done)
    return step
