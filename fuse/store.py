"""The additional layer store as a FUSE filesystem (see :mod:`chunked.layerstore`).

    /                                   the store (``chunked stats`` reads its xattr)
    /<base64 of ref>/                   an image, resolved on lookup
    /<base64 of ref>/<key>/             a zstd:chunked layer, its TOC opened on lookup
                           diff/        the layer's tree in the overlay driver's format
                           info         JSON, as containers/storage decodes a Layer
                           blob         the compressed layer (fetched whole and checked
                                        against its digest when first opened)
                           use          created by the engine: one user more (ENOENT)
    rmdir <key>/                        one user fewer (ENOENT)

Whatever the store cannot serve (a name that is not a reference, a layer that is not
zstd:chunked, a registry that fails) is ENOENT: containers/storage then pulls the layer
itself. A read that cannot be verified is EIO.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import itertools
import json
import logging
import os
import stat
import threading
import time
from typing import Any

from mfusepy import FuseOSError, Operations

from chunked.cache.chunks import ContentCache
from chunked.errors import ChunkedError
from chunked.layerstore import LayerStore, StoreError, StoreLayer
from chunked.read.layerview import OverlayLayerView

from .fs import STATS_XATTR, check_open, node_getxattr, node_readlink
from .lazy import LazyFiles
from .mount import notify_mounted
from .tree import Node, Tree

log = logging.getLogger("chunked.fuse.store")

_ITEMS = ("diff", "info", "blob")


def _dir(ino: int) -> dict[str, Any]:
    now = time.time_ns()
    return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_ino": ino, "st_size": 0,
            "st_mtime": now, "st_atime": now, "st_ctime": now}


def _file(ino: int, size: int) -> dict[str, Any]:
    now = time.time_ns()
    return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_ino": ino, "st_size": size,
            "st_mtime": now, "st_atime": now, "st_ctime": now}


class StoreFS(Operations):
    use_ns = True

    def __init__(self, store_kwargs: dict[str, Any], *, cache_bytes: int = 256 << 20,
                 disk: ContentCache | None = None, prefetch: bool = False):
        self.files = LazyFiles(cache_bytes=cache_bytes, disk=disk)
        self._prefetch = prefetch
        # blob digest -> the layer's diff/ tree, built off the lookup's path: the engine
        # commits the image meanwhile, and its first read of diff/ waits for it
        self._trees: dict[str, cf.Future[Tree]] = {}
        self._builder = cf.ThreadPoolExecutor(2, "chunked-store-tree")
        self._trees_lock = threading.Lock()
        self.store = LayerStore(**store_kwargs, on_open=self._opened, on_free=self._freed)
        self._inos: dict[str, int] = {"/": 1}
        self._ino_counter = itertools.count(2)
        self._ino_lock = threading.Lock()
        self._blob_fds: dict[int, int] = {}
        # the last figures of layers released since: their counters shown at zero
        self._released: dict[str, dict[str, Any]] = {}
        self._fh = itertools.count(1)

    # -- layer lifecycle (called by the LayerStore) --------------------------------------------
    def _opened(self, sl: StoreLayer) -> None:
        self.files.add_layer(sl.layer, sl.digest)
        # inode numbers from the digest: stable when the layer is opened again
        base = (int(sl.digest[7:14], 16) + 1) << 32
        tree = self._builder.submit(lambda: Tree(OverlayLayerView(sl.layer), ino_base=base))
        with self._trees_lock:
            self._trees[sl.digest] = tree
        if self._prefetch:
            self.files.start_prefetch([sl.layer])

    def _freed(self, sl: StoreLayer) -> None:
        figures = self._layer_stats(sl)
        figures["released"] = True
        with self._trees_lock:
            self._trees.pop(sl.digest, None)
            self._released[sl.digest] = figures
        self.files.remove_layer(sl.layer)

    # -- paths -----------------------------------------------------------------------------
    def _ino(self, path: str) -> int:
        with self._ino_lock:
            ino = self._inos.get(path)
            if ino is None:
                ino = self._inos[path] = next(self._ino_counter)
            return ino

    def _layer(self, name: str, key: str) -> tuple[StoreLayer, bool]:
        try:
            return self.store.layer(name, key)
        except StoreError as exc:  # not one of ours: a gzip layer, an unknown digest
            log.info("%s/%s: not served: %s", name, key, exc)
            raise FuseOSError(errno.ENOENT) from None
        except ChunkedError as exc:  # a registry that fails, a layer that lies
            log.warning("%s/%s: not served: %s", name, key, exc)
            raise FuseOSError(errno.ENOENT) from None
        except Exception:
            log.exception("%s/%s: lookup failed", name, key)
            raise FuseOSError(errno.EIO) from None

    def _tree(self, sl: StoreLayer) -> Tree:
        with self._trees_lock:
            tree = self._trees.get(sl.digest)
        if tree is None:  # released between the lookup and now
            raise FuseOSError(errno.ENOENT)
        try:
            return tree.result()
        except Exception:
            log.exception("%s: building the layer's tree failed", sl.digest)
            raise FuseOSError(errno.EIO) from None

    def _diff_node(self, path: str) -> Node:
        """The node of a path under some ``<key>/diff``."""
        name, key, _, *rest = path.strip("/").split("/", 3)
        sl, _ = self._layer(name, key)
        node = self._tree(sl).get("/" + (rest[0] if rest else ""))
        if node is None:
            raise FuseOSError(errno.ENOENT)
        return node

    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    # -- metadata ----------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        parts = self._parts(path)
        if not parts:
            return _dir(1)
        if len(parts) == 1:
            try:
                self.store.image(parts[0])
            except StoreError as exc:
                log.info("%s: not served: %s", parts[0], exc)
                raise FuseOSError(errno.ENOENT) from None
            except ChunkedError as exc:
                log.warning("%s: not served: %s", parts[0], exc)
                raise FuseOSError(errno.ENOENT) from None
            except Exception:
                log.exception("%s: lookup failed", parts[0])
                raise FuseOSError(errno.EIO) from None
            return _dir(self._ino(path))
        sl, by_toc = self._layer(parts[0], parts[1])
        if len(parts) == 2:
            return _dir(self._ino(path))
        item = parts[2]
        if len(parts) == 3 and item == "info":
            return _file(self._ino(path), len(sl.info(by_toc)))
        if len(parts) == 3 and item == "blob":
            return _file(self._ino(path), sl.descriptor.size)
        if item == "diff":
            return self._diff_node(path).attrs()
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, Any], int]]:
        parts = self._parts(path)
        here = self.getattr(path)
        if not stat.S_ISDIR(here["st_mode"]):
            raise FuseOSError(errno.ENOTDIR)
        out: list[tuple[str, dict[str, Any], int]] = [(".", here, 0), ("..", here, 0)]
        if not parts:
            return out
        if len(parts) == 1:
            img = self.store.image(parts[0])
            for digest in img.by_toc.values():
                out.append((digest, _dir(self._ino(f"{path}/{digest}")), 0))
            return out
        if len(parts) == 2:
            for item in _ITEMS:
                out.append((item, self.getattr(f"{path}/{item}"), 0))
            return out
        name, key = parts[0], parts[1]
        sl, _ = self._layer(name, key)
        listing = self._tree(sl).listing("/" + "/".join(parts[3:]))
        if listing is None:
            raise FuseOSError(errno.ENOTDIR)
        return [(n, node.attrs(), 0) for n, node in listing]

    def readlink(self, path: str) -> str:
        if len(self._parts(path)) < 4:
            raise FuseOSError(errno.EINVAL)
        return node_readlink(self._diff_node(path))

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        parts = self._parts(path)
        if not parts and name == STATS_XATTR:
            return self.stats_json()
        if len(parts) >= 3 and parts[2] == "diff":
            return node_getxattr(self._diff_node(path), name)
        self.getattr(path)
        raise FuseOSError(errno.ENODATA)

    def listxattr(self, path: str) -> list[str]:
        parts = self._parts(path)
        if len(parts) >= 3 and parts[2] == "diff":
            return list(self._diff_node(path).xattrs)
        self.getattr(path)
        return []

    def init(self, path: str) -> None:
        notify_mounted()  # a background mount's command returns now

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def _layer_stats(self, sl: StoreLayer) -> dict[str, Any]:
        d = self.files.layer_stats(sl.layer)
        d.update({"digest": sl.digest, "tocDigest": sl.toc_digest, "refs": sl.refs,
                  "images": sorted(sl.images), "entries": len(sl.layer.entries),
                  "openSeconds": round(sl.open_seconds, 4), "released": False})
        return d

    def stats_json(self) -> bytes:
        """Every layer served, open or released since (its counters then at zero)."""
        layers = {sl.digest: self._layer_stats(sl) for sl in self.store.layers()}
        with self._trees_lock:
            for digest, figures in self._released.items():
                layers.setdefault(digest, figures)
        return json.dumps({"layers": [layers[d] for d in sorted(layers)]}).encode()

    # -- use and release -----------------------------------------------------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        parts = self._parts(path)
        if len(parts) == 3 and parts[2] == "use":
            sl, _ = self._layer(parts[0], parts[1])
            self.store.use(sl)
            # what containers/storage expects of a store that counts: "not there"
            raise FuseOSError(errno.ENOENT)
        raise FuseOSError(errno.EROFS)

    def rmdir(self, path: str) -> int:
        parts = self._parts(path)
        if len(parts) == 2:
            sl, _ = self._layer(parts[0], parts[1])
            self.store.release(sl)
            raise FuseOSError(errno.ENOENT)
        raise FuseOSError(errno.EROFS)

    # -- data ----------------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        parts = self._parts(path)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        if len(parts) == 3 and parts[2] == "info":
            return 0
        if len(parts) == 3 and parts[2] == "blob":
            sl, _ = self._layer(parts[0], parts[1])
            try:
                spooled = sl.blob_file(self.store.spool_dir)
                fd = os.open(spooled, os.O_RDONLY | os.O_CLOEXEC)
            except ChunkedError as exc:
                log.error("%s: %s", path, exc)
                raise FuseOSError(errno.EIO) from None
            except Exception:
                log.exception("%s: fetching the blob failed", path)
                raise FuseOSError(errno.EIO) from None
            fh = next(self._fh)
            self._blob_fds[fh] = fd
            return fh
        if len(parts) >= 3 and parts[2] == "diff":
            check_open(self._diff_node(path), flags)
            return 0
        raise FuseOSError(errno.ENOENT)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        parts = self._parts(path)
        if fh in self._blob_fds:
            return os.pread(self._blob_fds[fh], size, offset)
        if len(parts) == 3 and parts[2] == "info":
            sl, by_toc = self._layer(parts[0], parts[1])
            return sl.info(by_toc)[offset:offset + size]
        return self.files.read(self._diff_node(path), size, offset)

    def release(self, path: str, fh: int) -> int:
        fd = self._blob_fds.pop(fh, None)
        if fd is not None:
            os.close(fd)
        return 0

    def destroy(self, path: str) -> None:
        self.store.close()
