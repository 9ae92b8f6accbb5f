"""One SHA-256 over a stream of bytes and files read back from a tree, in order.

A pull's DiffID check hashes the layer's tar as rebuilt from its tar-split and the files
as written: header bytes, then a file read from the destination, and so on for every
entry. :class:`TreeHash` takes them a batch at a time; the C version
(``chunked.puller._pullio.TreeHash``) reads and hashes the batch without the GIL, which the
copiers and writers beside it then keep. :class:`PyTreeHash` is its executable spec.
"""

from __future__ import annotations

import hashlib
import os
import stat

from chunked import _kernels

# not built: the same work in Python
_NativeTreeHash = getattr(_kernels.load("chunked.puller._pullio"), "TreeHash", None)

# an item: bytes to hash as they are, or a file (directory fd, name, size)
Item = bytes | tuple[int, bytes, int]
# the first file that is not a regular file of its size: (index, errno or 0, stage)
Failure = tuple[int, int, str]

_PIECE = 1 << 20


class PyTreeHash:
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, items: list[Item]) -> Failure | None:
        """Hash each item in order; a file is opened in its directory without following a
        symlink and must be a regular file of exactly its size. The first that is not
        stops the hash: its index, errno (0: not a regular file of that size) and stage."""
        for i, item in enumerate(items):
            if isinstance(item, bytes):
                self._h.update(item)
                continue
            if not isinstance(item, tuple):
                raise TypeError("an item is bytes or (dirfd, name, size)")
            dirfd, name, size = item
            if size < 0:
                raise ValueError("a file size must not be negative")
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dirfd)
            except OSError as exc:
                return i, exc.errno or 0, "open"
            try:
                failure = self._file(fd, size)
            finally:
                os.close(fd)
            if failure is not None:
                return i, *failure
        return None

    def _file(self, fd: int, size: int) -> tuple[int, str] | None:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            return exc.errno or 0, "stat"
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return 0, "size"
        off = 0
        while off < size:
            try:
                piece = os.pread(fd, min(_PIECE, size - off), off)
            except OSError as exc:
                return exc.errno or 0, "read"
            if not piece:
                return 0, "size"
            self._h.update(piece)
            off += len(piece)
        return None

    def hexdigest(self) -> str:
        return self._h.hexdigest()


TreeHash = _NativeTreeHash if _NativeTreeHash is not None else PyTreeHash
