"""Read a zstd:chunked blob through a RangeSource, verifying every byte.

The data path: locate the TOC (from the descriptor's annotations when given,
else from the footer) -> check it against its annotation -> parse it, with limits ->
index it, checking that every file's chunks add up -> check it against the tar-split
(:mod:`chunked.read.consistency`) -> for a file, read only its frames -> check each chunk
against ``chunkDigest``, the file against ``digest`` and the tar-split's CRC-64, before a
single byte is handed out.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import zstandard

from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import FormatError, InputError, VerifyError
from chunked.format import Footer, LayerAnnotations, Position, Toc, Variant, tocindex
from chunked.format.chunking import crc64
from chunked.format.tocindex import ChunkRef, FileInfo
from chunked.format.tocindex import clean_name as clean_name  # (what callers import here)
from chunked.read.protocol import KIND_CHUNKED, LayerReader, find, resolve_link
from chunked.read.source import RangeSource, failover_once

log = logging.getLogger("chunked.read.layer")

# Read at most this much compressed data in one request when streaming a file.
_BATCH = 8 << 20
# Zeros are produced and hashed in pieces of this size, never as one buffer.
ZEROS_PIECE = 1 << 20
_ZEROS = bytes(ZEROS_PIECE)
# A tar-split this small (compressed) is kept from the first fetch; a larger one is read
# again from the source by what needs it a second time.
_KEEP_TARSPLIT = 64 << 20


_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    # a decompression context is costly to set up and not thread-safe: one per thread
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def decompress_exact(data: bytes, size: int, what: str) -> bytes:
    """Decompress the zstd frames in ``data``; they must yield exactly ``size`` bytes
    (never more is produced, whatever the frames claim)."""
    try:
        # the common case, one frame: in one call, never producing more than ``size``
        if zstandard.frame_content_size(data) in (size, -1):
            out = _dctx().decompress(data, max_output_size=size, allow_extra_data=False)
            if len(out) == size:
                return out
    except zstandard.ZstdError:
        pass  # several frames, or damage: the careful path below tells which
    try:
        reader = _dctx().stream_reader(io.BytesIO(data), read_across_frames=True)
        buf = bytearray()
        while len(buf) < size:
            piece = reader.read(size - len(buf))
            if not piece:
                break
            buf += piece
        extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise VerifyError(f"{what}: corrupt zstd data ({exc})") from None
    if len(buf) != size or extra:
        raise VerifyError(f"{what}: compressed data does not decompress to {size} bytes")
    return bytes(buf)


def zero_pieces(n: int) -> Iterator[bytes]:
    """``n`` zero bytes, in pieces that share one buffer."""
    while n > 0:
        yield _ZEROS if n >= ZEROS_PIECE else _ZEROS[:n]
        n -= ZEROS_PIECE


@functools.lru_cache(maxsize=1024)
def zeros_digest(n: int) -> Digest:
    """The sha256 of ``n`` zero bytes: what a zeros chunk's digest must be."""
    h = hashlib.sha256()
    for piece in zero_pieces(n):
        h.update(piece)
    return Digest.from_hash(h)


def crc_zeros(crc: int, n: int) -> int:
    for piece in zero_pieces(n):
        crc = crc64(piece, crc)
    return crc


@dataclass
class VerifyReport:
    files: int = 0
    chunks: int = 0
    bytes: int = 0
    toc_checked_against: str = ""
    tarsplit_checked: bool = False
    diff_id: str = ""
    blob_digest: str = ""  # the sha256 of every byte of the blob, as read


@dataclass
class _Located:
    """Where a layer's TOC and tar-split are, and what checks the TOC."""

    variant: Variant
    toc: Position
    tarsplit: Position | None
    checksum: Digest | None
    tarsplit_z: bytes | None = None
    fetched: dict[str, bytes] = field(default_factory=dict)  # "toc", "tarsplit": their bytes


class ChunkedLayer:
    """One zstd:chunked layer blob, opened, its TOC verified and indexed: a
    :class:`~chunked.read.protocol.LayerReader` that reads each file's chunks from the
    source as asked. Its own: the TOC (``toc``, ``checksum``), the tar-split and the format
    ``variant``."""

    kind = KIND_CHUNKED

    def __init__(self, source: RangeSource, toc: Toc, variant: Variant, toc_pos: Position,
                 checksum: Digest | None, tarsplit_pos: Position | None,
                 tarsplit_z: bytes | None):
        self.source = source
        self.toc = toc
        self.variant = variant
        self.toc_pos = toc_pos
        self.checksum = checksum
        self.tarsplit_pos = tarsplit_pos
        self._tarsplit_z = tarsplit_z
        self.data_end = toc_pos.offset - fmt.SKIPPABLE_HEADER_SIZE
        self.entries = [e for e in toc.entries if e.type != fmt.TYPE_CHUNK]
        self.files = tocindex.index(toc.entries, self.data_end)
        # set once the tar-split has been read and found to agree with the TOC
        self.tarsplit_checked = False
        self.tar_size: int | None = None  # the layer's tar, in bytes, by its tar-split

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, source: RangeSource, annotations: Mapping[str, object] | None = None, *,
             check: bool = True) -> ChunkedLayer:
        """Locate, fetch and verify the TOC, and the tar-split in the same round trip; then,
        unless ``check`` is false, check the TOC against the tar-split
        (:func:`chunked.read.consistency.check_tarsplit`)."""
        where = _locate(source, annotations)
        toc_pos = where.toc
        got = where.fetched
        toc_z = got["toc"]
        if where.checksum is not None:
            actual = Digest.of(toc_z)
            if actual != where.checksum:
                raise VerifyError(f"{source.name}: TOC does not match its annotation "
                                  f"(manifest-checksum {where.checksum}, TOC is {actual})")
        if toc_z[:4] == fmt.ZSTD_FRAME_MAGIC:
            toc_json = decompress_exact(toc_z, toc_pos.uncompressed, f"{source.name}: TOC")
        elif where.variant is fmt.OLD:
            toc_json = toc_z  # containers/storage 1.43 accepted an uncompressed TOC
        else:
            raise FormatError(f"{source.name}: TOC is not zstd-compressed")
        try:
            toc = Toc.decode(toc_json)
        except FormatError as exc:
            raise FormatError(f"{source.name}: {exc}") from None
        ts_pos = where.tarsplit
        if toc.tarsplit_digest and ts_pos is None:
            raise FormatError(f"{source.name}: TOC requires a tar-split, but no position for it "
                              "is known")
        # A tar-split the TOC does not vouch for (no tarSplitDigest: who writes only the old
        # keys drops it) is still checked against: it is the same author's second account
        # of the tar, and a TOC that contradicts it is refused all the same.
        layer = cls(source, toc, where.variant, toc_pos, where.checksum, ts_pos,
                    got.get("tarsplit"))
        if check and ts_pos is not None:
            from chunked.read.consistency import check_tarsplit

            check_tarsplit(layer)
        return layer

    def set_crc(self, info: FileInfo, crc: int) -> None:
        """Record the tar-split's CRC-64 of a file, which every read then checks."""
        info.crc = crc
        if len(info.chunks) == 1:
            c = info.chunks[0]
            info.chunks = [ChunkRef(c.file_offset, c.size, c.start, c.end, c.digest, c.zeros,
                                    crc)]

    # -- files -------------------------------------------------------------------------
    def lookup(self, name: str) -> FileInfo:
        return self.resolve(find(self.files, name))

    def resolve(self, info: FileInfo) -> FileInfo:
        """The entry a hard link shares its inode with (``info`` itself if not a link)."""
        return resolve_link(self.files, info)

    def iter_file(self, info: FileInfo) -> Iterator[bytes]:
        """The file's bytes in pieces, each chunk verified before it is yielded; the whole
        file is checked against its digest and CRC-64 as well (before its last piece, so
        a consumer never sees the end of a file that does not check out)."""
        return iter_checked(self, info)

    def read_file(self, name: str) -> bytes:
        return b"".join(self.iter_file(self.lookup(name)))

    def read_chunks(self, chunks: Sequence[ChunkRef], name: str | Mapping[int, str],
                    batch: int = _BATCH) -> Iterator[tuple[ChunkRef, bytes | None]]:
        """Each chunk's bytes, verified against its digest (and CRC-64 when the chunk is a
        whole file), fetched in batched range reads. A zeros chunk yields None: its digest
        is checked, and its bytes are the caller's to produce (see :func:`zero_pieces`).

        ``name`` (for errors) is the file's, or maps a chunk's blob offset to its file's
        when the chunks come from many files."""
        i = 0
        while i < len(chunks):
            group: list[ChunkRef] = []
            total = 0
            while i < len(chunks) and (not group or total < batch):
                group.append(chunks[i])
                if not chunks[i].zeros:
                    total += chunks[i].end - chunks[i].start
                i += 1
            # the whole batch is checked before any of it is yielded: bytes from a mirror
            # that do not match their digests send the batch to the next source
            checked = failover_once(self.source, functools.partial(self._checked, group, name))
            yield from checked

    def _checked(self, batch: list[ChunkRef], name: str | Mapping[int, str]
                 ) -> list[tuple[ChunkRef, bytes | None]]:
        wanted = [c for c in batch if not c.zeros]
        datas = iter(self.source.read_ranges([(c.start, c.end - c.start) for c in wanted]))
        out: list[tuple[ChunkRef, bytes | None]] = []
        for c in batch:
            label = name if isinstance(name, str) else name.get(c.start, "?")
            if c.zeros:
                if zeros_digest(c.size) != c.digest:
                    raise VerifyError(f"{label}: the zeros chunk at offset {c.file_offset} "
                                      "does not match its digest")
                if c.crc is not None and crc_zeros(0, c.size) != c.crc:
                    raise VerifyError(f"{label}: content does not match the tar-split CRC")
                out.append((c, None))
                continue
            data = decompress_exact(next(datas), c.size, f"{label} (chunk at {c.file_offset})")
            if Digest.of(data) != c.digest:
                raise VerifyError(f"{label}: digest mismatch in the chunk at offset "
                                  f"{c.file_offset}")
            if c.crc is not None and crc64(data) != c.crc:
                raise VerifyError(f"{label}: content does not match the tar-split CRC")
            out.append((c, data))
        return out

    # -- tar-split ---------------------------------------------------------------------
    def tarsplit_stream(self) -> Iterator[fmt.TarSplitEntry]:
        """The tar-split's entries, streamed from its compressed bytes (held, or read again
        from the source), decompression capped at the size its position declares. Its
        digest is checked against the TOC's ``tarSplitDigest`` once the stream ends: a
        consumer's verdict waits for the end."""
        pos = self.tarsplit_pos
        if pos is None:
            raise FormatError(f"{self.source.name}: the layer has no tar-split")
        raw: io.RawIOBase
        if self._tarsplit_z is not None:
            raw = HashingReader(io.BytesIO(self._tarsplit_z))
        else:
            raw = HashingReader(_SourceFile(self.source, pos.offset, pos.end))
        try:
            # a context of its own: the stream stays open between the entries it yields,
            # while the consumer reads files through the thread's shared one (a context
            # used for anything else in between corrupts the stream)
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            produced = 0

            def read(n: int) -> bytes:
                nonlocal produced
                piece = reader.read(min(n, pos.uncompressed + 1 - produced))
                produced += len(piece)
                if produced > pos.uncompressed:
                    raise FormatError(f"{self.source.name}: the tar-split decompresses to "
                                      f"more than the {pos.uncompressed} bytes declared")
                return piece

            yield from fmt.iter_tarsplit(read)
            while read(1 << 20):
                pass
        except zstandard.ZstdError as exc:
            raise VerifyError(f"{self.source.name}: corrupt tar-split ({exc})") from None
        if produced != pos.uncompressed:
            raise FormatError(f"{self.source.name}: the tar-split is {produced} bytes, its "
                              f"position says {pos.uncompressed}")
        if self.toc.tarsplit_digest and raw.digest() != self.toc.tarsplit_digest:
            raise VerifyError(f"{self.source.name}: tar-split does not match tarSplitDigest "
                              "in the TOC")

    # -- verify ------------------------------------------------------------------------
    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Check everything a digest covers, and that the TOC tells what the tar holds;
        raise naming the first bad file (:func:`chunked.read.consistency.verify_layer`)."""
        from chunked.read.consistency import verify_layer

        return verify_layer(self, progress)

    def data_stream(self) -> io.RawIOBase:
        """The data frames (everything before the TOC) as a file, for decompression."""
        return _SourceFile(self.source, 0, self.data_end)


# The old name, for code written before the protocol (the lead's branches in flight).
Layer = ChunkedLayer


def read_every_file(layer: LayerReader, report: VerifyReport,
                    progress: Callable[[int], None] | None) -> None:
    """Read every regular file of a layer through its own checks, counting into
    ``report``: the first half of any layer's verify."""
    for info in layer.files.values():
        if info.entry.type != fmt.TYPE_REG or not info.entry.size:
            continue
        for data in layer.iter_file(info):
            report.bytes += len(data)
            if progress:
                progress(len(data))
        report.files += 1
        report.chunks += len(info.chunks)


class WholeCheck:
    """A file's bytes, fed in order, held to its digest (when it has several chunks: a
    single chunk's digest is the file's, checked with the chunk) and to the tar-split's
    CRC-64 (when known)."""

    def __init__(self, info: FileInfo):
        self.info = info
        self._sha = hashlib.sha256() if len(info.chunks) > 1 else None
        self._crc = 0

    def update(self, piece: bytes) -> None:
        if self._sha is not None:
            self._sha.update(piece)
        self._crc = crc64(piece, self._crc)

    def zeros(self, n: int) -> None:
        for piece in zero_pieces(n):
            self.update(piece)

    def finish(self) -> None:
        e = self.info.entry
        if self._sha is not None and Digest.from_hash(self._sha) != e.digest:
            raise VerifyError(f"{e.name}: file digest mismatch")
        if self.info.crc is not None and self._crc != self.info.crc:
            raise VerifyError(f"{e.name}: content does not match the tar-split CRC")


def iter_checked(layer: ChunkedLayer, info: FileInfo) -> Iterator[bytes]:
    e = info.entry
    if e.type != fmt.TYPE_REG:
        raise InputError(f"{e.name}: not a regular file ({e.type})")
    if len(info.chunks) <= 1:  # a single chunk is checked whole by read_chunks
        for c, data in layer.read_chunks(info.chunks, e.name):
            yield from (zero_pieces(c.size) if data is None else (data,))
        return
    check = WholeCheck(info)
    held: bytes | None = None  # the last piece, handed out only once the file checks out
    for c, data in layer.read_chunks(info.chunks, e.name):
        for piece in zero_pieces(c.size) if data is None else (data,):
            check.update(piece)
            if held is not None:
                yield held
            held = piece
    check.finish()
    if held is not None:
        yield held


def _locate(source: RangeSource, annotations: Mapping[str, object] | None) -> _Located:
    """Find the TOC (and tar-split) by the annotations, else by the footer, and fetch them
    in one round trip."""
    if annotations is not None and not isinstance(annotations, Mapping):
        raise FormatError(f"{source.name}: the layer's annotations are not an object")
    ann = LayerAnnotations.find(annotations or {})
    probe = min(source.size, fmt.FOOTER_PROBE_SIZE)
    footer_range = (source.size - probe, probe)
    if ann is None:
        if probe < fmt.FOOTER_SIZE_OLD:
            raise FormatError(f"{source.name}: {source.size} bytes is too small to be a "
                              "zstd:chunked blob")
        footer = Footer.decode(source.read_ranges([footer_range])[0])
        where = _Located(fmt.CURRENT if footer.tarsplit else fmt.OLD, footer.toc,
                         footer.tarsplit, None)
    else:
        where = _Located(ann.variant, ann.toc, ann.tarsplit, ann.checksum)
    _check_positions(source, where)
    ranges = {"toc": (where.toc.offset, where.toc.length)}
    if where.tarsplit is not None and where.tarsplit.length <= _KEEP_TARSPLIT:
        # (a larger one streams from the source when it is read)
        ranges["tarsplit"] = (where.tarsplit.offset, where.tarsplit.length)
    elif ann is not None and probe >= fmt.FOOTER_SIZE_OLD:
        # no tar-split position in the annotations (only the old keys, say): a current-format
        # blob tells it in its footer
        ranges["footer"] = footer_range
    # One round trip for all: what a registry source turns into one multi-range request.
    got = dict(zip(ranges, source.read_ranges(list(ranges.values())), strict=True))
    if "footer" in got:
        try:
            footer = Footer.decode(got.pop("footer"))
        except FormatError:
            footer = None
        if footer is not None and footer.tarsplit is not None:
            if footer.toc != where.toc:
                raise FormatError(f"{source.name}: the footer and the annotations disagree on "
                                  "where the TOC is")
            where.tarsplit = footer.tarsplit
            _check_positions(source, where)
            if footer.tarsplit.length <= _KEEP_TARSPLIT:
                got["tarsplit"] = source.read_ranges([(footer.tarsplit.offset,
                                                       footer.tarsplit.length)])[0]
    where.fetched = got
    return where


def _check_positions(source: RangeSource, where: _Located) -> None:
    toc_pos, ts_pos = where.toc, where.tarsplit
    if toc_pos.manifest_type != fmt.MANIFEST_TYPE_CRFS:
        raise FormatError(f"{source.name}: invalid manifest type {toc_pos.manifest_type}")
    limit = max(fmt.MAX_TOC_SIZE, where.variant.max_toc_size)
    if toc_pos.length > limit or toc_pos.uncompressed > limit:
        raise FormatError(f"{source.name}: TOC of {toc_pos.uncompressed} bytes is too big")
    if ts_pos and (ts_pos.length > fmt.MAX_TARSPLIT_SIZE
                   or ts_pos.uncompressed > fmt.MAX_TARSPLIT_SIZE):
        raise FormatError(f"{source.name}: tar-split is too big")
    for what, pos in (("TOC", toc_pos), ("tar-split", ts_pos)):
        if pos and (pos.offset < fmt.SKIPPABLE_HEADER_SIZE or pos.end > source.size
                    or pos.length == 0):
            raise FormatError(f"{source.name}: the {what} position {pos.offset}+{pos.length} "
                              f"lies outside the blob ({source.size} bytes)")
    if ts_pos and toc_pos.offset < ts_pos.end and ts_pos.offset < toc_pos.end:
        raise FormatError(f"{source.name}: the TOC and the tar-split overlap")


class HashingReader(io.RawIOBase):
    """A file that hashes what is read through it (a tar-split's compressed bytes)."""

    def __init__(self, f: io.RawIOBase | io.BytesIO):
        self._f = f
        self._h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._f.readinto(b)
        if n:
            self._h.update(memoryview(b)[:n])
        return n or 0

    def update(self, piece: bytes) -> None:
        """Hash bytes read some other way, as if read through this file."""
        self._h.update(piece)

    def digest(self) -> Digest:
        return Digest.from_hash(self._h)


class _SourceFile(io.RawIOBase):
    """A file-like view of bytes ``start``..``end`` of a source, for streaming."""

    def __init__(self, source: RangeSource, start: int, end: int):
        self._source = source
        self._end = end
        self._pos = start

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._end - self._pos, 4 << 20)
        if n <= 0:
            return 0
        data = self._source.read_ranges([(self._pos, n)])[0]
        b[:n] = data
        self._pos += n
        return n
