"""A view's paths as FUSE nodes: attributes, children and inode numbers, in memory.

A view (:class:`chunked.read.image.MergedView` for ``mount``,
:class:`chunked.read.layerview.OverlayLayerView` for the store) gives paths and, for each,
the layer and entry that answer it. The tree adds what a filesystem needs: one node per
inode (hard links share theirs), directories the layers did not list, and children lists
for readdir.
"""

from __future__ import annotations

import collections
import logging
import os
import posixpath
import stat
import threading
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from chunked import format as fmt
from chunked.errors import ChunkedError
from chunked.read.layer import FileInfo, clean_name
from chunked.read.protocol import LayerReader

log = logging.getLogger("chunked.fuse")

_TYPE_BITS = {
    fmt.TYPE_REG: stat.S_IFREG, fmt.TYPE_DIR: stat.S_IFDIR, fmt.TYPE_SYMLINK: stat.S_IFLNK,
    fmt.TYPE_CHAR: stat.S_IFCHR, fmt.TYPE_BLOCK: stat.S_IFBLK, fmt.TYPE_FIFO: stat.S_IFIFO,
}

UNCHECKED, CHECKED, BAD = 0, 1, -1


class View(Protocol):
    """Paths of a filesystem and the layer entry behind each."""

    layers: list[LayerReader]

    @property
    def paths(self) -> Iterable[str]: ...

    def lookup(self, path: str) -> tuple[LayerReader, FileInfo]: ...


class Node(msgspec.Struct, gc=False):
    """A path of the tree. Its attributes are derived from its entry when asked (a dict
    per path would cost more memory than the entry itself). A Struct: made in C, one per
    path of every tree."""

    ino: int
    info: FileInfo | None = None  # None: a directory the layers do not list
    layer: LayerReader | None = None
    nlink: int = 1
    children: list[str] | None = None
    # a file of several chunks is served only once it has been checked whole
    state: int = UNCHECKED
    lock: threading.Lock | None = None

    def attrs(self) -> dict[str, Any]:
        if self.info is None:
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0,
                    "st_ino": self.ino}
        e = self.info.entry
        mtime = e.mtime or 0
        return {
            "st_mode": _TYPE_BITS.get(e.type, stat.S_IFREG) | (e.mode & 0o7777),
            "st_ino": self.ino, "st_nlink": 2 if e.type == fmt.TYPE_DIR else self.nlink,
            "st_uid": e.uid, "st_gid": e.gid, "st_size": e.size if e.type != "dir" else 0,
            "st_mtime": mtime, "st_atime": e.atime or mtime, "st_ctime": e.ctime or mtime,
            "st_rdev": os.makedev(e.dev_major, e.dev_minor)
            if e.type in (fmt.TYPE_CHAR, fmt.TYPE_BLOCK) else 0,
            "st_blocks": (e.size + 511) // 512,
        }

    @property
    def xattrs(self) -> dict[str, bytes]:
        return (self.info.entry.xattrs or {}) if self.info is not None else {}


class Tree:
    """Every path of a view as a :class:`Node`, keyed ``/``, ``/etc``, ``/etc/hosts``.

    Inode numbers start after ``ino_base``: a filesystem serving several trees gives each
    its own range, so no two of its paths share an inode by accident."""

    def __init__(self, view: View, ino_base: int = 0):
        self.view = view
        self._next_ino = ino_base
        self.nodes = self._build()

    def _build(self) -> dict[str, Node]:
        # Every mount and every layer of the store builds one before it answers anything:
        # the loop is kept tight (names bound once, the parent found by rpartition).
        nodes: dict[str, Node] = {"/": Node(self._new_ino(), children=[])}
        # hard links share an inode: count the names of each target
        inodes: dict[int, Node] = {}
        links: collections.Counter[int] = collections.Counter()
        resolved: dict[str, tuple[LayerReader, FileInfo]] = {}
        lookup = self.view.lookup
        for path in self.view.paths:
            try:
                layer, info = lookup(path)
            except ChunkedError as exc:
                # one bad hard link costs that name, not the mount
                log.warning("%s: left out: %s", path, exc)
                continue
            resolved[path] = (layer, info)
            links[id(info)] += 1
        dir_type, ino = fmt.TYPE_DIR, self._next_ino
        get = nodes.get
        for path in sorted(resolved):
            layer, info = resolved[path]
            node = inodes.get(id(info))
            if node is None:
                ino += 1
                node = inodes[id(info)] = Node(ino, info, layer, links[id(info)])
            full = "/" + path if path else "/"
            old = get(full)
            if old is not None and old.children is not None:
                node.children = old.children
            elif info.entry.type == dir_type:
                node.children = []
            nodes[full] = node
            if not path:
                continue
            parent, _, base = full.rpartition("/")
            pnode = get(parent or "/")
            if pnode is not None:  # the common case: the parent came first, sorted
                if pnode.children is not None:
                    pnode.children.append(base)
                continue
            self._next_ino = ino
            self._attach(nodes, full)
            ino = self._next_ino
        self._next_ino = ino
        return nodes

    def _new_ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

    def _attach(self, nodes: dict[str, Node], full: str) -> None:
        """Link full into its parent, creating parents the layers did not list."""
        while full != "/":
            parent = posixpath.dirname(full)
            pnode = nodes.get(parent)
            created = pnode is None
            if pnode is None:
                pnode = nodes[parent] = Node(self._new_ino(), children=[])
            if pnode.children is None:
                return  # beneath a non-directory: the view keeps no such path
            pnode.children.append(posixpath.basename(full))
            if not created:
                return
            full = parent

    def get(self, path: str) -> Node | None:
        """The node of a path as FUSE gives it (``/`` or ``/a/b``), None if there is none."""
        return self.nodes.get(path if path == "/" else "/" + clean_name(path))

    def listing(self, path: str) -> list[tuple[str, Node]] | None:
        """``.``, ``..`` and the children of a directory, with their nodes."""
        full = path if path == "/" else "/" + clean_name(path)
        node = self.nodes.get(full)
        if node is None or node.children is None:
            return None
        parent = self.nodes.get(posixpath.dirname(full), node)
        out = [(".", node), ("..", parent)]
        out += [(name, self.nodes[posixpath.join(full, name)]) for name in node.children]
        return out
