"""What earlier pulls wrote where: the files on this host a pull can take content from.

containers/storage finds reusable content in the layers it already has; a pulled tree is
ours. After each pull a record lists, for its destination, every regular file's content
digest (and, for files of several chunks, each chunk's digest and offset), so a later pull
of another image or version copies, clones or links those files instead of fetching them.

A record is only a hint: the file may have been changed or removed since, so whoever uses
a location reads it and checks the digest before a byte of it is written anywhere.

Records live in ``<store>/pulls/<xxh64 of the destination>.json`` and are replaced whole
by an atomic rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from chunked.read.layer import FileInfo

VERSION = 1


@dataclass(frozen=True)
class Location:
    path: str  # absolute
    offset: int
    size: int


class PullIndex:
    def __init__(self, store_root: str):
        self.dir = os.path.join(store_root, "pulls")
        self._files: dict[str, list[str]] = {}
        self._chunks: dict[str, list[Location]] = {}

    def _record_path(self, dest: str) -> str:
        return os.path.join(self.dir, xxhash.xxh64_hexdigest(dest.encode()) + ".json")

    def _records(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Each record's path, with its contents if it is readable, current and its
        destination still exists (else None)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.dir, name)
            try:
                with open(path, "rb") as f:
                    rec = json.load(f)
                live = rec.get("version") == VERSION and isinstance(rec["dest"], str) \
                    and os.path.isdir(rec["dest"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                live = False
            yield path, rec if live else None

    def load(self) -> None:
        """Read every live record; the others are skipped."""
        for _path, rec in self._records():
            if rec is None:
                continue
            try:
                for rel, digest, _size, *chunks in rec["files"]:
                    path = os.path.join(rec["dest"], rel)
                    self._files.setdefault(digest, []).append(path)
                    for cdigest, offset, size in chunks[0] if chunks else ():
                        self._chunks.setdefault(cdigest, []).append(
                            Location(path, offset, size))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged record costs reuse, never correctness

    def prune(self) -> int:
        """Remove the records that are not live (destination gone, unreadable, another
        version); how many."""
        removed = 0
        for path, rec in self._records():
            if rec is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed

    def files(self, digest: str) -> list[str]:
        return self._files.get(digest, [])

    def chunks(self, digest: str) -> list[Location]:
        return self._chunks.get(digest, [])

    def record(self, dest: str, files: Iterable[tuple[str, FileInfo]]) -> None:
        """Remember what a completed pull wrote into ``dest`` (an absolute path)."""
        rows: list[list[object]] = []
        for rel, info in files:
            e = info.entry
            if not e.size or not e.digest:
                continue
            row: list[object] = [rel, e.digest, e.size]
            if len(info.chunks) > 1:
                row.append([[c.digest, c.file_offset, c.size] for c in info.chunks
                            if not c.zeros])
            rows.append(row)
        os.makedirs(self.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        try:
            with os.fdopen(fd, "w") as f:
                # dumps then one write: json.dump's many small writes cost several times more
                f.write(json.dumps({"version": VERSION, "dest": dest, "files": rows},
                                   separators=(",", ":")))
            os.replace(tmp, self._record_path(dest))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
