"""Pure-Python reference for the kernels in ``chunked/_native.c``.

This module is the specification the C code is tested against, so it favours being obviously
equivalent to the Go originals over speed:

* ``RollSum`` follows containers/storage ``pkg/chunked/compressor/rollsum.go`` (from Perkeep).
  Split points decide chunk boundaries, and the digests of those chunks end up in the TOC, so a
  single off-by-one would make our layers deduplicate against nothing that Podman produced.
* ``crc64`` follows Go's ``hash/crc64`` with the ISO table, which tar-split records for every
  file; a different value makes ``podman`` reject the layer at reassembly time.
* ``sha256_many`` is hashlib's SHA-256 over a list of buffers (or of lists of buffers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeAlias

__all__ = ["RollSum", "crc64", "sha256_many", "tar_numbers"]

# collections.abc.Buffer only exists from Python 3.12; this covers what callers pass us.
Buffer: TypeAlias = bytes | bytearray | memoryview

WINDOW_SIZE = 64
_WINDOW_MASK = WINDOW_SIZE - 1
CHAR_OFFSET = 31
_M32 = 0xFFFFFFFF
# Split when the low 16 bits of s2 are all ones: about one split per 53 KiB of random data.
_SPLIT_MASK = 0xFFFF
# Rolling a zero byte over a zero window subtracts this from (s2 - s1) each time.
_ZERO_ROLL_DECAY = WINDOW_SIZE * CHAR_OFFSET


def _byte_view(buf: Buffer) -> memoryview:
    # Mirror the C side's "y*" converter: any contiguous buffer, seen as flat bytes.
    view = memoryview(buf)
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _resolve_range(length: int, start: int, end: int) -> tuple[int, int]:
    if end == -1:
        end = length
    if not 0 <= start <= end <= length:
        raise ValueError(f"invalid range [{start}:{end}] for a buffer of {length} bytes")
    return start, end


class RollSum:
    """Rolling checksum over the last 64 bytes, deciding where content-defined chunks end."""

    __slots__ = ("_s1", "_s2", "_window", "_wofs")

    def __init__(self) -> None:
        # The window starts as zeros, but the sums are seeded as if it held bytes of value
        # CHAR_OFFSET, exactly like Perkeep does; changing either would move every split.
        self._s1 = WINDOW_SIZE * CHAR_OFFSET
        self._s2 = WINDOW_SIZE * (WINDOW_SIZE - 1) * CHAR_OFFSET
        self._window = bytearray(WINDOW_SIZE)
        self._wofs = 0

    @property
    def s1(self) -> int:
        return self._s1

    @property
    def s2(self) -> int:
        return self._s2

    def copy(self) -> RollSum:
        other = RollSum.__new__(RollSum)
        other._s1 = self._s1
        other._s2 = self._s2
        other._window = bytearray(self._window)
        other._wofs = self._wofs
        return other

    __copy__ = copy

    def _roll(self, b: int) -> None:
        d = self._window[self._wofs]
        self._s1 = (self._s1 + b - d) & _M32
        self._s2 = (self._s2 + self._s1 - WINDOW_SIZE * (d + CHAR_OFFSET)) & _M32
        self._window[self._wofs] = b
        self._wofs = (self._wofs + 1) & _WINDOW_MASK

    def feed(self, buf: Buffer, start: int = 0, end: int = -1) -> int:
        """Roll ``buf[start:end]`` (``end=-1``: to the end) until the split test fires.

        Returns the index just past the byte that triggered the split (the state includes that
        byte), or -1 when the whole range was rolled without a split.
        """
        view = _byte_view(buf)
        start, end = _resolve_range(len(view), start, end)
        for i in range(start, end):
            self._roll(view[i])
            if self._s2 & _SPLIT_MASK == _SPLIT_MASK:
                return i + 1
        return -1

    def roll_zeros(self, n: int) -> None:
        """Roll ``n`` zero bytes without testing for splits (holes in sparse files)."""
        if n < 0:
            raise ValueError(f"cannot roll a negative number of bytes: {n}")
        head = min(n, WINDOW_SIZE)
        for _ in range(head):
            self._roll(0)
        rest = n - head
        if rest:
            # The window is all zeros now, so each further zero roll leaves s1 alone and adds
            # the same constant to s2; the window position wraps, its contents cannot change.
            self._s2 = (self._s2 + rest * (self._s1 - _ZERO_ROLL_DECAY)) & _M32
            self._wofs = (self._wofs + rest) & _WINDOW_MASK


def _make_crc64_table(poly: int) -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


# Go's crc64.ISO in reflected (LSB-first) form, which is how hash/crc64 uses it.
CRC64_ISO = 0xD800000000000000
_M64 = (1 << 64) - 1
_CRC64_TABLE = _make_crc64_table(CRC64_ISO)


def crc64(data: Buffer, crc: int = 0) -> int:
    """Go's ``crc64.Update(crc, crc64.MakeTable(crc64.ISO), data)``.

    The complement on entry and exit is what lets ``crc64(b, crc64(a)) == crc64(a + b)``.
    """
    if not 0 <= crc <= _M64:
        raise ValueError(f"crc must fit in 64 unsigned bits: {crc}")
    table = _CRC64_TABLE
    crc ^= _M64
    for b in _byte_view(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _M64


_TAR_FIELDS = ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (329, 8), (337, 8))


def _tar_octal(field: bytes) -> int:
    """A plain octal field (spaces and NULs trimmed from both ends), else -1."""
    s = field.strip(b" \0")
    if len(s) > 21 or any(c not in b"01234567" for c in s):
        return -1
    return int(s or b"0", 8)


def tar_numbers(block: Buffer) -> tuple[int, int, int, int, int, int, int] | None:
    """The numeric fields of a tar header in the common case, as ``_native.tar_numbers``:
    (mode, uid, gid, size, mtime, dev_major, dev_minor), the last two -1 when not plain
    octal; None unless the checksum matches (unsigned or signed sum, as Go accepts) and the
    first five are plain octal."""
    b = bytes(_byte_view(block))
    if len(b) != 512:
        return None
    stored = _tar_octal(b[148:156])
    rest = b[:148] + b[156:]
    unsigned = sum(rest) + 8 * 32
    signed = unsigned - 256 * sum(1 for c in rest if c > 127)
    if stored < 0 or stored not in (unsigned, signed):
        return None
    f = [_tar_octal(b[at:at + n]) for at, n in _TAR_FIELDS]
    if any(x < 0 for x in f[:5]):
        return None
    return f[0], f[1], f[2], f[3], f[4], f[5], f[6]


def sha256_many(items: Sequence[Buffer | list[Buffer] | tuple[Buffer, ...]]) -> list[str]:
    """``"sha256:<hex>"`` of each item: a buffer, or a list or tuple of buffers hashed one
    after the other (as ``_native.sha256_many``, which hashes them all without the GIL)."""
    out = []
    for item in items:
        h = hashlib.sha256()
        for part in item if isinstance(item, list | tuple) else (item,):
            h.update(_byte_view(part))
        out.append("sha256:" + h.hexdigest())
    return out
