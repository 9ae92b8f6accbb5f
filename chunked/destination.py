"""Writing an image's files under a destination directory: never outside it, and never a
half-written file under a final name.

Every file is created relative to a directory descriptor opened component by component
with O_NOFOLLOW, so no symlink is ever followed out of the tree. Regular files are written
under a temporary name and renamed into place once complete: an interrupted pull leaves
only ``.chunked-tmp-*`` files, which the next pull removes.

Directories this pull created itself are known to be empty and plainly owned, which spares
a probe, an unlink and a chown per file: on a first pull these per-file system calls are
most of the time spent in the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import posixpath
import stat
from collections.abc import Iterator

from . import format as fmt
from .errors import ChunkedError

TMP_PREFIX = ".chunked-tmp-"
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_PIECE = 1 << 20
_ZEROS = bytes(_PIECE)


class UnsafePathError(ChunkedError):
    exit_code = 6


def check_name(raw: str, what: str) -> str:
    """The path relative to the destination, or UnsafePathError for one that would leave it."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if raw.startswith("/") or ".." in parts:
        raise UnsafePathError(f"{what} {raw!r} would land outside the destination; refusing")
    return "/".join(parts)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def digest_fd(fd: int, size: int) -> str:
    """sha256 of the first ``size`` bytes of an open file, read with pread."""
    h = hashlib.sha256()
    off = 0
    while off < size:
        piece = os.pread(fd, min(_PIECE, size - off), off)
        if not piece:
            break
        h.update(piece)
        off += len(piece)
    return "sha256:" + h.hexdigest()


def hash_zeros(h: hashlib._Hash, n: int) -> None:
    while n > 0:
        h.update(_ZEROS[:min(n, _PIECE)])
        n -= _PIECE


class Destination:
    """Directory descriptors under ROOT and the operations that create files beneath them.

    Safe to use from several threads once every directory a thread writes into has been
    opened (``dir_fd``) by the main thread: the writers then only read the table.
    """

    def __init__(self, root: str, as_root: bool):
        fresh = not os.path.lexists(root)
        os.makedirs(root, exist_ok=True)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if not fresh:
            fresh = not os.listdir(self.root_fd)
        # a set-group-ID root passes its group (and the bit, to directories) to what we make
        self._root_setgid = bool(os.fstat(self.root_fd).st_mode & stat.S_ISGID)
        self._fds: dict[str, int] = {"": self.root_fd}
        self._fresh: set[str] = {""} if fresh else set()
        self.as_root = as_root
        # a root-created file in a directory we made is owned 0:0 already
        self._plain_owner = as_root and os.getegid() == 0
        umask = os.umask(0)
        os.umask(umask)
        self._umask = umask
        self._pid = os.getpid()
        self._seq = itertools.count()  # next() on it is atomic under the GIL
        self.can_clone = True

    # -- directories -----------------------------------------------------------------------
    def dir_fd(self, rel: str) -> int:
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        parent, name = posixpath.split(rel)
        pfd = self.dir_fd(parent)
        created = False
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)  # as tar makes directories the layers omit
            created = True
        except FileExistsError:
            pass
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(f"{rel!r} in the destination is not a directory (a "
                                      "symlink?); refusing to write through it") from None
            raise
        self._fds[rel] = fd
        if created:
            self._fresh.add(rel)
        return fd

    def is_fresh(self, rel_dir: str) -> bool:
        """Whether this pull created the directory (so it held nothing before)."""
        return rel_dir in self._fresh

    def remove_leftovers(self, rel_dirs: set[str]) -> None:
        """Temporary files of an interrupted pull are never taken for results: drop them."""
        for rel in rel_dirs:
            if rel in self._fresh:
                continue
            try:
                fd = self.dir_fd(rel)
            except (UnsafePathError, OSError):
                continue
            for name in os.listdir(fd):
                if name.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- metadata --------------------------------------------------------------------------
    def apply_meta(self, e: fmt.TocEntry, name: str, dfd: int, fd: int | None,
                   owned: bool = False, created: int | None = None) -> None:
        """Owner, mode, xattrs and times of ``e`` on the open ``fd`` (or on ``name``).

        ``owned``: the object is known to be owned 0:0 already, and its permission bits are
        ``created`` (default ``e.mode & 0o777``) less the umask, so chown and chmod are
        skipped when they would change nothing."""
        mode = e.mode & 0o7777
        chown, chmod = self.owner_and_mode(e, owned, created)
        if chown:
            if fd is not None:
                os.fchown(fd, e.uid, e.gid)
            else:
                os.chown(name, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
        if fd is not None:
            if chmod:
                os.fchmod(fd, mode)
            for key, value in e.xattrs.items():
                with contextlib.suppress(OSError):  # e.g. security.* without privilege
                    os.setxattr(fd, key, value)
        elif e.type != fmt.TYPE_SYMLINK:
            os.chmod(name, mode, dir_fd=dfd, follow_symlinks=False)
        mtime = e.mtime or 0
        atime = e.atime if e.atime is not None else mtime
        if fd is not None:
            os.utime(fd, ns=(atime, mtime))
        else:
            os.utime(name, ns=(atime, mtime), dir_fd=dfd, follow_symlinks=False)

    def owner_and_mode(self, e: fmt.TocEntry, owned: bool,
                       created: int | None = None) -> tuple[bool, bool]:
        """Whether an object created with mode ``created`` (default ``e.mode & 0o777``)
        still needs a chown, and then a chmod (after the chown, which clears setuid bits)."""
        mode = e.mode & 0o7777
        if created is None:
            created = mode & 0o777
        chown = self.as_root and not (owned and e.uid == 0 and e.gid == 0)
        return chown, chown or not owned or mode != (created & ~self._umask)

    def owned(self, parent: str) -> bool:
        """Whether what we create in ``parent`` is owned 0:0 already."""
        return (self._plain_owner and parent in self._fresh
                and not (parent == "" and self._root_setgid))

    def tmp_name(self) -> str:
        return f"{TMP_PREFIX}{self._pid}-{next(self._seq)}"

    # -- regular files ---------------------------------------------------------------------
    @contextlib.contextmanager
    def new_file(self, path: str, e: fmt.TocEntry) -> Iterator[int]:
        """An fd to write ``path``'s bytes into; on a clean exit the file gets ``e``'s
        metadata and its final name, on an exception it is removed."""
        parent, name = posixpath.split(path)
        dfd = self._fds[parent]
        tmp = self.tmp_name()
        # read-write: a clone is hashed through the same descriptor
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     e.mode & 0o777, dir_fd=dfd)
        try:
            yield fd
            self.apply_meta(e, name, dfd, fd, owned=self.owned(parent))
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        finally:
            os.close(fd)

    def clone(self, fd: int, src_fd: int) -> bool:
        """Share ``src_fd``'s extents with ``fd`` (a reflink) if the file system can."""
        if not self.can_clone:
            return False
        try:
            fcntl.ioctl(fd, FICLONE, src_fd)
            return True
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENOSYS):
                self.can_clone = False  # ext4, tmpfs: copy from now on
                return False
            return False  # another device (EXDEV), an unclonable file: copy this one

    def link_file(self, path: str, src_fd: int) -> None:
        """Make ``path`` another name of the open file ``src_fd`` (a hard link)."""
        parent, name = posixpath.split(path)
        dfd = self._fds[parent]
        # linking the open descriptor links the very inode that was verified, whatever its
        # old path points at by now
        src = f"/proc/self/fd/{src_fd}"
        if parent in self._fresh:
            os.link(src, name, dst_dir_fd=dfd, follow_symlinks=True)
            return
        tmp = self.tmp_name()
        os.link(src, tmp, dst_dir_fd=dfd, follow_symlinks=True)
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise

    def matches_in_place(self, path: str, e: fmt.TocEntry) -> bool:
        """A file already in place (an earlier, interrupted pull) is kept if its bytes
        match; it then gets ``e``'s metadata."""
        parent, name = posixpath.split(path)
        dfd = self.dir_fd(parent)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
                return False
            if e.size and digest_fd(fd, e.size) != e.digest:
                return False
            self.apply_meta(e, name, dfd, fd)
            return True
        finally:
            os.close(fd)

    # -- everything else -------------------------------------------------------------------
    def special(self, path: str, e: fmt.TocEntry) -> bool:
        """A symlink, device or fifo; False if it needs privileges we lack (skipped)."""
        parent, name = posixpath.split(path)
        dfd = self.dir_fd(parent)
        if parent not in self._fresh:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise UnsafePathError(f"{e.name!r}: a directory is in the way")
                os.unlink(name, dir_fd=dfd)
        if e.type == fmt.TYPE_SYMLINK:
            os.symlink(e.link_name, name, dir_fd=dfd)
        elif e.type == fmt.TYPE_FIFO:
            os.mkfifo(name, e.mode & 0o7777, dir_fd=dfd)
        elif self.as_root:
            kind = stat.S_IFCHR if e.type == fmt.TYPE_CHAR else stat.S_IFBLK
            os.mknod(name, kind | (e.mode & 0o7777), os.makedev(e.dev_major, e.dev_minor),
                     dir_fd=dfd)
        else:
            return False
        self.apply_meta(e, name, dfd, None)
        return True

    def hardlink(self, path: str, target: str) -> None:
        tp, tn = posixpath.split(target)
        lp, ln = posixpath.split(path)
        ldfd = self.dir_fd(lp)
        if lp not in self._fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ln, dir_fd=ldfd)
        os.link(tn, ln, src_dir_fd=self.dir_fd(tp), dst_dir_fd=ldfd, follow_symlinks=False)

    def directory_meta(self, path: str, e: fmt.TocEntry) -> None:
        parent, name = posixpath.split(path)
        # a directory this pull made is 0755 (less the umask) and, under a parent we made,
        # owned 0:0: most directories of an image need only their times set
        owned = path in self._fresh and self.owned(parent)
        self.apply_meta(e, name, self.dir_fd(parent), self.dir_fd(path), owned=owned,
                        created=0o755)
