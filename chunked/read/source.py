"""Sources of blob bytes behind one small range-reading interface.

A local file, a blob in an OCI layout and (later) a registry blob all answer
``read_ranges``; everything above them (the reader, the mount, the pull) sees
only this interface.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from chunked.errors import FormatError, InputError, VerifyError


class RangeSource(Protocol):
    name: str
    size: int

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Bytes at each ``(offset, length)``, in the order asked. Short data is an error."""
        ...

    def close(self) -> None: ...


T = TypeVar("T")


def failover_once(source: object, attempt: Callable[[], T]) -> T:
    """``attempt()``, reading from ``source``; while the bytes it read do not match their
    digests and the source can move on to another mirror or the registry (a source with a
    ``failover(why) -> bool``, :class:`chunked.oci.mirrors.FallbackSource`), again from there."""
    while True:
        try:
            return attempt()
        except (VerifyError, FormatError) as exc:
            failover = getattr(source, "failover", None)
            if failover is None or not failover(str(exc)):
                raise


def check_ranges(size: int, ranges: Sequence[tuple[int, int]], name: str) -> None:
    for off, length in ranges:
        if off < 0 or length < 0 or off + length > size:
            raise FormatError(f"{name}: range {off}+{length} lies outside the blob "
                              f"({size} bytes)")


class FileSource:
    """A blob in a local file, read with pread (safe to share between threads)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.name = os.fspath(path)
        try:
            self._fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputError(f"{self.name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{self.name}: cannot open: {exc.strerror}") from None
        self.size = os.fstat(self._fd).st_size

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        check_ranges(self.size, ranges, self.name)
        out = []
        for off, length in ranges:
            data = os.pread(self._fd, length, off)
            if len(data) != length:
                raise FormatError(f"{self.name}: short read at {off} (file changed?)")
            out.append(data)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
