"""Read a zstd:chunked blob through a RangeSource, verifying every byte.

The data path: locate the TOC (from the descriptor's annotations when given,
else from the footer) -> check it against its annotation -> parse -> for a file,
read only its frames -> check each chunk against ``chunkDigest`` and the file
against ``digest`` before a single byte is handed out.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import zstandard

from . import format as fmt
from .chunking import crc64
from .errors import FormatError, InputError, NotFoundError, VerifyError
from .format import Footer, LayerAnnotations, Position, Toc, TocEntry, Variant
from .source import RangeSource
from .tarstream import TarReader, go_clean

# Read at most this much compressed data in one request when streaming a file.
_BATCH = 8 << 20


def clean_name(name: str) -> str:
    """The path an entry lands at, relative to the root: what users type and look up."""
    bare = name[2:] if name.startswith("./") else name  # tar -C dir . writes ./usr/...
    if "//" not in bare and "/." not in bare and not bare.startswith(".") and \
            not bare.endswith("/"):
        return bare.lstrip("/")  # already clean: the common case, spared path.Clean
    return go_clean("/" + name).lstrip("/")


_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    # a decompression context is costly to set up and not thread-safe: one per thread
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def decompress_exact(data: bytes, size: int, what: str) -> bytes:
    """Decompress the zstd frames in ``data``; they must yield exactly ``size`` bytes."""
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


@dataclass(frozen=True)
class ChunkRef:
    file_offset: int
    size: int
    start: int  # compressed extent in the blob
    end: int
    digest: str
    zeros: bool


@dataclass
class FileInfo:
    entry: TocEntry
    chunks: list[ChunkRef] = field(default_factory=list)

    @property
    def compressed_size(self) -> int:
        return sum(c.end - c.start for c in self.chunks if not c.zeros)


@dataclass
class VerifyReport:
    files: int = 0
    chunks: int = 0
    bytes: int = 0
    toc_checked_against: str = ""
    tarsplit_checked: bool = False
    diff_id: str = ""


class Layer:
    """One zstd:chunked layer blob, opened and its TOC verified."""

    def __init__(self, source: RangeSource, toc: Toc, variant: Variant, toc_pos: Position,
                 checksum: str | None, tarsplit_pos: Position | None,
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
        self.files = self._index()

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, source: RangeSource, annotations: dict[str, str] | None = None, *,
             with_tarsplit: bool = True) -> Layer:
        """Locate, fetch and verify the TOC (and, unless told not to, the tar-split in the
        same round trip; a lazy mount does not need it)."""
        ann = LayerAnnotations.find(annotations or {})
        if ann is not None:
            variant, toc_pos, ts_pos, checksum = ann.variant, ann.toc, ann.tarsplit, ann.checksum
        else:
            probe = min(source.size, fmt.FOOTER_PROBE_SIZE)
            if probe < fmt.FOOTER_SIZE_OLD:
                raise FormatError(f"{source.name}: {source.size} bytes is too small to be a "
                                  "zstd:chunked blob")
            footer = Footer.decode(source.read_ranges([(source.size - probe, probe)])[0])
            variant = fmt.CURRENT if footer.tarsplit else fmt.OLD
            toc_pos, ts_pos, checksum = footer.toc, footer.tarsplit, None
        if toc_pos.manifest_type != fmt.MANIFEST_TYPE_CRFS:
            raise FormatError(f"{source.name}: invalid manifest type {toc_pos.manifest_type}")
        limit = max(fmt.MAX_TOC_SIZE, variant.max_toc_size)
        if toc_pos.length > limit or toc_pos.uncompressed > limit:
            raise FormatError(f"{source.name}: TOC of {toc_pos.uncompressed} bytes is too big")
        if ts_pos and (ts_pos.length > fmt.MAX_TARSPLIT_SIZE
                       or ts_pos.uncompressed > fmt.MAX_TARSPLIT_SIZE):
            raise FormatError(f"{source.name}: tar-split is too big")
        for what, pos in (("TOC", toc_pos), ("tar-split", ts_pos)):
            if pos and (pos.offset < fmt.SKIPPABLE_HEADER_SIZE or pos.end > source.size):
                raise FormatError(f"{source.name}: the {what} position {pos.offset}+{pos.length} "
                                  f"lies outside the blob ({source.size} bytes)")
        # One round trip for both: what a registry source turns into one multi-range request.
        ranges = [(toc_pos.offset, toc_pos.length)]
        if ts_pos and with_tarsplit:
            ranges.append((ts_pos.offset, ts_pos.length))
        got = source.read_ranges(ranges)
        toc_z = got[0]
        if checksum is not None:
            actual = "sha256:" + hashlib.sha256(toc_z).hexdigest()
            if actual != checksum:
                raise VerifyError(f"{source.name}: TOC does not match its annotation "
                                  f"(manifest-checksum {checksum}, TOC is {actual})")
        if toc_z[:4] == fmt.ZSTD_FRAME_MAGIC:
            toc_json = decompress_exact(toc_z, toc_pos.uncompressed, f"{source.name}: TOC")
        elif variant is fmt.OLD:
            toc_json = toc_z  # containers/storage 1.43 accepted an uncompressed TOC
        else:
            raise FormatError(f"{source.name}: TOC is not zstd-compressed")
        toc = Toc.decode(toc_json)
        if toc.tarsplit_digest and ts_pos is None:
            raise FormatError(f"{source.name}: TOC requires a tar-split, but no position for it "
                              "is known")
        return cls(source, toc, variant, toc_pos, checksum, ts_pos,
                   got[1] if len(got) > 1 else None)

    def _index(self) -> dict[str, FileInfo]:
        files: dict[str, FileInfo] = {}
        current: FileInfo | None = None
        entries = self.toc.entries
        for i, e in enumerate(entries):
            if e.type == fmt.TYPE_CHUNK:
                if current is None or e.name != current.entry.name:
                    raise FormatError(f"TOC: chunk entry for {e.name!r} without its file")
                continue
            key = clean_name(e.name)
            if key in files:
                raise FormatError(f"TOC: the path {e.name!r} appears twice")
            info = FileInfo(e)
            files[key] = info
            current = info if e.type == fmt.TYPE_REG else None
            if e.type == fmt.TYPE_REG and e.size > 0:
                info.chunks = self._chunks(entries, i)
        return files

    def _chunks(self, entries: list[TocEntry], i: int) -> list[ChunkRef]:
        head = entries[i]
        group = [head]
        j = i + 1
        while j < len(entries) and entries[j].type == fmt.TYPE_CHUNK:
            group.append(entries[j])
            j += 1
        end = head.end_offset
        if not end:
            # Writers that omit endOffset: the file ends where the next payload starts.
            end = next((e.offset for e in entries[j:] if e.offset), self.data_end)
        out = []
        total = 0
        for k, c in enumerate(group):
            stop = group[k + 1].offset if k + 1 < len(group) else end
            size = c.chunk_size if len(group) > 1 else head.size
            digest = c.chunk_digest if len(group) > 1 else head.digest
            if not (0 < c.offset <= stop <= self.data_end) or size <= 0:
                raise FormatError(f"TOC: bad offsets for {head.name!r} "
                                  f"({c.offset}..{stop}, data ends at {self.data_end})")
            if not digest.startswith("sha256:"):
                raise FormatError(f"TOC: {head.name!r} has no sha256 digest")
            out.append(ChunkRef(c.chunk_offset, size, c.offset, stop, digest,
                                c.chunk_type == fmt.CHUNK_TYPE_ZEROS))
            total += size
        if total != head.size:
            raise FormatError(f"TOC: chunks of {head.name!r} do not add up to its size")
        return out

    # -- files -------------------------------------------------------------------------
    def lookup(self, name: str) -> FileInfo:
        info = self.files.get(clean_name(name))
        if info is None:
            raise NotFoundError(f"{name}: no such file in the layer")
        hops = 0
        while info.entry.type == fmt.TYPE_HARDLINK and hops < 64:
            target = self.files.get(clean_name(info.entry.link_name))
            if target is None:
                raise FormatError(f"{name}: hard link to {info.entry.link_name!r}, "
                                  "which is not in the layer")
            info, hops = target, hops + 1
        return info

    def iter_file(self, info: FileInfo) -> Iterator[bytes]:
        """The file's bytes chunk by chunk, each verified before it is yielded."""
        e = info.entry
        if e.type != fmt.TYPE_REG:
            raise InputError(f"{e.name}: not a regular file ({e.type})")
        whole = hashlib.sha256() if len(info.chunks) > 1 else None
        for _ref, data in self.read_chunks(info.chunks, e.name):
            if whole is not None:
                whole.update(data)
            yield data
        if whole is not None and "sha256:" + whole.hexdigest() != e.digest:
            raise VerifyError(f"{e.name}: file digest mismatch")

    def read_file(self, name: str) -> bytes:
        return b"".join(self.iter_file(self.lookup(name)))

    def read_chunks(self, chunks: list[ChunkRef], name: str | Mapping[int, str]
                    ) -> Iterator[tuple[ChunkRef, bytes]]:
        """Each chunk's bytes, verified against its digest, fetched in batched range reads.

        ``name`` (for errors) is the file's, or maps a chunk's blob offset to its file's
        when the chunks come from many files."""
        i = 0
        while i < len(chunks):
            batch: list[ChunkRef] = []
            total = 0
            while i < len(chunks) and (not batch or total < _BATCH):
                batch.append(chunks[i])
                if not chunks[i].zeros:
                    total += chunks[i].end - chunks[i].start
                i += 1
            wanted = [c for c in batch if not c.zeros]
            datas = iter(self.source.read_ranges([(c.start, c.end - c.start) for c in wanted]))
            for c in batch:
                label = name if isinstance(name, str) else name.get(c.start, "?")
                if c.zeros:
                    data = bytes(c.size)
                else:
                    data = decompress_exact(next(datas), c.size,
                                            f"{label} (chunk at {c.file_offset})")
                if "sha256:" + hashlib.sha256(data).hexdigest() != c.digest:
                    raise VerifyError(f"{label}: digest mismatch in the chunk at offset "
                                      f"{c.file_offset}")
                yield c, data

    # -- tar-split ---------------------------------------------------------------------
    def tarsplit(self) -> list[fmt.TarSplitEntry] | None:
        """The tar-split, digest-checked against the TOC, or None if the layer has none."""
        if self.tarsplit_pos is None:
            return None
        if self._tarsplit_z is None:
            pos = self.tarsplit_pos
            self._tarsplit_z = self.source.read_ranges([(pos.offset, pos.length)])[0]
        actual = "sha256:" + hashlib.sha256(self._tarsplit_z).hexdigest()
        if self.toc.tarsplit_digest and actual != self.toc.tarsplit_digest:
            raise VerifyError(f"{self.source.name}: tar-split does not match tarSplitDigest "
                              "in the TOC")
        raw = decompress_exact(self._tarsplit_z, self.tarsplit_pos.uncompressed, "tar-split")
        return [fmt.TarSplitEntry.parse_line(line) for line in raw.splitlines()]

    def check_tarsplit_matches_toc(self, tarsplit: list[fmt.TarSplitEntry]) -> None:
        """Every tar header in the tar-split must agree with its TOC entry, as podman checks."""
        by_name = {e.name: e for e in self.entries}
        if len(by_name) != len(self.entries):
            raise FormatError("TOC: a path appears twice")
        pending = bytearray()
        prev_size = 0
        seen = 0
        for ts in tarsplit:
            if ts.type == fmt.TARSPLIT_SEGMENT:
                pending += ts.payload or b""
                continue
            hdr_bytes = bytes(pending[-prev_size % 512 if prev_size % 512 else 0:])
            pending.clear()
            item = TarReader(io.BytesIO(hdr_bytes)).next()
            if item is None:
                raise FormatError(f"tar-split: no header before {ts.name!r}")
            hdr = item[0]
            prev_size = hdr.payload_size
            toc_e = by_name.get(hdr.name)
            if toc_e is None or hdr.name != ts.name:
                raise FormatError(f"tar-split and TOC are inconsistent: {hdr.name!r} is not in "
                                  "the TOC")
            mine = (hdr.toc_type, hdr.link_name, hdr.mode, hdr.size, hdr.uid, hdr.gid,
                    _t(hdr.mtime), _t(hdr.atime), _t(hdr.ctime), hdr.dev_major, hdr.dev_minor,
                    hdr.xattrs)
            theirs = (toc_e.type, toc_e.link_name, toc_e.mode, toc_e.size, toc_e.uid, toc_e.gid,
                      _t(toc_e.mtime), _t(toc_e.atime), _t(toc_e.ctime), toc_e.dev_major,
                      toc_e.dev_minor, toc_e.xattrs)
            if mine != theirs:
                raise FormatError(f"tar-split and TOC are inconsistent for {hdr.name!r}")
            seen += 1
        if seen != len(self.entries):
            raise FormatError("tar-split and TOC are inconsistent: the TOC has entries the "
                              "tar does not")

    # -- verify ------------------------------------------------------------------------
    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Check everything a digest covers; raise naming the first bad file.

        Each file is read once: its chunks and whole digest are checked as it
        streams, and with a tar-split the tar is rebuilt from the same bytes and
        must equal the decompressed layer (what podman checks against the DiffID).
        """
        report = VerifyReport(toc_checked_against=self.checksum or "")
        tarsplit = self.tarsplit()
        rebuilt = hashlib.sha256()
        rebuilt_size = 0

        def read(info: FileInfo) -> int:
            nonlocal rebuilt_size
            crc = 0
            for data in self.iter_file(info):
                crc = crc64(data, crc)
                rebuilt.update(data)
                rebuilt_size += len(data)
                report.chunks += 1
                report.bytes += len(data)
                if progress:
                    progress(len(data))
            report.files += 1
            return crc

        if tarsplit is None:
            for info in self.files.values():
                if info.entry.type == fmt.TYPE_REG and info.entry.size:
                    read(info)
        else:
            self.check_tarsplit_matches_toc(tarsplit)
            report.tarsplit_checked = True
            for ts in tarsplit:
                if ts.type == fmt.TARSPLIT_SEGMENT:
                    rebuilt.update(ts.payload or b"")
                    rebuilt_size += len(ts.payload or b"")
                    continue
                if ts.size == 0:
                    continue
                info = self.files[clean_name(ts.name)]  # present: checked above
                has_payload = info.entry.type == fmt.TYPE_REG
                crc = read(info) if has_payload else 0
                if crc != int.from_bytes(ts.payload or b"", "big"):
                    raise VerifyError(f"{ts.name}: content does not match the tar-split CRC")
        report.diff_id, stream_size = self._stream_digest()
        if tarsplit is not None and ("sha256:" + rebuilt.hexdigest() != report.diff_id
                                     or rebuilt_size != stream_size):
            raise VerifyError(f"{self.source.name}: the tar rebuilt from the tar-split "
                              "differs from the decompressed layer")
        return report

    def _stream_digest(self) -> tuple[str, int]:
        """sha256 and size of all data frames decompressed in order: the layer as any
        zstd reader sees it (every frame's checksum is checked on the way)."""
        h = hashlib.sha256()
        size = 0
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(
                _SourceFile(self.source, self.data_end), read_across_frames=True)
            while chunk := reader.read(16 << 20):
                h.update(chunk)
                size += len(chunk)
        except zstandard.ZstdError as exc:
            raise VerifyError(f"{self.source.name}: corrupt zstd frame in the data ({exc})"
                              ) from None
        return "sha256:" + h.hexdigest(), size


def _t(ns: int | None) -> int | None:
    # nil, Go's zero time and the epoch all count as "no time" in upstream's check
    return None if not ns else ns


class _SourceFile(io.RawIOBase):
    """A file-like view of the first ``end`` bytes of a source, for streaming decompression."""

    def __init__(self, source: RangeSource, end: int):
        self._source = source
        self._end = end
        self._pos = 0

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
