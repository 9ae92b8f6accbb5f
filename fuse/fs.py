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
import os
import posixpath
import stat
import threading
from dataclasses import dataclass, field
from typing import Any

from mfusepy import FuseOSError, Operations

from chunked import format as fmt
from chunked.cache import ContentCache
from chunked.chunking import crc64
from chunked.errors import ChunkedError, FormatError
from chunked.image import AnyLayer as Layer
from chunked.image import MergedView
from chunked.reader import ChunkRef, FileInfo, WholeCheck, clean_name

log = logging.getLogger("chunked.fuse")

_TYPE_BITS = {
    fmt.TYPE_REG: stat.S_IFREG, fmt.TYPE_DIR: stat.S_IFDIR, fmt.TYPE_SYMLINK: stat.S_IFLNK,
    fmt.TYPE_CHAR: stat.S_IFCHR, fmt.TYPE_BLOCK: stat.S_IFBLK, fmt.TYPE_FIFO: stat.S_IFIFO,
}


@dataclass(slots=True)
class Node:
    """A path of the mount. Its attributes are derived from its entry when asked (a dict
    per path would cost more memory than the entry itself)."""

    ino: int
    info: FileInfo | None = None  # None: a directory the layers do not list
    layer: Layer | None = None
    nlink: int = 1
    children: list[str] | None = None
    # a file of several chunks is served only once it has been checked whole
    state: int = 0  # _UNCHECKED, _CHECKED or _BAD
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


_UNCHECKED, _CHECKED, _BAD = 0, 1, -1
# A file of several chunks is checked whole in windows of this many compressed bytes.
_CHECK_WINDOW = 16 << 20


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
        self._next_ino = 0
        self.nodes = self._build()

    # -- tree ----------------------------------------------------------------------------
    def _build(self) -> dict[str, Node]:
        nodes: dict[str, Node] = {"/": Node(self._new_ino(), children=[])}
        # hard links share an inode: count the names of each target
        inodes: dict[int, Node] = {}
        links: collections.Counter[int] = collections.Counter()
        resolved: dict[str, tuple[Layer, FileInfo]] = {}
        for path in self.view.entries:
            try:
                layer, info = self.view.lookup(path)
            except ChunkedError as exc:
                # one bad hard link costs that name, not the mount
                log.warning("%s: left out of the mount: %s", path, exc)
                continue
            resolved[path] = (layer, info)
            links[id(info)] += 1
        for path in sorted(resolved):
            layer, info = resolved[path]
            node = inodes.get(id(info))
            if node is None:
                node = inodes[id(info)] = Node(self._new_ino(), info, layer,
                                               nlink=links[id(info)])
            full = "/" + path if path else "/"
            old = nodes.get(full)
            if old is not None and old.children is not None:
                node.children = old.children
            elif info.entry.type == fmt.TYPE_DIR:
                node.children = []
            nodes[full] = node
            self._attach(nodes, full)
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
                return  # beneath a non-directory: the merged view keeps no such path
            pnode.children.append(posixpath.basename(full))
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
                    if c.zeros:
                        continue
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
                    if data is not None:
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
        return self._node(path).attrs()

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, Any], int]]:
        # With use_ino the kernel takes d_ino from here; an entry without one (0) is
        # dropped by readdir(3), so every name carries its node's inode and type.
        full = path if path == "/" else "/" + clean_name(path)
        node = self._node(path)
        parent = self.nodes.get(posixpath.dirname(full), node)
        out = [(".", node.attrs(), 0), ("..", parent.attrs(), 0)]
        for name in node.children or ():
            out.append((name, self.nodes[posixpath.join(full, name)].attrs(), 0))
        return out

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.info is None or node.info.entry.type != fmt.TYPE_SYMLINK:
            raise FuseOSError(errno.EINVAL)
        return node.info.entry.link_name

    def stats_json(self) -> bytes:
        with self._stats_lock:
            layers = [s.as_dict() for s in self.stats.values()]
        return json.dumps({"layers": layers}).encode()

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == STATS_XATTR and path == "/":
            return self.stats_json()
        node = self._node(path)
        value = (node.info.entry.xattrs or {}).get(name) if node.info else None
        if value is None:
            raise FuseOSError(errno.ENODATA)
        return value

    def listxattr(self, path: str) -> list[str]:
        node = self._node(path)
        return list(node.info.entry.xattrs or {}) if node.info else []

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if flags & (0o1 | 0o2):  # O_WRONLY | O_RDWR
            raise FuseOSError(errno.EROFS)
        if node.info is None or node.info.entry.type != fmt.TYPE_REG:
            raise FuseOSError(errno.EISDIR if node.children is not None else errno.EACCES)
        return 0

    # -- data ----------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path)
        info, layer = node.info, node.layer
        if info is None or layer is None or info.entry.type != fmt.TYPE_REG:
            raise FuseOSError(errno.EISDIR)
        end = min(offset + size, info.entry.size)
        if offset >= end:
            return b""
        try:
            if node.state != _CHECKED:
                self._check_whole(node, layer, info)
            # the chunks tile the file from 0 (checked when the TOC was indexed)
            first = bisect.bisect_right(info.chunks, offset, key=_file_offset) - 1
            last = bisect.bisect_right(info.chunks, end - 1, key=_file_offset) - 1
            wanted = info.chunks[first:last + 1]
            datas = self._chunks(layer, info, [c for c in wanted if not c.zeros])
        except ChunkedError as exc:
            log.error("%s: %s", info.entry.name, exc)
            raise FuseOSError(errno.EIO) from None
        except FuseOSError:
            raise
        except Exception:  # a source's network error, anything: EIO, never a crash
            log.exception("%s: reading failed", info.entry.name)
            raise FuseOSError(errno.EIO) from None
        out = []
        for c in wanted:
            lo, hi = max(offset, c.file_offset) - c.file_offset, \
                min(end, c.file_offset + c.size) - c.file_offset
            out.append(bytes(hi - lo) if c.zeros else datas[c.start][lo:hi])
        return b"".join(out)

    def _check_whole(self, node: Node, layer: Layer, info: FileInfo) -> None:
        """Before a file's first byte is served: a file of one chunk is checked by reading
        it (digest and CRC-64); a file of several is read whole once, in windows, and
        checked against its digest and CRC-64 (each chunk's own digest then suffices for
        later reads, as it binds the chunk to the bytes checked)."""
        if node.lock is None:
            with self._inflight_lock:
                if node.lock is None:
                    node.lock = threading.Lock()
        with node.lock:
            if node.state == _BAD:
                raise FuseOSError(errno.EIO)
            if node.state == _CHECKED:
                return
            try:
                self._read_whole(layer, info)
            except FormatError:  # the layer lies; a network error may pass, so is not kept
                node.state = _BAD
                raise
            node.state = _CHECKED

    def _read_whole(self, layer: Layer, info: FileInfo) -> None:
        e = info.entry
        if len(info.chunks) == 1 and info.chunks[0].zeros:
            for _ in layer.read_chunks(info.chunks, e.name):  # digest and CRC of zeros
                pass
            return
        if len(info.chunks) <= 1:
            self._chunks(layer, info, list(info.chunks))  # read_chunks checks it whole
            return
        check = WholeCheck(info)
        window: list[ChunkRef] = []
        size = 0
        for i, c in enumerate(info.chunks):
            window.append(c)
            size += 0 if c.zeros else c.end - c.start
            if size < _CHECK_WINDOW and i + 1 < len(info.chunks):
                continue
            datas = self._chunks(layer, info, [x for x in window if not x.zeros])
            if any(x.zeros for x in window):
                for _ in layer.read_chunks([x for x in window if x.zeros], e.name):
                    pass  # each zeros chunk's digest
            for x in window:
                if x.zeros:
                    check.zeros(x.size)
                else:
                    check.update(datas[x.start])
            window, size = [], 0
        check.finish()

    def _chunks(self, layer: Layer, info: FileInfo, wanted: list[ChunkRef]) -> dict[int, bytes]:
        """The bytes of data chunks, by blob offset: from memory, else the disk cache, else
        fetched, each verified."""
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
        return out

    def _fetch(self, layer: Layer, info: FileInfo, chunks: list[ChunkRef],
               out: dict[int, bytes]) -> None:
        if self.disk is not None:
            remote = []
            for c in chunks:
                data = self.disk.get(c.digest)  # re-verified against the digest on read
                if data is None or len(data) != c.size or \
                        (c.crc is not None and crc64(data) != c.crc):
                    remote.append(c)
                else:
                    out[c.start] = data
                    self.cache.put((id(layer), c.start), data)
            chunks = remote
            if not chunks:
                return
        for ref, data in layer.read_chunks(chunks, info.entry.name):
            assert data is not None  # only data chunks come here
            out[ref.start] = data
            self._keep(layer, ref, data)
        self._count(layer, chunks, {info.entry.name})

    def _keep(self, layer: Layer, ref: ChunkRef, data: bytes) -> None:
        self.cache.put((id(layer), ref.start), data)
        if self._disk_writer is not None:
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


def _file_offset(c: ChunkRef) -> int:
    return c.file_offset
