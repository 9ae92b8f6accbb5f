"""A repository pulled from the mirrors registries.conf names, then from its registry.

:func:`pull_client` gives what every reading command uses to reach a registry: a plain
:class:`RegistryClient` when no mirror applies, else a :class:`MirroredClient` with the
same reading calls. Each call tries the sources in order; a mirror that is down, slow to
connect, answers 404 or serves bytes that do not match their digest is skipped with one
warning line, and the next source is used. Blobs read by range come from a
:class:`FallbackSource`, which moves to the next source on a transport failure and, when the
reader finds a chunk or TOC that does not match its digest, on :meth:`FallbackSource.failover`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import httpx

from chunked.errors import FormatError, NotFoundError, VerifyError
from chunked.oci import registriesconf
from chunked.oci.manifest import Manifest
from chunked.oci.reference import DockerRef
from chunked.oci.registry import RegistryBlobSource, RegistryClient, RegistryError, parse_creds

log = logging.getLogger("chunked.oci.mirrors")

T = TypeVar("T")
# a mirror that takes longer than this to accept a connection is passed over
MIRROR_CONNECT_TIMEOUT = 3.0
_SKIP = (RegistryError, NotFoundError, VerifyError, FormatError)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn(key: str, text: str) -> None:
    """One line on stderr, once per process for each key (a mirror): the CLI's words."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    print(f"chunked: warning: {text}", file=sys.stderr, flush=True)


class _Source:
    def __init__(self, endpoint: registriesconf.Endpoint, client: RegistryClient):
        self.endpoint = endpoint
        self.client = client
        # unreachable once: passed over for the rest of the process, without more lines
        self.down = False

    def skip(self, what: str, exc: Exception) -> None:
        if isinstance(exc, RegistryError) and "cannot connect" in str(exc):
            self.down = True
        _warn(self.label, f"{self.label}: {what}: {exc}; trying the next source")

    @property
    def label(self) -> str:
        e = self.endpoint
        return f"{'mirror' if e.mirror else 'registry'} {e.host}/{e.repository}"


class MirroredClient:
    """The reading calls of :class:`RegistryClient`, for one repository, over its mirrors
    and then its registry. ``repo`` arguments name the repository as the reference does."""

    def __init__(self, ref: DockerRef, sources: list[_Source]):
        self.host = ref.host
        self.repository = ref.repository
        self.sources = sources

    def _try(self, what: str, call: Callable[[_Source], T]) -> T:
        for i, src in enumerate(self.sources):
            last = i + 1 == len(self.sources)
            if src.down and not last:
                continue
            try:
                return call(src)
            except _SKIP as exc:
                if last:
                    raise
                src.skip(what, exc)
        raise AssertionError("unreachable")

    def resolve(self, repo: str, reference: str, platform: str | None = None
                ) -> tuple[Manifest, str]:
        return self._try(f"manifest {reference}", lambda s: s.client.resolve(
            s.endpoint.repository, reference, platform))

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        return self._try(f"manifest {reference}", lambda s: s.client.get_manifest(
            s.endpoint.repository, reference))

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self._try(f"blob {digest}", lambda s: s.client.get_blob(
            s.endpoint.repository, digest))

    def blob_source(self, repo: str, digest: str, size: int) -> FallbackSource:
        return FallbackSource(self.sources, digest, size)

    def close(self) -> None:
        for s in self.sources:
            s.client.close()

    def __enter__(self) -> MirroredClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FallbackSource:
    """A blob read by range from the first source that serves it (a RangeSource)."""

    def __init__(self, sources: list[_Source], digest: str, size: int):
        self._sources = sources
        self.digest = digest
        self.size = size
        self._i = next((i for i, s in enumerate(sources) if not s.down), len(sources) - 1)
        self._lock = threading.Lock()
        self._current = self._open(self._i)
        self.name = self._current.name

    def _open(self, i: int) -> RegistryBlobSource:
        s = self._sources[i]
        return s.client.blob_source(s.endpoint.repository, self.digest, self.size)

    def failover(self, why: str | Exception) -> bool:
        """Leave the current source for the next (True), if there is one."""
        with self._lock:
            if self._i + 1 >= len(self._sources):
                return False
            reason = why if isinstance(why, Exception) else RegistryError(why)
            self._sources[self._i].skip(f"blob {self.digest}", reason)
            self._current.close()
            self._i += 1
            while self._sources[self._i].down and self._i + 1 < len(self._sources):
                self._i += 1
            self._current = self._open(self._i)
            self.name = self._current.name
            return True

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        while True:
            current = self._current
            try:
                return current.read_ranges(ranges)
            except (RegistryError, NotFoundError) as exc:
                if current is not self._current:
                    continue  # another reader moved on meanwhile
                if not self.failover(exc):
                    raise

    def close(self) -> None:
        self._current.close()

    def __enter__(self) -> FallbackSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pull_client(ref: DockerRef, *, tls_verify: bool = True, creds: str | None = None,
                authfile: str | None = None) -> RegistryClient | MirroredClient:
    """What to read ``ref``'s repository through, as registries.conf says (mirrors first;
    ``--creds`` go to the registry itself, mirrors use the auth files)."""
    endpoints = registriesconf.endpoints(ref.host, ref.repository,
                                         by_digest=ref.digest is not None,
                                         tls_verify=tls_verify)
    parsed = parse_creds(creds)
    if len(endpoints) == 1 and endpoints[0].host == ref.host and \
            endpoints[0].repository == ref.repository:
        return RegistryClient(ref.host, tls_verify=not endpoints[0].insecure, creds=parsed,
                              authfile=authfile)
    sources = []
    for e in endpoints:
        if e.mirror:
            client = RegistryClient(e.host, tls_verify=not e.insecure, authfile=authfile,
                                    timeout=httpx.Timeout(30.0,
                                                          connect=MIRROR_CONNECT_TIMEOUT),
                                    tries=1)
        else:
            client = RegistryClient(e.host, tls_verify=not e.insecure, creds=parsed,
                                    authfile=authfile)
        sources.append(_Source(e, client))
    return MirroredClient(ref, sources)


__all__ = ["FallbackSource", "MirroredClient", "pull_client"]
