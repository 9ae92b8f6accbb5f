"""The valid layers every hostile case starts from: the small base tar, built into a
zstd:chunked blob by :func:`chunked.builder.build_blob` (or as a plain gzip, zstd or tar
layer), and tars of given members for the cases that need their own."""

from __future__ import annotations

import contextlib
import functools
import io
import random
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chunked import builder
from chunked import format as chunked_format
from tests.hostile.wire import GZIP_MEDIA, TAR_MEDIA, ZSTD_MEDIA, sha, zstd
from tests.tarfactory import _info, _Writer

HELLO = b"hello world\n"
OTHER = b"another file, longer than hello, to point hello at\n"
HELLO_NAME = "etc/hello.txt"


def base_tar(seed: int = 7) -> bytes:
    """The small layer every mutation starts from: each entry type, a file of many chunks,
    a file with a zeros chunk, an xattr and a whiteout."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        w = _Writer(tf)
        w.add(_info("etc", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("etc/hello.txt"), HELLO)
        w.add(_info("etc/other.txt"), OTHER)
        w.add(_info("usr", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("usr/multi.bin", mode=0o755), rng.randbytes(150_000))
        w.add(_info("usr/holes.bin"), rng.randbytes(4000) + bytes(20_000) + rng.randbytes(4000))
        w.add(_info("usr/empty"), b"")
        w.add(_info("usr/link", tarfile.SYMTYPE, mode=0o777, linkname="multi.bin"))
        w.add(_info("usr/hard", tarfile.LNKTYPE, linkname="etc/hello.txt"))
        w.add(_info("dev", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3))
        w.add(_info("dev/fifo", tarfile.FIFOTYPE))
        w.add(_info("meta.txt", pax={"SCHILY.xattr.user.foo": "bar"}), b"meta\n")
        w.add(_info(".wh.gone"), b"")
    return buf.getvalue()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]],
           fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        w = _Writer(tf)
        for ti, data in members:
            w.add(ti, data)
    return buf.getvalue()


@dataclass
class LayerBlob:
    blob: bytes
    descriptor: dict[str, Any]
    kind: str = "zstd"  # how the plain tar is compressed: zstd, gzip or tar


def build(tar: bytes, *, old: bool = False, extra_old_keys: bool = True) -> LayerBlob:
    out = io.BytesIO()
    variant = chunked_format.OLD if old else chunked_format.CURRENT
    result = builder.build_blob(io.BytesIO(tar), out, variant=variant, threads=2,
                                extra_old_keys=extra_old_keys)
    return LayerBlob(out.getvalue(), result.descriptor())


@contextlib.contextmanager
def _names_unchecked() -> Iterator[None]:
    """Let build_blob take a name that is not UTF-8. The builder refuses those (the TOC
    cannot carry them the way Go does), but an attacker writes the TOC by hand, so the
    generator needs the same layer with a consistent TOC."""
    saved = getattr(builder, "_check_utf8", None)
    if saved is not None:
        builder._check_utf8 = lambda *names: None
    try:
        yield
    finally:
        if saved is not None:
            builder._check_utf8 = saved


@functools.cache
def _base_blob(old: bool) -> bytes:
    return build(base_tar(), old=old).blob


def plain_layer(tar: bytes, kind: str) -> LayerBlob:
    """A layer with no zstd:chunked annotations: gzip, plain zstd or an uncompressed tar."""
    blob = (_gzip(tar) if kind == "gzip" else zstd(tar) if kind == "zstd" else tar)
    media = {"gzip": GZIP_MEDIA, "zstd": ZSTD_MEDIA, "tar": TAR_MEDIA}[kind]
    return LayerBlob(blob, {"mediaType": media, "digest": sha(blob), "size": len(blob)}, kind)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()
