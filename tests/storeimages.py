"""Root filesystems for the additional layer store's tests: runnable, with every feature."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.layers import LOWER, MTIME, make_tar
from tests.tarfactory import features_tar

OS_RELEASE = b'PRETTY_NAME="chunked store test"\nID=chunked\n'
# What `cat` and `sh` need, from this host (Debian: no merged /usr in a tar we write).
_RUNNABLE = {
    "bin/cat": "/usr/bin/cat",
    "bin/sh": "/bin/dash",
    "lib/x86_64-linux-gnu/libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "lib64/ld-linux-x86-64.so.2": "/lib64/ld-linux-x86-64.so.2",
}
GZIP_TOP: dict[str, object] = {
    "gz": None, "gz/file": b"from the gzip layer\n", "etc/.wh.keep.conf": b"",
}


def _add(tf: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.mode = MTIME, mode
    if data is None:
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    else:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def runnable_tar(*, features: bool = False) -> bytes:
    """A root filesystem `podman run IMG cat /etc/os-release` works on; with ``features``,
    also every entry kind of :func:`features_tar` and the files :data:`LOWER` has (which
    :data:`UPPER` deletes, replaces and hides)."""
    buf = io.BytesIO()
    names: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        if features:
            with tarfile.open(fileobj=io.BytesIO(features_tar())) as src:
                for m in src.getmembers():
                    names.add(m.name)
                    out.addfile(m, src.extractfile(m) if m.isreg() else None)
        for d in ("bin", "etc", "lib", "lib/x86_64-linux-gnu", "lib64", "proc", "sys", "dev",
                  "tmp", "run"):
            if d not in names:
                names.add(d)
                _add(out, d, None, 0o755)
        for name, host in _RUNNABLE.items():
            _add(out, name, Path(host).read_bytes(), 0o755)
        _add(out, "etc/os-release", OS_RELEASE, 0o644)
        if features:
            lower = tarfile.open(fileobj=io.BytesIO(make_tar(LOWER)))
            for m in lower.getmembers():
                if m.name not in names:
                    out.addfile(m, lower.extractfile(m) if m.isreg() else None)
    return buf.getvalue()


__all__ = ["GZIP_TOP", "OS_RELEASE", "runnable_tar"]
