"""Convert an image's layers to zstd:chunked, optionally publishing both compressions.

``convert(SRC, DST)`` reads an image (one manifest or every platform of an index, OCI or
Docker schema 2) and writes it with every gzip, zstd or plain tar layer rebuilt as
zstd:chunked (:mod:`.layer`); a layer already zstd:chunked and the config are kept as they
are, so the config's digest and DiffIDs do not change. With ``add_compression`` DST is an
OCI index listing, for each platform, the original manifest unchanged (same bytes, same
digest) first and then its zstd:chunked twin, annotated
``io.github.containers.compression.zstd: "true"``: a client that takes the first platform
match (podman 4.3, containerd) gets gzip, one that prefers zstd gets zstd:chunked.

Everything is deterministic (manifests are serialized in one way, the builder's output
does not depend on its threads), so a second run gives the same digests and uploads
nothing; and the index or manifest is stored under the tag only once everything it names
is in place, so an interrupted run leaves nothing tagged, and a second run finishes it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chunked import format as fmt
from chunked.builder import DEFAULT_LEVEL
from chunked.converter.endpoints import Sink, Source, open_sink, open_source
from chunked.converter.layer import LayerTally, convert_layer, is_chunked
from chunked.converter.record import Record
from chunked.digest import Digest
from chunked.errors import FormatError, NotFoundError
from chunked.oci.layout import CONFIG_MEDIA_TYPE
from chunked.oci.manifest import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    is_index,
    parse_config,
    parse_index,
    parse_manifest,
)
from chunked.oci.registry import ZSTD_ANNOTATION, RegistryError, parse_platform

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"


@dataclass
class ConvertSummary:
    digest: str  # of what DST's tag names
    media_type: str
    images: list[dict[str, str]] = field(default_factory=list)  # platform, original, zstd
    layers_converted: int = 0
    layers_reused: int = 0
    layers_kept: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "mediaType": self.media_type, "images": self.images,
                "layersConverted": self.layers_converted, "layersReused": self.layers_reused,
                "layersKept": self.layers_kept, "bytesRead": self.bytes_read,
                "bytesWritten": self.bytes_written, "seconds": round(self.seconds, 3)}


@dataclass
class _Image:
    """One platform's image of the source."""

    raw: bytes
    media_type: str
    digest: str
    manifest: Manifest
    config_raw: bytes
    config: ImageConfig
    platform: Platform | None


def _json(doc: dict[str, Any]) -> bytes:
    # one serialization, so that a second conversion gives the same digests
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _select(source: Source, platform: str | None) -> tuple[list[_Image], Any]:
    """The images to convert, and the source index (None for a single manifest)."""
    raw, media, digest = source.manifest(source.reference)
    where = f"{source.name}: manifest"
    if not is_index(raw, media, where):
        return [_load(source, raw, media, digest, None)], None
    index = parse_index(raw, where)
    # an index converted before lists zstd twins: convert what they were made from
    entries = [e for e in index.manifests if e.annotations.get(ZSTD_ANNOTATION) != "true"]
    if platform:
        want = parse_platform(platform)
        entries = [e for e in entries if e.platform is not None and
                   (e.platform.os, e.platform.architecture) == want[:2] and
                   (not want[2] or e.platform.variant == want[2])]
        if not entries:
            raise NotFoundError(f"{source.name} has no image for platform {platform}")
    images = []
    for e in entries:
        child_raw, child_media, child_digest = source.manifest(e.digest)
        if child_digest != e.digest:
            raise FormatError(f"{source.name}: manifest {e.digest} has digest {child_digest}")
        images.append(_load(source, child_raw, child_media or e.media_type, e.digest,
                            e.platform))
    return images, index


def _load(source: Source, raw: bytes, media: str, digest: str,
          platform: Platform | None) -> _Image:
    where = f"{source.name}: manifest {digest}"
    if is_index(raw, media, where):
        raise FormatError(f"{where} is a nested index")
    manifest = parse_manifest(raw, where)
    config_raw = source.blob_bytes(manifest.config.digest)
    config = parse_config(config_raw, f"{source.name}: config {manifest.config.digest}")
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise FormatError(f"{where}: the config lists {len(config.rootfs.diff_ids)} diff_ids "
                          f"for {len(manifest.layers)} layers")
    if platform is None and config.os:
        platform = Platform(architecture=config.architecture, os=config.os)
    return _Image(raw, manifest.media_type or media or OCI_MANIFEST, digest, manifest,
                  config_raw, config, platform)


def _ensure_blob(source: Source, sink: Sink, desc: Descriptor) -> None:
    """A blob as it is, in the sink: there already, linked, or copied (digest-checked)."""
    if sink.has_blob(desc.digest):
        return
    if source.location and sink.mount(desc.digest, source.location):
        return
    from chunked.read.blobstream import BlobStream

    def open_checked():  # noqa: ANN202 - a stream whose digest is checked at its end
        return _Checked(BlobStream(source.blob_source(desc), desc.digest))

    sink.copy_blob(desc, open_checked)


class _Checked:
    """A BlobStream as a context manager that checks the digest once read to the end."""

    def __init__(self, stream: Any):
        self.stream = stream
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if not data and not self._eof:
            self._eof = True
            self.stream.finish()
        return data

    def __enter__(self) -> _Checked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def _descriptor(media_type: str, raw: bytes, platform: Platform | None,
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"mediaType": media_type,
                           "digest": Digest.of(raw),
                           "size": len(raw)}
    if annotations:
        doc["annotations"] = annotations
    if platform is not None:
        plat = {"architecture": platform.architecture, "os": platform.os}
        if platform.variant:
            plat["variant"] = platform.variant
        if platform.os_version:
            plat["os.version"] = platform.os_version
        doc["platform"] = plat
    return doc


def convert(src: str, dst: str, *, add_compression: bool = False, platform: str | None = None,
            level: int = DEFAULT_LEVEL,
            variant: fmt.Variant = fmt.CURRENT, tls_verify: bool = True,
            creds: str | None = None, authfile: str | None = None,
            cache_dir: str | None = None, jobs: int | None = None,
            progress: Callable[[str, int | None], Callable[[int], None] | None] | None = None
            ) -> ConvertSummary:
    """Convert ``src`` into ``dst`` (``docker://`` or ``oci:`` references each); see the
    module's docstring. ``progress(label, total)`` may give a callback per layer."""
    t0 = time.monotonic()
    source = open_source(src, tls_verify=tls_verify, creds=creds, authfile=authfile)
    try:
        sink = open_sink(dst, tls_verify=tls_verify, creds=creds, authfile=authfile)
        try:
            summary = _convert(source, sink, add_compression, platform, level, variant,
                               Record(cache_dir), jobs, progress)
        finally:
            sink.close()
    finally:
        source.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _convert(source: Source, sink: Sink, add_compression: bool, platform: str | None,
             level: int, variant: fmt.Variant, record: Record, jobs: int | None,
             progress: Callable[[str, int | None], Callable[[int], None] | None] | None
             ) -> ConvertSummary:
    images, index = _select(source, platform)
    # every distinct layer once, with the DiffID every image that has it agrees on
    layers: dict[str, tuple[Descriptor, str]] = {}
    for img in images:
        for desc, diff_id in zip(img.manifest.layers, img.config.rootfs.diff_ids, strict=True):
            seen = layers.setdefault(desc.digest, (desc, diff_id))
            if seen[1] != diff_id:
                raise FormatError(f"{source.name}: layer {desc.digest} has two diff_ids "
                                  f"({seen[1]}, {diff_id})")
    tally = LayerTally()
    to_convert = [(d, i) for d, i in layers.values() if not is_chunked(d)]
    cores = os.cpu_count() or 1
    workers = max(1, min(jobs or cores, len(to_convert) or 1))
    # the builder's output does not depend on its threads: give each layer its share
    threads = max(1, cores // workers)
    converted: dict[str, dict[str, Any]] = {}
    with cf.ThreadPoolExecutor(workers, "chunked-convert") as pool:
        futures = {
            d.digest: pool.submit(
                convert_layer, source, sink, d, i, level=level, variant=variant,
                threads=threads, record=record, tally=tally,
                progress=progress(f"layer {d.digest[7:19]}", d.size) if progress else None)
            for d, i in to_convert}
        for d, _ in layers.values():
            if is_chunked(d):
                _ensure_blob(source, sink, d)
                tally.add(kept=1)
        cf.wait(futures.values())
        for digest, fut in futures.items():
            converted[digest] = fut.result()  # the first error, in layer order
    entries: list[dict[str, Any]] = []
    twins: list[bytes] = []
    summary_images = []
    for img in images:
        _ensure_blob(source, sink, img.manifest.config)
        config_type = img.manifest.config.media_type
        if config_type in ("", DOCKER_CONFIG):
            config_type = CONFIG_MEDIA_TYPE  # the same JSON; OCI names it so
        doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": img.manifest.config.digest,
                       "size": img.manifest.config.size},
            "layers": [converted.get(d.digest) or _keep(d) for d in img.manifest.layers],
        }
        if img.manifest.annotations:
            doc["annotations"] = dict(img.manifest.annotations)
        raw = _json(doc)
        twins.append(raw)
        twin = _descriptor(OCI_MANIFEST, raw, img.platform)
        sink.put_manifest(twin["digest"], raw, OCI_MANIFEST)
        if add_compression:
            for d in img.manifest.layers:
                _ensure_blob(source, sink, d)
            sink.put_manifest(img.digest, img.raw, img.media_type)
            original = _descriptor(img.media_type, img.raw, img.platform)
            twin["annotations"] = {ZSTD_ANNOTATION: "true"}
            entries += [original, twin]
        else:
            entries.append(twin)
        summary_images.append({"platform": img.platform.text() if img.platform else "",
                               "original": img.digest, "zstd": twin["digest"]})
    if add_compression or index is not None and len(images) > 1:
        top: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        if index is not None and index.annotations:
            top["annotations"] = dict(index.annotations)
        raw, media = _json(top), OCI_INDEX
    else:
        raw, media = twins[0], OCI_MANIFEST
    try:
        digest = sink.put_manifest(sink.reference, raw, media)
    except RegistryError as exc:
        if media != OCI_INDEX:
            raise
        raise RegistryError(f"{exc}; this registry may not take OCI image indexes: convert "
                            "one platform (--platform) without --add-compression") from None
    return ConvertSummary(digest, media, summary_images, tally.converted, tally.reused,
                          tally.kept, tally.bytes_read, tally.bytes_written)


def _keep(desc: Descriptor) -> dict[str, Any]:
    """A layer kept as it is (already zstd:chunked), its descriptor as the source gave it."""
    doc: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest,
                           "size": desc.size}
    if desc.annotations:
        doc["annotations"] = dict(desc.annotations)
    return doc


__all__ = ["ConvertSummary", "convert"]
