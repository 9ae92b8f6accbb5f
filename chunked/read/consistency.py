"""One view of a layer, whichever way it is read: the TOC against the tar.

A TOC is what a lazy reader serves from; the tar (what a plain decompression of the layer
gives, and what its DiffID covers) is what a full pull, a scanner or another engine sees.
Whoever writes a layer writes both, so they are checked against each other, entry by
entry in order, before anything is served:

* :func:`check_tarsplit` reads the tar-split (the tar's headers and padding, with a CRC-64
  per file), compares every header with its TOC entry (name, type, link, mode, size,
  owner, times, device, xattrs) and records each file's CRC, which every later read then
  checks, as containers/storage does since its TOC/tar-split consistency fix;
* :func:`verify_layer` reads every file through the TOC, then decompresses the whole layer
  and compares each header and payload of the plain tar with the TOC (and, with a
  tar-split, rebuilds the tar from it and compares the bytes): for a layer without a
  tar-split (the old format) this is the only proof its TOC tells the truth;
* :func:`rebuilt_diff_id` computes the DiffID of the tar rebuilt from the tar-split and the
  files' bytes, which a pull compares with the image config, as podman >= 5.4 does.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import zstandard

from chunked import _kernels
from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import FormatError, InputError, VerifyError
from chunked.format.tar import BLOCK, TarHeader, TarReader, single_header
from chunked.read.layer import FileInfo, HashingReader, VerifyReport, read_every_file

_tocindex = _kernels.load("chunked.format._tocindex")  # None: check_pair alone

if TYPE_CHECKING:
    from chunked.read.layer import ChunkedLayer

# The bytes between two files in a tar: padding, then a header and its extended records
# (PAX and GNU long names, each at most 1 MiB as in Go's reader).
_MAX_GAP = 4 << 20
# What may follow the end-of-archive blocks in a layer without a tar-split to declare it:
# record padding is 10 KiB with GNU tar's defaults.
_MAX_TRAILER = 16 << 20


def _t(ns: int | None) -> int | None:
    # nil, Go's zero time and the epoch all count as "no time" in upstream's check
    return None if not ns else ns


def check_entry(e: fmt.TocEntry, hdr: TarHeader, where: str) -> None:
    """The TOC entry ``e`` must describe the tar header ``hdr`` field for field."""
    toc = (e.name, e.type, e.link_name, e.mode, e.size, e.uid, e.gid, _t(e.mtime),
           _t(e.atime), _t(e.ctime), e.dev_major, e.dev_minor, e.xattrs or {})
    tar = (hdr.name, hdr.toc_type, hdr.link_name, hdr.mode, hdr.size, hdr.uid, hdr.gid,
           _t(hdr.mtime), _t(hdr.atime), _t(hdr.ctime), hdr.dev_major, hdr.dev_minor,
           hdr.xattrs)
    if toc == tar:
        return
    names = ("name", "type", "linkName", "mode", "size", "uid", "gid", "modtime",
             "accesstime", "changetime", "devMajor", "devMinor", "xattrs")
    field, mine, theirs = next((n, a, b) for n, a, b in zip(names, toc, tar, strict=True)
                               if a != b)
    raise FormatError(f"{where}: the TOC and the tar disagree on {e.name!r}: {field} is "
                      f"{_short(mine)} in the TOC, {_short(theirs)} in the tar")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_gap(gap: bytes | bytearray, prev_payload: int, where: str) -> TarHeader | None:
    """The header in the bytes between two payloads: the padding of the one before, then
    exactly one entry's header blocks (None: the end-of-archive). Anything else in there
    would be a tar entry the TOC does not list."""
    pad = -prev_payload % BLOCK
    if len(gap) < pad:
        raise FormatError(f"{where}: tar-split is missing the padding of a file")
    data = bytes(gap[pad:])
    try:
        hdr = single_header(data)
        if hdr is not None:
            return hdr
        item = TarReader(io.BytesIO(data), digest=False).next()
    except InputError as exc:
        raise FormatError(f"{where}: tar-split holds a bad tar header ({exc})") from None
    if item is None:
        return None
    hdr, raw = item
    if len(raw) != len(data):
        raise FormatError(f"{where}: tar-split holds more between two files than one header")
    return hdr


def _file_crc(info: FileInfo, ts: fmt.TarSplitEntry, where: str) -> int | None:
    if info.entry.type != fmt.TYPE_REG or not info.entry.size:
        return None
    crc = ts.crc
    if crc is None:
        raise FormatError(f"{where}: tar-split has no CRC for {ts.path!r}")
    return crc


def tarsplit_pairs(layer: ChunkedLayer) -> Iterator[tuple[bytearray, fmt.TarSplitEntry | None]]:
    """The tar-split as (bytes before a file, the file's line) pairs; last (the trailer,
    None). The trailer comes in pieces of at most a few MiB, each its own pair."""
    gap = bytearray()
    for ts in layer.tarsplit_stream():
        if ts.type == fmt.TARSPLIT_SEGMENT:
            gap += ts.payload or b""
            if len(gap) > _MAX_GAP:
                yield gap, None  # only the trailer may be this long
                gap = bytearray()
            continue
        yield gap, ts
        gap = bytearray()
    yield gap, None


def check_pair(gap: bytes | bytearray, prev_payload: int, info: FileInfo | None,
               ts: fmt.TarSplitEntry, where: str) -> int:
    """One file's tar-split line, and the bytes before it, against its TOC entry; the
    size of the payload that follows its header. ``_tocindex.tar_entry_matches`` is this
    in C for a lone header of plain fields, answering -1 for anything else."""
    hdr = _parse_gap(gap, prev_payload, where)
    if info is None or hdr is None:
        raise FormatError(f"{where}: the tar has an entry the TOC does not list")
    check_entry(info.entry, hdr, where)
    if ts.path != hdr.name or ts.size != hdr.size:
        raise FormatError(f"{where}: tar-split line for {ts.path!r} does not match its "
                          "header")
    return hdr.payload_size


def check_tarsplit(layer: ChunkedLayer) -> None:
    """Compare the TOC with the tar-split entry by entry, then record each file's CRC-64
    (only once the whole tar-split, its digest included, has checked out)."""
    where = layer.source.name
    fast = _tocindex.tar_entry_matches if _tocindex is not None else None
    infos = iter(layer.files.values())
    crcs: list[tuple[FileInfo, int]] = []
    prev_payload = 0
    trailer = False
    tar_size = 0
    for gap, ts in tarsplit_pairs(layer):
        tar_size += len(gap) + (ts.size if ts is not None else 0)
        if ts is None:
            if not trailer:
                if _parse_gap(gap, prev_payload, where) is not None:
                    raise FormatError(f"{where}: the tar has an entry the TOC does not list")
                trailer = True
            continue
        if trailer:
            raise FormatError(f"{where}: tar-split has a file after the end of the archive")
        info = next(infos, None)
        payload = -1
        if fast is not None and info is not None:
            payload = fast(gap, prev_payload, info.entry, ts.name, ts.name_raw, ts.size,
                           fmt.GO_ZERO)
        if payload < 0:  # anything but a lone plain header: the Python judges it
            payload = check_pair(gap, prev_payload, info, ts, where)
        crc = _file_crc(info, ts, where)  # (check_pair refuses a missing info)
        if crc is not None:
            crcs.append((info, crc))
        prev_payload = payload
    if next(infos, None) is not None:
        raise FormatError(f"{where}: the TOC has entries the tar does not")
    for info, crc in crcs:
        layer.set_crc(info, crc)
    layer.tar_size = tar_size
    layer.tarsplit_checked = True


def verify_layer(layer: ChunkedLayer,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Every file read through the TOC (chunk, file and CRC-64 checks), then the plain
    decompression of the layer compared with the TOC, and with the tar-split."""
    report = VerifyReport(toc_checked_against=layer.checksum or "")
    if layer.tarsplit_pos is not None and not layer.tarsplit_checked:
        check_tarsplit(layer)
    report.tarsplit_checked = layer.tarsplit_checked
    read_every_file(layer, report, progress)
    report.diff_id, report.blob_digest = _check_stream(layer)
    return report


def _check_stream(layer: ChunkedLayer) -> tuple[str, str]:
    """Decompress the data frames as any zstd reader would, read them as a tar, and hold
    every header and payload against the TOC (and the tar-split, byte for byte through the
    tar it rebuilds); the stream's sha256 (its DiffID), and the blob's, hashed on the way
    (so checking a blob against its descriptor costs no second read)."""
    where = layer.source.name
    infos = iter(layer.files.values())
    pairs = tarsplit_pairs(layer) if layer.tarsplit_pos is not None else None
    rebuilt = hashlib.sha256()
    try:
        blob_in = HashingReader(layer.data_stream())
        stream = zstandard.ZstdDecompressor().stream_reader(blob_in, read_across_frames=True)
        tar = TarReader(stream)
        while True:
            try:
                item = tar.next()
            except InputError as exc:
                raise FormatError(f"{where}: the layer's data is not a valid tar ({exc})"
                                  ) from None
            if item is None:
                break
            hdr, raw = item
            info = next(infos, None)
            if info is None:
                raise FormatError(f"{where}: the tar has {hdr.name!r}, which the TOC does "
                                  "not list")
            check_entry(info.entry, hdr, where)
            if pairs is not None:
                gap, ts = next(pairs)
                if ts is None or bytes(gap) != raw or ts.path != hdr.name:
                    raise FormatError(f"{where}: the tar-split does not rebuild the tar at "
                                      f"{hdr.name!r}")
                rebuilt.update(raw)
            _check_payload(tar, info, rebuilt, where)
        if next(infos, None) is not None:
            raise FormatError(f"{where}: the TOC has entries the tar does not")
        _check_trailer(tar, pairs, rebuilt, where)
        diff_id = tar.digest()
    except zstandard.ZstdError as exc:
        raise VerifyError(f"{where}: corrupt zstd frame in the data ({exc})") from None
    if pairs is not None and Digest.from_hash(rebuilt) != diff_id:
        raise VerifyError(f"{where}: the tar rebuilt from the tar-split differs from the "
                          "decompressed layer")
    return diff_id, _blob_digest(layer, blob_in)


def _blob_digest(layer: ChunkedLayer, data: HashingReader) -> str:
    """The blob's sha256: the data frames as hashed while read, then the TOC, tar-split
    and footer after them."""
    while data.read(1 << 20):
        pass  # frames after the tar's end, which a decoder skips (none in a well-formed blob)
    source, pos = layer.source, layer.data_end
    while pos < source.size:
        n = min(8 << 20, source.size - pos)
        (piece,) = source.read_ranges([(pos, n)])
        data.update(piece)
        pos += n
    return data.digest()


def _check_payload(tar: TarReader, info: FileInfo, rebuilt: hashlib._Hash, where: str) -> None:
    # (no CRC-64 here: read_every_file has held the bytes read through the TOC to the
    # tar-split's CRC, and these bytes have the same sha256, so they are the same bytes)
    e = info.entry
    h = hashlib.sha256()
    while piece := tar.read_payload_piece():
        h.update(piece)
        rebuilt.update(piece)
    if e.type == fmt.TYPE_REG and e.size and Digest.from_hash(h) != e.digest:
        raise VerifyError(f"{where}: {e.name!r} in the tar does not match its TOC digest")


def _check_trailer(tar: TarReader, pairs: Iterator[tuple[bytearray, fmt.TarSplitEntry | None]]
                   | None, rebuilt: hashlib._Hash, where: str) -> None:
    """What follows the last payload: padding, the end-of-archive and record padding. With a
    tar-split, the same bytes as its trailer (streamed: it may be most of a 1 GiB
    tar-split); without, at most a bounded amount (no decompression bomb)."""
    stream = itertools.chain((tar.raw_tail,), tar.rest())
    if pairs is None:
        total = 0
        for piece in stream:
            total += len(piece)
            if total > _MAX_TRAILER:
                raise FormatError(f"{where}: more than {_MAX_TRAILER} bytes follow the end "
                                  "of the tar")
        return

    def declared() -> Iterator[bytes]:
        for gap, ts in pairs:
            if ts is not None:
                raise FormatError(f"{where}: the tar-split has files the tar does not")
            rebuilt.update(gap)
            yield bytes(gap)

    if not _same_bytes(stream, declared()):
        raise VerifyError(f"{where}: the tar rebuilt from the tar-split differs from the "
                          "decompressed layer at its end")


def _same_bytes(a: Iterator[bytes], b: Iterator[bytes]) -> bool:
    """Whether two streams of pieces hold the same bytes, however they are cut."""
    a = (p for p in a if p)
    b = (p for p in b if p)
    left = right = b""
    while True:
        left = left or next(a, b"")
        right = right or next(b, b"")
        if not left or not right:
            return not left and not right  # both at their end
        n = min(len(left), len(right))
        if left[:n] != right[:n]:
            return False
        left, right = left[n:], right[n:]


def rebuilt_diff_id(layer: ChunkedLayer, read: Callable[[FileInfo], Iterator[bytes]]) -> str:
    """The sha256 of the tar rebuilt from the tar-split, each file's bytes given by
    ``read``."""
    h = hashlib.sha256()
    infos = iter(layer.files.values())
    for gap, ts in tarsplit_pairs(layer):
        h.update(gap)
        if ts is None:
            continue
        info = next(infos)
        if info.entry.type == fmt.TYPE_REG and info.entry.size:
            for piece in read(info):
                h.update(piece)
    return Digest.from_hash(h)
