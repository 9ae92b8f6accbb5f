"""A whole blob read as a stream from any RangeSource, checked against its digest.

Large windows are fetched ahead on a thread of their own while the reader works on the
last one (download and decompression overlap), so memory holds a few windows whatever the
blob's size. The digest is checked when the last byte has been read: :meth:`finish` reads
what the consumer left and raises :class:`VerifyError` on a mismatch, so nothing built
from a lying blob is kept.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading

from chunked.digest import Digest
from chunked.errors import VerifyError
from chunked.read.source import RangeSource

WINDOW = 4 << 20
_AHEAD = 2


class BlobStream(io.RawIOBase):
    def __init__(self, source: RangeSource, digest: str, window: int = WINDOW):
        self.source = source
        self.digest = digest
        self.bytes_read = 0
        self._hash = hashlib.sha256()
        self._window = window
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_AHEAD)
        self._stop = threading.Event()
        self._piece = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._fetch, name="chunked-blob", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            for off in range(0, self.source.size, self._window):
                if self._stop.is_set():
                    return
                n = min(self._window, self.source.size - off)
                (data,) = self.source.read_ranges([(off, n)])
                self._queue.put(data)
            self._queue.put(None)
        except BaseException as exc:  # handed to the reader
            self._queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._piece:
            if self._done:
                return 0
            item = self._queue.get()
            if item is None:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._hash.update(item)
            self.bytes_read += len(item)
            self._piece = memoryview(item)
        n = min(len(b), len(self._piece))
        b[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n

    def finish(self) -> None:
        """Read what is left, then hold the whole blob to its digest."""
        while self.read(1 << 20):
            pass
        actual = Digest.from_hash(self._hash)
        if actual != self.digest:
            raise VerifyError(f"{self.source.name}: blob is {actual}, not {self.digest}")

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a fetcher waiting on a full queue
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        super().close()
