"""Turn a tar stream into a zstd:chunked blob, as containers/storage's writer does.

Layout of the output (see format.py):
``[data frames][skippable: TOC][skippable: tar-split][skippable: footer]``.

Header bytes gathered since the last payload share one frame; each chunk of a
payload gets a frame of its own. Frames are compressed in batches on a thread
pool (zstd releases the GIL) and written in order; each TOC entry is written
as soon as the frames it points at are on disk. Memory stays bounded whatever
the input: a few batches are in flight, and the TOC and the tar-split are
compressed into temporary files until they are appended.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import InputError, UnsupportedError
from chunked.format import Footer, Position, TocEntry, Variant
from chunked.format.chunking import Chunker, RollSum, crc64, sha256_many
from chunked.format.tar import TarReader, go_clean

DEFAULT_LEVEL = 3
# A frame larger than this is compressed as a stream instead of in one call.
_ONE_SHOT_LIMIT = 8 << 20
_ZERO_PIECE = bytes(1 << 20)
_MIN_MATCH = 4
# Frames are handed to the compression threads in batches of about this many bytes.
_BATCH_BYTES = 1 << 20
_HOLD_LIMIT = 2 << 20
# What a batch item asks of the workers: compress it; compress and hash it; hash it only.
_FRAME, _DIGEST, _HASH_ONLY = 0, 1, 2
# Batches written out but not yet on disk: bounds memory when the output is slow.
_MAX_WRITES = 4


@dataclass
class BuildResult:
    digest: Digest
    size: int
    diff_id: str
    annotations: dict[str, str]
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
    """Writes zstd frames in order, compressing them in parallel.

    Frames are batched (many are a few hundred bytes of tar headers) so that the
    per-job cost of the thread pool is paid per megabyte, not per frame. Workers
    also hash the frames whose digest is wanted (chunk digests), off the main thread.
    """

    def __init__(self, out: BinaryIO, level: int, threads: int):
        self._out = out
        self._level = level
        self._local = self._new_cctx()
        self._pool = cf.ThreadPoolExecutor(threads) if threads > 1 else None
        # Writing and hashing the blob take a thread of their own (both release the GIL):
        # on the parsing thread they would lengthen the build's critical path.
        self._writer = cf.ThreadPoolExecutor(1) if threads > 1 else None
        self._writes: collections.deque[cf.Future[None]] = collections.deque()
        self._cctxs = threading.local()
        self._queue: collections.deque[tuple[int, Any]] = collections.deque()
        self._max_queue = 2 * threads + 2
        self._batch: list[tuple[Any, int]] = []
        self._batch_bytes = 0
        self._pending: list[Any] = []
        self._pending_len = 0
        self._stream: Any = None
        self._stream_hash: Any = None
        self._stream_start = 0
        self.offset = 0
        self.sha = hashlib.sha256()
        # By frame index, for frames a TOC entry points at (payload frames): their
        # (start, end) in the blob and, if asked, the sha256 of their content. Entries
        # take theirs out once written, so these hold only frames still in flight.
        self.extents: dict[int, tuple[int, int]] = {}
        self._extent_keys: collections.deque[int] = collections.deque()
        self.digests: dict[int, str] = {}
        self._tracked: set[int] = set()
        self.done = 0  # frames written so far
        self._frames = 0

    def _compress_batch(self, batch: list[tuple[Any, int]]
                        ) -> tuple[bytes, list[int], list[str | None]]:
        cctx = getattr(self._cctxs, "cctx", None)
        if cctx is None:
            cctx = self._cctxs.cctx = self._new_cctx()
        # One call for the whole batch: the GIL is released once, not once per frame; the
        # same for the digests.
        frames = [data for data, kind in batch if kind != _HASH_ONLY]
        out = cctx.multi_compress_to_buffer(frames, threads=1) if frames else []
        segments = iter(out)
        sizes = [0 if kind == _HASH_ONLY else len(next(segments)) for _, kind in batch]
        hashed = iter(sha256_many([data for data, kind in batch if kind]))
        digests = [next(hashed) if kind else None for _, kind in batch]
        return b"".join(list(out)), sizes, digests

    def _new_cctx(self) -> zstandard.ZstdCompressor:
        # A level (not fixed parameters) lets libzstd size its tables to each frame; only
        # the minimum match is set. At levels 3-6 libzstd looks for matches of 5 bytes or
        # more, and a layer's files (code, text, tables) are better served by 4: on the
        # rootfs corpus the data frames come out 0.9% smaller at level 3 for the same
        # compression time, measured frame by frame (at level 6, 0.5%).
        params = zstandard.ZstdCompressionParameters(
            compression_level=self._level, write_checksum=1,
            min_match=_MIN_MATCH if 3 <= self._level <= 6 else 0)
        return zstandard.ZstdCompressor(compression_params=params)

    def _write(self, data: Any) -> None:
        self._out.write(data)
        self.sha.update(data)

    def _emit(self, data: Any) -> None:
        """Write and hash ``data`` after everything emitted before, in order."""
        if self._writer is None:
            self._write(data)
            return
        writes = self._writes
        while writes and (writes[0].done() or len(writes) >= _MAX_WRITES):
            writes.popleft().result()  # raises what the write raised
        writes.append(self._writer.submit(self._write, data))

    def write_raw(self, data: bytes) -> None:
        self._emit(data)
        self.offset += len(data)

    def flush_writes(self) -> None:
        while self._writes:
            self._writes.popleft().result()

    def _record(self, index: int, start: int, digest: str | None) -> None:
        assert self.done == index
        self.done += 1
        if index in self._tracked:
            self._tracked.discard(index)
            self.extents[index] = (start, self.offset)
            self._extent_keys.append(index)
        if digest is not None:
            self.digests[index] = digest

    def forget_extents_before(self, index: int) -> None:
        keys = self._extent_keys
        while keys and keys[0] < index:
            del self.extents[keys.popleft()]

    def _submit(self) -> None:
        if not self._batch:
            return
        first = self._frames - len(self._batch)
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        job = (self._pool.submit(self._compress_batch, batch) if self._pool is not None
               else self._compress_batch(batch))
        self._queue.append((first, job))
        self._drain(self._max_queue)

    def _drain(self, keep: int) -> None:
        while len(self._queue) > keep:
            first, job = self._queue.popleft()
            data, sizes, digests = job.result() if isinstance(job, cf.Future) else job
            for i, (size, digest) in enumerate(zip(sizes, digests, strict=True)):
                start = self.offset
                self.offset += size
                self._record(first + i, start, digest)
            # One write (and one hash update) per batch, not per frame.
            self._emit(data)

    def add(self, data: Any) -> None:
        """Append uncompressed bytes to the open frame."""
        if not len(data):
            return
        if self._stream is not None:
            self.write_raw(self._stream.compress(data))
            if self._stream_hash is not None:
                self._stream_hash.update(data)
            return
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= _ONE_SHOT_LIMIT:
            # A large frame: earlier frames must be on disk before we stream this one.
            self._submit()
            self._drain(0)
            self._stream_start = self.offset
            self._stream = self._local.compressobj()
            self._stream_hash = hashlib.sha256()
            for piece in self._pending:
                self._stream_hash.update(piece)
            self.write_raw(self._stream.compress(b"".join(self._pending)))
            self._pending, self._pending_len = [], 0

    def end_frame(self, *, track: bool = False, digest: bool = False) -> int | None:
        """Close the open frame; return its index, or None if it was empty (nothing written).

        With ``track``, its extent lands in ``extents[index]`` once written; with
        ``digest``, the sha256 of its content in ``digests[index]``.
        """
        index = self._frames
        if track:
            self._tracked.add(index)
        if self._stream is not None:
            self.write_raw(self._stream.flush())
            self._frames += 1
            self._record(index, self._stream_start,
                         Digest.from_hash(self._stream_hash) if digest else None)
            self._stream = self._stream_hash = None
            return index
        if not self._pending:
            return None
        # A frame of one piece (a chunk of a payload read whole) goes as it is: every piece
        # is a view of immutable bytes, so the workers may read it later.
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending, self._pending_len = [], 0
        self._queue_item(data, _DIGEST if digest else _FRAME, len(data))
        return index

    def add_hash(self, pieces: list[Any]) -> int:
        """Queue the sha256 of ``pieces`` (joined) for the workers, as a frame of no bytes:
        its digest lands in ``digests[index]`` in frame order."""
        assert self._stream is None and not self._pending
        index = self._frames
        self._queue_item(pieces, _HASH_ONLY, sum(len(p) for p in pieces) // 8)
        return index

    def _queue_item(self, data: Any, kind: int, cost: int) -> None:
        self._batch.append((data, kind))
        self._batch_bytes += cost
        self._frames += 1
        if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= 1024:
            self._submit()

    def finish(self) -> None:
        self._submit()
        self._drain(0)
        if self._pool is not None:
            self._pool.shutdown()

    def close(self) -> None:
        """Wait for the last write; the blob's digest is final after this."""
        self.flush_writes()
        if self._writer is not None:
            self._writer.shutdown()

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._writer is not None:
            self._writer.shutdown(cancel_futures=True)


@dataclass
class _Chunk:
    offset_in_file: int
    size: int
    zeros: bool
    frame: int


@dataclass
class _FileSink:
    """Receives the chunk stream of one file and turns each chunk into a frame.

    Chunk digests are computed by the compression workers. For a file of one chunk
    (most files) the file digest is that chunk's. The pieces of a file are held (the
    frames reference them anyway) so that the workers hash a file of several chunks
    too; past a limit, hashing starts here instead, so memory stays bounded.
    """

    frames: _FrameWriter
    chunks: list[_Chunk] = field(default_factory=list)
    _size: int = 0
    _pos: int = 0
    _file_hash: Any = None
    _held: list[Any] = field(default_factory=list)
    _held_len: int = 0

    def _start_file_hash(self) -> None:
        self._file_hash = hashlib.sha256()
        for piece in self._held:
            self._file_hash.update(piece)
        self._held = []

    def _feed(self, piece: Any) -> None:
        self.frames.add(piece)
        if self._file_hash is not None:
            self._file_hash.update(piece)
        else:
            self._held.append(piece)
            self._held_len += len(piece)
            if self._held_len > _HOLD_LIMIT:
                self._start_file_hash()

    def data(self, piece: memoryview) -> None:
        self._feed(piece)
        self._size += len(piece)

    def split(self) -> None:
        if not self._size:
            return
        frame = self.frames.end_frame(track=True, digest=True)
        assert frame is not None
        self.chunks.append(_Chunk(self._pos, self._size, False, frame))
        self._pos += self._size
        self._size = 0

    def hole(self, n: int) -> None:
        left = n
        zeros = memoryview(_ZERO_PIECE)
        while left:
            piece = zeros[:min(left, len(zeros))]
            self._feed(piece)
            left -= len(piece)
        frame = self.frames.end_frame(track=True, digest=True)
        assert frame is not None
        self.chunks.append(_Chunk(self._pos, n, True, frame))
        self._pos += n

    def file_digest(self) -> str | None:
        """The whole file's digest if hashed here, else None: the first chunk's digest for a
        file of one chunk, or the workers' (``held``) for one of several."""
        return Digest.from_hash(self._file_hash) if self._file_hash is not None else None

    @property
    def held(self) -> list[Any]:
        return self._held


class _Spooled:
    """Text compressed as one zstd stream into a temporary file, counted and hashed:
    the TOC and the tar-split, which go into the blob after all data frames. With
    ``side``, compression, writing and hashing run there (in order: one thread),
    off the parsing thread."""

    def __init__(self, level: int, prefix: str, side: cf.Executor | None = None):
        self._side = side
        self._jobs: collections.deque[cf.Future[None]] = collections.deque()
        self._tmp = tempfile.TemporaryFile(prefix=prefix)
        self._cobj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        self._parts: list[str] = []
        self._buffered = 0
        self.uncompressed = 0
        self.compressed = 0
        self.sha = hashlib.sha256()

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._buffered += len(text)
        if self._buffered >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        data = "".join(self._parts).encode("utf-8", "surrogateescape")
        self._parts, self._buffered = [], 0
        self.uncompressed += len(data)
        if self._side is None:
            self._compress(data)
            return
        jobs = self._jobs
        while jobs and (jobs[0].done() or len(jobs) >= 2):
            jobs.popleft().result()
        jobs.append(self._side.submit(self._compress, data))

    def _compress(self, data: bytes) -> None:
        self._emit(self._cobj.compress(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self._tmp.write(data)
            self.sha.update(data)
            self.compressed += len(data)

    def finish(self) -> None:
        self._flush()
        while self._jobs:
            self._jobs.popleft().result()
        self._emit(self._cobj.flush())

    def digest(self) -> str:
        return Digest.from_hash(self.sha)

    def copy_to(self, write: Callable[[bytes], None]) -> None:
        write(fmt.SKIPPABLE_FRAME_MAGIC + self.compressed.to_bytes(4, "little"))
        self._tmp.seek(0)
        while piece := self._tmp.read(1 << 20):
            write(piece)

    def close(self) -> None:
        self._tmp.close()


class _TarSplitWriter(_Spooled):
    """tar-split JSON lines (vbatts/tar-split's packer)."""

    def __init__(self, level: int, side: cf.Executor | None = None):
        super().__init__(level, "chunked-tarsplit-", side)
        self.position = 0

    def segment(self, payload: bytes) -> None:
        if payload:
            self.write(fmt.tarsplit_segment(payload, self.position))
            self.position += 1

    def file(self, name: str, size: int, crc: int | None) -> None:
        raw = crc.to_bytes(8, "big") if crc is not None else None
        self.write(fmt.tarsplit_file(name, size, raw, self.position))
        self.position += 1


@dataclass(slots=True)
class _Pending:
    """A TOC entry waiting for the frames it points at to be written."""

    entry: TocEntry
    first: int = -1  # frame whose start is entry.offset
    last: int = -1  # frame whose end is entry.endOffset
    digest: int = -1  # frame whose content digest is the file's digest
    chunk_digest: int = -1  # frame whose content digest is entry.chunkDigest

    @property
    def ready_after(self) -> int:
        return max(self.first, self.last, self.digest, self.chunk_digest)


class _TocStream:
    """Writes TOC entries in tar order as soon as their offsets and digests are known,
    so the TOC is never held whole in memory."""

    def __init__(self, frames: _FrameWriter, variant: Variant, level: int,
                 side: cf.Executor | None = None):
        self._frames = frames
        self._encoder = fmt.TocEncoder(variant)
        self.out = _Spooled(level, "chunked-toc-", side)
        self._queue: collections.deque[_Pending] = collections.deque()

    @property
    def count(self) -> int:
        return self._encoder.count

    def add(self, item: _Pending) -> None:
        self._queue.append(item)

    def flush(self) -> None:
        frames, q = self._frames, self._queue
        emitted = False
        while q and q[0].ready_after < frames.done:
            p = q.popleft()
            e = p.entry
            if p.first >= 0:
                e.offset = frames.extents[p.first][0]
            if p.last >= 0:
                e.end_offset = frames.extents[p.last][1]
            # each digest frame is read by exactly one entry
            if p.digest >= 0:
                e.digest = frames.digests.pop(p.digest)
            if p.chunk_digest >= 0:
                e.chunk_digest = frames.digests.pop(p.chunk_digest)
            self.out.write(self._encoder.entry(e))
            emitted = True
        if emitted:
            # Entries come in frame order: what the next one does not need, none will.
            frames.forget_extents_before(q[0].first if q and q[0].first >= 0 else frames.done)

    def finish(self, tarsplit_digest: str) -> None:
        self.flush()
        assert not self._queue
        self.out.write(self._encoder.end(tarsplit_digest))
        self.out.finish()


def _check_utf8(*names: str) -> None:
    for name in names:
        if name.isascii():
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Go's JSON would write U+FFFD in the TOC while the tar-split keeps the raw
            # bytes; podman then rejects the layer as inconsistent. Refuse it up front.
            raise UnsupportedError(
                f"tar entry {name!r} is not valid UTF-8, which the zstd:chunked TOC cannot "
                "carry (containers/storage would write a layer podman cannot pull partially)"
            ) from None


_HOLE = bytes(fmt.HOLE_THRESHOLD)


def _add_payload(reader: TarReader, frames: _FrameWriter, toc: _TocStream,
                 entry: TocEntry) -> int:
    """Chunk, compress and queue the TOC entries of one file's payload; return its CRC-64."""
    frames.end_frame()  # the header bytes before it are a frame of their own
    span = reader.buffered_payload()
    if span is None:
        first = reader.read_payload_piece()
    else:
        buf, start, end = span
        if buf.find(_HOLE, start, end) < 0:
            return _add_buffered_payload(buf, start, end, frames, toc, entry)
        first = buf[start:end]
    sink = _FileSink(frames)
    chunker = Chunker(sink)
    crc = crc64(first)
    chunker.feed(first)
    while piece := reader.read_payload_piece():
        crc = crc64(piece, crc)
        chunker.feed(piece)
    chunker.finish()
    chunks = sink.chunks
    whole = sink.file_digest()
    entry.digest = whole or ""
    if whole:
        digest = -1
    elif len(chunks) == 1:
        digest = chunks[0].frame
    else:
        digest = frames.add_hash(sink.held)
    _queue_entries(toc, entry, chunks, digest)
    return crc


def _add_buffered_payload(buf: bytes, start: int, end: int, frames: _FrameWriter,
                          toc: _TocStream, entry: TocEntry) -> int:
    """_add_payload for a payload read whole (``buf[start:end]``, not copied) without a
    run of zeros that makes a hole (most files): the Chunker's chunks without its
    per-piece machinery. Zeros at the end shorter than a hole are rolled as data there
    too, so the chunks are the same."""
    rs = RollSum()
    view = memoryview(buf)
    chunks: list[_Chunk] = []
    pos = start
    while pos < end:
        cut = rs.feed(buf, pos, end)
        if cut < 0:
            cut = end
        frames.add(view[pos:cut])
        frame = frames.end_frame(track=True, digest=True)
        assert frame is not None
        chunks.append(_Chunk(pos - start, cut - pos, False, frame))
        pos = cut
    payload = view[start:end]
    digest = chunks[0].frame if len(chunks) == 1 else frames.add_hash([payload])
    _queue_entries(toc, entry, chunks, digest)
    return crc64(payload)


def _queue_entries(toc: _TocStream, entry: TocEntry, chunks: list[_Chunk], digest: int) -> None:
    """The TOC entries of a file: ``entry``, and one "chunk" entry per further chunk.
    ``digest`` is the frame whose digest is the file's (-1: entry.digest is set)."""
    head = _Pending(entry, first=chunks[0].frame, last=chunks[-1].frame, digest=digest)
    if len(chunks) == 1:
        toc.add(head)
        return
    # Several chunks: the file's entry describes the first; one "chunk" entry per other.
    for i, ch in enumerate(chunks):
        if i == 0:
            target, item = entry, head
        else:
            target = TocEntry(type=fmt.TYPE_CHUNK, name=entry.name,
                              chunk_offset=ch.offset_in_file)
            item = _Pending(target, first=ch.frame)
        target.chunk_size = ch.size
        target.chunk_type = fmt.CHUNK_TYPE_ZEROS if ch.zeros else ""
        item.chunk_digest = ch.frame
        toc.add(item)


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
    # The TOC and the tar-split are compressed on a thread of their own.
    side = cf.ThreadPoolExecutor(1) if threads > 1 else None
    tarsplit = _TarSplitWriter(level, side) if variant.has_tarsplit else None
    toc = _TocStream(frames, variant, level, side)
    reader = TarReader(src)
    seen: set[str] = set()
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
                size=hdr.size, uid=hdr.uid, gid=hdr.gid, modtime=hdr.mtime, accesstime=hdr.atime,
                changetime=hdr.ctime, dev_major=hdr.dev_major, dev_minor=hdr.dev_minor,
                xattrs=hdr.xattrs or None,
            )
            crc = None
            if hdr.payload_size:
                crc = _add_payload(reader, frames, toc, entry)
                if progress:
                    progress(reader.total)
            else:
                toc.add(_Pending(entry))
                if hdr.size:
                    crc = 0  # tar-split checksums the (empty) payload of any entry with a size
            if tarsplit:
                tarsplit.file(hdr.name, hdr.size, crc)
            toc.flush()
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

        ts_pos: Position | None = None
        if tarsplit:
            tarsplit.finish()
        toc.finish(tarsplit.digest() if tarsplit else "")
        toc_pos = Position(frames.offset + fmt.SKIPPABLE_HEADER_SIZE, toc.out.compressed,
                           toc.out.uncompressed, fmt.MANIFEST_TYPE_CRFS)
        toc.out.copy_to(frames.write_raw)
        if tarsplit:
            ts_pos = Position(toc_pos.end + fmt.SKIPPABLE_HEADER_SIZE, tarsplit.compressed,
                              tarsplit.uncompressed)
            tarsplit.copy_to(frames.write_raw)
        footer = Footer(toc_pos, ts_pos)
        frames.write_raw(fmt.skippable_frame(variant.encode_footer(footer)))
        frames.close()
    except BaseException:
        frames.abort()
        raise
    finally:
        if side is not None:
            side.shutdown(cancel_futures=True)
        toc.out.close()
        if tarsplit:
            tarsplit.close()

    checksum = toc.out.digest()
    annotations = variant.annotations(checksum, footer)
    if extra_old_keys and variant is not fmt.OLD:
        annotations.update(fmt.OLD.annotations(checksum, footer))
    return BuildResult(
        digest=Digest.from_hash(frames.sha), size=frames.offset, diff_id=reader.digest(),
        annotations=annotations, entries=toc.count, input_size=reader.total,
    )
