"""A blob uploaded to a registry as it is written, its digest given only at the end.

A converted layer's digest is known once the layer is built, so the blob cannot go up in one
``PUT ?digest=`` before: it goes up in pieces (``POST``, ``PATCH``..., ``PUT ?digest=``,
the OCI distribution spec's chunked upload) on a thread of its own, while the builder goes
on writing. A registry that refuses a chunked upload (its first ``PATCH`` answers an error)
gets the blob spooled to a temporary file instead, sent in one ``PUT`` at the end. Memory
stays bounded: at most a few pieces wait for the network.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from typing import BinaryIO

from chunked.oci.registry import RegistryClient, RegistryError

PIECE = 4 << 20
_QUEUED = 3  # pieces waiting for the network at most: the builder waits beyond that


class BlobUpload:
    """A writable blob in ``repo``: :meth:`write`, then :meth:`commit` with the digest (or
    :meth:`abort`). Written bytes are sent by a thread of the upload's own."""

    def __init__(self, client: RegistryClient, repo: str):
        self.client = client
        self.repo = repo
        self.size = 0
        self._buf = bytearray()
        self._queue: queue.Queue[bytes | None] = queue.Queue(_QUEUED)
        self._error: BaseException | None = None
        self._spool: BinaryIO | None = None  # once the registry refused a PATCH
        self._sent = 0
        self._scopes = client._push_scopes(repo)
        what = f"upload to {repo}"
        resp = client._send("POST", f"{client.base_url()}/v2/{repo}/blobs/uploads/", repo,
                            scopes=self._scopes)
        client._check(resp, repo, what)
        self._location = client._upload_location(resp, what)
        self._thread = threading.Thread(target=self._sender, name="chunked-upload",
                                        daemon=True)
        self._thread.start()

    # -- the writer's side ---------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self._buf += data
        self.size += len(data)
        while len(self._buf) >= PIECE:
            self._put(bytes(self._buf[:PIECE]))
            del self._buf[:PIECE]
        return len(data)

    def _put(self, piece: bytes | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(piece, timeout=0.5)
                return
            except queue.Full:
                continue

    def commit(self, digest: str) -> None:
        """Send what is left and close the upload under ``digest``, which the registry
        checks against what it received."""
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()
        self._put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        client, repo = self.client, self.repo
        what = f"upload of blob {digest} to {repo}"
        if self._spool is not None:
            spool = self._spool
            spool.flush()

            def reopen() -> BinaryIO:
                spool.seek(0)
                return _Unclosed(spool)  # type: ignore[return-value]

            try:
                client.upload_blob(repo, digest, self.size, reopen)
            finally:
                spool.close()
            return
        url = self._location.copy_merge_params({"digest": digest})
        resp = client._send("PUT", str(url), repo, {"Content-Length": "0"},
                            scopes=self._scopes, content=b"")
        client._check_stored(resp, repo, digest, what)

    def abort(self) -> None:
        """Give the upload up: the session is cancelled (best effort), nothing is stored."""
        if self._thread.is_alive():
            self._error = self._error or RegistryError("upload aborted")
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=30)
        if self._spool is not None:
            self._spool.close()
        try:
            self.client._send("DELETE", str(self._location), self.repo, scopes=self._scopes)
        except Exception:  # noqa: BLE001 - an unreachable registry purges it later anyway
            pass

    # -- the sender's side ---------------------------------------------------------------
    def _sender(self) -> None:
        try:
            while (piece := self._queue.get()) is not None:
                if self._error is not None:
                    return
                if self._spool is not None:
                    self._spool.write(piece)
                else:
                    self._patch(piece)
        except BaseException as exc:  # handed to the writer, which raises it
            self._error = exc

    def _patch(self, piece: bytes) -> None:
        client, repo = self.client, self.repo
        end = self._sent + len(piece) - 1
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"{self._sent}-{end}",
                   "Content-Length": str(len(piece))}
        resp = client._send("PATCH", str(self._location), repo, headers, scopes=self._scopes,
                            content=piece)
        if resp.status_code >= 400 and self._sent == 0 and \
                resp.status_code not in (401, 403, 429) and resp.status_code < 500:
            # no chunked uploads here: spool, and send the blob in one PUT at the end
            self._spool = tempfile.TemporaryFile(prefix="chunked-upload-")
            self._spool.write(piece)
            return
        client._check(resp, repo, f"upload to {repo}")
        self._location = client._upload_location(resp, f"upload to {repo}")
        self._sent += len(piece)


class _Unclosed:
    """The spool as a file ``upload_blob`` may close after each attempt, kept open."""

    def __init__(self, f: BinaryIO):
        self._f = f

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def __enter__(self) -> _Unclosed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

