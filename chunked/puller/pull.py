"""Partial pull: write an image's merged root filesystem into a directory, fetching only
the chunks this host does not already have.

Paths are checked before anything is written (:func:`check_tree`); then directories,
regular files (:mod:`chunked.puller.files`: from the destination itself after an interrupted
pull, from earlier pulls' files, from local chunks, else fetched), symlinks, devices and
fifos alongside them, hard links, and last the directories' metadata, deepest first.
Everything is written through :class:`chunked.puller.destination.Destination`, which never
follows a symlink and renames each file into place only once it is complete and verified.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable

from chunked import format as fmt
from chunked.cache.chunks import ContentCache
from chunked.cache.pulls import PullIndex
from chunked.digest import Digest
from chunked.errors import VerifyError
from chunked.puller.destination import Destination, UnsafePathError, check_name
from chunked.puller.files import FileWriter, Job, PullSummary
from chunked.puller.treehash import Item, TreeHash
from chunked.read.consistency import tarsplit_pairs
from chunked.read.image import Image
from chunked.read.layer import ChunkedLayer, FileInfo
from chunked.read.protocol import LayerReader

__all__ = ["PullSummary", "UnsafePathError", "check_tree", "pull_image"]

log = logging.getLogger("chunked.puller.pull")

def check_tree(image: Image) -> dict[str, tuple[LayerReader, FileInfo]]:
    """The merged tree to write, every name and hard link checked to stay under DEST."""
    for il in image.layers:
        for e in il.layer.entries:
            check_name(e.name, "entry")
            if e.type == fmt.TYPE_HARDLINK:
                check_name(e.link_name, f"hard link {e.name!r} ->")
    view = image.merged()
    tree: dict[str, tuple[LayerReader, FileInfo]] = {}
    safe = {""}  # directories whose every ancestor is a directory (or absent)
    for path in sorted(view.entries):
        m = view.entries[path]
        # a path beneath a non-directory (a symlink above all) would be written through it
        parent = path.rpartition("/")[0]
        climbed = []
        while parent not in safe:
            above = view.entries.get(parent)
            if above is not None and above.info.entry.type != fmt.TYPE_DIR:
                raise UnsafePathError(f"{path!r} lies beneath {parent!r}, which is a "
                                      f"{above.info.entry.type}; refusing to write through it")
            climbed.append(parent)
            parent = parent.rpartition("/")[0]
        safe.update(climbed)
        tree[path] = (view.layers[m.layer_index], m.info)
    for path in tree:
        _link_target(tree, path)
    return tree


def _link_target(tree: dict[str, tuple[LayerReader, FileInfo]], path: str) -> str:
    """The entry a hard link shares its inode with, following links to links."""
    seen = {path}
    e = tree[path][1].entry
    while e.type == fmt.TYPE_HARDLINK:
        target = check_name(e.link_name, f"hard link {e.name!r} ->")
        if target not in tree or tree[target][1].entry.type == fmt.TYPE_DIR or target in seen:
            raise UnsafePathError(f"hard link {tree[path][1].entry.name!r} -> "
                                  f"{e.link_name!r}: no such file in the image")
        seen.add(target)
        path, e = target, tree[target][1].entry
    return path


def pull_image(image: Image, dest: str, *, cache: ContentCache | None = None,
               hardlink: bool = False,
               progress: Callable[..., None] | None = None) -> PullSummary:
    """Write ``image`` into ``dest``. ``cache`` is the local store (chunks of the lazy
    mount, and the record of earlier pulls); ``hardlink`` lets files whose metadata match
    share the inode of an earlier pull's copy instead of being copied."""
    start = time.monotonic()
    # tens of thousands of long-lived entries and no reference cycles: the collector
    # would only walk them over and over
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _pull(image, dest, cache, hardlink, progress, start)
    finally:
        if gc_was_enabled:
            gc.enable()


def _pull(image: Image, dest: str, cache: ContentCache | None, hardlink: bool,
          progress: Callable[..., None] | None, start: float) -> PullSummary:
    tree = check_tree(image)
    log.debug("%.2f s: %d entries checked", time.monotonic() - start, len(tree))
    dest = os.path.abspath(dest)
    index = None
    if cache is not None:
        index = PullIndex(cache.root)
        index.load()
    summary = PullSummary()
    d = Destination(dest, as_root=os.geteuid() == 0)
    try:
        for p, (_, info) in tree.items():
            if info.entry.type == fmt.TYPE_DIR:
                d.make_dir(p)
        parents = {posixpath.dirname(p) for p in tree}
        for p in parents:
            d.make_dir(p)
        d.remove_leftovers(parents | {""})
        todo: list[Job] = []
        for p, (layer, info) in tree.items():
            if info.entry.type != fmt.TYPE_REG:
                continue
            if not d.is_fresh(posixpath.dirname(p)) and d.matches_in_place(p, info.entry):
                summary.bytes_reused += info.entry.size
                summary.reused_by["inPlace"] += 1
            else:
                todo.append(Job(p, layer, info))
        log.debug("%.2f s: directories made, %d files to write", time.monotonic() - start,
                  len(todo))
        # symlinks, devices and fifos need nothing fetched: made alongside the files, on two
        # threads as each is a slow system call (symlinkat: ~150 us here)
        special = [(p, info.entry) for p, (_, info) in tree.items() if info.entry.type in
                   (fmt.TYPE_SYMLINK, fmt.TYPE_CHAR, fmt.TYPE_BLOCK, fmt.TYPE_FIFO)]
        in_place = {id(info) for _, (_, info) in tree.items()} - {id(j.info) for j in todo}
        written = _Written(in_place)
        writer = FileWriter(d, cache, index, hardlink, summary, progress, written.add)
        with cf.ThreadPoolExecutor(2, "chunked-special") as side, \
                cf.ThreadPoolExecutor(1, "chunked-check") as checker:
            halves = [side.submit(_specials, d, special[i::2]) for i in range(2)]
            # each layer's tar is rebuilt as its files land, not after the last one
            check = checker.submit(check_diff_ids, image, tree, d, written.wait,
                                   written.done)
            try:
                if progress:  # bytes of the files still to write, known only now
                    progress(0, total=sum(job.info.entry.size for job in todo))
                writer.run(todo)
                written.abort()  # every file is in place: a wait for another is a bug
                for half in halves:
                    summary.skipped += half.result()
                log.debug("%.2f s: files written", time.monotonic() - start)
                for p, (_layer, info) in tree.items():
                    if info.entry.type == fmt.TYPE_HARDLINK:
                        d.hardlink(p, _link_target(tree, p))
                # deepest first: a directory's mode may take away the search permission
                # that a pull without root reaches its subdirectories through
                for p in sorted((p for p, (_, i) in tree.items()
                                 if i.entry.type == fmt.TYPE_DIR),
                                key=lambda x: -x.count("/")):
                    d.directory_meta(p, tree[p][1].entry)
                log.debug("%.2f s: hard links and directory metadata done",
                          time.monotonic() - start)
            except BaseException:
                written.abort()
                raise
            check.result()
        log.debug("%.2f s: DiffIDs rebuilt and checked", time.monotonic() - start)
    finally:
        d.close()
    if index is not None:
        index.record(dest, ((p, info) for p, (_, info) in tree.items()
                            if info.entry.type == fmt.TYPE_REG))
    summary.seconds = time.monotonic() - start
    return summary


class _Aborted(Exception):
    """No more files will come: the pull failed, or (a bug) a file was never written."""


class _Written:
    """Which regular files of the tree are in place, for a reader that follows them in
    another order than they are written."""

    def __init__(self, done: set[int]):
        self._done = done
        self._cond = threading.Condition()
        self._aborted = False

    def add(self, info: FileInfo) -> None:
        with self._cond:
            self._done.add(id(info))
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def done(self, info: FileInfo) -> bool:
        return id(info) in self._done  # a set's lookup is atomic under the GIL

    def wait(self, info: FileInfo) -> None:
        with self._cond:
            while id(info) not in self._done:
                if self._aborted:
                    raise _Aborted(info.entry.name)
                self._cond.wait()


def check_diff_ids(image: Image, tree: dict[str, tuple[LayerReader, FileInfo]],
                   d: Destination,
                   wait: Callable[[FileInfo], None] = lambda _info: None,
                   done: Callable[[FileInfo], bool] = lambda _info: True) -> None:
    """Each lazily read layer's tar, rebuilt from its tar-split and the files as written
    (a file a later layer hides, as fetched), must be the tar the config's DiffID names,
    as podman >= 5.4 checks: the tree then holds what a full pull would have given. (A
    layer read whole was held to its DiffID when it was opened.) A file reused from an
    earlier pull was held to its TOC digest on the way in but not to the tar-split's CRC-64:
    the rebuilt DiffID covers its every byte, which the CRC would only repeat. ``done``
    tells whether a file is in place yet, ``wait`` returns once it is, so the check runs
    beside the writing."""
    written = {id(info): path for path, (_, info) in tree.items()
               if info.entry.type == fmt.TYPE_REG}
    lazy = [(i, il, il.layer) for i, il in enumerate(image.layers)
            if isinstance(il.layer, ChunkedLayer)]
    with cf.ThreadPoolExecutor(2, "chunked-diffid") as pool:
        rebuilt = [pool.submit(_rebuilt_diff_id, layer, tree, written, d, wait, done)
                   for _, _, layer in lazy]
        for (i, il, _), fut in zip(lazy, rebuilt, strict=True):
            if fut.result() != il.diff_id:
                raise VerifyError(f"layer {i} ({il.descriptor.digest}): the files pulled and "
                                  f"its tar-split make a tar of DiffID {fut.result()}, the "
                                  f"config says {il.diff_id}")


# files and bytes hashed per TreeHash call: each call is one hand-off of the GIL, and its
# directories stay pinned meanwhile
_HASH_FILES = 256
_HASH_BYTES = 16 << 20


def _rebuilt_diff_id(layer: ChunkedLayer, tree: dict[str, tuple[LayerReader, FileInfo]],
                     written: dict[int, str], d: Destination,
                     wait: Callable[[FileInfo], None],
                     done: Callable[[FileInfo], bool]) -> str:
    """What :func:`chunked.read.consistency.rebuilt_diff_id` computes, each file read back
    from the destination (a file another layer hides: as fetched), in batches."""
    h = TreeHash()
    batch: list[Item] = []
    paths: dict[int, str] = {}  # index in batch -> path, for the error
    dirs: dict[str, int] = {}  # pinned for the batch
    size = 0

    def flush() -> None:
        nonlocal size
        try:
            failure = h.update(batch)
        finally:
            for parent in dirs:
                d.unpin(parent)
            dirs.clear()
        if failure is not None:
            index, err, stage = failure
            path = paths[index]
            if not err:
                raise VerifyError(f"{path}: changed in the destination during the pull")
            raise OSError(err, f"{stage} {path!r} to check the DiffID: {os.strerror(err)}")
        batch.clear()
        paths.clear()
        size = 0

    infos = iter(layer.files.values())
    for gap, ts in tarsplit_pairs(layer):
        if gap:
            batch.append(bytes(gap))
            size += len(gap)
        if ts is None:
            continue
        info = next(infos)
        e = info.entry
        if e.type != fmt.TYPE_REG or not e.size:
            continue
        path = written.get(id(info))
        if path is None or tree[path][0] is not layer:
            for piece in layer.iter_file(info):  # hidden: fetched, every digest checked
                batch.append(bytes(piece))
                size += len(piece)
                if size >= _HASH_BYTES:
                    flush()
            continue
        if not done(info):
            flush()  # what is in place already, while this one is written
            wait(info)
        parent, name = posixpath.split(path)
        dfd = dirs.get(parent)
        if dfd is None:
            dfd = dirs[parent] = d.pin(parent)
        paths[len(batch)] = path
        batch.append((dfd, os.fsencode(name), e.size))
        size += e.size
        if len(paths) >= _HASH_FILES or size >= _HASH_BYTES:
            flush()
    flush()
    return Digest.from_hex(h.hexdigest())  # (a TreeHash: the sha256 of the tree's listing)


def _specials(d: Destination, entries: list[tuple[str, fmt.TocEntry]]) -> list[str]:
    return [e.name for p, e in entries if not d.special(p, e)]
