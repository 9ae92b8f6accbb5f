"""Writing a pull's regular files, and where their bytes come from.

In order of preference:

1. a file an earlier pull wrote with the same digest (:mod:`chunked.cache.pulls`): cloned
   with a reflink where the file system can, hard-linked with ``hardlink=True`` when the
   metadata allows, else copied;
2. single chunks held locally: the lazy mount's content cache, or a chunk of a larger file
   an earlier pull wrote, so a big file changed in part reuses its unchanged parts;
3. the layer itself, in windows of many ranges fetched by several threads while others
   write the files whose chunks have all arrived; chunks are dropped once the last file
   needing them is written, which bounds memory.

Every byte written is checked against a digest from the TOC first: fetched and local
chunks alike, whole files of several chunks once more as a whole. Local content that fails
its check is fetched instead. The per-file system calls of files without xattrs run a
batch per call through :mod:`chunked.puller.pullio` (in C without the GIL where it is
built, else its Python spec); the rest, in Python here.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import posixpath
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chunked import format as fmt
from chunked.cache.chunks import ContentCache
from chunked.cache.pulls import Location, PullIndex
from chunked.digest import Digest, raw_of
from chunked.errors import VerifyError
from chunked.format.chunking import crc64
from chunked.puller.destination import Destination, digest_fd, entry_times, write_all
from chunked.puller.pullio import backend as pullio
from chunked.read.layer import ChunkRef, FileInfo, WholeCheck, crc_zeros, zeros_digest
from chunked.read.protocol import LayerReader

WINDOW = 4 << 20  # compressed bytes asked for per window (one multi-range request)
# ... and at most this many bytes once decompressed: what a window holds until written
WINDOW_DATA = 4 << 20
# windows fetched or in flight but not yet written: this bounds memory (Debian rootfs,
# peak RSS: 232 MiB with six windows of 4 MiB compressed, 143 MiB with four of 4 MiB
# decompressed and big files streamed)
WINDOWS_OPEN = 4
# three: while one thread decompresses and checks its window, two keep the link busy
# (WAN emulation, Debian rootfs: 17.4 s with two, 16.9 s with three; four gained 0.3 s
# there and lost as much on loopback)
FETCHERS = 3
WRITERS = 2
# copying from an earlier pull is nearly all system calls that block in the file system,
# made in C without the GIL: four threads keep two cores busy (update of the Debian
# rootfs: 1.19-1.30 s with four, 1.29-1.46 s with three, 1.30-1.40 s with two)
COPIERS = 4
_COPY_BATCH = 64
# at most this many files per write task: each pins its directory's descriptor meanwhile
_WRITE_BATCH = 64
_PIECE = 1 << 20
# a file with this many bytes to fetch is streamed (FileWriter._stream_job): the windows
# hold a file's chunks until all of them are here, which for a big file means all of it
STREAM_AT = 16 << 20
STREAM_BATCH = 2 << 20  # compressed bytes a streamed file asks for at a time

ZERO, LOCAL, REMOTE = 0, 1, 2


@dataclass
class PullSummary:
    """What a pull did: bytes fetched (compressed) and reused (uncompressed), files
    fetched and reused, and how the reused ones were made."""

    bytes_fetched: int = 0
    bytes_reused: int = 0
    files_fetched: int = 0
    seconds: float = 0.0
    reused_by: dict[str, int] = field(
        default_factory=lambda: {"inPlace": 0, "reflink": 0, "hardlink": 0, "copy": 0,
                                 "chunks": 0})
    skipped: list[str] = field(default_factory=list)

    @property
    def files_reused(self) -> int:
        return sum(self.reused_by.values())

    def as_dict(self) -> dict[str, Any]:
        return {"bytesFetched": self.bytes_fetched, "bytesReused": self.bytes_reused,
                "filesFetched": self.files_fetched, "filesReused": self.files_reused,
                "reusedBy": self.reused_by, "seconds": round(self.seconds, 3)}


@dataclass(eq=False)
class Job:
    path: str
    layer: LayerReader
    info: FileInfo
    plan: list[int] = field(default_factory=list)  # ZERO, LOCAL or REMOTE per chunk
    missing: int = 0  # remote chunks not yet arrived
    window: int = -1


class _LinkInstead(Exception):
    """No clone possible, and a hard link is asked for and allowed."""


class _LocalMiss(Exception):
    """Local content failed its check (changed or gone since recorded): fetch instead."""


class FileWriter:
    """Writes the regular files of one pull under a :class:`Destination`."""

    def __init__(self, d: Destination, cache: ContentCache | None, index: PullIndex | None,
                 hardlink: bool, summary: PullSummary,
                 progress: Callable[..., None] | None,
                 written: Callable[[FileInfo], None] | None = None):
        self.d = d
        self.cache = cache
        self.index = index
        self.hardlink = hardlink
        self.summary = summary
        self.progress = progress
        self.written = written  # told of each file once it is in place under its name
        self.done = 0
        self._lock = threading.Lock()
        # cache entries are never hard-linked: the cache touches and evicts its files, which
        # would change or free the tree's
        self._cache_dir = os.path.join(cache.root, "") if cache is not None else None

    def _advance(self, job: Job) -> None:
        with self._lock:  # copier threads report too
            self.done += job.info.entry.size
            if self.progress:
                self.progress(self.done)
        if self.written is not None:
            self.written(job.info)

    def run(self, todo: list[Job]) -> None:
        found: list[tuple[Job, list[str]]] = []
        direct: list[Job] = []
        for job in todo:
            sources = self._whole_file_sources(job.info)
            if sources:
                found.append((job, sources))
            else:
                direct.append(job)
        with cf.ThreadPoolExecutor(COPIERS, "chunked-copy") as copy_pool, \
                cf.ThreadPoolExecutor(WRITERS, "chunked-write") as pool:
            # a task per file would cost more in thread hand-offs than small files take
            copies = [copy_pool.submit(self._copy_batch, found[i:i + _COPY_BATCH])
                      for i in range(0, len(found), _COPY_BATCH)]
            try:
                # what no earlier pull has is fetched while the copies run
                retry = self._from_chunks(direct, pool, allow_local=True)
                misses = []
                for fut in cf.as_completed(copies):
                    for job, how in fut.result():
                        if how is None:
                            misses.append(job)  # changed since that pull: chunks, or fetch
                            continue
                        self.summary.bytes_reused += job.info.entry.size
                        self.summary.reused_by[how] += 1
                if misses:
                    retry += self._from_chunks(misses, pool, allow_local=True)
                if retry:
                    self._from_chunks(retry, pool, allow_local=False)
            except BaseException:
                copy_pool.shutdown(cancel_futures=True)
                raise

    # -- whole files an earlier pull wrote -----------------------------------------------
    def _whole_file_sources(self, info: FileInfo) -> list[str]:
        """Local files that should hold exactly this file's bytes: files earlier pulls
        wrote, or the mount's cache entry of a file that is one chunk (the entry is then
        the whole file), which can be cloned or copied like them."""
        e = info.entry
        if not e.size:
            return []
        sources = self.index.files(e.digest) if self.index is not None else []
        # only then: a cache miss costs a stat, and a file whose earlier copies all fail
        # their check still finds the cache entry as a local chunk (_from_chunks)
        if not sources and self.cache is not None and len(info.chunks) == 1 and \
                not info.chunks[0].zeros:
            cached = self.cache.path(e.digest)
            if cached is not None:
                sources = [*sources, cached]
        return sources

    def _copy_batch(self, found: list[tuple[Job, list[str]]]) -> list[tuple[Job, str | None]]:
        batched = self._copy_batched(found)
        done = [(job, batched[i] if i in batched else self._copy_file(job, sources))
                for i, (job, sources) in enumerate(found)]
        for job, how in done:
            if how is not None:
                self._advance(job)
        return done

    def _copy_batched(self, found: list[tuple[Job, list[str]]]) -> dict[int, str | None]:
        """Copy what the batch copier can (from each file's first source, no xattrs) in one
        call (in C: without the GIL); the index in ``found`` of each file done, and how."""
        picks: list[int] = []
        args = []
        pinned: dict[str, int] = {}  # each directory once per batch
        try:
            for i, (job, sources) in enumerate(found):
                e = job.info.entry
                if e.xattrs or not _batch_times(e):
                    continue
                parent, name = posixpath.split(job.path)
                chown, chmod = self.d.owner_and_mode(e, self.d.owned(parent))
                atime, mtime = entry_times(e)
                picks.append(i)
                dfd = pinned.get(parent)
                if dfd is None:
                    dfd = pinned[parent] = self.d.pin(parent)
                args.append((os.fsencode(sources[0]), dfd, self.d.tmp_name().encode(),
                             os.fsencode(name), e.size, e.mode, e.uid, e.gid, atime, mtime,
                             chown, chmod, raw_of(e.digest),
                             self.hardlink and self._linkable(sources[0])))
            results = pullio.copy_files(args)
        finally:
            for parent in pinned:
                self.d.unpin(parent)
        done: dict[int, str | None] = {}
        for i, (status, err, stage) in zip(picks, results, strict=True):
            if status < 0:
                raise OSError(err, f"{stage} {found[i][0].path!r}: {os.strerror(err)}")
            if status:
                done[i] = {1: "copy", 2: "reflink", 3: "hardlink"}[status]
            elif len(found[i][1]) > 1:
                found[i] = (found[i][0], found[i][1][1:])  # the other sources, in Python
            else:
                done[i] = None
        return done

    def _copy_file(self, job: Job, sources: list[str]) -> str | None:
        """Write ``job`` from the first source whose bytes match its digest; how, or None."""
        for src in sources:
            try:
                # O_NONBLOCK: a fifo put there since must be a miss, not an open that waits
                # for a writer (no effect on a regular file)
                sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # gone or replaced since that pull: only a hint
            try:
                how = self._copy_from(job, sfd, self.hardlink and self._linkable(src))
            except _LocalMiss:
                continue
            finally:
                os.close(sfd)
            if how is not None:
                return how
        return None

    def _linkable(self, src: str) -> bool:
        return self._cache_dir is None or not src.startswith(self._cache_dir)

    def _copy_from(self, job: Job, sfd: int, link: bool) -> str | None:
        # Trouble reading the source is a miss (_LocalMiss); trouble writing DEST is an error.
        e = job.info.entry
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return None
        # a reflink where the file system can, else a hard link when asked and the
        # metadata allow, else a copy
        linkable = link and _same_meta(st, sfd, e)
        try:
            with self.d.new_file(job.path, e) as fd:
                if self.d.clone(fd, sfd):
                    how = "reflink"
                    # check what the clone holds, not what the source held before
                    ok = digest_fd(fd, e.size) == e.digest
                elif linkable:
                    raise _LinkInstead  # removes the temporary file
                else:
                    how = "copy"
                    ok = _copy_verified(sfd, fd, e.size) == e.digest
                if not ok:
                    raise _LocalMiss  # removes the temporary file
        except _LinkInstead:
            if _source_digest(sfd, e.size) != e.digest:
                return None
            self.d.link_file(job.path, sfd)
            return "hardlink"
        return how

    # -- chunk by chunk ------------------------------------------------------------------
    def _plan(self, job: Job, allow_local: bool) -> None:
        job.plan = []
        for c in job.info.chunks:
            if c.zeros:
                # never fetched, so checked here: a zeros chunk's digest is that of zeros
                if zeros_digest(c.size) != c.digest:
                    raise VerifyError(f"{job.info.entry.name}: the zeros chunk at offset "
                                      f"{c.file_offset} does not match its digest")
                if c.crc is not None and crc_zeros(0, c.size) != c.crc:
                    raise VerifyError(f"{job.info.entry.name}: content does not match the "
                                      "tar-split CRC")
                job.plan.append(ZERO)
            elif allow_local and self._have_local(c.digest):
                job.plan.append(LOCAL)
            else:
                job.plan.append(REMOTE)

    def _have_local(self, digest: str) -> bool:
        if self.index is not None and (self.index.chunks(digest) or self.index.files(digest)):
            return True
        return self.cache is not None and self.cache.contains(digest)

    def _from_chunks(self, todo: list[Job], pool: cf.Executor,
                     allow_local: bool) -> list[Job]:
        """Write ``todo``, fetching what is not local; the jobs whose local chunks failed
        their check are returned, to be fetched whole."""
        for job in todo:
            self._plan(job, allow_local)
        big = [j for j in todo if _remote_size(j) >= STREAM_AT]
        if not big:
            return self._in_windows(todo, pool)
        # a big file is fetched and written a batch of chunks at a time, beside the
        # windows, never whole in memory: what a pull holds does not grow with a file
        seen = {id(j) for j in big}
        small = [j for j in todo if id(j) not in seen]
        stop = threading.Event()
        with cf.ThreadPoolExecutor(1, "chunked-stream") as one:
            streamed = one.submit(self._stream_jobs, big, stop)
            try:
                retry = self._in_windows(small, pool)
            except BaseException:
                stop.set()
                raise
            done, missed = streamed.result()
        for job in done:
            self._tally(job)
            self.summary.bytes_fetched += sum(
                c.end - c.start for c, k in zip(job.info.chunks, job.plan, strict=True)
                if k == REMOTE)
        return retry + missed

    def _stream_jobs(self, jobs: list[Job], stop: threading.Event
                     ) -> tuple[list[Job], list[Job]]:
        done: list[Job] = []
        missed: list[Job] = []
        for job in jobs:
            if stop.is_set():
                break
            try:
                self._stream_job(job)
            except _LocalMiss:
                missed.append(job)
                continue
            done.append(job)
            self._advance(job)
        return done, missed

    def _stream_job(self, job: Job) -> None:
        """Write one file as its chunks arrive, each chunk checked on arrival (by
        read_chunks) and the whole file before it takes its name."""
        info = job.info
        remote = [c for c, k in zip(info.chunks, job.plan, strict=True) if k == REMOTE]
        arriving = (data for _, data in
                    job.layer.read_chunks(remote, info.entry.name, batch=STREAM_BATCH))
        with self.d.new_file(job.path, info.entry) as fd:
            self._write_chunks(fd, job, lambda c: next(arriving))  # (in chunk order)

    def _in_windows(self, todo: list[Job], pool: cf.Executor) -> list[Job]:
        """Fetch the remote chunks of ``todo`` in windows and write each file once all of
        its chunks are here."""
        # windows: jobs in blob order per layer, each window fetching up to WINDOW bytes of
        # chunks not asked for by an earlier window
        windows: list[tuple[LayerReader, list[ChunkRef]]] = []
        waiting: dict[str, list[Job]] = {}
        users: dict[str, int] = {}
        window_jobs: list[int] = []
        ready: list[Job] = []
        by_layer: dict[int, list[Job]] = {}
        for job in todo:
            by_layer.setdefault(id(job.layer), []).append(job)
        for jobs in by_layer.values():
            jobs.sort(key=lambda j: min((c.start for c, k in zip(j.info.chunks, j.plan,
                                                                  strict=True) if k == REMOTE),
                                        default=-1))
            size = WINDOW
            data = 0
            for job in jobs:
                wants = [c for c, k in zip(job.info.chunks, job.plan, strict=True)
                         if k == REMOTE]
                if not wants:
                    ready.append(job)
                    continue
                if size >= WINDOW or data >= WINDOW_DATA:
                    windows.append((job.layer, []))
                    window_jobs.append(0)
                    size = data = 0
                job.window = len(windows) - 1
                window_jobs[job.window] += 1
                for c in wants:
                    if c.digest not in waiting:
                        waiting[c.digest] = []
                        windows[-1][1].append(c)
                        size += c.end - c.start
                        data += c.size
                    if job not in waiting[c.digest]:
                        waiting[c.digest].append(job)
                        users[c.digest] = users.get(c.digest, 0) + 1
                        job.missing += 1
        owner = {c.start: j.info.entry.name for j in todo for c in j.info.chunks}

        have: dict[str, bytes] = {}
        retry: list[Job] = []
        # completions arrive on one queue: waiting on thousands of futures each time one of
        # them finishes would cost O(files^2)
        done: queue.SimpleQueue[cf.Future[Any]] = queue.SimpleQueue()
        writes: dict[cf.Future[list[bool]], list[Job]] = {}
        fetches: dict[cf.Future[list[tuple[ChunkRef, bytes]]], int] = {}

        def write(jobs: list[Job]) -> None:
            # one task per writer for the files a window completed: a task per file costs
            # more in thread wake-ups than a small file takes to write
            step = min(_WRITE_BATCH, max(8, -(-len(jobs) // WRITERS)))
            for i in range(0, len(jobs), step):
                part = jobs[i:i + step]
                fut = pool.submit(self._write_batch, part, have)
                writes[fut] = part
                fut.add_done_callback(done.put)

        write(ready)
        open_windows = 0
        next_window = 0
        with cf.ThreadPoolExecutor(FETCHERS, "chunked-fetch") as fetch_pool:
            try:
                while writes or fetches or next_window < len(windows):
                    while next_window < len(windows) and open_windows < WINDOWS_OPEN:
                        layer, chunks = windows[next_window]
                        ffut = fetch_pool.submit(_fetch, layer, chunks, owner)
                        fetches[ffut] = next_window
                        ffut.add_done_callback(done.put)
                        next_window += 1
                        open_windows += 1
                    fut = done.get()
                    if fut in fetches:
                        del fetches[fut]
                        now_ready = []
                        for ref, data in fut.result():
                            have[ref.digest] = data
                            self.summary.bytes_fetched += ref.end - ref.start
                            for job in waiting.pop(ref.digest):
                                job.missing -= 1
                                if job.missing == 0:
                                    now_ready.append(job)
                        write(now_ready)
                        continue
                    part = writes.pop(fut)
                    for job, ok in zip(part, fut.result(), strict=True):
                        if ok:
                            self._count(job)
                        else:
                            retry.append(job)
                        for digest in {c.digest for c, k in zip(job.info.chunks, job.plan,
                                                                strict=True) if k == REMOTE}:
                            users[digest] -= 1
                            if users[digest] == 0:
                                del users[digest]
                                have.pop(digest, None)
                        if job.window >= 0:
                            window_jobs[job.window] -= 1
                            if window_jobs[job.window] == 0:
                                open_windows -= 1
            except BaseException:
                for f in [*writes, *fetches]:
                    f.cancel()
                cf.wait([*writes, *fetches])
                raise
        return retry

    def _count(self, job: Job) -> None:
        self._tally(job)
        self._advance(job)

    def _tally(self, job: Job) -> None:
        s = self.summary
        remote = any(k == REMOTE for k in job.plan)
        local = sum(c.size for c, k in zip(job.info.chunks, job.plan, strict=True)
                    if k == LOCAL)
        s.bytes_reused += local
        if remote:
            s.files_fetched += 1
        elif job.info.entry.size:
            s.reused_by["chunks"] += 1

    def _write_batch(self, jobs: list[Job], have: dict[str, bytes]) -> list[bool]:
        done = self._write_batched(jobs, have)
        return [done[i] if i in done else self._write_job(job, have)
                for i, job in enumerate(jobs)]

    def _write_batched(self, jobs: list[Job], have: dict[str, bytes]) -> dict[int, bool]:
        """Write in one call (in C: without the GIL) the files whose chunks are all at hand
        (no local chunk to read and check first) and that have no xattrs."""
        picks: list[int] = []
        args = []
        pinned: dict[str, int] = {}  # each directory once per batch
        try:
            for i, job in enumerate(jobs):
                info = job.info
                e = info.entry
                if e.xattrs or LOCAL in job.plan or not _batch_times(e):
                    continue
                parent, name = posixpath.split(job.path)
                chown, chmod = self.d.owner_and_mode(e, self.d.owned(parent))
                atime, mtime = entry_times(e)
                pieces = [c.size if k == ZERO else have[c.digest]
                          for c, k in zip(info.chunks, job.plan, strict=True)]
                # each chunk was checked on arrival (a file of one chunk against its CRC-64
                # too); a file of several is checked whole here and in C
                whole = b""
                if len(info.chunks) > 1:
                    _check_crc(info, pieces)
                    whole = raw_of(e.digest)
                picks.append(i)
                dfd = pinned.get(parent)
                if dfd is None:
                    dfd = pinned[parent] = self.d.pin(parent)
                args.append((dfd, self.d.tmp_name().encode(), os.fsencode(name), e.size,
                             e.mode, e.uid, e.gid, atime, mtime, chown, chmod, pieces, whole))
            results = pullio.write_files(args)
        finally:
            for parent in pinned:
                self.d.unpin(parent)
        done: dict[int, bool] = {}
        for i, (status, err, stage) in zip(picks, results, strict=True):
            if status == -2:
                raise VerifyError(f"{jobs[i].info.entry.name}: content does not match its "
                                  "digest")
            if status < 0:
                raise OSError(err, f"{stage} {jobs[i].path!r}: {os.strerror(err)}")
            if status:
                done[i] = True
        return done

    def _write_job(self, job: Job, have: dict[str, bytes]) -> bool:
        """Write a file from its chunks; False if a local chunk failed its check."""
        info = job.info
        try:
            with self.d.new_file(job.path, info.entry) as fd:
                self._write_chunks(fd, job, lambda c: have[c.digest])
        except _LocalMiss:
            return False
        return True

    def _write_chunks(self, fd: int, job: Job,
                      remote: Callable[[ChunkRef], bytes | None]) -> None:
        """A file's bytes into ``fd``: zeros as holes, local chunks read and checked here,
        remote ones from ``remote``. Each chunk is checked on its own; a file of several
        is checked whole too (that its chunks add up to the file the TOC describes), and
        every file against the tar-split's CRC-64."""
        info = job.info
        check = WholeCheck(info)
        for c, kind in zip(info.chunks, job.plan, strict=True):
            if kind == ZERO:
                os.lseek(fd, c.size, os.SEEK_CUR)  # a hole, as upstream writes it
                check.zeros(c.size)
                continue
            data = remote(c) if kind == REMOTE else self._local_chunk(c)
            assert data is not None  # (a zeros chunk is never REMOTE)
            write_all(fd, data)
            check.update(data)
        if info.chunks and info.chunks[-1].zeros:
            os.ftruncate(fd, info.entry.size)
        check.finish()

    def _local_chunk(self, c: ChunkRef) -> bytes:
        """A chunk's bytes from this host, checked against its digest, or _LocalMiss."""
        if self.cache is not None:
            data = self.cache.get(c.digest)
            if data is not None and len(data) == c.size:
                return data
        if self.index is not None:
            places = [*self.index.chunks(c.digest),
                      *(Location(p, 0, c.size) for p in self.index.files(c.digest))]
            for loc in places:
                try:
                    fd = os.open(loc.path,
                                 os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    data = os.pread(fd, loc.size, loc.offset)
                except OSError:
                    continue
                finally:
                    os.close(fd)
                if len(data) == c.size and \
                        Digest.of(data) == c.digest:
                    return data
        raise _LocalMiss


def _remote_size(job: Job) -> int:
    return sum(c.size for c, k in zip(job.info.chunks, job.plan, strict=True) if k == REMOTE)


def _fetch(layer: LayerReader, chunks: list[ChunkRef],
           owner: dict[int, str]) -> list[tuple[ChunkRef, bytes]]:
    return list(layer.read_chunks(chunks, owner)) if chunks else []


_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


def _batch_times(e: fmt.TocEntry) -> bool:
    """Whether a job record can carry the entry's times (int64 ns: years 1678-2262); the
    per-file path takes any time a TOC can carry."""
    return all(_NS_MIN <= t <= _NS_MAX for t in entry_times(e))


def _check_crc(info: FileInfo, pieces: list[bytes | int]) -> None:
    """The tar-split's CRC-64 of a file about to be written in a batch (which checks the
    digest)."""
    if info.crc is None:
        return
    crc = 0
    for piece in pieces:
        crc = crc_zeros(crc, piece) if isinstance(piece, int) else crc64(piece, crc)
    if crc != info.crc:
        raise VerifyError(f"{info.entry.name}: content does not match the tar-split CRC")


def _source_digest(fd: int, size: int) -> str:
    try:
        return digest_fd(fd, size)
    except OSError:
        raise _LocalMiss from None


def _copy_verified(src: int, dst: int, size: int) -> str:
    """Copy ``size`` bytes, hashing exactly the bytes written; their digest."""
    h = hashlib.sha256()
    off = 0
    while off < size:
        try:
            piece = os.pread(src, min(_PIECE, size - off), off)
        except OSError:
            raise _LocalMiss from None
        if not piece:
            break
        h.update(piece)
        write_all(dst, piece)
        off += len(piece)
    return Digest.from_hash(h)


def _same_meta(st: os.stat_result, fd: int, e: fmt.TocEntry) -> bool:
    """Whether a shared inode would show exactly ``e``'s metadata."""
    if (st.st_mode & 0o7777) != (e.mode & 0o7777) or st.st_uid != e.uid or \
            st.st_gid != e.gid or st.st_mtime_ns != (e.mtime or 0):
        return False
    try:
        names = os.listxattr(fd)
        want = e.xattrs or {}
        return set(names) == set(want) and \
            all(os.getxattr(fd, n) == v for n, v in want.items())
    except OSError:
        return False

