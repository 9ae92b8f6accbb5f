"""Streaming gzip decompression of container layers, with python-isal (Intel ISA-L).

Why isal: benchmarks/bench_gzip.py, Python 3.11 on this project's 2-core AMD EPYC VMs,
compressed input arriving 64 KiB per read, best of 3. On gzip -6 of the 473 MiB Debian
rootfs tar the stdlib's gzip.GzipFile decompresses 304 MB/s, zlib-ng's gzip_ng 653 MB/s
(2.14x), isal's igzip 747 MB/s (2.45x; 732 MB/s through this wrapper). On 64 MiB of mostly
random bytes (stored blocks: a memcpy race) 903, 2521 and 2371 MB/s. Layers are mostly
compressible files, where isal is fastest; both bindings are pycompression's, with wheels.

Multi-member streams and the CRC32 and ISIZE (modulo 2**32) checks are igzip's own;
tests/test_gzipstream.py proves them against the stdlib.
"""

from __future__ import annotations

import gzip
import io
from typing import Any, BinaryIO, cast

from isal import igzip, isal_zlib

from chunked.errors import FormatError


class _Source(io.RawIOBase):
    """The caller's stream as igzip reads it (through readinto), counting what arrives."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            n = readinto(view)
        else:  # typing.BinaryIO promises read() only
            data = self._raw.read(len(view))
            n = len(data)
            view[:n] = data
        self.total += n
        return n


class _Decoded(io.RawIOBase):
    def __init__(self, raw: BinaryIO):
        self._src = _Source(raw)
        self._gz = igzip.IGzipFile(fileobj=self._src, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            n = self._gz.readinto(b)
        except (gzip.BadGzipFile, EOFError, isal_zlib.error, OverflowError) as exc:
            # BadGzipFile: magic, method, header CRC, CRC32, ISIZE; EOFError: truncated;
            # IsalError: bad deflate data; OverflowError: a header longer than igzip's
            # 512 KiB input buffer (FNAME/FCOMMENT have no length limit; isal < 1.9 grew
            # the buffer without bound instead). Other OSErrors are the caller's stream's.
            raise FormatError(f"gzip: {exc}") from None
        if n == 0 and self._src.total == 0:
            # The stdlib reads zero bytes as zero members; gzip(1) and Go's compress/gzip
            # (so containers/image) call them a truncated file: a layer has a header.
            raise FormatError("gzip: empty stream, no gzip header")
        return n

    def readall(self) -> bytes:
        parts = []
        while piece := self.read(1 << 20):
            parts.append(piece)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._gz.close()
        super().close()


def open_gzip(raw: BinaryIO) -> BinaryIO:
    """The decompressed bytes of the gzip stream ``raw``, read as they are asked for.

    Members are read one after another (concatenated gzip, as some layer writers make);
    zero bytes after a member are skipped as the stdlib gzip module does (tape-style
    padding), other trailing bytes are an error, as there. Corrupt, truncated, empty or
    non-gzip input raises FormatError when the read reaches it. Closing the result leaves
    ``raw`` open: the caller owns it.
    """
    return cast(BinaryIO, io.BufferedReader(_Decoded(raw), buffer_size=64 << 10))
