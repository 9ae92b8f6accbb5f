"""Cut a file's payload into chunks exactly where containers/storage does.

Data is cut by the rolling checksum (split after a byte whose checksum has its
low 16 bits set), with a fresh checksum state per file. A run of at least 1024
zero bytes is a "hole": it ends the pending data chunk, is rolled into the
checksum without split tests, and becomes one chunk of type ``zeros``. Shorter
zero runs are ordinary data. Matching these boundaries byte for byte lets
chunks dedup across tools.

The per-byte work runs in the compiled kernel (``chunked._native``); zero runs
are found with ``bytes.find``, which is memchr-fast.
"""

from __future__ import annotations

import re
import warnings
from typing import Protocol

from chunked import _kernels
from chunked.format import HOLE_THRESHOLD

_native = _kernels.load("chunked._native")
if _native is not None:
    from chunked._native import RollSum, crc64, sha256_many
else:
    from chunked._native_spec import RollSum, crc64, sha256_many

    if not _kernels.PURE_PYTHON:  # (asked for, it needs no warning)
        warnings.warn("chunked._native is not built: using the pure-Python reference, "
                      "which is about 1000x slower", RuntimeWarning, stacklevel=2)

__all__ = ["ChunkSink", "Chunker", "RollSum", "crc64", "sha256_many"]

_HOLE = bytes(HOLE_THRESHOLD)
_NONZERO = re.compile(rb"[^\x00]")


class ChunkSink(Protocol):
    def data(self, piece: memoryview) -> None:
        """Bytes of the current data chunk."""

    def split(self) -> None:
        """The current data chunk ends here (may be called with nothing pending)."""

    def hole(self, n: int) -> None:
        """A chunk of n zero bytes of its own, after ending any pending data chunk."""


class Chunker:
    """Feed a file's payload in pieces of any size; the sink sees the chunk stream."""

    def __init__(self, sink: ChunkSink):
        self._sink = sink
        self._rs = RollSum()
        # Zeros at the end of what was fed, held back until we know whether they are a hole.
        self._zeros = 0

    def feed(self, piece: bytes) -> None:
        n = len(piece)
        if not n:
            return
        i = 0
        if self._zeros:
            m = _NONZERO.search(piece)
            if m is None:
                self._zeros += n
                return
            i = m.start()
            self._flush_zeros(i)
        while i < n:
            j = piece.find(_HOLE, i)
            if j < 0:
                tail = n - len(piece.rstrip(b"\0")) if piece[-1] == 0 else 0
                self._data(piece, i, max(i, n - tail))
                self._zeros = min(tail, n - i)
                return
            self._data(piece, i, j)
            m = _NONZERO.search(piece, j)
            if m is None:
                self._zeros = n - j
                return
            self._hole(m.start() - j)
            i = m.start()

    def finish(self) -> None:
        if self._zeros:
            self._flush_zeros(0)
        self._sink.split()

    def _flush_zeros(self, extra: int) -> None:
        run = self._zeros + extra
        self._zeros = 0
        if run >= HOLE_THRESHOLD:
            self._hole(run)
        else:
            zeros = bytes(run)
            self._data(zeros, 0, run)

    def _hole(self, n: int) -> None:
        self._rs.roll_zeros(n)
        self._sink.split()
        self._sink.hole(n)

    def _data(self, buf: bytes, start: int, end: int) -> None:
        view = memoryview(buf)
        while start < end:
            j = self._rs.feed(buf, start, end)
            if j < 0:
                self._sink.data(view[start:end])
                return
            self._sink.data(view[start:j])
            self._sink.split()
            start = j
