"""Layers that are not zstd:chunked (gzip, plain zstd, plain tar): fetched whole once,
verified against the layer digest, decompressed to a local file and indexed, so
they mount and read like chunked layers (each file one "chunk" of the local tar).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import zstandard

from . import format as fmt
from .errors import NotFoundError, UnsupportedError, VerifyError
from .reader import ChunkRef, FileInfo, clean_name
from .source import FileSource, RangeSource
from .tarstream import TarReader

_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}
_PIECE = 8 << 20


class TarLayer:
    """A whole layer as a local uncompressed tar, with the same read interface as Layer."""

    variant = fmt.Variant("tar", "", False, False, 0)

    def __init__(self, path: str, files: dict[str, FileInfo]):
        self.source: RangeSource = FileSource(path)
        self.files = files
        self.entries = [info.entry for info in files.values()]
        os.unlink(path)  # the open descriptor keeps it; nothing is left behind on exit

    @classmethod
    def fetch(cls, desc: dict[str, Any], source: RangeSource) -> TarLayer:
        media = desc.get("mediaType", "")
        if media not in _COMPRESSION:
            raise UnsupportedError(f"layer {desc.get('digest')}: unsupported media type {media}")
        h = hashlib.sha256()
        with tempfile.TemporaryFile(prefix="chunked-layer-") as blob:
            for off in range(0, source.size, _PIECE):
                piece = source.read_ranges([(off, min(_PIECE, source.size - off))])[0]
                h.update(piece)
                blob.write(piece)
            if "sha256:" + h.hexdigest() != desc.get("digest"):
                raise VerifyError(f"layer {desc.get('digest')}: blob does not match its digest")
            blob.seek(0)
            kind = _COMPRESSION[media]
            stream: Any = (gzip.GzipFile(fileobj=blob) if kind == "gzip" else
                           zstandard.ZstdDecompressor().stream_reader(
                               blob, read_across_frames=True) if kind == "zstd" else blob)
            fd, path = tempfile.mkstemp(prefix="chunked-tar-")
            try:
                with os.fdopen(fd, "wb") as tar:
                    while piece := stream.read(_PIECE):
                        tar.write(piece)
                return cls(path, _index(path))
            except BaseException:
                if os.path.exists(path):
                    os.unlink(path)
                raise

    def lookup(self, name: str) -> FileInfo:
        info = self.files.get(clean_name(name))
        if info is None:
            raise NotFoundError(f"{name}: no such file in the layer")
        if info.entry.type == fmt.TYPE_HARDLINK:
            return self.lookup(info.entry.link_name)
        return info

    def read_chunks(self, chunks: list[ChunkRef], name: str | Mapping[int, str]
                    ) -> Iterator[tuple[ChunkRef, bytes]]:
        datas = self.source.read_ranges([(c.start, c.end - c.start) for c in chunks])
        for c, data in zip(chunks, datas, strict=True):
            if "sha256:" + hashlib.sha256(data).hexdigest() != c.digest:
                label = name if isinstance(name, str) else name.get(c.start, "?")
                raise VerifyError(f"{label}: local copy does not match its digest")
            yield c, data

    def iter_file(self, info: FileInfo) -> Iterator[bytes]:
        for _ref, data in self.read_chunks(info.chunks, info.entry.name):
            yield data

    def read_file(self, name: str) -> bytes:
        return b"".join(self.iter_file(self.lookup(name)))


def _index(path: str) -> dict[str, FileInfo]:
    """TOC-like entries for every member of the local tar; a file is one chunk of it."""
    files: dict[str, FileInfo] = {}
    with open(path, "rb") as f:
        reader = TarReader(f)
        pos = 0
        while (item := reader.next()) is not None:
            hdr, raw = item
            pos += len(raw)
            e = fmt.TocEntry(type=hdr.toc_type, name=hdr.name, link_name=hdr.link_name,
                             mode=hdr.mode, size=hdr.size, uid=hdr.uid, gid=hdr.gid,
                             mtime=hdr.mtime, atime=hdr.atime, ctime=hdr.ctime,
                             dev_major=hdr.dev_major, dev_minor=hdr.dev_minor, xattrs=hdr.xattrs)
            info = FileInfo(e)
            if hdr.payload_size:
                h = hashlib.sha256()
                while piece := reader.read_payload_piece():
                    h.update(piece)
                e.digest = "sha256:" + h.hexdigest()
                info.chunks = [ChunkRef(0, hdr.payload_size, pos, pos + hdr.payload_size,
                                        e.digest, False)]
                pos += hdr.payload_size
            # later entries of the same path win, as tar extraction does
            files[clean_name(hdr.name)] = info
    return files
