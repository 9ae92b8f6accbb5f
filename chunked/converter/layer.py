"""One layer converted: its blob streamed from the source, decompressed, rebuilt as
zstd:chunked and streamed to the sink, every step overlapping the others.

The source blob is held to its digest, and the tar it decompresses to to the config's
DiffID, before the converted blob is committed: a lying layer leaves nothing behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from chunked import format as fmt
from chunked.builder import build_blob
from chunked.converter.endpoints import BlobWriter, Sink, Source
from chunked.converter.record import Converted, Record
from chunked.errors import UnsupportedError, VerifyError
from chunked.oci.manifest import Descriptor
from chunked.read.blobstream import BlobStream
from chunked.read.tarlayer import LAYER_COMPRESSION, open_plain


@dataclass
class LayerTally:
    converted: int = 0
    reused: int = 0
    kept: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, n in counts.items():
                setattr(self, key, getattr(self, key) + n)


def is_chunked(desc: Descriptor) -> bool:
    return LAYER_COMPRESSION.get(desc.media_type) == "zstd" and \
        fmt.LayerAnnotations.find(desc.annotations) is not None


def decompressed(desc: Descriptor, stream: BinaryIO) -> BinaryIO:
    """The layer's tar, decompressed as it streams."""
    if desc.media_type not in LAYER_COMPRESSION:
        raise UnsupportedError(f"layer {desc.digest}: media type {desc.media_type!r} cannot "
                               "be converted")
    return open_plain(desc.media_type, stream)


class _Counting:
    """A blob writer that counts what passes, for the progress bar and the summary."""

    def __init__(self, inner: BlobWriter, advance: Callable[[int], None] | None):
        self.inner, self.advance, self.n = inner, advance, 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.inner.write(data)
        self.n += len(data)
        if self.advance is not None:
            self.advance(self.n)
        return len(data)


def convert_layer(source: Source, sink: Sink, desc: Descriptor, diff_id: str, *,
                  level: int, variant: fmt.Variant, threads: int, record: Record,
                  tally: LayerTally,
                  progress: Callable[[int], None] | None = None) -> dict[str, object]:
    """The converted layer's descriptor, the blob stored in the sink: found there, linked
    from where the record saw it, or converted now."""
    settings = f"l{level}-{variant.name}"
    old = record.get(desc.digest, settings)
    if old is not None and old.diff_id == diff_id:
        if sink.has_blob(old.digest) or any(sink.mount(old.digest, loc)
                                            for loc in old.locations):
            tally.add(reused=1)
            record.put(desc.digest, settings, old, sink.location)
            return old.descriptor()
    src = source.blob_source(desc)
    stream = BlobStream(src, desc.digest)
    writer = sink.new_blob()
    # the bar shows the source blob read so far, of its size
    counted = _Counting(writer, (lambda _: progress(stream.bytes_read)) if progress else None)
    try:
        plain = decompressed(desc, stream)  # type: ignore[arg-type]
        result = build_blob(plain, counted, level=level, variant=variant,  # type: ignore[arg-type]
                            threads=threads)
        stream.finish()  # what the decompressor left, then the source digest
        if result.diff_id != diff_id:
            raise VerifyError(f"{source.name}: layer {desc.digest} decompresses to "
                              f"{result.diff_id}, the config's diff_id is {diff_id}")
        writer.commit(result.digest)
    except BaseException:
        writer.abort()
        raise
    finally:
        stream.close()
        src.close()
    converted = Converted(result.digest, result.size, fmt.LAYER_MEDIA_TYPE,
                          result.annotations, result.diff_id)
    record.put(desc.digest, settings, converted, sink.location)
    tally.add(converted=1, bytes_read=stream.bytes_read, bytes_written=result.size)
    return converted.descriptor()
