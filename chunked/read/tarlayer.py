"""Layers read whole: gzip, plain zstd or plain tar layers, and zstd:chunked layers whose
TOC cannot be checked (no tar-split) where a caller wants the plain tar's view. Each is
fetched once, verified against the layer digest, decompressed to a local file (at most a
bounded amount: no decompression bomb fills the disk) and indexed, so it mounts and reads
like a chunked layer (each file one "chunk" of the local tar). What it serves is the
plain tar by construction.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import zstandard

from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import FormatError, InputError, UnsupportedError, VerifyError
from chunked.format.tar import TarReader
from chunked.format.tocindex import ChunkRef, FileInfo, clean_name
from chunked.read.gzipstream import open_gzip
from chunked.read.layer import VerifyReport, read_every_file
from chunked.read.protocol import KIND_TAR, find, resolve_link
from chunked.read.source import FileSource, RangeSource

# Each layer media type (OCI and Docker, non-distributable ones too) and its compression:
# what a layer read whole (here) and a layer converted (chunked/convert) decompress.
LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
}


def open_plain(media_type: str, stream: BinaryIO) -> BinaryIO:
    """The layer's tar, decompressed as ``stream`` is read; ``stream`` stays the caller's."""
    kind = LAYER_COMPRESSION[media_type]
    if kind == "gzip":
        return open_gzip(stream)
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[return-value]
            stream, read_across_frames=True, closefd=False)
    return stream


_PIECE = 8 << 20
# Deflate expands at most 1032:1, so no real gzip layer comes near this ratio; plain zstd
# could, but a layer that does is far likelier a bomb than an image. The floor keeps small
# layers of sparse files working.
MAX_EXPANSION = 1100
MIN_EXPANSION_CAP = 256 << 20


def expansion_cap(compressed: int) -> int:
    """The most a layer of ``compressed`` bytes is allowed to decompress to."""
    return max(MIN_EXPANSION_CAP, compressed * MAX_EXPANSION)


class TarLayer:
    """A whole layer as a local uncompressed tar: a
    :class:`~chunked.read.protocol.LayerReader` whose every file is one chunk of that tar.
    Its own: the ``diff_id`` it decompressed to, and the ``blob_digest`` it was held to."""

    # served from the plain tar itself: nothing to check against
    tarsplit_checked = True
    blob_digest = ""  # what the blob was held to when fetched

    def __init__(self, path: str, files: dict[str, FileInfo], diff_id: str, size: int,
                 kind: str = KIND_TAR, entries: list[fmt.TocEntry] | None = None):
        self.kind = kind  # how the blob was compressed: gzip, zstd or tar
        self.source: RangeSource = FileSource(path)
        self.files = files
        # every member in tar order (a path given twice: both), as a TOC lists them
        self.entries = [info.entry for info in files.values()] if entries is None else entries
        self.diff_id = diff_id
        self.tar_size = size
        os.unlink(path)  # the open descriptor keeps it; nothing is left behind on exit

    @classmethod
    def fetch(cls, desc: Mapping[str, Any], source: RangeSource, *,
              cap: int | None = None) -> TarLayer:
        """Fetch the blob, check its digest, decompress it (to at most ``cap`` bytes,
        default :func:`expansion_cap`) and index it."""
        media = desc.get("mediaType", "")
        if media not in LAYER_COMPRESSION:
            raise UnsupportedError(f"layer {desc.get('digest')}: unsupported media type "
                                   f"{media!r}")
        cap = expansion_cap(source.size) if cap is None else cap
        h = hashlib.sha256()
        with tempfile.TemporaryFile(prefix="chunked-layer-") as blob:
            for off in range(0, source.size, _PIECE):
                piece = source.read_ranges([(off, min(_PIECE, source.size - off))])[0]
                h.update(piece)
                blob.write(piece)
            if Digest.from_hash(h) != desc.get("digest"):
                raise VerifyError(f"layer {desc.get('digest')}: blob does not match its digest")
            blob.seek(0)
            kind = LAYER_COMPRESSION[media]
            stream: Any = open_plain(media, blob)
            fd, path = tempfile.mkstemp(prefix="chunked-tar-")
            try:
                diff = hashlib.sha256()
                size = 0
                with os.fdopen(fd, "wb") as tar:
                    try:
                        while piece := stream.read(_PIECE):
                            size += len(piece)
                            if size > cap:
                                raise FormatError(
                                    f"layer {desc.get('digest')}: decompresses to more than "
                                    f"{cap} bytes from {source.size}; refusing (a "
                                    "decompression bomb?)")
                            diff.update(piece)
                            tar.write(piece)
                    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
                        if isinstance(exc, OSError) and exc.errno is not None:
                            raise  # the local disk, not the layer
                        raise FormatError(f"layer {desc.get('digest')}: corrupt {kind} data "
                                          f"({exc})") from None
                files, entries = _index(path, str(desc.get("digest")))
                layer = cls(path, files, Digest.from_hash(diff), size,
                            kind or KIND_TAR, entries)
                layer.blob_digest = str(desc.get("digest"))
                return layer
            except BaseException:
                if os.path.exists(path):
                    os.unlink(path)
                raise

    def lookup(self, name: str) -> FileInfo:
        return self.resolve(find(self.files, name))

    def resolve(self, info: FileInfo) -> FileInfo:
        return resolve_link(self.files, info)

    def read_chunks(self, chunks: Sequence[ChunkRef], name: str | Mapping[int, str],
                    batch: int = 0) -> Iterator[tuple[ChunkRef, bytes | None]]:
        # (batch: a hint for remote reads; here a file is one chunk of the local copy)
        datas = self.source.read_ranges([(c.start, c.end - c.start) for c in chunks])
        for c, data in zip(chunks, datas, strict=True):
            if Digest.of(data) != c.digest:
                label = name if isinstance(name, str) else name.get(c.start, "?")
                raise VerifyError(f"{label}: local copy does not match its digest")
            yield c, data

    def iter_file(self, info: FileInfo) -> Iterator[bytes]:
        if info.entry.type != fmt.TYPE_REG:
            raise InputError(f"{info.entry.name}: not a regular file ({info.entry.type})")
        for _ref, data in self.read_chunks(info.chunks, info.entry.name):
            assert data is not None
            yield data

    def read_file(self, name: str) -> bytes:
        return b"".join(self.iter_file(self.lookup(name)))

    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """The blob was checked against its digest when fetched, and every file is indexed
        from the tar itself; what is left is to read each file back."""
        report = VerifyReport(tarsplit_checked=False, diff_id=self.diff_id,
                              blob_digest=self.blob_digest)
        read_every_file(self, report, progress)
        return report


def _index(path: str, what: str) -> tuple[dict[str, FileInfo], list[fmt.TocEntry]]:
    """TOC-like entries for every member of the local tar, in order, and the index of
    them by path; a file is one chunk of the tar."""
    files: dict[str, FileInfo] = {}
    entries: list[fmt.TocEntry] = []
    with open(path, "rb") as f:
        reader = TarReader(f, digest=False)
        pos = 0
        while True:
            try:
                item = reader.next()
            except InputError as exc:
                raise FormatError(f"layer {what}: {exc}") from None
            if item is None:
                break
            hdr, raw = item
            pos += len(raw)
            e = fmt.TocEntry(type=hdr.toc_type, name=hdr.name, link_name=hdr.link_name,
                             mode=hdr.mode, size=hdr.size, uid=hdr.uid, gid=hdr.gid,
                             modtime=hdr.mtime, accesstime=hdr.atime, changetime=hdr.ctime,
                             dev_major=hdr.dev_major, dev_minor=hdr.dev_minor,
                             xattrs=hdr.xattrs or None)
            fmt.check_limits(e, f"layer {what}")
            key = clean_name(hdr.name)
            if not key and e.type != fmt.TYPE_DIR:
                raise FormatError(f"layer {what}: {hdr.name!r} names the root, but is a "
                                  f"{e.type}")
            info = FileInfo(e)
            if hdr.payload_size:
                h = hashlib.sha256()
                while piece := reader.read_payload_piece():
                    h.update(piece)
                e.digest = Digest.from_hash(h)
                info.chunks = [ChunkRef(0, hdr.payload_size, pos, pos + hdr.payload_size,
                                        e.digest, False)]
                pos += hdr.payload_size
            # later entries of the same path win, as tar extraction does
            files.pop(key, None)
            files[key] = info
            entries.append(e)
    return files, entries
