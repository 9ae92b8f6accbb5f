"""Generated tars covering every tar feature a container layer carries.

Small and deterministic (seeded), so tests need no binary fixtures.
"""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass

MTIME = 1_700_000_000


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, uid: int = 0,
          gid: int = 0, mtime: float = MTIME, linkname: str = "", devmajor: int = 0,
          devminor: int = 0, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
    ti.linkname, ti.devmajor, ti.devminor = linkname, devmajor, devminor
    if pax:
        ti.pax_headers = dict(pax)
    return ti


@dataclass
class _Writer:
    tf: tarfile.TarFile

    def add(self, ti: tarfile.TarInfo, data: bytes | None = None) -> None:
        if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            ti.size = len(data or b"")
            self.tf.addfile(ti, io.BytesIO(data or b""))
        else:
            ti.size = 0
            self.tf.addfile(ti)


def _holes(rng: random.Random) -> bytes:
    # zero runs: at the start, below the 1024 threshold, exactly at it, long, and at the end
    return (bytes(3000) + rng.randbytes(9000) + bytes(1023) + rng.randbytes(5000) + bytes(1024)
            + rng.randbytes(100) + bytes(200_000) + rng.randbytes(70_000) + bytes(4096))


# a file capability as the kernel takes it (VFS_CAP_REVISION_2, effective, permitted
# CAP_NET_BIND_SERVICE: 20 bytes); a shorter value is refused by setxattr and getxattr
CAPABILITY = b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + bytes(12)


def features_tar(fmt: int = tarfile.PAX_FORMAT, seed: int = 1) -> bytes:
    """Every feature: all entry types, whiteouts, long names, xattrs, holes, odd names."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        w = _Writer(tf)
        w.add(_info("etc", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("etc/hello.txt", uid=1000, gid=1000), b"hello\n")
        w.add(_info("etc/empty"), b"")
        w.add(_info("usr", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("usr/random.bin", mode=0o755), rng.randbytes(400_000))
        w.add(_info("usr/holes.bin"), _holes(rng))
        w.add(_info("usr/zeros.bin"), bytes(2 << 20))
        w.add(_info("usr/small-zeros.bin"), bytes(1000))
        text = b"".join(b"line %d of some text\n" % i for i in range(20_000))
        w.add(_info("usr/text.txt"), text)
        w.add(_info("usr/link", tarfile.SYMTYPE, mode=0o777, linkname="random.bin"))
        w.add(_info("usr/abs-link", tarfile.SYMTYPE, mode=0o777, linkname="/etc/hello.txt"))
        w.add(_info("usr/hard", tarfile.LNKTYPE, linkname="etc/hello.txt"))
        w.add(_info("dev", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3))
        w.add(_info("dev/sda", tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=8, devminor=0))
        w.add(_info("dev/fifo", tarfile.FIFOTYPE))
        w.add(_info("old", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("old/.wh.gone"), b"")
        w.add(_info("old/opaque", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("old/opaque/.wh..wh..opq"), b"")
        w.add(_info("bin", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("bin/suid", mode=0o4755), b"#!/bin/sh\n")
        w.add(_info("bin/sgid", mode=0o2755, gid=50), b"#!/bin/sh\n")
        w.add(_info("tmp", tarfile.DIRTYPE, mode=0o1777))
        long_dir = "deep/" + "/".join(f"component-{i:02d}-{'x' * 30}" for i in range(8))
        w.add(_info("deep", tarfile.DIRTYPE, mode=0o755))
        w.add(_info(long_dir, tarfile.DIRTYPE, mode=0o755))
        w.add(_info(long_dir + "/file-with-a-long-name.txt"), b"deep\n")
        w.add(_info("deep/long-link", tarfile.SYMTYPE, mode=0o777,
                    linkname="../" * 40 + "target"))
        names = ["with space", "tab\there", "new\nline", 'quote"d', "back\\slash", "a&b<c>d",
                 "caf\u00e9-\u65e5\u672c", "sep\u2028line", "ctl\x01\x7f", "emoji-\U0001f4e6"]
        w.add(_info("names", tarfile.DIRTYPE, mode=0o755))
        for i, n in enumerate(names):
            w.add(_info(f"names/{n}"), b"name %d\n" % i)
        if fmt == tarfile.PAX_FORMAT:
            w.add(_info("meta.txt", pax={
                "SCHILY.xattr.user.foo": "bar",
                "SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1"),
                "atime": "1700000100.25", "ctime": "1700000200",
            }, mtime=MTIME + 0.5), b"meta\n")
            w.add(_info("big-ids", uid=3_000_000, gid=3_000_000), b"ids\n")
        w.add(_info("epoch", mtime=0), b"epoch\n")
    return buf.getvalue()


def gnu_tar() -> bytes:
    """GNU format: L/K long name records, base-256 ids, ./ prefixes."""
    rng = random.Random(2)
    buf = io.BytesIO()
    long_name = "./gnu/" + "long-component-" * 10 + "end.txt"
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        w = _Writer(tf)
        w.add(_info(".", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("./gnu", tarfile.DIRTYPE, mode=0o755))
        w.add(_info(long_name), b"long\n")
        w.add(_info("./gnu/long-symlink", tarfile.SYMTYPE, mode=0o777,
                    linkname="../" * 3 + "t" * 150))
        w.add(_info("./gnu/long-hardlink", tarfile.LNKTYPE, linkname=long_name))
        w.add(_info("./gnu/big-uid", uid=3_000_000, gid=3_000_000), b"ids\n")
        w.add(_info("./gnu/data.bin"), rng.randbytes(150_000))
    return buf.getvalue()


def ustar_tar() -> bytes:
    """USTAR with the prefix field carrying the directory of a long name."""
    buf = io.BytesIO()
    name = "p" * 90 + "/" + "q" * 40 + "/file.txt"
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        w = _Writer(tf)
        w.add(_info(name), b"prefix\n")
        w.add(_info("plain.txt"), b"plain\n")
    return buf.getvalue()


def without_padding(tar: bytes) -> bytes:
    """The tar cut right after its two end-of-archive blocks, as Go's writer leaves it."""
    end = len(tar.rstrip(b"\0"))
    end += -end % 512
    return tar[:end + 1024]


def all_tars() -> dict[str, bytes]:
    feats = features_tar()
    return {
        "pax-features": feats,
        "gnu-features": features_tar(tarfile.GNU_FORMAT, seed=3),
        "gnu-long": gnu_tar(),
        "ustar-prefix": ustar_tar(),
        "no-padding": without_padding(feats),
        "empty": b"\0" * 10240,
    }
