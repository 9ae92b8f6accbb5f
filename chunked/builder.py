"""Turn a tar stream into a zstd:chunked blob, as containers/storage's writer does.

Layout of the output (see format.py):
``[data frames][skippable: TOC][skippable: tar-split][skippable: footer]``.

Header bytes gathered since the last payload share one frame; each chunk of a
payload gets a frame of its own. Frames are compressed on a thread pool (zstd
releases the GIL) and written in order; TOC offsets are resolved from frame
indexes once every frame is on disk. Memory stays bounded: at most a few
frames are in flight, and the tar-split is spooled to a temporary file.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from . import format as fmt
from .chunking import Chunker, crc64
from .errors import InputError, UnsupportedError
from .format import Footer, Position, TocEntry, Variant
from .tarstream import TarReader, go_clean

DEFAULT_LEVEL = 3
# A frame larger than this is compressed as a stream instead of in one call.
_ONE_SHOT_LIMIT = 8 << 20
_ZERO_PIECE = bytes(1 << 20)


@dataclass
class BuildResult:
    digest: str
    size: int
    diff_id: str
    annotations: dict[str, str]
    toc: fmt.Toc
    entries: int = 0
    input_size: int = 0

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": fmt.LAYER_MEDIA_TYPE,
            "digest": self.digest,
            "size": self.size,
            "annotations": dict(sorted(self.annotations.items())),
        }


class _FrameWriter:
    """Writes zstd frames in order, compressing them in parallel."""

    def __init__(self, out: BinaryIO, level: int, threads: int):
        self._out = out
        self._params = zstandard.ZstdCompressionParameters.from_level(
            level, write_checksum=True, threads=0)
        self._local = zstandard.ZstdCompressor(compression_params=self._params)
        self._pool = cf.ThreadPoolExecutor(threads) if threads > 1 else None
        self._cctxs: dict[int, zstandard.ZstdCompressor] = {}
        self._queue: collections.deque[tuple[int, cf.Future[bytes] | bytes]] = collections.deque()
        self._max_queue = 2 * threads + 2
        self._pending: list[Any] = []
        self._pending_len = 0
        self._stream: Any = None
        self.offset = 0
        self.sha = hashlib.sha256()
        # (start, end) of every frame written, by frame index
        self.extents: list[tuple[int, int]] = []
        self._frames = 0

    def _compress(self, data: bytes) -> bytes:
        import threading

        key = threading.get_ident()
        cctx = self._cctxs.get(key)
        if cctx is None:
            cctx = self._cctxs[key] = zstandard.ZstdCompressor(compression_params=self._params)
        return cctx.compress(data)

    def write_raw(self, data: bytes) -> None:
        self._out.write(data)
        self.sha.update(data)
        self.offset += len(data)

    def _write_frame(self, index: int, data: bytes) -> None:
        start = self.offset
        self.write_raw(data)
        while len(self.extents) <= index:
            self.extents.append((0, 0))
        self.extents[index] = (start, self.offset)

    def _drain(self, keep: int) -> None:
        while len(self._queue) > keep:
            index, job = self._queue.popleft()
            self._write_frame(index, job.result() if isinstance(job, cf.Future) else job)

    def add(self, data: Any) -> None:
        """Append uncompressed bytes to the open frame."""
        if not len(data):
            return
        if self._stream is not None:
            self.write_raw(self._stream.compress(data))
            return
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= _ONE_SHOT_LIMIT:
            # A large frame: earlier frames must be on disk before we stream this one.
            self._drain(0)
            self._stream_start = self.offset
            self._stream = self._local.compressobj()
            self.write_raw(self._stream.compress(b"".join(self._pending)))
            self._pending, self._pending_len = [], 0

    def end_frame(self) -> int | None:
        """Close the open frame; return its index, or None if it was empty (nothing written)."""
        index = self._frames
        if self._stream is not None:
            self.write_raw(self._stream.flush())
            self._stream = None
            self.extents.append((self._stream_start, self.offset))
        elif self._pending:
            data = b"".join(self._pending)
            self._pending, self._pending_len = [], 0
            if self._pool is not None:
                self._queue.append((index, self._pool.submit(self._compress, data)))
                self._drain(self._max_queue)
            else:
                self._write_frame(index, self._local.compress(data))
        else:
            return None
        self._frames += 1
        return index

    def finish(self) -> None:
        self._drain(0)
        if self._pool is not None:
            self._pool.shutdown()

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


@dataclass
class _Chunk:
    offset_in_file: int
    size: int
    digest: str
    zeros: bool
    frame: int


@dataclass
class _FileSink:
    """Receives the chunk stream of one file and turns each chunk into a frame."""

    frames: _FrameWriter
    chunks: list[_Chunk] = field(default_factory=list)
    _size: int = 0
    _pos: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)

    def data(self, piece: memoryview) -> None:
        self.frames.add(piece)
        self._hash.update(piece)
        self._size += len(piece)

    def split(self) -> None:
        if not self._size:
            return
        frame = self.frames.end_frame()
        assert frame is not None
        self.chunks.append(_Chunk(self._pos, self._size, "sha256:" + self._hash.hexdigest(),
                                  False, frame))
        self._pos += self._size
        self._size = 0
        self._hash = hashlib.sha256()

    def hole(self, n: int) -> None:
        h = hashlib.sha256()
        left = n
        while left:
            piece = _ZERO_PIECE[:min(left, len(_ZERO_PIECE))]
            self.frames.add(piece)
            h.update(piece)
            left -= len(piece)
        frame = self.frames.end_frame()
        assert frame is not None
        self.chunks.append(_Chunk(self._pos, n, "sha256:" + h.hexdigest(), True, frame))
        self._pos += n


class _TarSplitWriter:
    """tar-split JSON lines, zstd-compressed into a spooled temporary file."""

    def __init__(self, level: int):
        self._tmp = tempfile.TemporaryFile(prefix="chunked-tarsplit-")
        self._cobj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        self._lines: list[str] = []
        self._buffered = 0
        self.position = 0
        self.uncompressed = 0
        self.sha = hashlib.sha256()
        self.compressed = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self._tmp.write(data)
            self.sha.update(data)
            self.compressed += len(data)

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._buffered += len(line)
        self.position += 1
        if self._buffered >= 1 << 20:
            self._flush_lines()

    def _flush_lines(self) -> None:
        data = "".join(self._lines).encode("utf-8", "surrogateescape")
        self.uncompressed += len(data)
        self._emit(self._cobj.compress(data))
        self._lines, self._buffered = [], 0

    def segment(self, payload: bytes) -> None:
        if payload:
            self._add(fmt.tarsplit_segment(payload, self.position))

    def file(self, name: str, size: int, crc: int | None) -> None:
        raw = crc.to_bytes(8, "big") if crc is not None else None
        self._add(fmt.tarsplit_file(name, size, raw, self.position))

    def finish(self) -> None:
        self._flush_lines()
        self._emit(self._cobj.flush())

    def copy_to(self, write: Callable[[bytes], None]) -> None:
        self._tmp.seek(0)
        while piece := self._tmp.read(1 << 20):
            write(piece)

    def close(self) -> None:
        self._tmp.close()


def _check_utf8(*names: str) -> None:
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Go's JSON would write U+FFFD in the TOC while the tar-split keeps the raw
            # bytes; podman then rejects the layer as inconsistent. Refuse it up front.
            raise UnsupportedError(
                f"tar entry {name!r} is not valid UTF-8, which the zstd:chunked TOC cannot "
                "carry (containers/storage would write a layer podman cannot pull partially)"
            ) from None


def build_blob(src: BinaryIO, out: BinaryIO, *, level: int = DEFAULT_LEVEL,
               variant: Variant = fmt.CURRENT, threads: int | None = None,
               extra_old_keys: bool = True,
               progress: Callable[[int], None] | None = None) -> BuildResult:
    """Read a tar from ``src`` and write a zstd:chunked blob to ``out``.

    ``extra_old_keys`` also writes the ``io.containers.*`` annotation keys on a
    current-format layer, so podman 4.3 pulls it partially too.
    """
    if threads is None:
        threads = os.cpu_count() or 1
    frames = _FrameWriter(out, level, threads)
    tarsplit = _TarSplitWriter(level) if variant.has_tarsplit else None
    reader = TarReader(src)
    entries: list[TocEntry] = []
    seen: set[str] = set()
    # Entries whose offsets wait for their frames: (entry, first frame, last frame).
    unresolved: list[tuple[TocEntry, int, int]] = []
    try:
        while (item := reader.next()) is not None:
            hdr, raw = item
            _check_utf8(hdr.name, hdr.link_name, *hdr.xattrs)
            clean = go_clean(hdr.name)
            if clean in seen and variant.has_tarsplit:
                raise InputError(f"tar has the path {hdr.name!r} twice; zstd:chunked (like "
                                 "containers/storage) needs each path once")
            seen.add(clean)
            frames.add(raw)
            if tarsplit:
                tarsplit.segment(raw)
            entry = TocEntry(
                type=hdr.toc_type, name=hdr.name, link_name=hdr.link_name, mode=hdr.mode,
                size=hdr.size, uid=hdr.uid, gid=hdr.gid, mtime=hdr.mtime, atime=hdr.atime,
                ctime=hdr.ctime, dev_major=hdr.dev_major, dev_minor=hdr.dev_minor,
                xattrs=hdr.xattrs,
            )
            entries.append(entry)
            crc = None
            if hdr.payload_size:
                frames.end_frame()
                sink = _FileSink(frames)
                chunker = Chunker(sink)
                file_hash = hashlib.sha256()
                crc = 0
                while piece := reader.read_payload_piece():
                    file_hash.update(piece)
                    crc = crc64(piece, crc)
                    chunker.feed(piece)
                chunker.finish()
                entry.digest = "sha256:" + file_hash.hexdigest()
                chunks = sink.chunks
                unresolved.append((entry, chunks[0].frame, chunks[-1].frame))
                if len(chunks) > 1:
                    for i, ch in enumerate(chunks):
                        target = entry if i == 0 else TocEntry(
                            type=fmt.TYPE_CHUNK, name=hdr.name, chunk_offset=ch.offset_in_file)
                        target.chunk_size = ch.size
                        target.chunk_digest = ch.digest
                        target.chunk_type = fmt.CHUNK_TYPE_ZEROS if ch.zeros else ""
                        if i:
                            entries.append(target)
                            unresolved.append((target, ch.frame, -1))
                if progress:
                    progress(reader.total)
            elif hdr.size:
                crc = 0  # tar-split checksums the (empty) payload of any entry with a size
            if tarsplit:
                tarsplit.file(hdr.name, hdr.size, crc)
        frames.add(reader.raw_tail)
        if tarsplit:
            tarsplit.segment(reader.raw_tail)
        # Bytes after the end-of-archive blocks (record padding) are part of the
        # DiffID, so they go into the last frame and the tar-split as upstream does.
        pending = b""
        for piece in reader.rest():
            frames.add(piece)
            if tarsplit:
                pending += piece
                while len(pending) >= fmt.TARSPLIT_PADDING_CHUNK:
                    tarsplit.segment(pending[:fmt.TARSPLIT_PADDING_CHUNK])
                    pending = pending[fmt.TARSPLIT_PADDING_CHUNK:]
        if tarsplit:
            tarsplit.segment(pending)
        frames.end_frame()
        frames.finish()
        if progress:
            progress(reader.total)

        for entry, first, last in unresolved:
            entry.offset = frames.extents[first][0]
            if last >= 0:
                entry.end_offset = frames.extents[last][1]

        toc = fmt.Toc(entries)
        ts_pos: Position | None = None
        if tarsplit:
            tarsplit.finish()
            toc.tarsplit_digest = "sha256:" + tarsplit.sha.hexdigest()
        toc_json = toc.encode(variant)
        toc_z = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(toc_json)
        toc_pos = Position(frames.offset + fmt.SKIPPABLE_HEADER_SIZE, len(toc_z), len(toc_json),
                           fmt.MANIFEST_TYPE_CRFS)
        frames.write_raw(fmt.skippable_frame(toc_z))
        if tarsplit:
            ts_pos = Position(toc_pos.end + fmt.SKIPPABLE_HEADER_SIZE, tarsplit.compressed,
                              tarsplit.uncompressed)
            frames.write_raw(fmt.SKIPPABLE_FRAME_MAGIC + tarsplit.compressed.to_bytes(4, "little"))
            tarsplit.copy_to(frames.write_raw)
        footer = Footer(toc_pos, ts_pos)
        frames.write_raw(fmt.skippable_frame(variant.encode_footer(footer)))
    except BaseException:
        frames.abort()
        raise
    finally:
        if tarsplit:
            tarsplit.close()

    checksum = "sha256:" + hashlib.sha256(toc_z).hexdigest()
    annotations = variant.annotations(checksum, footer)
    if extra_old_keys and variant is not fmt.OLD:
        annotations.update(fmt.OLD.annotations(checksum, footer))
    return BuildResult(
        digest="sha256:" + frames.sha.hexdigest(), size=frames.offset, diff_id=reader.digest(),
        annotations=annotations, toc=toc, entries=len(entries), input_size=reader.total,
    )
