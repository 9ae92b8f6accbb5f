"""gzipstream.open_gzip must give the stdlib's bytes, and only FormatError on bad input.

The stdlib's ``gzip.decompress`` is the oracle. The CRC32 and ISIZE checks are the
library's (python-isal's), so they are proven here by corrupting each in turn, in the
first member of several as well as the last.
"""

from __future__ import annotations

import errno
import gzip
import io
import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import pytest

from chunked.errors import FormatError, VerifyError
from chunked.read.gzipstream import open_gzip

MiB = 1 << 20


def member(data: bytes, *, level: int = 6, fname: bytes | None = None,
           fextra: bytes | None = None, fcomment: bytes | None = None,
           fhcrc: bool = False, size: int | None = None) -> bytes:
    """One gzip member, header fields written by hand (the stdlib writes FNAME at most)."""
    flags, fields = 0, b""
    if fextra is not None:
        flags |= 4
        fields += struct.pack("<H", len(fextra)) + fextra
    if fname is not None:
        flags |= 8
        fields += fname + b"\0"
    if fcomment is not None:
        flags |= 16
        fields += fcomment + b"\0"
    if fhcrc:
        flags |= 2
    head = b"\x1f\x8b\x08" + bytes([flags]) + struct.pack("<I", 1700000000) + b"\x00\x03"
    head += fields
    if fhcrc:
        head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    co = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = co.compress(data) + co.flush()
    isize = len(data) if size is None else size
    return head + body + struct.pack("<II", zlib.crc32(data), isize & 0xFFFFFFFF)


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"usr", b"share", b"doc", b"lib", b"x86_64-linux-gnu", b"python3", b"0644",
             b"root", b"changelog", b"copyright", b"README"]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + b"\n"
    return bytes(out[:n])


def mix(n: int, seed: int) -> bytes:
    """Random and text blocks taking turns, as a layer of compressed and plain files is."""
    rng = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < n:
        block = rng.randint(1, 2 * MiB)
        out += rng.randbytes(block) if i % 2 else text(block, seed + i)
        i += 1
    return bytes(out[:n])


class Pieces(io.RawIOBase):
    """A stream handing out at most ``piece`` bytes per read, counting what it gave."""

    def __init__(self, data: bytes, piece: int):
        self._data = memoryview(data)
        self._piece = piece
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._piece, len(self._data) - self.pos)
        b[:n] = self._data[self.pos:self.pos + n]
        self.pos += n
        return n


class ReadOnly:
    """Only ``read``: all that typing.BinaryIO's users can count on."""

    def __init__(self, data: bytes, piece: int):
        self._f = io.BytesIO(data)
        self._piece = piece

    def read(self, n: int = -1) -> bytes:
        return self._f.read(min(n, self._piece) if n >= 0 else self._piece)


def decompress(data: bytes, reader: Callable[[bytes], Any] = io.BytesIO,
               step: int = -1) -> bytes:
    with open_gzip(reader(data)) as f:
        if step < 0:
            return f.read()
        parts = []
        while piece := f.read(step):
            parts.append(piece)
        return b"".join(parts)


def bad(data: bytes, reader: Callable[[bytes], Any] = io.BytesIO) -> FormatError:
    """The FormatError reading ``data`` raises; any other exception fails the test."""
    with pytest.raises(FormatError) as info:
        decompress(data, reader)
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


# ------------------------------------------------------------------------- good inputs

SMALL = text(3000, 1)
CASES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: gzip.compress(b""),
    "small": lambda: gzip.compress(b"hello, layer\n"),
    "multi-member": lambda: (gzip.compress(SMALL) + gzip.compress(b"")
                             + gzip.compress(mix(300_000, 2)) + gzip.compress(b"!")),
    "levels": lambda: b"".join(member(mix(200_000, lv), level=lv) for lv in (0, 1, 6, 9)),
    "header-fields": lambda: (
        member(SMALL, fname=b"layer.tar", fextra=b"AB\x04\x00\x01\x02\x03\x04",
               fcomment=b"written by hand", fhcrc=True)
        + member(SMALL[::-1], fextra=b"", fname=b"")
        + member(b"", fcomment=b"an empty member with a comment")),
    # the stdlib skips zero bytes after each member, at the end and between members
    "zero-padding": lambda: (gzip.compress(SMALL) + bytes(1000) + gzip.compress(b"x")
                             + bytes(4096)),
}


@pytest.fixture(scope="module")
def big_gz() -> bytes:
    return gzip.compress(mix(20_000_000, 3), compresslevel=6)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("step", [-1, 4097], ids=["read-all", "read-4097"])
def test_same_bytes_as_stdlib(name: str, step: int) -> None:
    data = CASES[name]()
    assert decompress(data, step=step) == gzip.decompress(data)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("reader", [lambda d: Pieces(d, 1), lambda d: Pieces(d, 7),
                                    lambda d: ReadOnly(d, 5)],
                         ids=["1-byte-reads", "7-byte-reads", "read-only"])
def test_input_in_small_pieces(name: str, reader: Callable[[bytes], Any]) -> None:
    # headers, trailers and padding split across reads, as a network stream splits them
    data = CASES[name]()
    assert decompress(data, reader) == gzip.decompress(data)


def test_20mb_mix(big_gz: bytes) -> None:
    expected = gzip.decompress(big_gz)
    assert len(expected) == 20_000_000
    assert decompress(big_gz) == expected
    assert decompress(big_gz, lambda d: Pieces(d, 64 << 10), step=MiB) == expected


def test_streams_with_bounded_input(big_gz: bytes) -> None:
    raw = Pieces(big_gz, 64 << 10)
    with open_gzip(raw) as f:
        assert len(f.read(MiB)) == MiB
        # igzip reads ahead 512 KiB at most; the rest of the ~15 MB is still unread
        assert raw.pos <= 2 * MiB < len(big_gz)


def test_close_leaves_the_raw_stream_open() -> None:
    raw = io.BytesIO(gzip.compress(SMALL))
    f = open_gzip(raw)
    assert f.read(10) == SMALL[:10]
    f.close()
    assert not raw.closed


def test_isize_is_modulo_2_32() -> None:
    # A member of 4 GiB + 12345 zero bytes: ISIZE holds 12345. The body repeats one
    # full-flushed deflate segment (no reference before its own start), so it is made in
    # a moment; the read takes ~1.5 s.
    zeros = bytes(MiB)
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = co.compress(zeros[:12345]) + co.flush()
    crc = 0
    for _ in range(4096):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(zeros[:12345], crc)
    data = (b"\x1f\x8b\x08\x00\0\0\0\0\x00\x03" + segment * 4096 + tail
            + struct.pack("<II", crc, 12345))
    total = 0
    buf = bytearray(4 * MiB)
    with open_gzip(io.BytesIO(data)) as f:
        while n := f.readinto(buf):
            total += n
    assert total == (4 << 30) + 12345


# -------------------------------------------------------------------------- bad inputs

THREE = [member(SMALL, fname=b"a"), member(mix(100_000, 4)), member(b"last\n")]


def joined(members: list[bytes]) -> bytes:
    return b"".join(members)


def patched(m: bytes, offset_from_end: int, value: int) -> bytes:
    """``m`` with the 32-bit little-endian field ``offset_from_end`` bytes from its end set."""
    at = len(m) - offset_from_end
    return m[:at] + struct.pack("<I", value & 0xFFFFFFFF) + m[at + 4:]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["first", "middle", "last"])
def test_crc32_is_checked(index: int) -> None:
    members = list(THREE)
    crc = struct.unpack("<I", members[index][-8:-4])[0]
    members[index] = patched(members[index], 8, crc ^ 1)
    data = joined(members)
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(data)
    assert "CRC" in str(bad(data))


@pytest.mark.parametrize("index", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("delta", [1, -1, 1 << 31])
def test_isize_is_checked(index: int, delta: int) -> None:
    members = list(THREE)
    isize = struct.unpack("<I", members[index][-4:])[0]
    members[index] = patched(members[index], 4, isize + delta)
    data = joined(members)
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(data)
    bad(data)


def test_every_truncation_is_an_error() -> None:
    members = [member(b"abc" * 50, fname=b"n", fcomment=b"c"), member(b""), member(SMALL)]
    data = joined(members)
    ends = {sum(len(m) for m in members[:i]) for i in range(1, len(members) + 1)}
    for cut in range(1, len(data)):
        if cut in ends:
            assert decompress(data[:cut]) == gzip.decompress(data[:cut])
            continue
        with pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
            gzip.decompress(data[:cut])
        bad(data[:cut])


def test_truncated_large_member(big_gz: bytes) -> None:
    for cut in (len(big_gz) // 2, len(big_gz) - 9, len(big_gz) - 1):
        bad(big_gz[:cut], lambda d: Pieces(d, 64 << 10))


def test_every_flipped_byte_is_an_error_or_harmless() -> None:
    data = joined([member(b"abc" * 50, fname=b"n", fextra=b"xy"), member(SMALL[:500])])
    for at in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]
            try:
                got = decompress(flipped)
            except FormatError as exc:
                assert "\n" not in str(exc)
                continue
            # what still reads is what the stdlib reads (MTIME, XFL, OS are free fields)
            assert got == gzip.decompress(flipped), (at, mask)


@pytest.mark.parametrize("data", [
    b"hello, this is not gzip at all",
    b"\x28\xb5\x2f\xfd" + bytes(40),                  # a zstd frame
    b"BZh91AY&SY" + bytes(40),                        # bzip2
    b"etc/\0" + bytes(507) + bytes(1024),             # a plain tar
    bytes(512),                                       # zeros are padding only after a member
    b"\x1f\x8b\x07\x00" + bytes(40),                  # gzip magic, unknown method
    b"\x1f\x8b\x08\x00\0\0\0\0\x00\x03\x07" + bytes(20),  # a deflate block of reserved type 3
    member(b"x" * 100, level=0)[:13] + b"\x00\x00" + member(b"x" * 100, level=0)[15:],
    gzip.compress(SMALL) + b"trailing garbage",
    gzip.compress(SMALL) + bytes(100) + b"\x1f",
], ids=["text", "zstd", "bzip2", "tar", "zeros", "method", "block-type", "stored-nlen",
        "garbage-after", "garbage-after-padding"])
def test_not_gzip(data: bytes) -> None:
    with pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
        gzip.decompress(data)
    bad(data)


def test_empty_stream_is_an_error() -> None:
    # Deliberately stricter than the stdlib (which reads zero members): no layer is empty.
    assert gzip.decompress(b"") == b""
    assert "empty" in str(bad(b""))


def test_endless_header_name_is_refused_in_bounded_memory() -> None:
    class Endless(io.RawIOBase):
        def __init__(self) -> None:
            self.given = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            if self.given == 0:
                head = b"\x1f\x8b\x08\x08\0\0\0\0\x00\x03"  # FNAME, never NUL-terminated
                b[:len(head)] = head
                self.given = len(head)
                return len(head)
            if self.given > 256 * MiB:
                return 0
            b[:] = b"a" * len(b)
            self.given += len(b)
            return len(b)

    raw = Endless()
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="header"):
            open_gzip(raw).read()  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # isal >= 1.9 keeps a header within its 512 KiB input buffer
    assert raw.given <= MiB
    assert peak < 4 * MiB


@pytest.mark.parametrize("error", [OSError(errno.EIO, "connection reset"),
                                   VerifyError("blob does not match its digest")],
                         ids=["oserror", "verifyerror"])
def test_errors_of_the_raw_stream_pass_through(error: Exception) -> None:
    class Failing(io.RawIOBase):
        def __init__(self, data: bytes):
            self._data = data

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            if self._data:  # a first piece, then the failure
                n = min(len(b), len(self._data))
                b[:n], self._data = self._data[:n], self._data[n:]
                return n
            raise error

    data = gzip.compress(mix(2 * MiB, 5))
    with pytest.raises(type(error)) as info:
        decompress(data[:len(data) // 2], Failing)
    assert info.value is error


def test_result_is_binary_io() -> None:
    f: BinaryIO = open_gzip(io.BytesIO(gzip.compress(b"line 1\nline 2\n")))
    assert f.readable()
    assert f.readline() == b"line 1\n"
    assert f.read() == b"line 2\n"
