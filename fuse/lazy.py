"""Files read lazily: a file's chunks fetched on first read, verified, and kept.

One :class:`LazyFiles` serves every layer of a filesystem (the merged ``mount`` and the
store's per-layer trees alike). A regular file's chunks are fetched from the layer's
RangeSource when read, checked against their digests (and a file of several chunks once
whole against its own), kept in a bounded in-memory cache and in the shared on-disk cache.
Any failure to fetch or verify is EIO, logged with the file's name: never wrong bytes.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures as cf
import errno
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mfusepy import FuseOSError

from chunked import format as fmt
from chunked.cache.chunks import ContentCache
from chunked.errors import ChunkedError, FormatError
from chunked.format.chunking import crc64
from chunked.read.layer import ChunkRef, FileInfo, WholeCheck
from chunked.read.protocol import LayerReader

from .tree import BAD, CHECKED, Node

log = logging.getLogger("chunked.fuse")

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
            if key in self._data or key[0] == 0:
                return
            self._data[key] = data
            self._size += len(data)
            while self._size > self._limit and self._data:
                _, old = self._data.popitem(last=False)
                self._size -= len(old)

    def drop(self, serial: int) -> None:
        """Forget one layer's chunks."""
        with self._lock:
            for key in [k for k in self._data if k[0] == serial]:
                self._size -= len(self._data.pop(key))


@dataclass
class LayerStats:
    digest: str
    bytes_fetched: int = 0
    chunks_fetched: int = 0
    requests: int = 0
    files_fetched: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "bytesFetched": self.bytes_fetched,
                "chunksFetched": self.chunks_fetched, "filesFetched": len(self.files_fetched),
                "requests": self.requests}


class LazyFiles:
    """Reads of regular files of registered layers, fetched and verified on demand."""

    def __init__(self, *, cache_bytes: int = 256 << 20, disk: ContentCache | None = None):
        self.cache = ChunkCache(cache_bytes)
        # Verified chunks also go to the shared on-disk cache (by chunk digest, so a chunk
        # any image or layer already brought is not fetched again); written off the
        # read path by one background thread.
        self.disk = disk
        self._disk_writer = cf.ThreadPoolExecutor(1, "chunked-cache") if disk else None
        self._serials = itertools.count(1)
        # a registered layer's key in the chunk cache: its id() may be reused once it is
        # freed, a serial never is
        self._keys: dict[int, int] = {}
        self.stats: dict[int, LayerStats] = {}
        self._stats_lock = threading.Lock()
        self._inflight: dict[tuple[int, int], threading.Event] = {}
        self._inflight_lock = threading.Lock()

    # -- layers ------------------------------------------------------------------------
    def add_layer(self, layer: LayerReader, digest: str) -> None:
        with self._stats_lock:
            self._keys[id(layer)] = next(self._serials)
            self.stats[id(layer)] = LayerStats(digest)

    def remove_layer(self, layer: LayerReader) -> None:
        with self._stats_lock:
            serial = self._keys.pop(id(layer), None)
            self.stats.pop(id(layer), None)
        if serial is not None:
            self.cache.drop(serial)

    def layer_stats(self, layer: LayerReader) -> dict[str, Any]:
        with self._stats_lock:
            st = self.stats.get(id(layer))
            return st.as_dict() if st else {}

    def _key(self, layer: LayerReader, c: ChunkRef) -> tuple[int, int]:
        """The chunk's key in the memory cache; serial 0 (never cached) once the layer is
        no longer served."""
        return (self._keys.get(id(layer), 0), c.start)

    # -- reads -----------------------------------------------------------------------------
    def read(self, node: Node, size: int, offset: int) -> bytes:
        """``size`` bytes of a regular file's node from ``offset``; EIO on any failure."""
        info, layer = node.info, node.layer
        if info is None or layer is None or info.entry.type != fmt.TYPE_REG:
            raise FuseOSError(errno.EISDIR)
        end = min(offset + size, info.entry.size)
        if offset >= end:
            return b""
        try:
            if node.state != CHECKED:
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

    def _check_whole(self, node: Node, layer: LayerReader, info: FileInfo) -> None:
        """Before a file's first byte is served: a file of one chunk is checked by reading
        it (digest and CRC-64); a file of several is read whole once, in windows, and
        checked against its digest and CRC-64 (each chunk's own digest then suffices for
        later reads, as it binds the chunk to the bytes checked)."""
        if node.lock is None:
            with self._inflight_lock:
                if node.lock is None:
                    node.lock = threading.Lock()
        with node.lock:
            if node.state == BAD:
                raise FuseOSError(errno.EIO)
            if node.state == CHECKED:
                return
            try:
                self._read_whole(layer, info)
            except FormatError:  # the layer lies; a network error may pass, so is not kept
                node.state = BAD
                raise
            node.state = CHECKED

    def _read_whole(self, layer: LayerReader, info: FileInfo) -> None:
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

    def _chunks(self, layer: LayerReader, info: FileInfo, wanted: list[ChunkRef]
                ) -> dict[int, bytes]:
        """The bytes of data chunks, by blob offset: from memory, else the disk cache, else
        fetched, each verified."""
        out: dict[int, bytes] = {}
        mine: list[tuple[ChunkRef, tuple[int, int]]] = []
        theirs: list[tuple[ChunkRef, tuple[int, int], threading.Event]] = []
        # The kernel reads ahead with parallel requests that often share a chunk: a chunk
        # already being fetched by another thread is waited for, not fetched twice.
        with self._inflight_lock:
            for c in wanted:
                key = self._key(layer, c)
                data = self.cache.get(key)
                if data is not None:
                    out[c.start] = data
                elif key in self._inflight:
                    theirs.append((c, key, self._inflight[key]))
                else:
                    self._inflight[key] = threading.Event()
                    mine.append((c, key))
        try:
            if mine:
                self._fetch(layer, info, [c for c, _ in mine], out)
        finally:
            with self._inflight_lock:
                for _, key in mine:
                    self._inflight.pop(key).set()
        for c, key, done in theirs:
            done.wait()
            data = self.cache.get(key)
            if data is None:  # their fetch failed, or it was evicted already
                self._fetch(layer, info, [c], out)
            else:
                out[c.start] = data
        return out

    def _fetch(self, layer: LayerReader, info: FileInfo, chunks: list[ChunkRef],
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
                    self.cache.put(self._key(layer, c), data)
            chunks = remote
            if not chunks:
                return
        t0 = time.monotonic()
        for ref, data in layer.read_chunks(chunks, info.entry.name):
            assert data is not None  # only data chunks come here
            out[ref.start] = data
            self._keep(layer, ref, data)
        self._count(layer, chunks, {info.entry.name})
        log.debug("%s: %d chunks, %d bytes fetched in %.3f s", info.entry.name, len(chunks),
                  sum(c.end - c.start for c in chunks), time.monotonic() - t0)

    def _keep(self, layer: LayerReader, ref: ChunkRef, data: bytes) -> None:
        self.cache.put(self._key(layer, ref), data)
        if self._disk_writer is not None:
            self._disk_writer.submit(self._disk_put, ref.digest, data)

    def _disk_put(self, digest: str, data: bytes) -> None:
        try:
            assert self.disk is not None
            self.disk.put(digest, data)
        except (OSError, ValueError) as exc:  # a full disk costs speed, not correctness
            log.warning("cache: cannot store %s: %s", digest, exc)

    def _count(self, layer: LayerReader, chunks: list[ChunkRef], names: set[str]) -> None:
        with self._stats_lock:
            st = self.stats.get(id(layer))
            if st is None:
                return
            st.requests += 1
            st.chunks_fetched += len(chunks)
            st.bytes_fetched += sum(c.end - c.start for c in chunks if not c.zeros)
            st.files_fetched |= names

    # -- prefetch ----------------------------------------------------------------------------
    def start_prefetch(self, layers: list[LayerReader], batch_bytes: int = 4 << 20
                       ) -> threading.Thread:
        """Fetch every chunk not yet fetched, in layer order and in batches of a few MiB
        (many ranges per request), on a thread of its own. Reads are served meanwhile:
        a batch is small, and a chunk a read needs is fetched by the read if the
        prefetch has not reached it (the in-flight table keeps them from both fetching)."""
        t = threading.Thread(target=self._prefetch, args=(layers, batch_bytes), daemon=True,
                             name="chunked-prefetch")
        t.start()
        return t

    def _prefetch(self, layers: list[LayerReader], batch_bytes: int) -> None:
        for layer in layers:
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
                        if not self._prefetch_batch(layer, batch):
                            return
                        batch, size = [], 0
            if batch and not self._prefetch_batch(layer, batch):
                return
        log.info("prefetch done")

    def _prefetch_batch(self, layer: LayerReader, batch: list[tuple[FileInfo, ChunkRef]]) -> bool:
        """One batch fetched; False once the layer is no longer served."""
        mine: list[tuple[FileInfo, ChunkRef]] = []
        keys: list[tuple[int, int]] = []
        with self._inflight_lock:
            if id(layer) not in self._keys:
                return False
            for info, c in batch:
                key = self._key(layer, c)
                if key not in self._inflight and self.cache.get(key) is None:
                    self._inflight[key] = threading.Event()
                    mine.append((info, c))
                    keys.append(key)
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
                for key in keys:
                    self._inflight.pop(key).set()
        return True


def _file_offset(c: ChunkRef) -> int:
    return c.file_offset
