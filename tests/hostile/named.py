"""Named cases: one deterministic case for every problem the held-back corpus found
(:data:`NAMED`, :func:`named_case`), the resource bombs among them sized by :class:`Sizes`
(:data:`SMALL` for the quick test, :data:`FULL` for the long run)."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard

from tests.hostile.base_layers import (
    HELLO,
    HELLO_NAME,
    LayerBlob,
    _names_unchecked,
    base_tar,
    build,
    plain_layer,
    tar_of,
)
from tests.hostile.cases import COMMANDS, Case
from tests.hostile.resign import Parts, Signing, assemble
from tests.hostile.wire import GZIP_MEDIA, NEW, ZSTD_MEDIA, b64, sha, toc_json
from tests.tarfactory import _info

# sha256 of 6 GiB of zero bytes (hashlib over 6 << 30 zeros), for a self-consistent TOC.
ZEROS_6GIB_DIGEST = "sha256:5c32c2b28999325bc5ad39d6530bcb46fbdf1f86375a991b7269764c50b0d109"


@dataclass(frozen=True)
class Sizes:
    """Resource bombs: small for the quick test, the issue's sizes for the long run."""

    toc_entries: int  # whiteouts in a TOC (the issue: 4.2 million, 151 MB)
    tarsplit_bytes: int  # a tar-split this long (the issue: 1,000 MiB)
    decompressed_bytes: int  # a gzip/zstd layer that decompresses to this (the issue: 2 GiB)
    bomb_rss_mib: int  # peak RSS allowed on a bomb
    bomb_timeout: float


# A bomb's bound does not grow with its size: memory must not scale with what the attacker
# controls. A command takes about 25 MiB on a small layer; the small sizes are big enough
# that holding the input whole (or twice) passes 128 MiB.
SMALL = Sizes(100_000, 64 << 20, 128 << 20, bomb_rss_mib=128, bomb_timeout=60)
FULL = Sizes(4_200_000, 1000 << 20, 2 << 30, bomb_rss_mib=1024, bomb_timeout=900)

NAMED: dict[str, Callable[[Sizes], Case]] = {}
EVERY_COMMAND = frozenset(COMMANDS)


def _named(name: str) -> Callable[[Callable[[Sizes], Case]], Callable[[Sizes], Case]]:
    def register(fn: Callable[[Sizes], Case]) -> Callable[[Sizes], Case]:
        NAMED[name] = fn
        return fn

    return register


def named_case(name: str, sizes: Sizes = SMALL) -> Case:
    case = NAMED[name](sizes)
    case.name = name
    return case


def _mutated(mutate: Callable[[Parts], None], note: str, *, old: bool = False,
             signing: Signing | None = None, focus: tuple[str, ...] = (HELLO_NAME,),
             **kw: Any) -> Case:
    parts = Parts.base(old)
    mutate(parts)
    return Case("", "named", [assemble(parts, signing)], note=note, focus=list(focus), **kw)


def _set(entry_name: str, /, **fields: Any) -> Callable[[Parts], None]:
    def mutate(p: Parts) -> None:
        p.entry(entry_name).update(fields)

    return mutate


def _entries_raw(toc: Any) -> bytes:
    """The TOC's JSON; a raw trick splices bytes into it."""
    return toc_json(toc)


@_named("zeros-chunk-single")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, chunkType="zeros"),
                    "etc/hello.txt (one chunk) marked chunkType zeros, its digest the real one")


@_named("chunk-offset-shifted")
def _(sizes: Sizes) -> Case:
    def mutate(p: Parts) -> None:
        p.file_group("usr/multi.bin")[2]["chunkOffset"] += 1000

    return _mutated(mutate, "the second chunk entry of usr/multi.bin: chunkOffset + 1000",
                    focus=("usr/multi.bin",))


@_named("chunk-offset-first-nonzero")
def _(sizes: Sizes) -> Case:
    def mutate(p: Parts) -> None:
        p.file_group("usr/multi.bin")[0]["chunkOffset"] = 1000

    return _mutated(mutate, "usr/multi.bin's first chunkOffset is 1000, not 0",
                    focus=("usr/multi.bin",))


def _point_hello_at_other(p: Parts) -> None:
    hello, other = p.entry(HELLO_NAME), p.entry("etc/other.txt")
    for key in ("offset", "endOffset", "digest", "size"):
        hello[key] = other[key]


@_named("toc-points-elsewhere-current")
def _(sizes: Sizes) -> Case:
    return _mutated(_point_hello_at_other, "etc/hello.txt's offset, endOffset, digest and size "
                    "are etc/other.txt's: a lie consistent with itself; tar-split untouched")


@_named("toc-points-elsewhere-old")
def _(sizes: Sizes) -> Case:
    return _mutated(_point_hello_at_other, "the same lie in the old format (no tar-split)",
                    old=True)


@_named("toc-points-elsewhere-old-keys")
def _(sizes: Sizes) -> Case:
    def mutate(p: Parts) -> None:
        _point_hello_at_other(p)
        # who writes only the old keys also drops tarSplitDigest, which readers of the
        # old keys never check; the blob still has its tar-split and 64-byte footer
        del p.toc["tarSplitDigest"]

    return _mutated(mutate, "the same lie in a current-format blob whose descriptor has only "
                    "the io.containers.* keys (and a TOC without tarSplitDigest)",
                    signing=Signing(keys=("old",), fix_tarsplit_digest=False))


@_named("uid-gid-2e32")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, uid=1 << 32, gid=1 << 32), "etc/hello.txt: uid, gid 2^32")


@_named("mtime-year-9999")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, modtime="9999-12-31T23:59:59.999999999Z"),
                    "etc/hello.txt: modtime 9999-12-31T23:59:59.999999999Z")


@_named("mtime-year-10000")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, modtime="10000-01-01T00:00:00Z"),
                    "etc/hello.txt: modtime 10000-01-01T00:00:00Z (JSON allows it, RFC 3339 not)")


@_named("mtime-offset-past-9999")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, modtime="9999-12-31T23:59:59-23:59"),
                    "etc/hello.txt: modtime 9999-12-31T23:59:59-23:59, in UTC after year 9999")


@_named("devmajor-2e40")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("dev/null", devMajor=1 << 40), "dev/null: devMajor 2^40", focus=())


_NEST = 100_000


@_named("toc-nested-unknown-key")
def _(sizes: Sizes) -> Case:
    def raw(toc: Any) -> bytes:
        return b'{"deep":' + b"[" * _NEST + b"]" * _NEST + b"," + _entries_raw(toc)[1:]

    return _mutated(lambda p: None, f"TOC JSON nested {_NEST} deep in an unknown key",
                    signing=Signing(toc_raw=raw))


@_named("toc-nested-entry")
def _(sizes: Sizes) -> Case:
    def raw(toc: Any) -> bytes:
        return _entries_raw(toc).replace(b'"entries":[', b'"entries":[' + b"[" * _NEST
                                         + b"]" * _NEST + b",", 1)

    return _mutated(lambda p: None, f"a TOC entry that is a list nested {_NEST} deep",
                    signing=Signing(toc_raw=raw))


@_named("toc-int-5000-digits")
def _(sizes: Sizes) -> Case:
    def raw(toc: Any) -> bytes:
        return b'{"big":' + b"7" * 5000 + b"," + _entries_raw(toc)[1:]

    return _mutated(lambda p: None, "an integer of 5,000 digits in the TOC",
                    signing=Signing(toc_raw=raw))


@_named("toc-entries-ints")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: p.toc.update(entries=[1, 2, 3]), '"entries": [1, 2, 3]')


@_named("toc-entries-object")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: p.toc.update(entries={"type": "reg", "name": HELLO_NAME}),
                    '"entries" is an object')


def _annotation(key: str, value: Any) -> Signing:
    return Signing(annotations=lambda a, info: {**a, key: value})


@_named("position-superscript")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "manifest-position annotation '²:²:²:1'",
                    signing=_annotation(NEW + "manifest-position", "²:²:²:1"))


@_named("position-huge")
def _(sizes: Sizes) -> Case:
    big = 1 << 64 | 1
    return _mutated(lambda p: None, "manifest-position and tarsplit-position of 2^64+1",
                    signing=Signing(annotations=lambda a, info: {
                        **a, NEW + "manifest-position": f"{big}:{big}:{big}:1",
                        NEW + "tarsplit-position": f"{big}:{big}:{big}"}))


@_named("position-5000-digits")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "a manifest-position of a 5,000-digit offset",
                    signing=_annotation(NEW + "manifest-position", "9" * 5000 + ":1:1:1"))


@_named("size-2e63")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, size=1 << 63), "etc/hello.txt: size 2^63")


@_named("zeros-chunk-6gib")
def _(sizes: Sizes) -> Case:
    six = 6 << 30
    return _mutated(_set(HELLO_NAME, size=six, chunkSize=six, chunkType="zeros",
                         digest=ZEROS_6GIB_DIGEST, chunkDigest=ZEROS_6GIB_DIGEST),
                    "etc/hello.txt: one zeros chunk of 6 GiB, size and digests consistent")


@_named("nul-in-name")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, name="etc/hel\0lo.txt"), "a NUL byte in a name")


@_named("nul-in-symlink-target")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("usr/link", linkName="multi\0.bin"), "a NUL byte in a symlink target",
                    focus=())


@_named("nul-in-xattr-name")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("meta.txt", xattrs={"user.foo": b64(b"bar"), "user.a\0b": b64(b"v")}),
                    "a NUL byte in an xattr name", focus=("meta.txt",))


@_named("digest-zzz")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("usr/multi.bin", digest="sha256:" + "z" * 64),
                    "usr/multi.bin (many chunks): digest sha256:zzz...",
                    focus=("usr/multi.bin",))


def _valid(tar: bytes, note: str, **kw: Any) -> Case:
    return Case("", "named", [build(tar)], note=note, **kw)


@_named("deep-path-2000")
def _(sizes: Sizes) -> Case:
    deep = "d/" * 1999 + "f"
    tar = tar_of([(_info(HELLO_NAME), HELLO), (_info(deep), b"deep\n")])
    return _valid(tar, "a valid layer with a 2,000-level-deep path (its parents implicit)",
                  focus=[deep], must_succeed=EVERY_COMMAND)


def _descriptor_hook(hook: Callable[[dict[str, Any]], None]) -> Signing:
    def apply(desc: dict[str, Any]) -> Any:
        hook(desc)
        return desc

    return Signing(descriptor=apply)


@_named("annotation-value-number")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the manifest-checksum annotation is the number 12345",
                    signing=_annotation(NEW + "manifest-checksum", 12345))


@_named("annotation-value-object")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the manifest-position annotation is an object",
                    signing=_annotation(NEW + "manifest-position", {"offset": 1}))


@_named("layer-annotations-string")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the layer's annotations are a string",
                    signing=_descriptor_hook(lambda d: d.update(annotations=NEW)))


@_named("layer-size-string")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the layer descriptor's size is a string",
                    signing=_descriptor_hook(lambda d: d.update(size=str(d["size"]))))


@_named("layer-digest-number")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the layer descriptor's digest is a number",
                    signing=_descriptor_hook(lambda d: d.update(digest=12345)))


@_named("manifest-layers-string")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the manifest's layers is a string")
    case.manifest_hook = lambda m: {**m, "layers": "sha256:" + "0" * 64}
    return case


@_named("manifest-config-string")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the manifest's config is a string")
    case.manifest_hook = lambda m: {**m, "config": m["config"]["digest"]}
    return case


@_named("config-diff-ids-not-list")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the config's rootfs.diff_ids is an object")

    def hook(c: dict[str, Any]) -> Any:
        c["rootfs"]["diff_ids"] = {"0": c["rootfs"]["diff_ids"][0]}
        return c

    case.config_hook = hook
    return case


@_named("config-not-object")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the config is a JSON list")
    case.config_hook = lambda c: [c]
    return case


@_named("gzip-and-zstd-layers")
def _(sizes: Sizes) -> Case:
    from tests.layers import LOWER, UPPER, make_tar

    return Case("", "named", [plain_layer(make_tar(LOWER), "gzip"),
                              plain_layer(make_tar(UPPER), "zstd")],
                note="a valid image of one gzip and one plain zstd layer (no chunked "
                     "annotations); inspect/verify/cat get the gzip blob",
                must_succeed=frozenset({"verify-oci", "pull", "mount"}))


def _non_utf8(ascii_only: bool, env: dict[str, str] | None = None) -> Case:
    bad = "usr/bad\udcffname"
    tar = tar_of([(_info(HELLO_NAME), HELLO), (_info(bad), b"bad name\n")], tarfile.GNU_FORMAT)
    with _names_unchecked():
        layer = build(tar)
    parts = Parts.of(layer.blob)
    for e in parts.entries:
        if "\ufffd" in e["name"]:  # what the builder's Go-style JSON made of the byte
            e["name"] = bad
    how = "escaped as \\udcff" if ascii_only else "as a raw 0xff byte"
    env = env or {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "0"}
    return Case("", "named", [assemble(parts, Signing(toc_ascii=ascii_only))], env=env,
                focus=[bad], note=f"a name with the non-UTF-8 byte 0xff, {how} in the TOC (tar "
                "and tar-split agree); run with " + " ".join(f"{k}={v}" for k, v in env.items()))


@_named("non-utf8-name-raw")
def _(sizes: Sizes) -> Case:
    return _non_utf8(False)


@_named("non-utf8-name-escaped")
def _(sizes: Sizes) -> Case:
    return _non_utf8(True)


@_named("non-utf8-name-strict-stdout")
def _(sizes: Sizes) -> Case:
    # Python 3.11 writes stdout with surrogateescape under C.UTF-8 (a locale-coercion
    # target), so the byte above prints; under a UTF-8 locale that is not one (en_US.UTF-8)
    # stdout is strict. PYTHONIOENCODING gives that here, where only C.UTF-8 is installed.
    return _non_utf8(False, {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "0",
                             "PYTHONIOENCODING": "utf-8:strict"})


@_named("root-dot-file")
def _(sizes: Sizes) -> Case:
    tar = tar_of([(_info("."), b"dot\n"), (_info(HELLO_NAME), HELLO)])
    return _valid(tar, "a regular file named '.': the root is a file", focus=["."])


@_named("root-empty-name-file")
def _(sizes: Sizes) -> Case:
    tar = tar_of([(_info(""), b"root\n"), (_info(HELLO_NAME), HELLO)], tarfile.GNU_FORMAT)
    return _valid(tar, "a regular file named '': the root is a file", focus=[""])


@_named("dirs-1500-nofile-1024")
def _(sizes: Sizes) -> Case:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for i in range(1500):
        members.append((_info(f"d{i:04d}", tarfile.DIRTYPE, mode=0o755), None))
        members.append((_info(f"d{i:04d}/f"), b"%d\n" % i))
    return _valid(tar_of(members), "a valid image of 1,500 directories, each command under "
                  "RLIMIT_NOFILE 1024", nofile=1024,
                  must_succeed=frozenset({"pull", "mount", "verify", "verify-oci"}))


@_named("dangling-hardlink")
def _(sizes: Sizes) -> Case:
    tar = tar_of([(_info(HELLO_NAME), HELLO),
                  (_info("etc/dangling", tarfile.LNKTYPE, linkname="nowhere/missing"), None)])
    return _valid(tar, "a hard link to a name the layer does not have; mount must still come "
                  "up (that file missing or EIO)", focus=["etc/dangling"],
                  must_succeed=frozenset({"mount"}))


@_named("mount-fails-bad-toc")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "a TOC that is not JSON: every command refuses, and a "
                    "failing mount must not print 'chunked: error: chunked: error:'",
                    signing=Signing(toc_raw=lambda toc: b"{this TOC is not JSON"))


@_named("bomb-toc-whiteouts")
def _(sizes: Sizes) -> Case:
    n = sizes.toc_entries

    def raw(toc: Any) -> bytes:
        # whiteouts of names no layer below has: every one is legal, and costs a reader
        fill = b"".join([b'{"type":"reg","name":".wh.%07d"},' % i for i in range(n)])
        return _entries_raw(toc).replace(b'"entries":[', b'"entries":[' + fill, 1)

    return _mutated(lambda p: None, f"a TOC of {n:,} extra whiteout entries (the issue: 4.2 "
                    "million, 151 MB, inside the 150 MiB limit)", signing=Signing(toc_raw=raw),
                    rss_limit_mib=sizes.bomb_rss_mib, timeout=sizes.bomb_timeout)


@_named("bomb-tarsplit")
def _(sizes: Sizes) -> Case:
    # bytes after the end-of-archive blocks go to the tar-split in 1 MiB segments, base64
    padding = sizes.tarsplit_bytes * 3 // 4 // 512 * 512
    return _valid(base_tar() + bytes(padding),
                  f"a valid layer whose tar-split is ~{sizes.tarsplit_bytes >> 20} MiB (zero "
                  "padding after the tar; the issue: 1,000 MiB, inside the 1 GiB limit)",
                  rss_limit_mib=sizes.bomb_rss_mib, timeout=sizes.bomb_timeout)


@_named("bomb-tarsplit-lines")
def _(sizes: Sizes) -> Case:
    payload = b64(bytes(768))
    n = sizes.tarsplit_bytes // (len(payload) + 40)

    def mutate(p: Parts) -> None:
        # segments the data frames do not hold, before the end-of-archive blocks: a lie
        # every verifier must refuse, which it can see only by reading (or streaming) them
        lines = p.ts_lines()
        fill = [b'{"type":2,"payload":"%s","position":%d}' % (payload.encode(), i)
                for i in range(n)]
        p.set_ts_lines(lines[:-1] + fill + lines[-1:])

    return _mutated(mutate, f"{n:,} extra tar-split segment lines (~"
                    f"{sizes.tarsplit_bytes >> 20} MiB), re-signed: a lie the data does not "
                    "back", focus=(), rss_limit_mib=sizes.bomb_rss_mib,
                    timeout=sizes.bomb_timeout)


def _bomb(kind: str, total: int) -> LayerBlob:
    """A valid tar padded with zeros to ``total`` bytes, compressed as a stream."""
    tar = base_tar()
    c: Any = (zlib.compressobj(9, zlib.DEFLATED, 31) if kind == "gzip" else
              zstandard.ZstdCompressor(level=19).compressobj())
    out = [c.compress(tar)]
    left = total - len(tar)
    zeros = bytes(16 << 20)
    while left > 0:
        out.append(c.compress(zeros[:min(left, len(zeros))]))
        left -= len(zeros)
    out.append(c.flush())
    blob = b"".join(out)
    media = GZIP_MEDIA if kind == "gzip" else ZSTD_MEDIA
    return LayerBlob(blob, {"mediaType": media, "digest": sha(blob), "size": len(blob)}, kind)


@_named("bomb-gzip")
def _(sizes: Sizes) -> Case:
    layer = _bomb("gzip", sizes.decompressed_bytes)
    return Case("", "named", [layer], rss_limit_mib=sizes.bomb_rss_mib,
                timeout=sizes.bomb_timeout,
                note=f"a gzip layer of {len(layer.blob):,} bytes that decompresses to "
                     f"{sizes.decompressed_bytes >> 20} MiB, no chunked annotations")


@_named("bomb-zstd")
def _(sizes: Sizes) -> Case:
    layer = _bomb("zstd", sizes.decompressed_bytes)
    return Case("", "named", [layer], rss_limit_mib=sizes.bomb_rss_mib,
                timeout=sizes.bomb_timeout,
                note=f"a plain zstd layer of {len(layer.blob):,} bytes that decompresses to "
                     f"{sizes.decompressed_bytes >> 20} MiB, no chunked annotations")


BOMBS = ("bomb-toc-whiteouts", "bomb-tarsplit", "bomb-tarsplit-lines", "bomb-gzip",
         "bomb-zstd")
