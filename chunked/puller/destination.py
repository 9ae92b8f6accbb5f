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

import collections
import contextlib
import errno
import hashlib
import itertools
import os
import posixpath
import stat
import threading
from collections.abc import Iterable, Iterator

from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import ChunkedError
from chunked.puller import pullio_spec

TMP_PREFIX = ".chunked-tmp-"
_PIECE = 1 << 20


class UnsafePathError(ChunkedError):
    exit_code = 6


def check_name(raw: str, what: str) -> str:
    """The path relative to the destination, or UnsafePathError for one that would leave it."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
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
    return Digest.from_hash(h)


def entry_times(e: fmt.TocEntry) -> tuple[int, int]:
    """(atime, mtime) in ns as a file gets them: no time is the epoch, no atime the mtime."""
    mtime = e.mtime or 0
    return (e.atime if e.atime is not None else mtime), mtime


# Directory descriptors kept open at once. A pull of an image with thousands of
# directories must work under the usual `ulimit -n 1024`; descriptors in use by a batch
# (pinned) come on top, bounded by the batch sizes of the pull.
MAX_DIR_FDS = 256


class Destination:
    """Directory descriptors under ROOT and the operations that create files beneath them.

    Directories are opened component by component with O_NOFOLLOW and kept in a bounded
    table (least recently used out first); a descriptor in use is pinned (``pinned``) so
    no other thread closes it meanwhile. Safe to use from several threads.
    """

    def __init__(self, root: str, as_root: bool):
        fresh = not os.path.lexists(root)
        os.makedirs(root, exist_ok=True)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if not fresh:
            fresh = not os.listdir(self.root_fd)
        # a set-group-ID root passes its group (and the bit, to directories) to what we make
        self._root_setgid = bool(os.fstat(self.root_fd).st_mode & stat.S_ISGID)
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pins: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._fresh: set[str] = {""} if fresh else set()
        self.as_root = as_root
        # a root-created file in a directory we made is owned 0:0 already
        self._plain_owner = as_root and os.getegid() == 0
        umask = os.umask(0)
        os.umask(umask)
        self._umask = umask
        self._pid = os.getpid()
        self._seq = itertools.count()  # next() on it is atomic under the GIL

    # -- directories -----------------------------------------------------------------------
    def make_dir(self, rel: str) -> None:
        """Create ``rel`` and what is missing above it (0755, as tar makes directories the
        layers omit); refuse anything on the way that is not a directory."""
        with self.pinned(rel):
            pass

    @contextlib.contextmanager
    def pinned(self, rel: str) -> Iterator[int]:
        """An open descriptor of the directory ``rel``, kept open until the block ends."""
        fd = self._pin(rel)
        try:
            yield fd
        finally:
            self.unpin(rel)

    def pin(self, rel: str) -> int:
        """Like ``pinned``, for a caller that unpins (``unpin``) when done."""
        return self._pin(rel)

    def unpin(self, rel: str) -> None:
        with self._lock:
            self._pins[rel] -= 1
            if not self._pins[rel]:
                del self._pins[rel]
            self._trim()

    def _pin(self, rel: str) -> int:
        with self._lock:
            fd = self._fds.get(rel) if rel else self.root_fd
            if fd is not None:
                self._pins[rel] += 1
                if rel:
                    self._fds.move_to_end(rel)
                return fd
            # the deepest ancestor already open; then one component at a time (no recursion:
            # a path may be thousands of directories deep)
            parts = rel.split("/")
            depth = len(parts) - 1
            while depth > 0 and "/".join(parts[:depth]) not in self._fds:
                depth -= 1
            fd = self._fds["/".join(parts[:depth])] if depth else self.root_fd
            for i in range(depth, len(parts)):
                here = "/".join(parts[:i + 1])
                fd = self._open_child(fd, parts[i], here)
                self._fds[here] = fd  # the ancestors too: their siblings come next
                if i + 1 < len(parts):
                    # never the one the next component is opened in: with every other
                    # entry pinned, it would be closed before use (EBADF, or its number
                    # reused by another thread's open, and the walk gone astray)
                    self._trim(keep=here)
            self._pins[rel] += 1
            self._trim()
            return fd

    def _open_child(self, pfd: int, name: str, rel: str) -> int:
        created = False
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)
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
        if created:
            self._fresh.add(rel)
        return fd

    def _trim(self, keep: str | None = None) -> None:
        # the lock is held
        if len(self._fds) <= MAX_DIR_FDS:
            return
        for rel in list(self._fds):
            if len(self._fds) <= MAX_DIR_FDS:
                break
            if rel not in self._pins and rel != keep:
                os.close(self._fds.pop(rel))

    def is_fresh(self, rel_dir: str) -> bool:
        """Whether this pull created the directory (so it held nothing before)."""
        return rel_dir in self._fresh

    def remove_leftovers(self, rel_dirs: Iterable[str]) -> None:
        """Temporary files of an interrupted pull are never taken for results: drop them."""
        for rel in rel_dirs:
            if rel in self._fresh:
                continue
            try:
                with self.pinned(rel) as fd:
                    for name in os.listdir(fd):
                        if name.startswith(TMP_PREFIX):
                            with contextlib.suppress(OSError):
                                os.unlink(name, dir_fd=fd)
            except (UnsafePathError, OSError):
                continue

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            os.close(self.root_fd)
            self.root_fd = -1

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
            for key, value in (e.xattrs or {}).items():
                with contextlib.suppress(OSError):  # e.g. security.* without privilege
                    os.setxattr(fd, key, value)
        elif e.type != fmt.TYPE_SYMLINK:
            os.chmod(name, mode, dir_fd=dfd, follow_symlinks=False)
        atime, mtime = entry_times(e)
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
        with self.pinned(parent) as dfd:
            tmp = self.tmp_name()
            # read-write: a clone is hashed through the same descriptor
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, e.mode & 0o777, dir_fd=dfd)
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
        """Share ``src_fd``'s extents with ``fd`` (a reflink) if the file system can; what
        it cannot is remembered per file system, as the batch copier does."""
        return pullio_spec.clone(fd, src_fd, os.fstat(fd).st_dev)

    def link_file(self, path: str, src_fd: int) -> None:
        """Make ``path`` another name of the open file ``src_fd`` (a hard link)."""
        parent, name = posixpath.split(path)
        # linking the open descriptor links the very inode that was verified, whatever its
        # old path points at by now
        src = f"/proc/self/fd/{src_fd}"
        with self.pinned(parent) as dfd:
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
        with self.pinned(parent) as dfd:
            try:
                # O_NONBLOCK: a fifo in place would block the open until a writer came
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
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
        with self.pinned(parent) as dfd:
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
        with self.pinned(lp) as ldfd, self.pinned(tp) as tdfd:
            if lp not in self._fresh:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(ln, dir_fd=ldfd)
            os.link(tn, ln, src_dir_fd=tdfd, dst_dir_fd=ldfd, follow_symlinks=False)

    def directory_meta(self, path: str, e: fmt.TocEntry) -> None:
        parent, name = posixpath.split(path)
        # a directory this pull made is 0755 (less the umask) and, under a parent we made,
        # owned 0:0: most directories of an image need only their times set
        owned = path in self._fresh and self.owned(parent)
        with self.pinned(parent) as pfd, self.pinned(path) as fd:
            self.apply_meta(e, name, pfd, fd, owned=owned, created=0o755)
