"""The values the public API hands out: plain, frozen, typed, and free of internals."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from chunked import format as fmt

EntryType = Literal["reg", "dir", "symlink", "hardlink", "char", "block", "fifo"]


@dataclass(frozen=True)
class Descriptor:
    """A layer as an OCI manifest lists it, and the DiffID of the tar it decompresses to."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]
    diff_id: str

    def to_dict(self) -> dict[str, Any]:
        """The OCI descriptor JSON, with ``diffID`` (as ``chunked build`` prints it)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "annotations": dict(sorted(self.annotations.items())),
                "diffID": self.diff_id}


@dataclass(frozen=True)
class Entry:
    """One path of an image's tree (or of one layer), as its TOC describes it.

    ``path`` is relative, without a leading ``/`` or ``./``; ``mtime`` is in UTC (``None``
    where the tar gives none), ``mtime_ns`` the same in nanoseconds since the epoch;
    ``digest`` is the sha256 of a regular file's content (``None`` for an empty file or
    another type); ``layer`` is the index of the layer the entry comes from (0 = bottom).
    """

    path: str
    type: EntryType
    size: int
    mode: int
    uid: int
    gid: int
    mtime: _dt.datetime | None
    linkname: str
    digest: str | None
    mtime_ns: int | None = None
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    layer: int = 0
    chunks: int = 0  # how many chunks a regular file's content is cut into
    _toc: fmt.TocEntry | None = field(default=None, repr=False, compare=False)

    def mtime_text(self) -> str:
        """``mtime`` in RFC 3339 as Go writes it (nanoseconds, trailing zeros trimmed), or
        ``-`` where there is none."""
        return fmt.format_time(self.mtime_ns) if self.mtime_ns is not None else "-"

    def toc_json(self) -> str:
        """The entry as a JSON object, as the current-format TOC writes it (upstream's
        field names and encoding)."""
        if self._toc is None:
            raise ValueError("this entry was not made from a TOC")
        return self._toc.encode(fmt.CURRENT)


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def entry_of(path: str, e: fmt.TocEntry, layer: int = 0, chunks: int = 0) -> Entry:
    ns = e.mtime
    when = None
    if ns is not None:
        when = _EPOCH + _dt.timedelta(microseconds=ns // 1000)
    # (a TOC's "chunk" entries continue a file: they never reach an Entry)
    return Entry(path=path, type=cast(EntryType, e.type), size=e.size, mode=e.mode,
                 uid=e.uid, gid=e.gid,
                 mtime=when, linkname=e.link_name, digest=e.digest or None, mtime_ns=ns,
                 dev_major=e.dev_major, dev_minor=e.dev_minor, xattrs=dict(e.xattrs or {}),
                 layer=layer, chunks=chunks, _toc=e)
