"""A local, content-addressed cache of verified chunk and file contents.

Entries live at ``root/sha256/<2 hex>/<62 hex>`` and are named by the sha256 of their bytes,
so any process can share the directory and every read can be checked against its name.
Files appear under their final name only by an atomic rename of a fully written temporary
file, so a crash leaves at most a ``.tmp-*`` file behind, which readers never look at and
``prune`` removes once it is old.

The disk is the truth; the in-memory index and byte count are a per-process view of it that
other processes can make stale. They are resynchronised whenever the directory is scanned
(first use, eviction, ``stats`` and ``prune``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import xxhash

from chunked.digest import HEX_DIGITS, PREFIX, Digest, is_sha256

DEFAULT_LIMIT = 10 << 30
ALGO = "sha256"
TMP_PREFIX = ".tmp-"
# a writer may legitimately take a while on a slow disk; only an old temp file is a leftover
STALE_TMP_SECONDS = 3600
# evicting down to below the limit (not just to it) keeps every later put from rescanning
EVICT_TARGET = 0.9



def default_cache_dir() -> str:
    """Where the cache lives unless told otherwise: per user, or system-wide for root."""
    if os.geteuid() == 0:
        return "/var/cache/chunked"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says a relative value is invalid and must be ignored
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "chunked")
    return os.path.join(os.path.expanduser("~"), ".cache", "chunked")


def _key(digest: str) -> int:
    # xxhash 4 hashes bytes only; a valid digest is pure ASCII
    return xxhash.xxh64_intdigest(digest.encode("ascii"))


@dataclass(frozen=True)
class _Entry:
    path: str
    key: int
    size: int
    mtime_ns: int


class ContentCache:
    """Byte strings stored under their sha256 digest, bounded in size by LRU eviction.

    Safe to share between threads (one lock guards the index and the byte count) and between
    processes (every change on disk is an atomic rename or unlink of a whole file).
    """

    def __init__(self, root: str, limit_bytes: int = DEFAULT_LIMIT) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"cache limit must be positive, not {limit_bytes}")
        self.root = root
        self.limit_bytes = limit_bytes
        self._base = os.path.join(root, ALGO)
        self._lock = threading.Lock()
        # xxh64 of the digest string: 8-byte ints keep a large index small and fast to probe;
        # a collision can only make contains() say yes wrongly, and get() re-verifies anyway
        self._index: set[int] = set()
        self._bytes = 0
        self._loaded = False

    # -- paths -------------------------------------------------------------------------------

    def _path(self, digest: str) -> str:
        # a Digest's hex, never text unchecked: what keeps a hostile digest from naming a
        # path outside the cache (parsing a Digest again is free)
        hexd = Digest.parse(digest, "cache key").hex
        return os.path.join(self._base, hexd[:2], hexd[2:])

    def path(self, digest: str) -> str | None:
        """Where the entry for ``digest`` lives if the cache holds it (existence only: a
        reader must check the bytes it reads against the digest)."""
        return self._path(digest) if self.contains(digest) else None

    def _scan(self) -> tuple[list[_Entry], list[tuple[str, float]]]:
        """Every entry on disk, and every temporary file with its mtime."""
        entries: list[_Entry] = []
        temps: list[tuple[str, float]] = []
        try:
            subdirs = list(os.scandir(self._base))
        except FileNotFoundError:
            return entries, temps
        for sub in subdirs:
            if len(sub.name) != 2 or not HEX_DIGITS.issuperset(sub.name) \
                    or not sub.is_dir(follow_symlinks=False):
                continue
            try:
                files = list(os.scandir(sub.path))
            except FileNotFoundError:
                continue
            for f in files:
                try:
                    st = f.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # evicted by someone else while we looked
                if f.name.startswith(TMP_PREFIX):
                    temps.append((f.path, st.st_mtime))
                elif is_sha256(name := f"{PREFIX}{sub.name}{f.name}") and \
                        f.is_file(follow_symlinks=False):
                    key = _key(name)
                    entries.append(_Entry(f.path, key, st.st_size, st.st_mtime_ns))
        return entries, temps

    def _resync(self, entries: list[_Entry]) -> None:
        # caller holds the lock
        self._index = {e.key for e in entries}
        self._bytes = sum(e.size for e in entries)
        self._loaded = True

    def _ensure_loaded(self) -> None:
        # caller holds the lock
        if not self._loaded:
            self._resync(self._scan()[0])

    # -- reading -----------------------------------------------------------------------------

    def contains(self, digest: str) -> bool:
        """Whether the cache holds ``digest``. Existence only: the bytes are checked by get.

        A hit in the index costs no system call; it can be stale if another process evicted
        the file, which get() then reports as a miss. A miss in the index is confirmed on disk
        so entries other processes added since our scan are still found.
        """
        path = self._path(digest)
        key = _key(digest)
        with self._lock:
            self._ensure_loaded()
            if key in self._index:
                return True
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        with self._lock:
            if key not in self._index:
                self._index.add(key)
                self._bytes += st.st_size
        return True

    def get(self, digest: str) -> bytes | None:
        """The bytes of ``digest``, re-verified now, or None if absent or damaged on disk."""
        digest = Digest.parse(digest, "cache key")
        path = self._path(digest)
        key = _key(digest)
        try:
            # an evictor may unlink the file after this open; the open file keeps its bytes
            with open(path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
                ok = hashlib.sha256(data).hexdigest() == digest.hex
                if ok:
                    # touch the inode we read, not whatever the name points at by now; explicit
                    # ns times because the kernel's own "now" is too coarse to order reads
                    now = time.time_ns()
                    with contextlib.suppress(OSError):
                        os.utime(f.fileno(), ns=(now, now))
        except FileNotFoundError:
            with self._lock:
                self._index.discard(key)
            return None
        if ok:
            return data
        self._drop_damaged(path, key, st)
        return None

    def _drop_damaged(self, path: str, key: int, st: os.stat_result) -> None:
        with self._lock:
            try:
                now_st = os.stat(path)
            except FileNotFoundError:
                now_st = None
            # a concurrent put may already have replaced the damaged file with good bytes
            if now_st is not None and (now_st.st_ino, now_st.st_dev) == (st.st_ino, st.st_dev):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if key in self._index:
                self._index.discard(key)
                self._bytes = max(0, self._bytes - st.st_size)

    # -- writing -----------------------------------------------------------------------------

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest``, which must be its sha256 (ValueError otherwise)."""
        path = self._path(digest)
        actual = Digest.of(data)
        if actual != digest:
            raise ValueError(f"content is {actual}, not {digest}")
        key = _key(digest)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_size == len(data):
                # already there (get() would catch damage); only refresh its LRU position
                now = time.time_ns()
                with contextlib.suppress(OSError):
                    os.utime(path, ns=(now, now))
                with self._lock:
                    self._ensure_loaded()
                    if key not in self._index:
                        self._index.add(key)
                        self._bytes += len(data)
                return
        dirname = os.path.dirname(path)
        os.makedirs(dirname, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dirname, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # No fsync: a process crash cannot leave a partial file under the final
                # name (the rename comes after the write), and after a power loss an entry
                # with empty or partial data fails get()'s digest check and is dropped.
                # An fsync per chunk made pulls several times slower.
                now = time.time_ns()
                os.utime(f.fileno(), ns=(now, now))
            with self._lock:
                self._ensure_loaded()
                try:
                    old_size: int | None = os.stat(path).st_size
                except FileNotFoundError:
                    old_size = None
                # atomic; a racing put of the same digest writes identical bytes, and this
                # also heals a damaged file of a different size
                os.replace(tmp, path)
                tmp = ""
                if key in self._index and old_size is not None:
                    self._bytes += len(data) - old_size
                else:
                    self._index.add(key)
                    self._bytes += len(data)
                if self._bytes > self.limit_bytes:
                    self._evict(int(self.limit_bytes * EVICT_TARGET), strict=True)
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    # -- size bound --------------------------------------------------------------------------

    def _evict(self, target: int, strict: bool) -> tuple[int, int]:
        """Remove least recently used entries until the total is below (strict) or at most
        ``target``. Caller holds the lock. Rescans so other processes' entries count too."""
        entries, _ = self._scan()
        # name breaks ties so the order is the same in every process
        entries.sort(key=lambda e: (e.mtime_ns, e.path))
        total = sum(e.size for e in entries)
        kept_from = 0
        removed = freed = 0
        for e in entries:
            if total < target or (not strict and total <= target):
                break
            kept_from += 1
            try:
                # readers holding the file open keep their bytes; later gets just miss
                os.unlink(e.path)
            except FileNotFoundError:
                total -= e.size  # someone else removed it; it still no longer counts
                continue
            total -= e.size
            removed += 1
            freed += e.size
        self._resync(entries[kept_from:])
        return removed, freed

    def prune(self, max_bytes: int = 0) -> tuple[int, int]:
        """Remove LRU entries until at most ``max_bytes`` remain, and temporary files a crash
        left behind. Returns (files removed, bytes freed)."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        with self._lock:
            removed, freed = self._evict(max_bytes, strict=False)
            _, temps = self._scan()
            cutoff = time.time() - STALE_TMP_SECONDS
            for path, mtime in temps:
                if mtime >= cutoff:
                    continue  # probably a put in progress in another process
                try:
                    size = os.stat(path).st_size
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                removed += 1
                freed += size
        return removed, freed

    def stats(self) -> dict[str, object]:
        """What is on disk now (rescanned, so other processes' changes show)."""
        with self._lock:
            entries = self._scan()[0]
            self._resync(entries)
            return {
                "entries": len(entries),
                "bytes": self._bytes,
                "limit": self.limit_bytes,
                "root": self.root,
            }
