"""What every kind of layer answers, however it is read.

A layer is read lazily through its TOC (:class:`chunked.read.layer.ChunkedLayer`, the
zstd:chunked kind) or fetched whole and indexed locally
(:class:`chunked.read.tarlayer.TarLayer`: gzip, plain zstd, plain tar, and a zstd:chunked
layer read as the plain zstd it also is). The merged view, the mount, the store and the
puller see only :class:`LayerReader`. What belongs to one format (the TOC, its checksum,
the tar-split, the zstd:chunked variant) is that class's own: a caller that needs it
asks ``isinstance(layer, ChunkedLayer)``, and no other kind pretends to have it.

Hard links resolve here, once for every kind, with one bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from chunked import format as fmt
from chunked.errors import FormatError, NotFoundError
from chunked.format.tocindex import ChunkRef, FileInfo, clean_name

if TYPE_CHECKING:
    from chunked.read.layer import VerifyReport
    from chunked.read.source import RangeSource

__all__ = ["KIND_CHUNKED", "KIND_GZIP", "KIND_TAR", "KIND_ZSTD", "MAX_LINK_HOPS",
           "LayerReader", "find", "resolve_link"]

# What ``LayerReader.kind`` says: how the layer's bytes are read.
KIND_CHUNKED = "zstd:chunked"  # lazily, through the TOC
KIND_GZIP = "gzip"
KIND_ZSTD = "zstd"
KIND_TAR = "tar"

# The most hard links followed from one name. A tar's hard link names an earlier member,
# so a chain longer than one is already odd; this bounds what a hostile layer can make
# a lookup walk, for every kind alike.
MAX_LINK_HOPS = 64


@runtime_checkable
class LayerReader(Protocol):
    """One layer, opened and indexed: its entries, and each regular file's bytes, checked
    before they are handed out.

    ``kind``: one of the ``KIND_*`` names.
    ``tarsplit_checked``: whether the entries are known to be what the layer's tar holds
    (a zstd:chunked TOC checked against its tar-split; always true for a layer read whole,
    whose entries come from the tar itself). A layer that answers false is served on its
    TOC's word; lazy readers say so.
    ``source``: where the bytes come from (a layer read whole: its local copy); the layer's
    owner closes it.
    ``files``: every path the layer gives (keyed by :func:`clean_name`, the last entry of a
    path winning), each with the chunks its bytes are read from.
    ``entries``: the layer's entries in tar order, whiteouts included.
    """

    # (read-only properties: each kind holds them as plain attributes of its own types)
    @property
    def kind(self) -> str: ...

    @property
    def tarsplit_checked(self) -> bool: ...

    @property
    def source(self) -> RangeSource: ...

    @property
    def files(self) -> Mapping[str, FileInfo]: ...

    @property
    def entries(self) -> Sequence[fmt.TocEntry]: ...

    def lookup(self, name: str) -> FileInfo:
        """The entry at ``name``, hard links resolved (:meth:`resolve`); NotFoundError if
        the layer has none."""
        ...

    def resolve(self, info: FileInfo) -> FileInfo:
        """The entry a hard link shares its inode with (``info`` itself if not a link):
        :func:`resolve_link` over :attr:`files`."""
        ...

    def iter_file(self, info: FileInfo) -> Iterator[bytes]:
        """A regular file's bytes in pieces, checked (InputError for any other type)."""
        ...

    def read_file(self, name: str) -> bytes:
        """The whole of the regular file at ``name`` (hard links resolved)."""
        ...

    def read_chunks(self, chunks: Sequence[ChunkRef], name: str | Mapping[int, str],
                    batch: int = ...) -> Iterator[tuple[ChunkRef, bytes | None]]:
        """Each chunk with its bytes, checked against its digest; None for a zeros chunk
        (whose bytes the caller makes). ``name`` names the file in errors, or maps a
        chunk's ``start`` to its file's name; ``batch`` is how much one request may fetch
        (a hint: a local copy ignores it)."""
        ...

    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Read and check everything the layer's digests cover; raise naming the first
        bad file. The report's ``diff_id`` is the layer's tar's digest."""
        ...


def find(files: Mapping[str, FileInfo], name: str) -> FileInfo:
    """The entry at ``name`` (any spelling :func:`clean_name` accepts), not resolved."""
    info = files.get(clean_name(name))
    if info is None:
        raise NotFoundError(f"{name}: no such file in the layer")
    return info


def resolve_link(files: Mapping[str, FileInfo], info: FileInfo) -> FileInfo:
    """The entry a hard link shares its inode with, in a layer's ``files``, following links
    to links: at most :data:`MAX_LINK_HOPS` of them. A link to nothing, to a directory
    (no tar can make one, and a tree would loop through it), round in a cycle, or down a
    longer chain is a FormatError naming the link."""
    first = info
    seen: set[int] = set()
    while info.entry.type == fmt.TYPE_HARDLINK:
        seen.add(id(info))
        link = info.entry.link_name
        target = files.get(clean_name(link))
        where = f"{first.entry.name}: hard link" + (
            f" (by way of {info.entry.name!r})" if info is not first else "")
        if target is None:
            raise FormatError(f"{where} to {link!r}, which is not in the layer")
        if id(target) in seen:
            raise FormatError(f"{where} to {link!r} leads round in a cycle")
        if target.entry.type == fmt.TYPE_DIR:
            raise FormatError(f"{where} to {link!r}, which is a directory")
        if len(seen) > MAX_LINK_HOPS:
            raise FormatError(f"{first.entry.name}: hard link chain longer than "
                              f"{MAX_LINK_HOPS} links")
        info = target
    return info
