"""The zstd:chunked wire format, as the harness reads it: skippable frames, the footer and
its positions, the annotation keys and media types, and the codecs a blob is made of.

The harness understands the wire format on its own (footer, positions, keys) rather than
through ``chunked.format``, so that it cannot inherit a bug of the code it judges.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import zstandard

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
MAGIC_CURRENT = b"GNUlInUx"
MAGIC_OLD = b"GnUlInUx"
NEW = "io.github.containers.zstd-chunked."
OLD = "io.containers.zstd-chunked."
ZSTD_MEDIA = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_MEDIA = "application/vnd.oci.image.layer.v1.tar"
U64 = (1 << 64) - 1


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skippable(payload: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def zstd(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)


def unzstd(data: bytes) -> bytes:
    # frames written by a stream (the builder's) do not record their content size
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data),
                                                      read_across_frames=True).read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def toc_json(doc: Any, *, ascii_only: bool = False) -> bytes:
    """JSON as a TOC carries it; lone surrogates (non-UTF-8 bytes of a name) become the raw
    bytes again unless ``ascii_only`` writes them as ``\\udcXX`` escapes."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Pos:
    offset: int
    length: int
    uncompressed: int

    def text(self, manifest_type: int | None = 1) -> str:
        parts = [self.offset, self.length, self.uncompressed]
        return ":".join(str(p) for p in parts + ([manifest_type] if manifest_type else []))


@dataclass
class Footer:
    toc: Pos
    tarsplit: Pos | None
    old: bool
    manifest_type: int = 1
    magic: bytes | None = None  # None: the format's own

    def encode(self) -> bytes:
        t = self.toc
        if self.old:
            return struct.pack("<4Q8s", t.offset & U64, t.length & U64, t.uncompressed & U64,
                               self.manifest_type & U64, self.magic or MAGIC_OLD)
        ts = self.tarsplit or Pos(0, 0, 0)
        return struct.pack("<7Q8s", t.offset & U64, t.length & U64, t.uncompressed & U64,
                           self.manifest_type & U64, ts.offset & U64, ts.length & U64,
                           ts.uncompressed & U64, self.magic or MAGIC_CURRENT)

    @classmethod
    def decode(cls, blob: bytes) -> Footer:
        if blob.endswith(MAGIC_CURRENT):
            o, n, u, t, tso, tsn, tsu = struct.unpack("<7Q", blob[-64:-8])
            return cls(Pos(o, n, u), Pos(tso, tsn, tsu) if tsn else None, False, t)
        if blob.endswith(MAGIC_OLD):
            o, n, u, t = struct.unpack("<4Q", blob[-40:-8])
            return cls(Pos(o, n, u), None, True, t)
        raise ValueError("no zstd:chunked footer")
