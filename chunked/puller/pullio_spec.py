"""The executable spec of ``chunked/puller/_pullio.c``: the same entry points, job records,
results and errors, in plain Python.

``tests/test_pullio.py`` runs every test on both, so the C may only be faster, never
different. Where the C module is not built, :mod:`chunked.puller.pullio` hands this one out
instead. It is written to be obviously what the C does, not fast: one system call per
step, in the C's order.

``copy_files(jobs)``: files an earlier pull wrote, one job per file::

    (src: bytes, dirfd: int, tmp: bytes, name: bytes, size: int, mode: int, uid: int,
     gid: int, atime_ns: int, mtime_ns: int, chown: bool, chmod: bool, sha256: bytes[32],
     link: bool)

The source is opened without following a symlink and must be a regular file of ``size``
bytes. It is cloned (FICLONE) where the destination's file system can, else hard-linked
when ``link`` and its mode, owner, mtime and (absent) xattrs match the entry's, else copied
while hashing; what was written must hash to ``sha256``. Status 2 cloned, 3 linked, 1
copied, 0 a miss (source gone, changed or unreadable: nothing left behind), -1 writing the
destination failed (errno, stage; "stat" if its directory cannot be told apart).

``write_files(jobs)``: files from chunks already fetched and verified::

    (dirfd: int, tmp: bytes, name: bytes, size: int, mode: int, uid: int, gid: int,
     atime_ns: int, mtime_ns: int, chown: bool, chmod: bool, pieces: list, sha256: bytes)

A piece is a chunk's bytes or the int length of a hole (seeked over, so it stays a hole;
a file ending in one is truncated to ``size``). ``sha256`` is empty or the whole file's
digest: status -2 if the pieces do not add up to it. Status 1 written, -1 (errno, stage).

Both return ``[(status, errno, stage), ...]``, ``errno`` 0 and ``stage`` None unless the
status is -1. The first job with a negative status ends the batch: every later job is a
miss (0) and was not touched. Every job is parsed before any is run: a malformed one raises
(TypeError, ValueError, OverflowError) and nothing is done.

Each file is created under ``tmp`` in ``dirfd`` (O_EXCL | O_NOFOLLOW: a name in the way,
symlink or not, fails at stage "create"), gets its owner (``chown``), then its mode
(``chmod``: after the chown, which clears setuid bits; else it keeps ``mode & 0o777`` less
the umask), then its times, and only then is renamed over ``name``: an existing file there
is replaced whole, never written into, and a symlink there is replaced, never followed.
Nothing is fsynced: a pull's durability is the file system's, and a file left half-written
by a crash is only ever under a temporary name or is caught by the next pull's digest check
of files in place.

Reflink capability is remembered per destination file system (``st_dev`` of the job's
directory), process-wide: once a file system answers FICLONE with EOPNOTSUPP, ENOTTY or
ENOSYS, files there are copied (or linked) without asking again, while a pull into another
file system in the same process still clones. EXDEV or EINVAL (another device, an
unclonable file) only make that one file a copy.

``TreeHash`` is :class:`chunked.puller.treehash.PyTreeHash`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from chunked.puller.treehash import PyTreeHash as TreeHash

__all__ = ["TreeHash", "clone", "copy_files", "write_files"]

MISS, COPIED, CLONED, LINKED, WRITTEN, FAILED, MISMATCH = 0, 1, 2, 3, 1, -1, -2
Result = tuple[int, int, str | None]
T = TypeVar("T")
J = TypeVar("J")

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_BUF = 1 << 20
_ID_MAX = 0xFFFFFFFE  # uid_t; (uid_t)-1 would mean "leave unchanged" to chown
_LL_MIN, _LL_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_SSIZE_MAX = (1 << 63) - 1
_ZEROS = memoryview(bytes(1 << 16))
_NO_CLONE_ERRORS = (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENOSYS)

# devices (st_dev) whose file system cannot clone at all
_no_clone: set[int] = set()
_no_clone_lock = threading.Lock()


def can_clone(dev: int) -> bool:
    with _no_clone_lock:
        return dev not in _no_clone


def clone(dst_fd: int, src_fd: int, dev: int) -> bool:
    """FICLONE ``src_fd`` into ``dst_fd``, whose file system is ``dev``, unless that file
    system is known not to clone; True if it did. A file system that cannot clone at all
    is remembered."""
    if not can_clone(dev):
        return False
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in _NO_CLONE_ERRORS:
            with _no_clone_lock:
                _no_clone.add(dev)
        return False


# -- parsing: what PyArg_ParseTuple and the converters of _pullio.c accept ----------------

def _bytes_path(v: object) -> bytes:  # "S", then dup_bytes
    if not isinstance(v, bytes):
        raise TypeError(f"a path must be bytes, not {type(v).__name__}")
    if b"\0" in v:
        raise ValueError("embedded NUL in a path")
    return v


def _int(v: object, lo: int, hi: int, what: str) -> int:  # "i", "L"
    if isinstance(v, float) or not hasattr(v, "__index__"):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    n = v.__index__()  # type: ignore[attr-defined]
    if not lo <= n <= hi:
        raise OverflowError(f"{what} out of range")
    return n


def _id(v: object) -> int:  # to_id: PyLong_AsUnsignedLong, then at most 2^32 - 2
    if not isinstance(v, int):
        raise TypeError(f"an integer is required, not {type(v).__name__}")
    if v < 0 or v > _ID_MAX:
        raise OverflowError("uid, gid or mode out of range")
    return v


def _digest(v: object) -> bytes:  # "y#"
    if not isinstance(v, bytes):
        raise TypeError(f"sha256 must be bytes, not {type(v).__name__}")
    return v


def _tuple(t: object, n: int, func: str) -> tuple[object, ...]:
    if not isinstance(t, tuple):
        raise TypeError(f"{func}: a job must be a tuple, not {type(t).__name__}")
    if len(t) != n:
        raise TypeError(f"{func}: a job has {n} items, not {len(t)}")
    return t


def _jobs(jobs: Iterable[object], func: str) -> list[object]:
    try:
        return list(jobs)
    except TypeError:
        raise TypeError(f"{func} expects a list of jobs") from None


@dataclass
class _Meta:
    """What ``finish`` gives a complete file."""

    dirfd: int
    tmp: bytes
    name: bytes
    size: int
    mode: int
    uid: int
    gid: int
    atime: int
    mtime: int
    chown: bool
    chmod: bool


@dataclass
class CopyJob(_Meta):
    src: bytes
    expected: bytes
    link: bool


@dataclass
class WriteJob(_Meta):
    pieces: list[bytes | int]
    expected: bytes  # b"": no whole-file check


def _meta(dirfd: object, tmp: object, name: object, size: object, mode: object,
          uid: object, gid: object, atime: object, mtime: object, chown: object,
          chmod: object) -> dict[str, object]:
    return {"dirfd": _int(dirfd, _INT_MIN, _INT_MAX, "dirfd"), "tmp": _bytes_path(tmp),
            "name": _bytes_path(name), "size": _int(size, _LL_MIN, _LL_MAX, "size"),
            "mode": _id(mode), "uid": _id(uid), "gid": _id(gid),
            "atime": _int(atime, _LL_MIN, _LL_MAX, "atime"),
            "mtime": _int(mtime, _LL_MIN, _LL_MAX, "mtime"),
            "chown": bool(chown), "chmod": bool(chmod)}


def _parse_copy(t: object) -> CopyJob:
    (src, dirfd, tmp, name, size, mode, uid, gid, atime, mtime, chown, chmod, digest,
     link) = _tuple(t, 14, "copy_files")
    src = _bytes_path(src)  # checked in the C's order: the source first
    meta = _meta(dirfd, tmp, name, size, mode, uid, gid, atime, mtime, chown, chmod)
    expected = _digest(digest)
    if len(expected) != 32:
        raise ValueError("sha256 must be 32 bytes")
    return CopyJob(**meta, src=src, expected=expected, link=bool(link))  # type: ignore[arg-type]


def _parse_write(t: object) -> WriteJob:
    (dirfd, tmp, name, size, mode, uid, gid, atime, mtime, chown, chmod, pieces,
     digest) = _tuple(t, 13, "write_files")
    meta = _meta(dirfd, tmp, name, size, mode, uid, gid, atime, mtime, chown, chmod)
    if not isinstance(pieces, list):
        raise TypeError(f"pieces must be a list, not {type(pieces).__name__}")
    expected = _digest(digest)
    if len(expected) not in (0, 32):
        raise ValueError("sha256 must be empty or 32 bytes")
    parsed: list[bytes | int] = []
    for p in pieces:
        if isinstance(p, bytes):
            parsed.append(p)
            continue
        if not isinstance(p, int):
            raise TypeError(f"a piece is bytes or an int, not {type(p).__name__}")
        if p > _SSIZE_MAX:
            raise OverflowError("a hole is too long")
        if p < 0:
            raise ValueError("a hole must not be negative")
        parsed.append(int(p))
    return WriteJob(**meta, pieces=parsed, expected=expected)  # type: ignore[arg-type]


# -- running -------------------------------------------------------------------------------

class _Failed(Exception):
    """Writing the destination failed: (errno, stage)."""

    def __init__(self, err: int, stage: str):
        super().__init__(err, stage)
        self.err, self.stage = err, stage


def _step(stage: str, call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    except OSError as exc:
        raise _Failed(exc.errno or 0, stage) from None


def _unlink_quietly(dirfd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _sha256_of(fd: int, size: int) -> bytes | None:
    """SHA-256 of the first ``size`` bytes of ``fd``; None on a read error or a short file."""
    h = hashlib.sha256()
    off = 0
    while off < size:
        try:
            piece = os.pread(fd, min(_BUF, size - off), off)
        except OSError:
            return None
        if not piece:
            return None
        h.update(piece)
        off += len(piece)
    return h.digest()


def _finish(j: _Meta, fd: int) -> None:
    """Owner, mode and times of a complete file, then its final name."""
    if j.chown:  # chmod after chown, which clears setuid bits
        _step("chown", os.fchown, fd, j.uid, j.gid)
    if j.chmod:
        _step("chmod", os.fchmod, fd, j.mode & 0o7777)
    _step("utimens", lambda: os.utime(fd, ns=(j.atime, j.mtime)))
    _step("rename", lambda: os.rename(j.tmp, j.name, src_dir_fd=j.dirfd,
                                      dst_dir_fd=j.dirfd))


def _create(j: _Meta, flags: int) -> int:
    return _step("create", lambda: os.open(
        j.tmp, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        j.mode & 0o777, dir_fd=j.dirfd))


def _same_meta(sfd: int, st: os.stat_result, j: CopyJob) -> bool:
    """Whether sharing the source's inode would show exactly the entry's metadata (only
    entries without xattrs come here, so the source must have none either)."""
    if (st.st_mode & 0o7777) != (j.mode & 0o7777) or st.st_uid != j.uid or \
            st.st_gid != j.gid or st.st_mtime_ns != j.mtime:
        return False
    try:
        return os.listxattr(sfd) == []
    except OSError:
        return False


def _link(j: CopyJob, sfd: int) -> int:
    """A hard link to the verified source: the very inode hashed, through /proc/self/fd,
    under the temporary name first so an existing file is replaced atomically."""
    if _sha256_of(sfd, j.size) != j.expected:
        return MISS
    _step("link", lambda: os.link(f"/proc/self/fd/{sfd}", j.tmp, dst_dir_fd=j.dirfd,
                                  follow_symlinks=True))
    try:
        _step("rename", lambda: os.rename(j.tmp, j.name, src_dir_fd=j.dirfd,
                                          dst_dir_fd=j.dirfd))
    except _Failed:
        _unlink_quietly(j.dirfd, j.tmp)
        raise
    return LINKED


def _copy_one(j: CopyJob, devs: dict[int, int]) -> int:
    try:
        # O_NONBLOCK: a fifo put there since is a miss, not an open that waits for a writer
        sfd = os.open(j.src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return MISS  # gone or replaced since that pull: only a hint
    try:
        try:
            st = os.fstat(sfd)
        except OSError:
            return MISS
        if not stat.S_ISREG(st.st_mode) or st.st_size != j.size:
            return MISS
        dev = _dest_dev(j.dirfd, devs)
        # a reflink where the file system can, else a hard link when asked and the metadata
        # allow, else a copy
        linkable = j.link and _same_meta(sfd, st, j)
        if linkable and not can_clone(dev):
            return _link(j, sfd)
        dfd = _create(j, os.O_RDWR)
        try:
            if clone(dfd, sfd, dev):
                how = CLONED
                got = _sha256_of(dfd, j.size)  # what the clone holds, not what the source did
            elif linkable:
                os.close(dfd)
                dfd = -1
                _unlink_quietly(j.dirfd, j.tmp)
                return _link(j, sfd)
            else:
                how = COPIED
                got = _copy_hashing(sfd, dfd, j.size)
            if got != j.expected:
                os.close(dfd)
                dfd = -1
                _unlink_quietly(j.dirfd, j.tmp)
                return MISS
            _finish(j, dfd)
            return how
        except _Failed:
            if dfd >= 0:
                os.close(dfd)
                dfd = -1
                _unlink_quietly(j.dirfd, j.tmp)
            raise
        finally:
            if dfd >= 0:
                os.close(dfd)
    finally:
        os.close(sfd)


def _dest_dev(dirfd: int, devs: dict[int, int]) -> int:
    """The file system of the destination directory, asked once per directory per call
    (the caller holds its descriptor open meanwhile)."""
    dev = devs.get(dirfd)
    if dev is None:
        dev = devs[dirfd] = _step("stat", os.fstat, dirfd).st_dev
    return dev


def _copy_hashing(sfd: int, dfd: int, size: int) -> bytes | None:
    """Copy ``size`` bytes, hashing exactly the bytes written; their digest, or None if
    the source could not be read to the end (a miss)."""
    h = hashlib.sha256()
    off = 0
    while off < size:
        try:
            piece = os.pread(sfd, min(_BUF, size - off), off)
        except OSError:
            return None
        if not piece:
            return None
        h.update(piece)
        _write_all(dfd, piece)
        off += len(piece)
    return h.digest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_step("write", os.write, fd, view):]


def _batch(jobs: list[J], run: Callable[[J], int]) -> list[Result]:
    out: list[Result] = []
    for j in jobs:
        try:
            status = run(j)
        except _Failed as f:
            out.append((FAILED, f.err, f.stage))
        else:
            out.append((status, 0, None))
        if out[-1][0] < 0:
            # a failing destination fails the pull: stop here
            out += [(MISS, 0, None)] * (len(jobs) - len(out))
            break
    return out


def copy_files(jobs: Iterable[object]) -> list[Result]:
    parsed = [_parse_copy(t) for t in _jobs(jobs, "copy_files")]
    devs: dict[int, int] = {}
    return _batch(parsed, lambda j: _copy_one(j, devs))


def _write_one(j: WriteJob) -> int:
    fd = _create(j, os.O_WRONLY)
    try:
        h = hashlib.sha256() if j.expected else None
        hole_last = False
        for p in j.pieces:
            if isinstance(p, int):
                _step("seek", os.lseek, fd, p, os.SEEK_CUR)  # a hole, as upstream writes it
                if h is not None:
                    for left in range(p, 0, -len(_ZEROS)):
                        h.update(_ZEROS[:left])
                hole_last = True
            else:
                _write_all(fd, p)
                if h is not None:
                    h.update(p)
                hole_last = False
        if hole_last:
            _step("truncate", os.ftruncate, fd, j.size)
        if h is not None and h.digest() != j.expected:
            os.close(fd)
            fd = -1
            _unlink_quietly(j.dirfd, j.tmp)
            return MISMATCH
        _finish(j, fd)
        return WRITTEN
    except _Failed:
        os.close(fd)
        fd = -1
        _unlink_quietly(j.dirfd, j.tmp)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def write_files(jobs: Iterable[object]) -> list[Result]:
    return _batch([_parse_write(t) for t in _jobs(jobs, "write_files")], _write_one)
