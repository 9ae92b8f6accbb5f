"""The zstd:chunked wire format, and nothing else.

Every constant, byte layout, annotation key and JSON shape that another tool
(containers/storage, podman, skopeo) can observe is defined here, so that the
builder and the reader cannot drift apart. Two variants exist:

* ``CURRENT`` - containers/storage >= 1.54: ``io.github.containers.*`` keys,
  a 64-byte footer (``GNUlInUx``), a tar-split, ``tarSplitDigest`` in the TOC;
* ``OLD`` - containers/storage 1.43 (Debian bookworm's skopeo 1.9 and
  podman 4.3): ``io.containers.*`` keys, a 40-byte footer (``GnUlInUx``), no
  tar-split, and all three times always written.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from chunked import _kernels
from chunked.digest import Digest, is_sha256
from chunked.errors import FormatError

# the string checks of a decoded TOC, in C (chunked/format/_tocindex.c; spec: check_strings)
# (named apart from the submodule, which importing it would rebind on this package)
_strings_c = _kernels.load("chunked.format._tocindex")

# --- zstd framing ---------------------------------------------------------------------------

ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_FRAME_MAGIC = b"\x50\x2a\x4d\x18"
SKIPPABLE_HEADER_SIZE = 8

MANIFEST_TYPE_CRFS = 1
TOC_VERSION = 1

# Chunking parameters of upstream's compressor (pkg/chunked/compressor).
ROLLSUM_BITS = 16
HOLE_THRESHOLD = 1024

# Upstream refuses TOCs above these sizes; so do we, before allocating anything.
MAX_TOC_SIZE = 150 << 20
MAX_TOC_SIZE_OLD = 50 << 20
MAX_TARSPLIT_SIZE = 1 << 30

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"

# --- annotations ----------------------------------------------------------------------------

CURRENT_PREFIX = "io.github.containers.zstd-chunked."
OLD_PREFIX = "io.containers.zstd-chunked."
ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
# podman marks index instances that carry zstd:chunked layers with this.
ZSTD_INSTANCE_ANNOTATION = "io.github.containers.compression.zstd"


@dataclass(frozen=True)
class Position:
    """Where a skippable-frame payload sits: ``offset:length:uncompressed[:type]``."""

    offset: int
    length: int
    uncompressed: int
    manifest_type: int | None = None

    def encode(self) -> str:
        parts = [self.offset, self.length, self.uncompressed]
        if self.manifest_type is not None:
            parts.append(self.manifest_type)
        return ":".join(str(p) for p in parts)

    @classmethod
    def parse(cls, text: object, *, with_type: bool, key: str) -> Position:
        want = 4 if with_type else 3
        parts = text.split(":") if isinstance(text, str) else []
        # ASCII digits only (str.isdigit takes "²"), each at most 2**63 - 1: upstream parses a
        # uint64, but a blob's offsets are int64 (io.ReaderAt), so a larger one is never valid
        if len(parts) != want or not all(_UINT.fullmatch(p) for p in parts) or \
                any(int(p) > MAX_OFFSET for p in parts):
            raise FormatError(f"annotation {key} is {_short(text)}, not {want} "
                              "colon-separated numbers")
        nums = [int(p) for p in parts]
        return cls(*nums) if with_type else cls(nums[0], nums[1], nums[2])

    @property
    def end(self) -> int:
        return self.offset + self.length


# --- footer ---------------------------------------------------------------------------------

FOOTER_MAGIC_CURRENT = b"GNUlInUx"
FOOTER_MAGIC_OLD = b"GnUlInUx"
FOOTER_SIZE_CURRENT = 64
FOOTER_SIZE_OLD = 40
# The longest footer frame we may need to look at: skippable header + 64-byte payload.
FOOTER_PROBE_SIZE = SKIPPABLE_HEADER_SIZE + FOOTER_SIZE_CURRENT


@dataclass(frozen=True)
class Footer:
    toc: Position
    tarsplit: Position | None

    def encode_current(self) -> bytes:
        ts = self.tarsplit or Position(0, 0, 0)
        return struct.pack(
            "<7Q8s", self.toc.offset, self.toc.length, self.toc.uncompressed,
            MANIFEST_TYPE_CRFS, ts.offset, ts.length, ts.uncompressed, FOOTER_MAGIC_CURRENT,
        )

    def encode_old(self) -> bytes:
        return struct.pack(
            "<4Q8s", self.toc.offset, self.toc.length, self.toc.uncompressed,
            MANIFEST_TYPE_CRFS, FOOTER_MAGIC_OLD,
        )

    @classmethod
    def decode(cls, tail: bytes) -> Footer:
        """Parse the footer from the last bytes of a blob (at least 40 of them).

        Accepts the current 64-byte footer, the old 40-byte one and the 56-byte
        footer of containers/storage 1.47-1.49 (old layout, 16 zero bytes after).
        """
        if len(tail) >= FOOTER_SIZE_CURRENT and tail[-8:] == FOOTER_MAGIC_CURRENT:
            o, n, u, t, tso, tsn, tsu = struct.unpack("<7Q", tail[-64:-8])
            ts = Position(tso, tsn, tsu) if tsn else None
            return cls(Position(o, n, u, t), ts)
        if tail[-8:] == FOOTER_MAGIC_OLD:
            o, n, u, t = struct.unpack("<4Q", tail[-40:-8])
            return cls(Position(o, n, u, t), None)
        if len(tail) >= 56 and tail[-24:-16] == FOOTER_MAGIC_OLD and tail[-16:] == bytes(16):
            o, n, u, t = struct.unpack("<4Q", tail[-56:-24])
            return cls(Position(o, n, u, t), None)
        raise FormatError("no zstd:chunked footer at the end of the blob "
                          "(not a zstd:chunked layer)")


def skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_FRAME_MAGIC + struct.pack("<I", len(payload)) + payload


# --- format variants ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """What differs between the current and the old (containers/storage 1.43) format."""

    name: str
    prefix: str
    has_tarsplit: bool
    # 1.43 wrote Go's zero time for absent access/change times instead of omitting them.
    writes_zero_times: bool
    max_toc_size: int

    @property
    def checksum_key(self) -> str:
        return self.prefix + "manifest-checksum"

    @property
    def position_key(self) -> str:
        return self.prefix + "manifest-position"

    @property
    def tarsplit_key(self) -> str:
        return self.prefix + "tarsplit-position"

    def encode_footer(self, footer: Footer) -> bytes:
        return footer.encode_current() if self.has_tarsplit else footer.encode_old()

    def annotations(self, checksum: str, footer: Footer) -> dict[str, str]:
        out = {self.checksum_key: checksum, self.position_key: footer.toc.encode()}
        if self.has_tarsplit and footer.tarsplit is not None:
            out[self.tarsplit_key] = footer.tarsplit.encode()
        return out


CURRENT = Variant("current", CURRENT_PREFIX, True, False, MAX_TOC_SIZE)
OLD = Variant("old", OLD_PREFIX, False, True, MAX_TOC_SIZE_OLD)
VARIANTS = {v.name: v for v in (CURRENT, OLD)}


@dataclass(frozen=True)
class LayerAnnotations:
    """The TOC location and digest a layer descriptor claims, in either variant."""

    variant: Variant
    checksum: Digest
    toc: Position
    tarsplit: Position | None

    @classmethod
    def find(cls, annotations: Mapping[str, object]) -> LayerAnnotations | None:
        """Current keys win over old ones, as current podman reads only those."""
        for variant in (CURRENT, OLD):
            checksum = annotations.get(variant.checksum_key)
            if checksum is None:
                continue
            checksum = Digest.parse(checksum, f"annotation {variant.checksum_key}")
            pos_text = annotations.get(variant.position_key)
            if pos_text is None:
                raise FormatError(f"annotation {variant.checksum_key} without "
                                  f"{variant.position_key}")
            toc = Position.parse(pos_text, with_type=True, key=variant.position_key)
            ts_text = annotations.get(variant.tarsplit_key) if variant.has_tarsplit else None
            ts = None
            if ts_text:
                ts = Position.parse(ts_text, with_type=False, key=variant.tarsplit_key)
            return cls(variant, checksum, toc, ts)
        return None


def _short(value: object) -> str:
    """A value for an error message: repr'd (so no control character reaches a terminal)
    and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_UINT = re.compile(r"[0-9]{1,20}")


# --- Go-compatible JSON ---------------------------------------------------------------------
# tar-split is marshalled by Go's encoding/json: HTML characters and U+2028/9 escaped,
# other non-ASCII raw. We match that byte for byte, so our tar-split equals upstream's.
# The TOC escapes only what JSON requires: podman 4.3 (containers/storage 1.43) reads
# TOC strings without unescaping them, so a name with "&" written as "\u0026" would
# land on disk mangled there; every current reader parses both spellings alike.

_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)}
_JSON_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                      ord('"'): '\\"', ord("\\"): "\\\\"})
# Raw bytes that are not UTF-8 (kept as surrogate escapes) become U+FFFD, as in Go.
_JSON_ESCAPES.update({c: "\ufffd" for c in range(0xDC80, 0xDD00)})
_GO_ESCAPES = dict(_JSON_ESCAPES)
_GO_ESCAPES.update({ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                    0x2028: "\\u2028", 0x2029: "\\u2029"})


# The characters the tables above change: a string without any (most names, every digest)
# is written as it is, without a pass of str.translate.
_JSON_SPECIAL = re.compile('[\x00-\x1f"\\\\\udc80-\udcff]')
_GO_SPECIAL = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\udc80-\udcff]')


def go_string(s: str, *, html_escape: bool = True) -> str:
    if html_escape:
        if _GO_SPECIAL.search(s) is None:
            return '"' + s + '"'
        return '"' + s.translate(_GO_ESCAPES) + '"'
    return _toc_string(s)


def _toc_string(s: str) -> str:
    if _JSON_SPECIAL.search(s) is None:
        return '"' + s + '"'
    return '"' + s.translate(_JSON_ESCAPES) + '"'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- times ----------------------------------------------------------------------------------
# Times are integers: nanoseconds since the Unix epoch. None is Go's zero time
# ("absent"); the epoch itself is a real time and is written.

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_TIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


@functools.lru_cache(maxsize=4096)
def format_time(ns: int) -> str:
    """RFC 3339 with trailing-zero-trimmed nanoseconds, in UTC, as Go's time.MarshalJSON.

    Cached: the entries of a layer share a handful of times."""
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        when = _EPOCH + _dt.timedelta(seconds=secs)
    except OverflowError:
        raise FormatError(f"time {secs}s after 1970 is outside years 0-9999") from None
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if len(text) != 19:
        text = f"{when.year:04d}" + text[text.index("-"):]
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> int | None:
    """The inverse of format_time, accepting any UTC offset; Go's zero time gives None."""
    m = _TIME_RE.fullmatch(text)
    if not m:
        raise FormatError(f"bad time {text!r} in TOC")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    if (y, mo, d, h, mi, s) == (1, 1, 1, 0, 0, 0) and not m.group(7) and m.group(8):
        return None
    try:
        when = _dt.datetime(y, mo, d, h, mi, s, tzinfo=_dt.UTC)
    except ValueError as exc:
        raise FormatError(f"bad time {text!r} in TOC: {exc}") from None
    ns = int((when - _EPOCH).total_seconds()) * 1_000_000_000
    if m.group(7):
        ns += int(m.group(7).ljust(9, "0"))
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * 1_000_000_000
        ns -= offset if m.group(9) == "+" else -offset
    return ns


# --- TOC ------------------------------------------------------------------------------------

TYPE_REG = "reg"
TYPE_CHUNK = "chunk"
TYPE_DIR = "dir"
TYPE_SYMLINK = "symlink"
TYPE_HARDLINK = "hardlink"
TYPE_CHAR = "char"
TYPE_BLOCK = "block"
TYPE_FIFO = "fifo"
ENTRY_TYPES = (TYPE_REG, TYPE_CHUNK, TYPE_DIR, TYPE_SYMLINK, TYPE_HARDLINK, TYPE_CHAR,
               TYPE_BLOCK, TYPE_FIFO)
# tar typeflag -> TOC type (the only seven upstream accepts; '\0' is mapped before).
TAR_TYPES = {b"0": TYPE_REG, b"1": TYPE_HARDLINK, b"2": TYPE_SYMLINK, b"3": TYPE_CHAR,
             b"4": TYPE_BLOCK, b"5": TYPE_DIR, b"6": TYPE_FIFO}
CHUNK_TYPE_DATA = ""
CHUNK_TYPE_ZEROS = "zeros"

# Limits a TOC is held to where it is parsed, so nothing downstream meets a value the
# kernel, the C code or a fixed-width field cannot take. Every one is far beyond what a
# real layer carries.
MAX_ENTRIES = 1 << 23
MAX_NAME = 4096  # PATH_MAX: longer names cannot be created, so no real layer has them
MAX_XATTR_NAME = 255  # XATTR_NAME_MAX
MAX_XATTR_VALUE = 1 << 16  # XATTR_SIZE_MAX
MAX_ID = (1 << 32) - 2  # uid_t; (uid_t)-1 means "leave unchanged" to chown(2)
MAX_DEV = (1 << 32) - 1  # unix.Mkdev takes uint32 major and minor
MAX_MODE = (1 << 32) - 1
MAX_SIZE = 1 << 56  # a file size; offsets are int64 like upstream's
MAX_OFFSET = (1 << 63) - 1

# Names and digests are held to their lengths as they decode, and to their contents
# (:func:`check_strings`) in one pass after: a msgspec pattern runs a Python regex per value,
# which cost a 27,000-entry TOC 35 ms of its 47.
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
_XattrName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_XATTR_NAME)]
_XattrValue = Annotated[bytes, msgspec.Meta(max_length=MAX_XATTR_VALUE)]
_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
_Dev = Annotated[int, msgspec.Meta(ge=0, le=MAX_DEV)]
_Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE)]
_Offset = Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)]
_EntryDigest = Annotated[str, msgspec.Meta(max_length=71)]  # checked by check_strings


class GoTime(int):
    """Nanoseconds since the Unix epoch, as decoded from a TOC's RFC 3339 string."""

    __slots__ = ()


# Go's zero time ("0001-01-01T00:00:00Z"): upstream's "no time". One shared value, so
# an entry can tell it from a real time by identity.
GO_ZERO = GoTime(-62135596800 * 1_000_000_000)


def _time_or_zero(t: int | None) -> int | None:
    return None if t is None or t is GO_ZERO else t


class TocEntry(msgspec.Struct, gc=False, omit_defaults=True, rename={
        "link_name": "linkName", "dev_major": "devMajor",
        "dev_minor": "devMinor", "end_offset": "endOffset", "chunk_size": "chunkSize",
        "chunk_offset": "chunkOffset", "chunk_digest": "chunkDigest",
        "chunk_type": "chunkType"}):
    """One TOC entry, field for field as upstream's ``FileMetadata``, every value checked
    against the limits above when decoded.

    ``name`` and ``link_name`` are the tar's names (decoded as UTF-8 with surrogateescape
    where they come from a tar). ``xattrs`` maps names to raw values (base64 is only the
    JSON encoding); None when there are none, as most entries have none. Times are
    nanoseconds; ``mtime``, ``atime`` and ``ctime`` read them with Go's zero time as None.
    """

    type: Literal["reg", "chunk", "dir", "symlink", "hardlink", "char", "block", "fifo"]
    name: _Name
    link_name: _Name = ""
    mode: Annotated[int, msgspec.Meta(ge=0, le=MAX_MODE)] = 0
    size: _Size = 0
    uid: _Id = 0
    gid: _Id = 0
    modtime: GoTime | None = None
    accesstime: GoTime | None = None
    changetime: GoTime | None = None
    dev_major: _Dev = 0
    dev_minor: _Dev = 0
    xattrs: dict[_XattrName, _XattrValue] | None = None
    digest: _EntryDigest = ""
    offset: _Offset = 0
    end_offset: _Offset = 0
    chunk_size: _Size = 0
    chunk_offset: _Size = 0
    chunk_digest: _EntryDigest = ""
    chunk_type: Literal["", "zeros"] = ""

    @property
    def mtime(self) -> int | None:
        return _time_or_zero(self.modtime)

    @property
    def atime(self) -> int | None:
        return _time_or_zero(self.accesstime)

    @property
    def ctime(self) -> int | None:
        return _time_or_zero(self.changetime)

    def encode(self, variant: Variant) -> str:
        """The entry as upstream marshals it: struct order, zero values omitted.

        Written out by hand rather than through a dict, field by field: the TOC of a big
        layer has tens of thousands of entries, and this is on the build's critical path."""
        q = _toc_string
        parts = ['{"type":', q(self.type), ',"name":', q(self.name)]
        add = parts.append
        if self.link_name:
            add(',"linkName":')
            add(q(self.link_name))
        if self.mode:
            add(f',"mode":{self.mode}')
        if self.size:
            add(f',"size":{self.size}')
        if self.uid:
            add(f',"uid":{self.uid}')
        if self.gid:
            add(f',"gid":{self.gid}')
        if self.type != TYPE_CHUNK:
            zero = variant.writes_zero_times
            for key, t in ((',"modtime":"', self.modtime), (',"accesstime":"', self.accesstime),
                           (',"changetime":"', self.changetime)):
                if t is not None and t is not GO_ZERO:
                    add(key + format_time(t) + '"')
                elif zero:
                    add(key + GO_ZERO_TIME + '"')
        if self.dev_major:
            add(f',"devMajor":{self.dev_major}')
        if self.dev_minor:
            add(f',"devMinor":{self.dev_minor}')
        if self.xattrs:
            add(',"xattrs":{' + ",".join(
                f'{q(k)}:"{b64(self.xattrs[k])}"' for k in sorted(self.xattrs)) + "}")
        if self.digest:
            add(',"digest":')
            add(q(self.digest))
        if self.offset:
            add(f',"offset":{self.offset}')
        if self.end_offset:
            add(f',"endOffset":{self.end_offset}')
        if self.chunk_size:
            add(f',"chunkSize":{self.chunk_size}')
        if self.chunk_offset:
            add(f',"chunkOffset":{self.chunk_offset}')
        if self.chunk_digest:
            add(',"chunkDigest":')
            add(q(self.chunk_digest))
        if self.chunk_type:
            add(',"chunkType":')
            add(q(self.chunk_type))
        add("}")
        return "".join(parts)


@functools.lru_cache(maxsize=8192)
def _go_time(text: str) -> GoTime:
    # most entries of a layer share a handful of timestamps, and so share one value
    if not text:
        return GO_ZERO
    ns = parse_time(text)
    return GO_ZERO if ns is None else GoTime(ns)


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is GoTime:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError("expected an RFC 3339 time")
        try:
            return _go_time(value)
        except FormatError as exc:
            raise ValueError(str(exc)) from None
    raise NotImplementedError(kind)


# Times a TOC can carry: Go's RFC 3339 years 0001-9999.
MIN_TIME = GO_ZERO
MAX_TIME = 253402300800 * 1_000_000_000 - 1


def check_limits(e: TocEntry, where: str) -> None:
    """Hold an entry made in Python (from a tar header, not a decoded TOC) to the limits
    a decoded TOC is held to."""
    for key, value, top in (("uid", e.uid, MAX_ID), ("gid", e.gid, MAX_ID),
                            ("mode", e.mode, MAX_MODE), ("size", e.size, MAX_SIZE),
                            ("devMajor", e.dev_major, MAX_DEV),
                            ("devMinor", e.dev_minor, MAX_DEV)):
        if not 0 <= value <= top:
            raise FormatError(f"{where}: {e.name!r} has {key} {value}, outside 0..{top}")
    for key, t in (("modtime", e.modtime), ("accesstime", e.accesstime),
                   ("changetime", e.changetime)):
        if t is not None and not MIN_TIME <= t <= MAX_TIME:
            raise FormatError(f"{where}: {e.name!r} has a {key} outside years 1-9999")
    for name in (e.name, e.link_name, *(e.xattrs or ())):
        if len(name) > MAX_NAME or "\0" in name:
            raise FormatError(f"{where}: {name[:60]!r}: a name too long or with a NUL byte")


class TocEncoder:
    """The TOC JSON in pieces, entry by entry, so a builder can stream it out."""

    def __init__(self, variant: Variant):
        self.variant = variant
        self.count = 0

    def entry(self, e: TocEntry) -> str:
        head = "," if self.count else f'{{"version":{TOC_VERSION},"entries":['
        self.count += 1
        return head + e.encode(self.variant)

    def end(self, tarsplit_digest: str = "") -> str:
        text = "]" if self.count else f'{{"version":{TOC_VERSION},"entries":null'
        if tarsplit_digest and self.variant.has_tarsplit:
            text += f',"tarSplitDigest":{_toc_string(tarsplit_digest)}'
        return text + "}"


class Toc(msgspec.Struct, gc=False, rename={"tarsplit_digest": "tarSplitDigest"}):
    """A decoded TOC. Keys match as upstream writes them; unknown keys are skipped."""

    entries: Annotated[list[TocEntry], msgspec.Meta(max_length=MAX_ENTRIES)] | None = None
    version: int = 0
    tarsplit_digest: _EntryDigest = ""  # a Digest once decoded, or empty

    @classmethod
    def decode(cls, data: bytes) -> Toc:
        try:
            toc = _TOC_DECODER.decode(data)
        except msgspec.ValidationError as exc:
            raise FormatError(f"TOC: {_where(exc)}") from None
        except msgspec.DecodeError as exc:
            raise FormatError(f"TOC is not valid JSON: {exc}") from None
        except RecursionError:
            raise FormatError("TOC is not valid JSON: nested too deeply") from None
        if toc.version != TOC_VERSION:
            raise FormatError(f"TOC version {toc.version} is not supported (only "
                              f"{TOC_VERSION})")
        if toc.entries is None:
            toc.entries = []
        # (names can hold a NUL only through a \u0000 escape; a false alarm from a
        # literal backslash only costs the names' check)
        check_strings(toc.entries, names=b"\\u0000" in data)
        if toc.tarsplit_digest:
            toc.tarsplit_digest = Digest.parse(toc.tarsplit_digest, "TOC: tarSplitDigest")
        return toc


def check_strings(entries: list[TocEntry], names: bool = True) -> None:
    """Raise unless every name holds no NUL and no unpaired surrogate and every digest is
    ``sha256:`` and 64 lowercase hex digits (or empty): in C when it is compiled.
    ``names=False`` checks the digests alone: for entries decoded from JSON that holds no
    ``\\u0000`` (the only way JSON carries a NUL) by msgspec (which refuses an unpaired
    surrogate), no name can hold either."""
    if _strings_c is not None and _strings_c.strings_ok(entries, names):
        return
    bad = strings_problem(entries, names)
    if bad is not None:
        raise FormatError(f"TOC: {bad}")


def strings_ok(entries: list[TocEntry], names: bool = True) -> bool:
    """The C's specification: True when :func:`strings_problem` finds nothing."""
    return strings_problem(entries, names) is None


def strings_problem(entries: list[TocEntry], names: bool = True) -> str | None:
    for i, e in enumerate(entries):
        for key, d in (("digest", e.digest), ("chunkDigest", e.chunk_digest)):
            if d and not is_sha256(d):
                return f"entry [{i}].{key}: {d[:80]!r} is not a sha256 digest"
        if not names:
            continue
        strings = [("name", e.name), ("linkName", e.link_name)]
        strings += [("xattrs", k) for k in e.xattrs or ()]
        for key, s in strings:
            if "\0" in s or not _encodable(s):
                return f"entry [{i}].{key}: a NUL byte or an unpaired surrogate in {s[:60]!r}"
    return None


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(exc: msgspec.ValidationError) -> str:
    """msgspec's message, with a path like ``$.entries[12].uid`` (the entry named)."""
    return str(exc).replace("`$.entries[", "entry [").replace("`", "")


_TOC_DECODER = msgspec.json.Decoder(Toc, dec_hook=_dec_hook)


# --- tar-split (vbatts/tar-split JSON packer) -----------------------------------------------

TARSPLIT_FILE = 1
TARSPLIT_SEGMENT = 2
# tar-split emits trailing input after the end-of-archive blocks in pieces of this size.
TARSPLIT_PADDING_CHUNK = 1 << 20


def tarsplit_segment(payload: bytes, position: int) -> str:
    return f'{{"type":2,"payload":"{b64(payload)}","position":{position}}}\n'


def tarsplit_file(name: str, size: int, crc: bytes | None, position: int) -> str:
    if name.isascii():  # most names: UTF-8 without a check
        name_part = f'"name":{go_string(name)}'
    else:
        raw = name.encode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
            name_part = f'"name":{go_string(name)}'
        except UnicodeDecodeError:
            name_part = f'"name_raw":"{b64(raw)}"'
    size_part = f',"size":{size}' if size else ""
    payload = f'"{b64(crc)}"' if crc is not None else "null"
    return f'{{"type":1,{name_part}{size_part},"payload":{payload},"position":{position}}}\n'


# A tar-split line is a header's bytes or a 1 MiB piece of padding, base64'd: longer is
# not a tar-split upstream writes, and would only cost memory.
MAX_TARSPLIT_LINE = 8 << 20


class TarSplitEntry(msgspec.Struct, gc=False):
    """One tar-split line: a segment of raw tar bytes, or a file (its name, size and the
    CRC-64 of its payload). ``name_raw`` carries a name that is not UTF-8."""

    type: Literal[1, 2]
    payload: bytes | None = None
    name: Annotated[str, msgspec.Meta(max_length=MAX_NAME)] = ""
    name_raw: Annotated[bytes, msgspec.Meta(max_length=MAX_NAME)] | None = None
    size: _Size = 0
    position: int = 0

    @property
    def path(self) -> str:
        if self.name_raw is not None:
            return self.name_raw.decode("utf-8", "surrogateescape")
        return self.name

    @property
    def crc(self) -> int | None:
        """The file's CRC-64, or None for a file line without one."""
        if self.payload is None:
            return None
        if len(self.payload) != 8:
            raise FormatError(f"tar-split: {self.path!r} has a CRC of {len(self.payload)} "
                              "bytes, not 8")
        return int.from_bytes(self.payload, "big")

    @classmethod
    def parse_line(cls, line: bytes) -> TarSplitEntry:
        try:
            return _TARSPLIT_DECODER.decode(line)
        except msgspec.ValidationError as exc:
            raise FormatError(f"malformed tar-split line: {exc}") from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise FormatError(f"tar-split line is not JSON: {exc}") from None


_TARSPLIT_DECODER = msgspec.json.Decoder(TarSplitEntry)


def _parse_lines(lines: bytes) -> list[TarSplitEntry]:
    # One call for a megabyte of lines: a call per line cost a 30,000-line tar-split 60 ms.
    try:
        return _TARSPLIT_DECODER.decode_lines(lines)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        pass  # line by line, for the message that names what is wrong
    return [TarSplitEntry.parse_line(line) for line in lines.split(b"\n") if line]


def iter_tarsplit(read: Callable[[int], bytes]) -> Iterator[TarSplitEntry]:
    """The entries of a decompressed tar-split, read through ``read`` a piece at a time,
    so a tar-split of any size is parsed in bounded memory."""
    pending = b""
    while True:
        piece = read(1 << 20)
        if not piece:
            break
        pending += piece
        cut = pending.rfind(b"\n") + 1
        whole, pending = pending[:cut], pending[cut:]
        if len(pending) > MAX_TARSPLIT_LINE:
            raise FormatError(f"tar-split has a line of more than {MAX_TARSPLIT_LINE} bytes")
        if whole:
            yield from _parse_lines(whole)
    if pending.strip():
        yield TarSplitEntry.parse_line(pending)
