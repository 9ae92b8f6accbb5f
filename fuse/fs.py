"""A read-only FUSE filesystem over an image's merged root filesystem.

Metadata (getattr, readdir, readlink, xattrs) is answered from the TOCs held in
memory (:mod:`.tree`), with no I/O; file contents are fetched, verified and kept on
first read (:mod:`.lazy`).
"""

from __future__ import annotations

import errno
import json
from typing import Any

from mfusepy import FuseOSError, Operations

from chunked import format as fmt
from chunked.cache.chunks import ContentCache
from chunked.read.image import MergedView

from .lazy import LazyFiles
from .mount import notify_mounted
from .tree import Node, Tree

# Read while the mount is up: `getfattr -n user.chunked.stats --only-values MOUNTPOINT`
# or `chunked stats MOUNTPOINT`. Not listed by listxattr, so it stays out of copies.
STATS_XATTR = "user.chunked.stats"


def node_getxattr(node: Node, name: str) -> bytes:
    value = node.xattrs.get(name)
    if value is None:
        raise FuseOSError(errno.ENODATA)
    return value


def check_open(node: Node, flags: int) -> None:
    if flags & (0o1 | 0o2):  # O_WRONLY | O_RDWR
        raise FuseOSError(errno.EROFS)
    if node.info is None or node.info.entry.type != fmt.TYPE_REG:
        raise FuseOSError(errno.EISDIR if node.children is not None else errno.EACCES)


def node_readlink(node: Node) -> str:
    if node.info is None or node.info.entry.type != fmt.TYPE_SYMLINK:
        raise FuseOSError(errno.EINVAL)
    return node.info.entry.link_name


class ChunkedFS(Operations):
    use_ns = True

    def __init__(self, view: MergedView, *, cache_bytes: int = 256 << 20,
                 layer_digests: list[str] | None = None, disk: ContentCache | None = None):
        self.view = view
        self.files = LazyFiles(cache_bytes=cache_bytes, disk=disk)
        digests = layer_digests or [f"layer-{i}" for i in range(len(view.layers))]
        for layer, digest in zip(view.layers, digests, strict=True):
            self.files.add_layer(layer, digest)
        self.tree = Tree(view)
        self.nodes = self.tree.nodes

    def _node(self, path: str) -> Node:
        node = self.tree.get(path)
        if node is None:
            raise FuseOSError(errno.ENOENT)
        return node

    def start_prefetch(self, batch_bytes: int = 4 << 20):
        return self.files.start_prefetch(self.view.layers, batch_bytes)

    # -- metadata --------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self._node(path).attrs()

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, Any], int]]:
        # With use_ino the kernel takes d_ino from here; an entry without one (0) is
        # dropped by readdir(3), so every name carries its node's inode and type.
        listing = self.tree.listing(path)
        if listing is None:
            raise FuseOSError(errno.ENOENT if self.tree.get(path) is None else errno.ENOTDIR)
        return [(name, node.attrs(), 0) for name, node in listing]

    def readlink(self, path: str) -> str:
        return node_readlink(self._node(path))

    def stats_json(self) -> bytes:
        layers = [self.files.layer_stats(layer) for layer in self.view.layers]
        return json.dumps({"layers": layers}).encode()

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == STATS_XATTR and path == "/":
            return self.stats_json()
        return node_getxattr(self._node(path), name)

    def listxattr(self, path: str) -> list[str]:
        return list(self._node(path).xattrs)

    def init(self, path: str) -> None:
        notify_mounted()  # a background mount's command returns now

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def open(self, path: str, flags: int) -> int:
        check_open(self._node(path), flags)
        return 0

    # -- data ----------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.files.read(self._node(path), size, offset)
