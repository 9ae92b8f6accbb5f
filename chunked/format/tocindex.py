"""A layer's TOC entries indexed by path, every file's chunks checked to tile it.

Every command opens a TOC, and a real one holds tens of thousands of entries, so the index
is built in C (``chunked/format/_tocindex.c``) when that is compiled. The Python here is the
C's executable specification: :func:`index_entries` and :func:`strings_ok` are what the C
must agree with (``tests/test_tocindex.py`` runs both on the same inputs). The C handles
the common case and answers None on anything it does not expect; the Python then runs, and
either indexes what the C did not take or raises the one-line reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import msgspec

from chunked import _kernels
from chunked import format as fmt
from chunked.errors import FormatError
from chunked.format.tar import go_clean

# built without a compiler: the Python below does the same job
_c = _kernels.load("chunked.format._tocindex")

__all__ = ["ChunkRef", "FileInfo", "MAX_ZSTD_RATIO", "clean_name", "index", "index_entries"]

# A zstd block regenerates at most 128 KiB from at least 4 bytes (an RLE block): no chunk
# can hold more than this many bytes per compressed byte, whatever its TOC claims.
MAX_ZSTD_RATIO = 32768


# Structs, not dataclasses: a TOC makes one FileInfo per entry and one ChunkRef per chunk,
# and a Struct is made in C (a dataclass's __init__ is Python). gc=False: neither can be
# part of a reference cycle. Nothing changes a ChunkRef once made (set_crc makes a new one).
class ChunkRef(msgspec.Struct, gc=False):
    file_offset: int
    size: int
    start: int  # compressed extent in the blob
    end: int
    digest: str
    zeros: bool
    # the tar-split's CRC-64 of the chunk when the chunk is its whole file
    crc: int | None = None


class FileInfo(msgspec.Struct, gc=False):
    entry: fmt.TocEntry
    chunks: Sequence[ChunkRef] = ()
    # the tar-split's CRC-64 of the file's bytes, once the tar-split is checked
    crc: int | None = None

    @property
    def compressed_size(self) -> int:
        return sum(c.end - c.start for c in self.chunks if not c.zeros)


def clean_name(name: str) -> str:
    """The path an entry lands at, relative to the root: what users type and look up."""
    bare = name[2:] if name.startswith("./") else name  # tar -C dir . writes ./usr/...
    if "//" not in bare and "/." not in bare and not bare.startswith(".") and \
            not bare.endswith("/"):
        return bare.lstrip("/")  # already clean: the common case, spared path.Clean
    return go_clean("/" + name).lstrip("/")


def index(entries: list[fmt.TocEntry], data_end: int) -> dict[str, FileInfo]:
    """:func:`index_entries`, in C when it is compiled and the TOC holds no surprise."""
    if _c is not None:
        files = _c.index(entries, data_end, clean_name, FileInfo, ChunkRef)
        if files is not None:
            return files
    return index_entries(entries, data_end)


def index_entries(entries: list[fmt.TocEntry], data_end: int) -> dict[str, FileInfo]:
    """Every entry but chunks by its clean path. A regular file's chunks (its own entry,
    then the ``chunk`` entries after it) must tile it from offset 0 and lie in order inside
    the data frames, which end at ``data_end``; a path may appear once."""
    files: dict[str, FileInfo] = {}
    current: FileInfo | None = None
    for i, e in enumerate(entries):
        kind = e.type
        if kind == fmt.TYPE_CHUNK:
            if current is None or e.name != current.entry.name:
                raise FormatError(f"TOC: chunk entry for {e.name!r} without its file")
            continue
        key = clean_name(e.name)
        _check_path(key, e)
        if key in files:
            raise FormatError(f"TOC: the path {e.name!r} appears twice")
        info = FileInfo(e)
        files[key] = info
        if kind == fmt.TYPE_REG:
            current = info
            if e.size > 0:
                info.chunks = _chunks(entries, i, data_end)
        else:
            current = None
    return files


def _chunks(entries: list[fmt.TocEntry], i: int, data_end: int) -> list[ChunkRef]:
    head = entries[i]
    n = len(entries)
    j = i + 1
    while j < n and entries[j].type == fmt.TYPE_CHUNK:
        j += 1
    end = head.end_offset
    if not end:
        # Writers that omit endOffset: the file ends where the next payload starts.
        end = data_end
        for k in range(j, n):
            if entries[k].offset:
                end = entries[k].offset
                break
    single = j == i + 1
    if not head.digest:
        raise FormatError(f"TOC: {head.name!r} has no digest")
    out = []
    total = 0
    for k in range(i, j):
        c = entries[k]
        stop = entries[k + 1].offset if k + 1 < j else end
        size = head.size if single else c.chunk_size
        digest = head.digest if single else c.chunk_digest
        zeros = c.chunk_type == fmt.CHUNK_TYPE_ZEROS
        start = c.offset
        if c.chunk_offset != total or not digest or size <= 0 or \
                not (0 < start <= stop <= data_end) or (not zeros and start == stop) or \
                size > (stop - start) * MAX_ZSTD_RATIO:
            _bad_chunk(head, c, total, size, digest, zeros, stop, data_end)
        total += size
        if total > head.size:
            break
        out.append(ChunkRef(c.chunk_offset, size, start, stop, digest, zeros))
    if total != head.size:
        raise FormatError(f"TOC: chunks of {head.name!r} do not add up to its size "
                          f"({head.size})")
    return out


def _bad_chunk(head: fmt.TocEntry, c: fmt.TocEntry, total: int, size: int, digest: str,
               zeros: bool, stop: int, data_end: int) -> NoReturn:
    """The one-line reason a chunk :func:`_chunks` refused is wrong, in its order."""
    what = f"TOC: {head.name!r}, chunk at {total}"
    if c.chunk_offset != total:
        raise FormatError(f"{what}: chunkOffset is {c.chunk_offset}, the chunks before "
                          f"it end at {total}")
    if not digest:
        raise FormatError(f"{what}: no digest")
    if size <= 0:
        raise FormatError(f"{what}: size {size}")
    if not (0 < c.offset <= stop <= data_end) or (not zeros and c.offset == stop):
        raise FormatError(f"{what}: bad offsets {c.offset}..{stop} (data ends at "
                          f"{data_end})")
    raise FormatError(f"{what}: {size} bytes cannot come from "
                      f"{stop - c.offset} compressed bytes")


def _check_path(key: str, e: fmt.TocEntry) -> None:
    if not key:
        if e.type != fmt.TYPE_DIR:
            raise FormatError(f"TOC: {e.name!r} names the root, but is a {e.type}")
        return
    if len(key) <= 63:
        return  # no component of it can be longer than 255 bytes
    for part in key.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise FormatError(f"TOC: {e.name[:60]!r}...: a name component is longer than "
                              "255 bytes")
