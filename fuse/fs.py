"""A read-only FUSE filesystem over an image's merged root filesystem.

Metadata (getattr, readdir, readlink, xattrs) is answered from the TOCs held in
memory, with no I/O. A regular file's chunks are fetched from the layer's
RangeSource on first read, verified against their digests, and kept in a
bounded in-memory cache; the kernel page cache keeps warm reads fast. Any
failure to fetch or verify is EIO, logged with the file's name: never wrong bytes.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures as cf
import errno
import json
import logging
import posixpath
import stat
import threading
from dataclasses import dataclass, field
from typing import Any

from mfusepy import FuseOSError, Operations

from chunked import format as fmt
from chunked.cache import ContentCache
from chunked.errors import ChunkedError
from chunked.image import AnyLayer as Layer
from chunked.image import MergedView
from chunked.reader import ChunkRef, FileInfo, clean_name

log = logging.getLogger("chunked.fuse")

_TYPE_BITS = {
    fmt.TYPE_REG: stat.S_IFREG, fmt.TYPE_DIR: stat.S_IFDIR, fmt.TYPE_SYMLINK: stat.S_IFLNK,
    fmt.TYPE_CHAR: stat.S_IFCHR, fmt.TYPE_BLOCK: stat.S_IFBLK, fmt.TYPE_FIFO: stat.S_IFIFO,
}


@dataclass
class Node:
    attrs: dict[str, Any]
    layer: Layer | None = None
    info: FileInfo | None = None
    children: list[str] = field(default_factory=list)
    link: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)  # chunk file offsets, for bisect


class ChunkCache:
    """Verified chunk bytes, least recently used out first, bounded in bytes."""

    def __init__(self, limit: int):
        self._limit = limit
        self._size = 0
        self._data: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def put(self, key: tuple[int, int], data: bytes) -> None:
        with self._lock:
            if key in self._data:
                return
            self._data[key] = data
            self._size += len(data)
            while self._size > self._limit and self._data:
                _, old = self._data.popitem(last=False)
                self._size -= len(old)


@dataclass
class LayerStats:
    digest: str
    bytes_fetched: int = 0
    chunks_fetched: int = 0
    files_fetched: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "bytesFetched": self.bytes_fetched,
                "chunksFetched": self.chunks_fetched, "filesFetched": len(self.files_fetched)}


# Read while the mount is up: `getfattr -n user.chunked.stats --only-values MOUNTPOINT`
# or `chunked stats MOUNTPOINT`. Not listed by listxattr, so it stays out of copies.
STATS_XATTR = "user.chunked.stats"


class ChunkedFS(Operations):
    use_ns = True

    def __init__(self, view: MergedView, *, cache_bytes: int = 256 << 20,
                 layer_digests: list[str] | None = None, disk: ContentCache | None = None):
        self.view = view
        self.cache = ChunkCache(cache_bytes)
        # Verified chunks also go to the shared on-disk cache (by chunk digest, so a chunk
        # any image or layer already brought is not fetched again); written off the
        # read path by one background thread.
        self.disk = disk
        self._disk_writer = cf.ThreadPoolExecutor(1, "chunked-cache") if disk else None
        digests = layer_digests or [f"layer-{i}" for i in range(len(view.layers))]
        self.stats = {id(layer): LayerStats(d) for layer, d in zip(view.layers, digests,
                                                                      strict=True)}
        self._stats_lock = threading.Lock()
        self._inflight: dict[tuple[int, int], threading.Event] = {}
        self._inflight_lock = threading.Lock()
        self._synthetic_ino = 1 << 62
        self.nodes = self._build()

    # -- tree ----------------------------------------------------------------------------
    def _build(self) -> dict[str, Node]:
        nodes: dict[str, Node] = {"/": Node(self._dir_attrs(0o755))}
        # hard links share an inode: count the names of each target
        inodes: dict[tuple[int, str], int] = {}
        links: collections.Counter[tuple[int, str]] = collections.Counter()
        resolved: dict[str, tuple[Layer, FileInfo]] = {}
        for path in self.view.entries:
            layer, info = self.view.lookup(path)
            resolved[path] = (layer, info)
            links[(id(layer), info.entry.name)] += 1
        for path in sorted(self.view.entries):
            layer, info = resolved[path]
            e = info.entry
            key = (id(layer), e.name)
            ino = inodes.setdefault(key, len(inodes) + 2)
            attrs = {
                "st_mode": _TYPE_BITS.get(e.type, stat.S_IFREG) | (e.mode & 0o7777),
                "st_ino": ino, "st_nlink": links[key] if e.type == fmt.TYPE_REG else 1,
                "st_uid": e.uid, "st_gid": e.gid, "st_size": e.size,
                "st_mtime": e.mtime or 0, "st_atime": e.atime or e.mtime or 0,
                "st_ctime": e.ctime or e.mtime or 0,
                "st_rdev": (e.dev_major << 8) | e.dev_minor if e.type in ("char", "block") else 0,
                "st_blocks": (e.size + 511) // 512,
            }
            if e.type == fmt.TYPE_DIR:
                attrs["st_nlink"] = 2
            node = Node(attrs, layer, info, link=e.link_name if e.type == "symlink" else "",
                        xattrs=dict(e.xattrs), starts=[c.file_offset for c in info.chunks])
            full = "/" + path
            old = nodes.get(full)
            if old is not None:
                node.children = old.children
            nodes[full] = node
            self._attach(nodes, full)
        return nodes

    def _dir_attrs(self, mode: int) -> dict[str, Any]:
        # directories the layers do not list; inodes counted down from the top so
        # they never meet the ones entries get
        self._synthetic_ino -= 1
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2, "st_size": 0,
                "st_ino": self._synthetic_ino}

    def _attach(self, nodes: dict[str, Node], full: str) -> None:
        """Link full into its parent, creating parents the layers did not list."""
        while full != "/":
            parent = posixpath.dirname(full)
            pnode = nodes.get(parent)
            created = pnode is None
            if created:
                pnode = nodes[parent] = Node(self._dir_attrs(0o755))
            name = posixpath.basename(full)
            if name not in pnode.children:
                pnode.children.append(name)
            if not created:
                return
            full = parent

    def _node(self, path: str) -> Node:
        node = self.nodes.get(path if path == "/" else "/" + clean_name(path))
        if node is None:
            raise FuseOSError(errno.ENOENT)
        return node

    # -- prefetch ----------------------------------------------------------------------------
    def start_prefetch(self, batch_bytes: int = 4 << 20) -> threading.Thread:
        """Fetch every chunk not yet fetched, in layer order and in batches of a few MiB
        (many ranges per request), on a thread of its own. Reads are served meanwhile:
        a batch is small, and a chunk a read needs is fetched by the read if the
        prefetch has not reached it (the in-flight table keeps them from both fetching)."""
        t = threading.Thread(target=self._prefetch, args=(batch_bytes,), daemon=True,
                             name="chunked-prefetch")
        t.start()
        return t

    def _prefetch(self, batch_bytes: int) -> None:
        for layer in self.view.layers:
            infos = sorted((i for i in layer.files.values() if i.chunks),
                           key=lambda i: i.chunks[0].start)
            batch: list[tuple[FileInfo, ChunkRef]] = []
            size = 0
            for info in infos:
                for c in info.chunks:
                    batch.append((info, c))
                    size += c.end - c.start
                    if size >= batch_bytes:
                        self._prefetch_batch(layer, batch)
                        batch, size = [], 0
            if batch:
                self._prefetch_batch(layer, batch)
        log.info("prefetch done")

    def _prefetch_batch(self, layer: Layer, batch: list[tuple[FileInfo, ChunkRef]]) -> None:
        lid = id(layer)
        mine: list[tuple[FileInfo, ChunkRef]] = []
        with self._inflight_lock:
            for info, c in batch:
                key = (lid, c.start)
                if key not in self._inflight and self.cache.get(key) is None:
                    self._inflight[key] = threading.Event()
                    mine.append((info, c))
        try:
            if mine:  # one request for the whole batch, across files
                for ref, data in layer.read_chunks([c for _, c in mine], "(prefetch)"):
                    self._keep(layer, ref, data)
                self._count(layer, [c for _, c in mine], {i.entry.name for i, _ in mine})
        except Exception as exc:  # a failed prefetch costs nothing: reads fetch on demand
            log.warning("prefetch batch failed: %s", exc)
        finally:
            with self._inflight_lock:
                for _, c in mine:
                    self._inflight.pop((lid, c.start)).set()

    # -- metadata --------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self._node(path).attrs

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, Any], int]]:
        # With use_ino the kernel takes d_ino from here; an entry without one (0) is
        # dropped by readdir(3), so every name carries its node's inode and type.
        full = path if path == "/" else "/" + clean_name(path)
        node = self._node(path)
        parent = self.nodes.get(posixpath.dirname(full), node)
        out = [(".", node.attrs, 0), ("..", parent.attrs, 0)]
        for name in node.children:
            out.append((name, self.nodes[posixpath.join(full, name)].attrs, 0))
        return out

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if not node.link:
            raise FuseOSError(errno.EINVAL)
        return node.link

    def stats_json(self) -> bytes:
        with self._stats_lock:
            layers = [s.as_dict() for s in self.stats.values()]
        return json.dumps({"layers": layers}).encode()

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == STATS_XATTR and path == "/":
            return self.stats_json()
        value = self._node(path).xattrs.get(name)
        if value is None:
            raise FuseOSError(errno.ENODATA)
        return value

    def listxattr(self, path: str) -> list[str]:
        return list(self._node(path).xattrs)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if flags & (0o1 | 0o2):  # O_WRONLY | O_RDWR
            raise FuseOSError(errno.EROFS)
        if node.info is None or node.info.entry.type != fmt.TYPE_REG:
            raise FuseOSError(errno.EISDIR if stat.S_ISDIR(node.attrs["st_mode"])
                              else errno.EACCES)
        return 0

    # -- data ----------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path)
        info, layer = node.info, node.layer
        assert info is not None and layer is not None
        end = min(offset + size, info.entry.size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(node.starts, offset) - 1
        last = bisect.bisect_right(node.starts, end - 1) - 1
        wanted = info.chunks[first:last + 1]
        try:
            datas = self._chunks(layer, info, wanted)
        except ChunkedError as exc:
            log.error("%s: %s", info.entry.name, exc)
            raise FuseOSError(errno.EIO) from None
        except Exception:  # a source's network error, anything: EIO, never a crash
            log.exception("%s: reading failed", info.entry.name)
            raise FuseOSError(errno.EIO) from None
        blob = b"".join(datas)
        base = wanted[0].file_offset
        return blob[offset - base:end - base]

    def _chunks(self, layer: Layer, info: FileInfo, wanted: list[ChunkRef]) -> list[bytes]:
        lid = id(layer)
        out: dict[int, bytes] = {}
        mine: list[ChunkRef] = []
        theirs: list[tuple[ChunkRef, threading.Event]] = []
        # The kernel reads ahead with parallel requests that often share a chunk: a chunk
        # already being fetched by another thread is waited for, not fetched twice.
        with self._inflight_lock:
            for c in wanted:
                data = self.cache.get((lid, c.start))
                if data is not None:
                    out[c.start] = data
                elif (lid, c.start) in self._inflight:
                    theirs.append((c, self._inflight[(lid, c.start)]))
                else:
                    self._inflight[(lid, c.start)] = threading.Event()
                    mine.append(c)
        try:
            if mine:
                self._fetch(layer, info, mine, out)
        finally:
            with self._inflight_lock:
                for c in mine:
                    self._inflight.pop((lid, c.start)).set()
        for c, done in theirs:
            done.wait()
            data = self.cache.get((lid, c.start))
            if data is None:  # their fetch failed, or it was evicted already
                self._fetch(layer, info, [c], out)
            else:
                out[c.start] = data
        return [out[c.start] for c in wanted]

    def _fetch(self, layer: Layer, info: FileInfo, chunks: list[ChunkRef],
               out: dict[int, bytes]) -> None:
        if self.disk is not None:
            remote = []
            for c in chunks:
                data = None if c.zeros else self.disk.get(c.digest)  # re-verified on read
                if data is None or len(data) != c.size:
                    remote.append(c)
                else:
                    out[c.start] = data
                    self.cache.put((id(layer), c.start), data)
            chunks = remote
            if not chunks:
                return
        for ref, data in layer.read_chunks(chunks, info.entry.name):
            out[ref.start] = data
            self._keep(layer, ref, data)
        self._count(layer, chunks, {info.entry.name})

    def _keep(self, layer: Layer, ref: ChunkRef, data: bytes) -> None:
        self.cache.put((id(layer), ref.start), data)
        if self._disk_writer is not None and not ref.zeros:
            self._disk_writer.submit(self._disk_put, ref.digest, data)

    def _disk_put(self, digest: str, data: bytes) -> None:
        try:
            assert self.disk is not None
            self.disk.put(digest, data)
        except (OSError, ValueError) as exc:  # a full disk costs speed, not correctness
            log.warning("cache: cannot store %s: %s", digest, exc)

    def _count(self, layer: Layer, chunks: list[ChunkRef], names: set[str]) -> None:
        with self._stats_lock:
            st = self.stats[id(layer)]
            st.chunks_fetched += len(chunks)
            st.bytes_fetched += sum(c.end - c.start for c in chunks if not c.zeros)
            st.files_fetched |= names
