"""Partial pull: write an image's merged root filesystem into a directory, fetching only
the chunks that neither the destination nor the local store already has.

Every path lands under DEST: names that climb out (``..``, absolute names), hard links
to outside, and anything beneath a symlink are refused before anything is written, and
every file is created relative to an open directory descriptor with O_NOFOLLOW, so no
symlink is ever followed. Files are written under a temporary name and renamed into
place once complete and verified: an interrupted pull leaves no file that looks
complete, and the next pull reuses every file already in place (after re-hashing it).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import hashlib
import itertools
import os
import posixpath
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import format as fmt
from .cache import ContentCache
from .errors import ChunkedError, InputError, VerifyError
from .image import AnyLayer, Image
from .reader import ChunkRef, FileInfo

TMP_PREFIX = ".chunked-tmp-"
_TMP_SEQ = itertools.count()  # unique temporary names across writer threads
_BATCH = 16 << 20


class UnsafePathError(ChunkedError):
    exit_code = 6


@dataclass
class PullSummary:
    bytes_fetched: int = 0
    bytes_reused: int = 0
    files_fetched: int = 0
    files_reused: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"bytesFetched": self.bytes_fetched, "bytesReused": self.bytes_reused,
                "filesFetched": self.files_fetched, "filesReused": self.files_reused,
                "seconds": round(self.seconds, 3)}


def _check_name(raw: str, what: str) -> str:
    """The path relative to DEST, or UnsafePathError for one that would leave it."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if raw.startswith("/") or ".." in parts:
        raise UnsafePathError(f"{what} {raw!r} would land outside the destination; refusing")
    return "/".join(parts)


def check_tree(image: Image) -> dict[str, tuple[AnyLayer, FileInfo]]:
    """The merged tree to write, every name and hard link checked to stay under DEST."""
    for il in image.layers:
        for e in il.layer.entries:
            _check_name(e.name, "entry")
            if e.type == fmt.TYPE_HARDLINK:
                _check_name(e.link_name, f"hard link {e.name!r} ->")
    view = image.merged()
    tree: dict[str, tuple[AnyLayer, FileInfo]] = {}
    for path in sorted(view.entries):
        m = view.entries[path]
        # a path beneath a non-directory (a symlink above all) would be written through it
        parent = posixpath.dirname(path)
        while parent:
            above = view.entries.get(parent)
            if above is not None and above.info.entry.type != fmt.TYPE_DIR:
                raise UnsafePathError(f"{path!r} lies beneath {parent!r}, which is a "
                                      f"{above.info.entry.type}; refusing to write through it")
            parent = posixpath.dirname(parent)
        tree[path] = (view.layers[m.layer_index], m.info)
    return tree


class _Dest:
    """Directory descriptors under DEST, opened component by component, never following
    a symlink."""

    def __init__(self, root: str):
        os.makedirs(root, exist_ok=True)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds: dict[str, int] = {"": self.root_fd}

    def dir_fd(self, rel: str) -> int:
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        parent, name = posixpath.split(rel)
        pfd = self.dir_fd(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=pfd)  # as tar makes directories the layers omit
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(f"{rel!r} in the destination is not a directory (a "
                                      "symlink?); refusing to write through it") from None
            raise
        self._fds[rel] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)


def _digest_of(fd: int) -> str:
    h = hashlib.sha256()
    while piece := os.read(fd, 1 << 20):
        h.update(piece)
    return "sha256:" + h.hexdigest()


def _apply_meta(e: fmt.TocEntry, name: str, dfd: int, fd: int | None, as_root: bool) -> None:
    if as_root:
        if fd is not None:
            os.fchown(fd, e.uid, e.gid)
        else:
            os.chown(name, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
    if fd is not None:
        os.fchmod(fd, e.mode & 0o7777)  # after chown, which clears setuid bits
        for key, value in e.xattrs.items():
            with contextlib.suppress(OSError):  # e.g. security.* without privilege
                os.setxattr(fd, key, value)
    elif e.type != fmt.TYPE_SYMLINK:
        os.chmod(name, e.mode & 0o7777, dir_fd=dfd, follow_symlinks=False)
    mtime = e.mtime or 0
    atime = e.atime if e.atime is not None else mtime
    if fd is not None:
        os.utime(fd, ns=(atime, mtime))
    else:
        os.utime(name, ns=(atime, mtime), dir_fd=dfd, follow_symlinks=False)


def pull_image(image: Image, dest: str, *, cache: ContentCache | None = None,
               progress: Callable[[int], None] | None = None) -> PullSummary:
    start = time.monotonic()
    tree = check_tree(image)
    summary = PullSummary()
    as_root = os.geteuid() == 0
    d = _Dest(dest)
    try:
        _remove_leftovers(d, tree)
        dirs = [p for p, (_, i) in tree.items() if i.entry.type == fmt.TYPE_DIR]
        for p in dirs:
            d.dir_fd(p)
        files = [(p, layer, info) for p, (layer, info) in tree.items()
                 if info.entry.type == fmt.TYPE_REG]
        todo = []
        for p, layer, info in files:
            if _reuse_in_place(d, p, info, as_root):
                summary.files_reused += 1
                summary.bytes_reused += info.entry.size
            else:
                todo.append((p, layer, info))
        _write_files(d, todo, cache, as_root, summary, progress)
        for p, (_layer, info) in tree.items():
            e = info.entry
            parent, name = posixpath.split(p)
            dfd = d.dir_fd(parent)
            if e.type in (fmt.TYPE_SYMLINK, fmt.TYPE_CHAR, fmt.TYPE_BLOCK, fmt.TYPE_FIFO):
                _replace_special(e, name, dfd, as_root, summary)
        _write_hardlinks(d, tree)
        for p in sorted(dirs, key=lambda x: -x.count("/")):
            e = tree[p][1].entry
            parent, name = posixpath.split(p)
            fd = d.dir_fd(p)
            _apply_meta(e, name, d.dir_fd(parent), fd, as_root)
    finally:
        d.close()
    summary.seconds = time.monotonic() - start
    return summary


def _remove_leftovers(d: _Dest, tree: dict[str, tuple[AnyLayer, FileInfo]]) -> None:
    """Temporary files of an interrupted pull are never taken for results: drop them."""
    for rel in {posixpath.dirname(p) for p in tree} | {""}:
        try:
            fd = d.dir_fd(rel)
        except (UnsafePathError, OSError):
            continue
        for name in os.listdir(fd):
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)


def _reuse_in_place(d: _Dest, path: str, info: FileInfo, as_root: bool) -> bool:
    """A file already in place (an earlier, interrupted pull) is kept if its bytes match."""
    parent, name = posixpath.split(path)
    dfd = d.dir_fd(parent)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        e = info.entry
        if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return False
        if e.size and _digest_of(fd) != e.digest:
            return False
        _apply_meta(e, name, dfd, fd, as_root)
        return True
    finally:
        os.close(fd)


def _write_files(d: _Dest, todo: list[tuple[str, AnyLayer, FileInfo]],
                 cache: ContentCache | None, as_root: bool, summary: PullSummary,
                 progress: Callable[[int], None] | None) -> None:
    """Chunks from the local store first; the rest fetched in large batches per layer,
    each file written as soon as all its chunks are at hand."""
    have: dict[str, bytes] = {}
    need: dict[int, tuple[AnyLayer, list[ChunkRef]]] = {}
    wanted: set[str] = set()
    for _path, layer, info in todo:
        for c in info.chunks:
            if c.zeros or c.digest in have or c.digest in wanted:
                continue
            data = cache.get(c.digest) if cache is not None else None
            if data is not None and len(data) == c.size:
                have[c.digest] = data
                summary.bytes_reused += c.size
            else:
                wanted.add(c.digest)
                need.setdefault(id(layer), (layer, []))[1].append(c)
    owner = {c.start: info.entry.name for _, _, info in todo for c in info.chunks}
    pending = dict.fromkeys(path for path, _, _ in todo)
    fetched_files = {path for path, _, info in todo
                     if any(c.digest in wanted for c in info.chunks)}
    done = 0

    # File writes are system calls that release the GIL: two threads keep the disk busy
    # while the main thread fetches. Every parent directory exists before they start, so
    # they only read the descriptor table.
    for path, _, _ in todo:
        d.dir_fd(posixpath.dirname(path))
    writers = cf.ThreadPoolExecutor(2, "chunked-write")

    def flush_ready() -> None:
        nonlocal done
        ready = [(path, info) for path, _layer, info in todo if path in pending
                 and all(c.zeros or c.digest in have for c in info.chunks)]
        jobs = [writers.submit(_write_file, d, path, info, have, as_root)
                for path, info in ready]
        for (path, info), job in zip(ready, jobs, strict=True):
            job.result()
            del pending[path]
            done += info.entry.size
            if progress:
                progress(done)

    flush_ready()
    for layer, chunks in need.values():
        for i in range(0, len(chunks), 1024):
            group = chunks[i:i + 1024]
            batch: list[ChunkRef] = []
            size = 0
            for c in group:
                batch.append(c)
                size += c.end - c.start
                if size >= _BATCH or c is group[-1]:
                    for ref, data in layer.read_chunks(batch, owner):
                        have[ref.digest] = data
                        summary.bytes_fetched += ref.end - ref.start
                        if cache is not None:
                            writers.submit(_store, cache, ref.digest, data)
                    batch, size = [], 0
                    flush_ready()
    writers.shutdown()
    summary.files_fetched += len(fetched_files)
    summary.files_reused += len(todo) - len(fetched_files)
    if pending:
        raise InputError(f"pull: {len(pending)} files could not be completed")


def _store(cache: ContentCache, digest: str, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):  # a full store costs reuse, not results
        cache.put(digest, data)


def _write_file(d: _Dest, path: str, info: FileInfo, have: dict[str, bytes],
                as_root: bool) -> None:
    parent, name = posixpath.split(path)
    dfd = d.dir_fd(parent)
    tmp = f"{TMP_PREFIX}{os.getpid()}-{next(_TMP_SEQ)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        # Each chunk was verified against its digest; a file of several chunks is also
        # checked whole (that its chunks add up to the file the TOC describes).
        h = hashlib.sha256() if len(info.chunks) > 1 else None
        for c in info.chunks:
            if c.zeros:
                os.lseek(fd, c.size, os.SEEK_CUR)  # a hole, as upstream writes it
                data = bytes(c.size) if h is not None else b""
            else:
                data = have[c.digest]
                os.write(fd, data)
            if h is not None:
                h.update(data)
        os.ftruncate(fd, info.entry.size)
        if h is not None and "sha256:" + h.hexdigest() != info.entry.digest:
            raise VerifyError(f"{info.entry.name}: content does not match its digest")
        _apply_meta(info.entry, name, dfd, fd, as_root)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(fd)


def _replace_special(e: fmt.TocEntry, name: str, dfd: int, as_root: bool,
                     summary: PullSummary) -> None:
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"{e.name!r}: a directory is in the way")
        os.unlink(name, dir_fd=dfd)
    if e.type == fmt.TYPE_SYMLINK:
        os.symlink(e.link_name, name, dir_fd=dfd)
    elif e.type == fmt.TYPE_FIFO:
        os.mkfifo(name, e.mode & 0o7777, dir_fd=dfd)
    elif as_root:
        kind = stat.S_IFCHR if e.type == fmt.TYPE_CHAR else stat.S_IFBLK
        os.mknod(name, kind | (e.mode & 0o7777), os.makedev(e.dev_major, e.dev_minor),
                 dir_fd=dfd)
    else:
        summary.skipped.append(e.name)
        return
    _apply_meta(e, name, dfd, None, as_root)


def _write_hardlinks(d: _Dest, tree: dict[str, tuple[AnyLayer, FileInfo]]) -> None:
    for path, (_layer, info) in tree.items():
        e = info.entry
        if e.type != fmt.TYPE_HARDLINK:
            continue
        target = _check_name(e.link_name, f"hard link {e.name!r} ->")
        if target not in tree or tree[target][1].entry.type == fmt.TYPE_DIR:
            raise UnsafePathError(f"hard link {e.name!r} -> {e.link_name!r}: no such file "
                                  "in the image")
        tp, tn = posixpath.split(target)
        lp, ln = posixpath.split(path)
        ldfd = d.dir_fd(lp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ln, dir_fd=ldfd)
        os.link(tn, ln, src_dir_fd=d.dir_fd(tp), dst_dir_fd=ldfd, follow_symlinks=False)

