"""The plain truth: the layer as any zstd (or gzip) decoder and GNU tar see it, the only
truth the oracle trusts (:class:`Plain`); and :func:`walk`, which reads a tree (GNU tar's
extraction, what pull wrote, or what a FUSE mount serves) into :class:`Node` entries."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import posixpath
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard


@dataclass
class Node:
    """One path of a tree: what GNU tar extracted, what pull wrote or what a mount serves."""

    kind: str  # file, dir, symlink, other
    size: int = 0  # bytes read (files)
    sha: str = ""  # sha256 of those bytes
    more: bool = False  # the file had bytes beyond the read cap
    data: bytes | None = None  # the bytes themselves, when small (reference side)
    target: bytes = b""  # symlink target
    error: str = ""  # errno name of a failed open or read
    # under a mount, size, sha, more and error of the buffered read that follows the
    # O_DIRECT one (whose results are the fields above)
    buffered: list[Any] | None = None

    def wire(self, path: bytes) -> dict[str, Any]:
        return {"p": path.hex(), "k": self.kind, "n": self.size, "h": self.sha, "m": self.more,
                "t": self.target.hex(), "e": self.error, "b": self.buffered}

    @classmethod
    def unwire(cls, doc: dict[str, Any]) -> tuple[bytes, Node]:
        return bytes.fromhex(doc["p"]), cls(doc["k"], doc["n"], doc["h"], doc["m"], None,
                                            bytes.fromhex(doc["t"]), doc["e"], doc["b"])


Tree = dict[bytes, Node]


@dataclass
class Plain:
    """The layer as any zstd (or gzip) decoder and GNU tar see it: the oracle's truth."""

    diff_id: str | None  # sha256 of the decompressed stream; None when it does not decompress
    tree: Tree | None  # GNU tar's extraction; None when there is nothing to compare with
    why: str = ""
    # The stream's members by name, the last of each (hard links resolved): what a lazy
    # reader serves for a name GNU tar will not extract (one beneath a symlink, say).
    members: Tree = field(default_factory=dict)


def _pieces(path: Path, kind: str) -> Iterator[bytes]:
    import gzip

    with open(path, "rb") as f:
        stream: Any = (gzip.GzipFile(fileobj=f) if kind == "gzip" else
                       zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
                       if kind == "zstd" else f)
        while piece := stream.read(1 << 20):
            yield piece


def _plain(path: Path, kind: str, stage: Path) -> Plain:
    """Stream the decompressed layer into GNU tar (as tests/trees.py extracts layers) while
    hashing all of it: the diff_id covers bytes tar never reads."""
    stage.mkdir(parents=True)
    with tempfile.TemporaryFile() as err:
        tar = subprocess.Popen(["tar", "-x", "--numeric-owner", "-C", str(stage), "-f", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert tar.stdin is not None
        h = hashlib.sha256()
        feeding, failure = True, ""
        try:
            for piece in _pieces(path, kind):
                h.update(piece)
                if feeding:
                    try:
                        tar.stdin.write(piece)
                    except BrokenPipeError:  # tar stops after the end-of-archive blocks
                        feeding = False
        except (zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
            failure = f"the plain decompression fails: {exc}"
        finally:
            with contextlib.suppress(OSError):
                tar.stdin.close()
            tar.wait()
        err.seek(0)
        tar_says = err.read().decode(errors="replace")
    if failure:
        return Plain(None, None, failure)
    diff_id = "sha256:" + h.hexdigest()
    if "does not look like a tar archive" in tar_says:
        return Plain(diff_id, None, "the plain decompression is not a tar")
    tree = dict(walk(stage, 1 << 40, keep=1 << 20))
    return Plain(diff_id, tree, members=_members(path, kind))


class _Stream(io.RawIOBase):
    """A file over an iterator of pieces: tarfile reads what it needs and stops."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._rest:
            self._rest = next(self._pieces, b"")
        n = min(len(b), len(self._rest))
        b[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _members(path: Path, kind: str) -> Tree:
    out: Tree = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Stream(_pieces(path, kind))),
                          mode="r|") as tf:
            for m in tf:
                key = os.fsencode(rooted_clean(m.name))
                if m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    h, data = hashlib.sha256(), bytearray()
                    while piece := f.read(1 << 20):
                        h.update(piece)
                        if len(data) <= 1 << 20:
                            data += piece
                    out[key] = Node("file", m.size, h.hexdigest(),
                                    data=bytes(data) if m.size <= 1 << 20 else None)
                elif m.islnk():
                    target = out.get(os.fsencode(rooted_clean(m.linkname)))
                    if target is not None:
                        out[key] = target
                else:
                    out[key] = Node("dir" if m.isdir() else "symlink" if m.issym() else "other")
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError):
        pass  # what was read so far is all the stream offers
    return out


def _merge(trees: list[Tree | None]) -> Tree | None:
    """Layers applied in order with overlay whiteouts, as tests/trees.apply_whiteouts does
    on disk: a layer's whiteouts act on the layers below it, then its entries land."""
    root: Tree = {}
    for tree in trees:
        if tree is None:
            return None
        for path in tree:
            parent, _, base = path.rpartition(b"/")
            if base == b".wh..wh..opq":
                _drop(root, parent, keep_top=True)
            elif base.startswith(b".wh."):
                _drop(root, (parent + b"/" if parent else b"") + base[4:])
        for path, node in tree.items():
            if path.rpartition(b"/")[2].startswith(b".wh."):
                continue
            old = root.get(path)
            if old is not None and (old.kind != "dir" or node.kind != "dir"):
                _drop(root, path)
            root[path] = node
    return root


def _drop(tree: Tree, path: bytes, *, keep_top: bool = False) -> None:
    prefix = path + b"/" if path else b""
    for p in [p for p in tree if p.startswith(prefix) or (p == path and not keep_top)]:
        del tree[p]


def walk(root: str | Path, cap: int, *, keep: int = 0, limit: int = 200_000,
         before: Callable[[bytes], None] | None = None,
         fine: bool = False) -> Iterator[tuple[bytes, Node]]:
    """Every path under root, files read up to ``cap`` bytes (``fine``: first in small
    O_DIRECT pieces, then buffered, see FINE_PIECE). Directory by directory through
    descriptors (never a path longer than one name, so depth is no limit), with one
    descriptor per level open at a time."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    frames: list[tuple[int, bytes, list[str]]] = []
    count = 0
    try:
        frames.append((top, b"", []))
        dirs = yield from _visit(top, b"", cap, keep, before, fine)
        frames[-1] = (top, b"", dirs)
        while frames:
            fd, rel, todo = frames[-1]
            if not todo:
                os.close(fd)
                frames.pop()
                continue
            name = todo.pop()
            path = (rel + b"/" if rel else b"") + os.fsencode(name)
            count += 1
            if count > limit or len(frames) > 10_000:
                raise _Truncated(f"more than {limit} directories or deeper than 10000")
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                yield path, Node("dir", error=errno.errorcode.get(exc.errno or 0, str(exc)))
                continue
            frames.append((child, path, []))
            dirs = yield from _visit(child, path, cap, keep, before, fine)
            frames[-1] = (child, path, dirs)
    finally:
        for fd, _, _ in frames:
            os.close(fd)


class _Truncated(Exception):
    pass


def _visit(fd: int, rel: bytes, cap: int, keep: int, before: Callable[[bytes], None] | None,
           fine: bool) -> Iterator[tuple[bytes, Node]]:
    """The entries of one directory; returns the names of its subdirectories."""
    dirs: list[str] = []
    try:
        names = sorted(os.listdir(fd), reverse=True)
    except OSError as exc:
        yield rel, Node("dir", error=errno.errorcode.get(exc.errno or 0, str(exc)))
        return dirs
    for name in names:
        path = (rel + b"/" if rel else b"") + os.fsencode(name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            yield path, Node("other", error=errno.errorcode.get(exc.errno or 0, str(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            dirs.append(name)
            yield path, Node("dir")
        elif stat.S_ISLNK(st.st_mode):
            try:
                yield path, Node("symlink", target=os.fsencode(os.readlink(name, dir_fd=fd)))
            except OSError as exc:
                yield path, Node("symlink", error=errno.errorcode.get(exc.errno or 0, ""))
        elif stat.S_ISREG(st.st_mode):
            if before:
                before(path)
            yield path, _read(fd, name, cap, keep, fine)
        else:
            yield path, Node("other")
    return dirs


# Under a mount, a file is first read with O_DIRECT in pieces of this many bytes: each
# pread reaches the server as one request at that offset (the page cache would round it),
# and a prime below 1000 puts a request edge inside every chunk boundary that is off by
# 1,000 bytes or less. Past FINE_SPAN, pieces of 1 MiB.
FINE_PIECE = 997
FINE_SPAN = 512 << 10


def _read(dir_fd: int, name: str, cap: int, keep: int, fine: bool) -> Node:
    node = _read_once(dir_fd, name, cap, keep, direct=fine)
    if fine:  # the page-cache path too, judged on its own: each may serve wrong bytes
        again = _read_once(dir_fd, name, cap, 0, direct=False)
        node.buffered = [again.size, again.sha, again.more, again.error]
    return node


def _read_once(dir_fd: int, name: str, cap: int, keep: int, *, direct: bool) -> Node:
    h = hashlib.sha256()
    kept = bytearray()
    size = 0
    node = Node("file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if direct and exc.errno == errno.EINVAL:  # no O_DIRECT here: buffered only
            return _read_once(dir_fd, name, cap, keep, direct=False)
        node.error = errno.errorcode.get(exc.errno or 0, str(exc))
        return node
    try:
        while size < cap:
            step = FINE_PIECE if direct and size < FINE_SPAN else 1 << 20
            piece = os.pread(fd, min(step, cap - size), size)
            if not piece:
                break
            h.update(piece)
            size += len(piece)
            if size <= keep:
                kept += piece
        node.more = size >= cap and bool(os.pread(fd, 1, size))
    except OSError as exc:
        node.error = errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        os.close(fd)
    node.size, node.sha = size, h.hexdigest()
    node.data = bytes(kept) if keep and size <= keep else None
    return node


def rooted_clean(name: str) -> str:
    """The path a name lands at below the root, ``..`` stopping at the root."""
    return posixpath.normpath("/" + name).lstrip("/")
