"""A streaming tar reader that sees headers exactly as Go's archive/tar does.

containers/storage derives the TOC from Go's view of each header, and checks
the TOC against the tar-split field by field before a partial pull. Python's
tarfile differs in small ways (it strips the ``/`` of directory names, for
one), so this reader parses the raw blocks itself. It also hands back the raw
bytes between payloads, which is what the zstd frames and the tar-split hold.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import BinaryIO

from chunked import _kernels
from chunked.digest import Digest
from chunked.errors import InputError, UnsupportedError
from chunked.format import TAR_TYPES

# (chunking.py warns once when the C kernels are missing)
_tar_numbers = getattr(_kernels.load("chunked._native"), "tar_numbers", None)

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
# Go refuses PAX and GNU long-name records above this size.
_MAX_SPECIAL = 1 << 20
_READ_SIZE = 1 << 20
_SPECIAL = (b"x", b"g", b"L", b"K")


class _TarError(InputError):
    pass


def _bad(what: str) -> InputError:
    return _TarError(f"not a valid tar: {what}")


@dataclass
class TarHeader:
    typeflag: bytes
    name: str
    link_name: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int  # ns since epoch
    atime: int | None
    ctime: int | None
    dev_major: int
    dev_minor: int
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def toc_type(self) -> str:
        return TAR_TYPES[self.typeflag]

    @property
    def payload_size(self) -> int:
        """Bytes of payload that follow the header (0 for header-only types, as Go)."""
        return self.size if self.typeflag in (b"0",) else 0


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(b: bytes) -> bytes:
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def _octal(b: bytes) -> int:
    try:
        return int(b.strip(b" \0") or b"0", 8)  # the common case: digits, then padding
    except ValueError:
        pass
    s = _cstring(b.strip(b" \0"))
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise _bad(f"bad numeric field {bytes(b)!r}") from None


def _numeric(b: bytes) -> int:
    if b and b[0] & 0x80:
        # base-256 (GNU): two's complement big-endian with the top bit as marker
        neg = bool(b[0] & 0x40)
        inv = 0xFF if neg else 0
        x = 0
        for i, c in enumerate(b):
            c ^= inv
            if i == 0:
                c &= 0x7F
            if x >> 56:
                raise _bad("numeric field overflows")
            x = (x << 8) | c
        if x >> 63:
            raise _bad("numeric field overflows")
        return ~x if neg else x
    return _octal(b)


def _pax_time(v: str) -> int:
    secs_s, _, frac = v.partition(".")
    try:
        secs = int(secs_s, 10)
    except ValueError:
        raise _bad(f"bad PAX time {v!r}") from None
    if frac and not frac.isdigit():
        raise _bad(f"bad PAX time {v!r}")
    nsec = int(frac[:9].ljust(9, "0")) if frac else 0
    if secs_s.startswith("-"):
        nsec = -nsec
    return secs * 1_000_000_000 + nsec


def _parse_pax(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    while data:
        sp = data.find(b" ")
        try:
            n = int(data[:sp]) if sp > 0 else -1
        except ValueError:
            n = -1
        if n < sp + 2 or n > len(data) or data[n - 1:n] != b"\n":
            raise _bad("malformed PAX record")
        key, eq, value = data[sp + 1:n - 1].partition(b"=")
        if not eq or not key or b"\0" in key:
            raise _bad("malformed PAX record")
        k = key.decode("utf-8", "surrogateescape")
        if k in ("path", "linkpath", "uname", "gname") and b"\0" in value:
            raise _bad("NUL in PAX record")
        records[k] = value
        data = data[n:]
    return records


class TarReader:
    """Reads entries from a tar stream, accounting for every raw byte.

    Usage: ``next()`` returns ``(header, raw)`` where raw is every byte since the
    end of the previous payload (its padding plus all header blocks), or None at
    the end; then ``read_payload()`` until it returns b"". After None, ``raw_tail``
    holds the end-of-archive bytes read and ``rest()`` yields what follows.
    """

    def __init__(self, f: BinaryIO, *, digest: bool = True):
        self._f = f
        self._buf = b""
        self._pos = 0
        self._remaining = 0  # payload bytes not yet read
        self._pad = 0
        self.raw_tail = b""
        self.total = 0
        self._hash = hashlib.sha256()
        # The DiffID hash runs beside the parsing (hashlib releases the GIL), in order.
        # A reader of a few header blocks needs none: a thread each would cost more.
        self._hasher = cf.ThreadPoolExecutor(1) if digest else None
        self._hashed: cf.Future[None] | None = None
        self._done = False

    # -- low-level input ----------------------------------------------------------------
    def _fill(self) -> bool:
        chunk = self._f.read(_READ_SIZE)
        if not chunk:
            return False
        if self._hasher is not None:
            self._hashed = self._hasher.submit(self._hash.update, chunk)
        self.total += len(chunk)
        self._buf = self._buf[self._pos:] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0
        return True

    def _read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at end of input."""
        while len(self._buf) - self._pos < n:
            if not self._fill():
                break
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _read_exact(self, n: int, what: str) -> bytes:
        out = self._read(n)
        if len(out) != n:
            raise InputError(f"tar is truncated: input ends inside {what}")
        return out

    # -- entries -----------------------------------------------------------------------
    def next(self) -> tuple[TarHeader, bytes] | None:
        if self._done:
            return None
        while self._remaining:  # payload the caller did not read
            self.read_payload(self._remaining)
        raw = [self._read_exact(self._pad, "the padding of the previous entry")]
        self._pad = 0
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._read(BLOCK)
            raw.append(block)
            if len(block) == 0:
                return self._end(raw)
            if len(block) < BLOCK:
                raise InputError("tar is truncated: input ends inside a header block")
            if block == _ZERO_BLOCK:
                second = self._read(BLOCK)
                raw.append(second)
                if len(second) == 0 or second == _ZERO_BLOCK:
                    return self._end(raw)
                if len(second) < BLOCK:
                    raise InputError("tar is truncated: input ends inside the end-of-archive")
                raise _bad("a zero block followed by a non-zero block")
            hdr, prefix_name = parse_header(block)
            flag = hdr.typeflag
            if flag in _SPECIAL:
                if hdr.size > _MAX_SPECIAL:
                    raise _bad(f"{flag.decode()} record of {hdr.size} bytes is too large")
                data = self._read_exact(hdr.size, "an extended header")
                pad = -hdr.size % BLOCK
                raw.append(data)
                raw.append(self._read_exact(pad, "an extended header"))
                if flag == b"x":
                    pax = _parse_pax(data)
                    continue
                if flag == b"g":
                    raise UnsupportedError(
                        "tar has a PAX global header ('g'), which zstd:chunked cannot carry "
                        "(containers/storage rejects it too)")
                if flag == b"L":
                    long_name = _cstring(data)
                else:
                    long_link = _cstring(data)
                continue
            _finish(hdr, prefix_name, pax, long_name, long_link)
            self._remaining = hdr.payload_size
            self._pad = -self._remaining % BLOCK
            return hdr, b"".join(raw)

    def _end(self, raw: list[bytes]) -> None:
        self.raw_tail = b"".join(raw)
        self._done = True
        return None

    def read_payload(self, n: int) -> bytes:
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        out = self._read(n)
        if len(out) < n:
            raise InputError("tar is truncated: input ends inside a file's contents")
        self._remaining -= n
        return out

    def buffered_payload(self) -> tuple[bytes, int, int] | None:
        """All of the current entry's payload, as ``(buffer, start, end)`` without a copy,
        when it fits in a read or two (reading on if need be); None otherwise, and nothing
        is consumed: read it with read_payload_piece."""
        n = self._remaining
        if n <= 0 or n > _READ_SIZE:
            return None
        while len(self._buf) - self._pos < n:
            if not self._fill():
                return None
        start = self._pos
        self._pos += n
        self._remaining = 0
        return self._buf, start, start + n

    def read_payload_piece(self) -> bytes:
        """The next piece of payload, as large as is buffered (no copy beyond a slice)."""
        if self._remaining <= 0:
            return b""
        if self._pos >= len(self._buf) and not self._fill():
            raise InputError("tar is truncated: input ends inside a file's contents")
        n = min(self._remaining, len(self._buf) - self._pos)
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        self._remaining -= n
        return out

    def rest(self):
        """Yield every byte after the end-of-archive blocks, in pieces."""
        if self._pos < len(self._buf):
            yield self._buf[self._pos:]
        self._buf, self._pos = b"", 0
        while True:
            chunk = self._f.read(_READ_SIZE)
            if not chunk:
                return
            if self._hasher is not None:
                self._hashed = self._hasher.submit(self._hash.update, chunk)
            self.total += len(chunk)
            yield chunk

    def digest(self) -> str:
        """sha256 of every byte read so far (the DiffID once the input is exhausted)."""
        assert self._hasher is not None, "a TarReader made with digest=False"
        if self._hashed is not None:
            self._hashed.result()
        self._hasher.shutdown()
        return Digest.from_hash(self._hash)

def parse_header(b: bytes) -> tuple[TarHeader, str]:
    """One header block, as Go reads it; the name its prefix field and name field make."""
    # The common case (checksum right, fields plain octal) in one C call: a tar-split check
    # parses a header per entry of every layer opened. _reference.tar_numbers is its spec.
    nums = _tar_numbers(b) if _tar_numbers is not None else None
    if nums is None:
        _check_sum(b)
        mode, uid, gid = _numeric(b[100:108]), _numeric(b[108:116]), _numeric(b[116:124])
        size, mtime = _numeric(b[124:136]), _numeric(b[136:148])
        dev_major = dev_minor = -1
    else:
        mode, uid, gid, size, mtime, dev_major, dev_minor = nums
    magic, version, trailer = b[257:263], b[263:265], b[508:512]
    name = _cstring(b[0:100])
    hdr = TarHeader(
        typeflag=b[156:157], name="", link_name=_decode(_cstring(b[157:257])),
        mode=mode, uid=uid, gid=gid, size=size, mtime=mtime * 1_000_000_000,
        atime=None, ctime=None, dev_major=0, dev_minor=0,
    )
    prefix = b""
    if magic in (b"ustar\0", b"ustar ") and (magic == b"ustar\0" or version == b" \0"):
        hdr.dev_major = dev_major if dev_major >= 0 else _numeric(b[329:337])
        hdr.dev_minor = dev_minor if dev_minor >= 0 else _numeric(b[337:345])
        if magic == b"ustar\0" and trailer == b"tar\0":  # STAR
            prefix = _cstring(b[345:476])
            hdr.atime = _numeric(b[476:488]) * 1_000_000_000
            hdr.ctime = _numeric(b[488:500]) * 1_000_000_000
        elif magic == b"ustar\0":
            prefix = _cstring(b[345:500])
        else:  # GNU: atime/ctime where USTAR has its prefix
            try:
                if b[345]:
                    hdr.atime = _numeric(b[345:357]) * 1_000_000_000
                if b[357]:
                    hdr.ctime = _numeric(b[357:369]) * 1_000_000_000
            except InputError:
                # Pre-Go-1.8 writers put a USTAR prefix here; Go falls back the same way.
                hdr.atime = hdr.ctime = None
                p = _cstring(b[345:500])
                if p.isascii():
                    prefix = p
    full = prefix + b"/" + name if prefix else name
    return hdr, _decode(full)


def _check_sum(b: bytes) -> None:
    stored = b[148:156]
    try:
        chk = _octal(stored)
    except InputError:
        chk = -1
    unsigned = sum(b) - sum(stored) + 8 * 32
    if chk != unsigned:
        # Some old writers summed signed chars; Go accepts either.
        signed = unsigned - 256 * sum(1 for c in b[:148] + b[156:] if c > 127)
    else:
        signed = unsigned
    if chk not in (unsigned, signed):
        raise _bad("header checksum mismatch (is the input a tar?)")


def _apply_pax(hdr: TarHeader, pax: dict[str, bytes]) -> None:
    for k, raw in pax.items():
        if k.startswith("SCHILY.xattr."):
            # the TOC takes every record, empty values included
            hdr.xattrs[k[len("SCHILY.xattr."):]] = raw
            continue
        if not raw:
            continue  # an empty record keeps the header's value, as in Go
        v = _decode(raw)
        try:
            if k == "path":
                hdr.name = v
            elif k == "linkpath":
                hdr.link_name = v
            elif k == "uid":
                hdr.uid = int(v, 10)
            elif k == "gid":
                hdr.gid = int(v, 10)
            elif k == "size":
                hdr.size = int(v, 10)
            elif k == "mtime":
                hdr.mtime = _pax_time(v)
            elif k == "atime":
                hdr.atime = _pax_time(v)
            elif k == "ctime":
                hdr.ctime = _pax_time(v)
        except ValueError:
            raise _bad(f"bad PAX record {k}={v!r}") from None


def _finish(hdr: TarHeader, prefix_name: str, pax: dict[str, bytes], long_name: bytes | None,
            long_link: bytes | None) -> None:
    """A header with its extended records applied, checked to be one zstd:chunked carries."""
    flag = hdr.typeflag
    _apply_pax(hdr, pax)
    if long_name:
        hdr.name = _decode(long_name)
    elif "path" not in pax or not pax["path"]:
        hdr.name = prefix_name
    if long_link:
        hdr.link_name = _decode(long_link)
    if flag == b"\0":
        hdr.typeflag = b"5" if hdr.name.endswith("/") else b"0"
    if hdr.typeflag not in TAR_TYPES:
        kind = "a GNU sparse file" if hdr.typeflag == b"S" else f"type {flag!r}"
        raise UnsupportedError(
            f"tar entry {hdr.name!r} is {kind}, which zstd:chunked cannot carry "
            "(containers/storage rejects it too)")
    if any(k.startswith("GNU.sparse.") for k in pax):
        raise UnsupportedError(
            f"tar entry {hdr.name!r} is a PAX sparse file, which zstd:chunked cannot "
            "carry byte-exactly")
    if hdr.size < 0:
        raise _bad(f"negative size for {hdr.name!r}")


def single_header(block: bytes) -> TarHeader | None:
    """The entry a lone header block describes, or None when it is not one a block alone
    can describe (an extended record, a zero block, not 512 bytes): read those with a
    TarReader. The common case of a tar-split, spared a reader's set-up."""
    if len(block) != BLOCK or block[156:157] in _SPECIAL or block == _ZERO_BLOCK:
        return None
    hdr, prefix_name = parse_header(block)
    _finish(hdr, prefix_name, {}, None, None)
    return hdr


def go_clean(name: str) -> str:
    """Go's path.Clean, which tar-split uses to detect duplicate paths."""
    if not name:
        return "."
    out = posixpath.normpath(name)
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out
