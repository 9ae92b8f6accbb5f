"""A small OCI distribution client: manifests, small blobs and ranged reads of layers.

Transport choice (``tls_verify``):

* ``True``: HTTPS with certificate checks, nothing else.
* ``False`` for 127.0.0.1 / localhost / ::1: plain HTTP, as a local test registry speaks.
* ``False`` for other hosts: HTTPS without certificate checks, falling back to plain HTTP when
  the TLS handshake fails (what skopeo's ``--tls-verify=false`` does).

Requests are logged to the ``chunked.oci.registry`` logger at DEBUG level.
"""

from __future__ import annotations

import base64
import bisect
import concurrent.futures as cf
import json
import logging
import os
import platform as _platform
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import httpx

from chunked.digest import Digest
from chunked.errors import ChunkedError, FormatError, InputError, NotFoundError, VerifyError
from chunked.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    Platform,
    is_index,
    parse_index,
    parse_manifest,
)
from chunked.oci.reference import DOCKER_HUB_HOST
from chunked.read.source import FileSource, check_ranges

log = logging.getLogger("chunked.oci.registry")

_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

ZSTD_ANNOTATION = "io.github.containers.compression.zstd"

_LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
_HUB_AUTH_KEYS = ("docker.io", "index.docker.io", DOCKER_HUB_HOST)
_MAX_REDIRECTS = 5
_MAX_RETRY_AFTER = 60.0
_UPLOAD_PIECE = 1 << 20
# a blob a server sends whole (Range ignored) is kept in memory up to this size
WHOLE_IN_MEMORY = 64 << 20
# Go (uname -m -> GOARCH) names, as image platforms use them.
_GO_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}  # fmt: skip


class RegistryError(ChunkedError):
    """The registry refused us, could not be reached, or answered something unusable."""


class _RangesRejected(Exception):
    """The server refused a multi-range request: ask for fewer ranges. 400 and 431 (a
    header too long) mean fewer; 501 and 416 (GHCR's CDN, zot) mean one at a time."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


# --------------------------------------------------------------------------- credentials


def _auth_files(authfile: str | None) -> list[str]:
    if authfile:
        if not os.path.exists(authfile):
            raise InputError(f"{authfile}: auth file does not exist")
        return [authfile]
    files = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(env)
    if run := os.environ.get("XDG_RUNTIME_DIR"):
        files.append(os.path.join(run, "containers", "auth.json"))
    files.append(os.path.expanduser("~/.docker/config.json"))
    return files


def _auth_key_host(key: str) -> str:
    # Keys come as "host", "host/namespace" or "https://host/v1/"; we match on the host only.
    return re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]


def load_credentials(host: str, authfile: str | None = None) -> tuple[str, str] | None:
    """``(user, password)`` for ``host`` from the first auth file that has an entry for it."""
    wanted = set(_HUB_AUTH_KEYS) if host == DOCKER_HUB_HOST else {host}
    for path in _auth_files(authfile):
        try:
            with open(path, encoding="utf-8") as f:
                auths = json.load(f).get("auths", {})
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: cannot read auth file: {exc}") from None
        for key, entry in auths.items():
            if _auth_key_host(key) in wanted and isinstance(entry, dict) and entry.get("auth"):
                try:
                    user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except ValueError:
                    raise InputError(f"{path}: entry {key!r} has a malformed auth value") from None
                if sep:
                    return user, password
    return None


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v1 or v2 for k, v1, v2 in
              re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', rest)}
    return scheme.lower(), params


# --------------------------------------------------------------------------- client


def parse_creds(text: str | None) -> tuple[str, str] | None:
    """``--creds USER:PASS`` as skopeo takes it."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep:
        raise InputError("--creds takes USER:PASS")
    return user, password


class RegistryClient:
    """Talks to one registry host; safe to share between threads."""

    def __init__(
        self,
        host: str,
        *,
        tls_verify: bool = True,
        creds: tuple[str, str] | None = None,
        authfile: str | None = None,
        timeout: float = 30.0,
        tries: int = 4,
        backoff: float = 0.5,
    ):
        self.host = host
        self.tries = max(1, tries)
        self.backoff = backoff
        self._tls_verify = tls_verify
        self._creds = creds or load_credentials(host, authfile)
        self._http = httpx.Client(verify=tls_verify, timeout=timeout, follow_redirects=False)
        self._base: str | None = None
        if tls_verify:
            self._base = f"https://{host}"
        elif host.rsplit(":", 1)[0] in _LOOPBACK or host in _LOOPBACK:
            self._base = f"http://{host}"
        self._lock = threading.Lock()
        # repo (pull) or the space-joined scopes asked for (push) -> Authorization (Bearer)
        self._tokens: dict[str, str] = {}
        self._basic: str | None = None  # Authorization value once a Basic challenge was seen
        self._blob_urls: dict[str, str] = {}  # digest -> redirect target, reused for ranges
        # the most ranges one request may carry, once the host refused more (remembered:
        # later requests do not pay the refusal again)
        self.range_limit: int | None = None
        # where a blob sent whole (Range ignored) larger than WHOLE_IN_MEMORY is kept
        self.spool_dir: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def base_url(self) -> str:
        with self._lock:
            if self._base is None:
                try:
                    self._http.get(f"https://{self.host}/v2/")
                    self._base = f"https://{self.host}"
                except httpx.TransportError as exc:
                    log.debug("https://%s unusable (%s); using plain HTTP", self.host, exc)
                    self._base = f"http://{self.host}"
            return self._base

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None,
                 *, stream: bool = False, **kw: Any) -> httpx.Response:
        """One HTTP exchange, retried with backoff on connection errors (a stalled read
        among them: the client's timeouts), 429 and 5xx but 501 (never transient).

        ``content`` may be a callable returning the body: a streamed body is used up by one
        attempt, so each retry needs a fresh one. ``stream`` leaves the final answer's body
        unread (the caller reads or closes it).
        """
        delay = self.backoff
        body = kw.pop("content", None)
        auth = kw.pop("auth", None)  # send() takes it, build_request() does not
        for attempt in range(1, self.tries + 1):
            if body is not None:
                kw["content"] = body() if callable(body) else body
            try:
                req = self._http.build_request(method, url, headers=headers, **kw)
                resp = self._http.send(req, stream=stream, auth=auth)
            except httpx.TransportError as exc:
                log.debug("%s %s: %s (try %d/%d)", method, url, exc, attempt, self.tries)
                if attempt == self.tries:
                    host = httpx.URL(url).netloc.decode()
                    raise RegistryError(f"registry {host}: cannot connect: {exc}") from None
                time.sleep(delay)
                delay *= 2
                continue
            rng = (headers or {}).get("Range")
            nranges = rng.count(",") + 1 if rng else 0
            log.debug("%s %s ranges=%d -> %d (%s bytes)", method, url, nranges,
                      resp.status_code, resp.headers.get("content-length", "?"))
            code = resp.status_code
            retryable = code == 429 or (code >= 500 and code != 501)
            if not retryable or attempt == self.tries:
                return resp
            resp.close()
            wait = delay
            if code == 429:
                try:
                    wait = min(float(resp.headers.get("retry-after", delay)), _MAX_RETRY_AFTER)
                except ValueError:  # an HTTP date: not worth parsing, back off instead
                    pass
            time.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str, repo: str,
                      scopes: tuple[str, ...] = ()) -> str | None:
        """The Authorization value a 401's challenge asks for, or None if we have none.

        ``scopes`` (pushes) are asked for on top of the challenge's own: a registry names
        only the repository of the request, and a mount also needs pull on its source.
        """
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self._creds is None:
                return None
            self._basic = "Basic " + base64.b64encode(":".join(self._creds).encode()).decode()
            return self._basic
        if scheme != "bearer" or not params.get("realm"):
            return None
        asked = params.get("scope")
        wanted = list(scopes) if scopes else [asked or f"repository:{repo}:pull"]
        if asked and asked not in wanted:
            wanted.append(asked)
        query: dict[str, str | list[str]] = {"scope": wanted}
        if "service" in params:
            query["service"] = params["service"]
        auth = httpx.BasicAuth(*self._creds) if self._creds else None
        resp = self._request("GET", params["realm"], params=query, auth=auth)
        if resp.status_code in (401, 403):
            raise self._denied(repo)
        if resp.status_code != 200:
            raise RegistryError(f"registry {self.host}: token server {params['realm']} "
                                f"answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryError(f"registry {self.host}: token server sent no token") from None
        key = " ".join(scopes) or repo
        self._tokens[key] = f"Bearer {token}"
        return self._tokens[key]

    def _send(self, method: str, url: str, repo: str,
              headers: dict[str, str] | None = None, *, scopes: tuple[str, ...] = (),
              stream: bool = False, **kw: Any) -> httpx.Response:
        """A request with auth and redirects handled; the final response is returned.

        Credentials only go to the registry itself: a redirect to another origin (object
        storage with a signed URL) is re-issued with the same headers minus Authorization.
        ``scopes`` are the token scopes a push needs (see :meth:`_authenticate`); ``kw`` goes
        to :meth:`_request` (``content`` for a body).
        """
        base = self.base_url()
        key = " ".join(scopes) or repo
        for _ in range(_MAX_REDIRECTS + 1):
            hdrs = dict(headers or {})
            own = url.startswith(base + "/")
            auth = (self._tokens.get(key) or self._basic) if own else None
            if auth:
                hdrs["Authorization"] = auth
            resp = self._request(method, url, hdrs, stream=stream, **kw)
            # A 401 with a token we already had means it expired: ask for a fresh one once.
            if own and resp.status_code == 401:
                resp.close()
                fresh = self._authenticate(resp.headers.get("www-authenticate", ""), repo,
                                           scopes)
                if fresh:
                    hdrs["Authorization"] = fresh
                    resp = self._request(method, url, hdrs, stream=stream, **kw)
            if not resp.is_redirect:
                return resp
            resp.close()
            url = str(resp.url.join(resp.headers["location"]))
        raise RegistryError(f"registry {self.host}: too many redirects for {url}")

    def _denied(self, repo: str) -> RegistryError:
        return RegistryError(
            f"registry {self.host}: access denied to {repo} (check --creds/--authfile)")

    def _check(self, resp: httpx.Response, repo: str, what: str) -> None:
        code = resp.status_code
        if code in (401, 403):
            raise self._denied(repo)
        if code == 404:
            raise NotFoundError(f"registry {self.host}: {what} not found")
        if code == 429 or code >= 500:
            raise RegistryError(f"registry {self.host}: {what}: HTTP {code} "
                                f"after {self.tries} tries")
        if not 200 <= code < 300:
            raise RegistryError(f"registry {self.host}: {what}: unexpected HTTP {code}")

    # ----------------------------------------------------------------- API

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, Digest]:
        """``(raw bytes, media type, digest)`` of a manifest or index, digest-checked.
        ``reference`` is a tag or a digest (no tag holds a colon)."""
        pinned = _reference_digest(reference)
        url = f"{self.base_url()}/v2/{repo}/manifests/{reference}"
        resp = self._send("GET", url, repo, {"Accept": _ACCEPT})
        self._check(resp, repo, f"manifest {repo}:{reference}")
        raw = resp.content
        where = f"registry {self.host}: manifest {repo}:{reference}"
        if len(raw) > MAX_MANIFEST_SIZE:
            raise FormatError(f"{where} is {len(raw)} bytes, more than the "
                              f"{MAX_MANIFEST_SIZE} allowed")
        digest = Digest.of(raw)
        claimed = _claimed_digest(resp, where)
        for expect in (pinned, claimed):
            if expect is not None and expect != digest:
                raise VerifyError(f"{where} has digest {digest}, expected {expect}")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        return raw, media_type, digest

    def resolve(self, repo: str, reference: str,
                platform: str | None = None) -> tuple[Manifest, Digest]:
        """The image manifest for ``reference``, choosing from an index by platform."""
        raw, media_type, digest = self.get_manifest(repo, reference)
        where = f"registry {self.host}: manifest {repo}:{reference}"
        if not is_index(raw, media_type, where):
            return parse_manifest(raw, where), digest
        index = parse_index(raw, where)
        want = parse_platform(platform) if platform else host_platform()
        entry = choose_manifest(index.manifests, want)
        if entry is None:
            seen = sorted({(m.platform or _NO_PLATFORM).text() for m in index.manifests})
            raise NotFoundError(
                f"registry {self.host}: {repo}:{reference} has no image for platform "
                f"{'/'.join(want)} (available: {', '.join(seen) or 'none'}); use --platform")
        raw, media_type, digest = self.get_manifest(repo, entry.digest)
        where = f"registry {self.host}: manifest {repo}@{digest}"
        if is_index(raw, media_type, where):
            raise FormatError(f"registry {self.host}: {repo}@{digest} is a nested index")
        return parse_manifest(raw, where), digest

    def _blob_url(self, repo: str, digest: str) -> str:
        return self._blob_urls.get(digest) or f"{self.base_url()}/v2/{repo}/blobs/{digest}"

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A whole (small) blob, sha256-checked."""
        digest = self._check_digest(digest)
        resp = self._send("GET", self._blob_url(repo, digest), repo)
        self._check(resp, repo, f"blob {digest} in {repo}")
        data = resp.content
        if Digest.of(data) != digest:
            raise VerifyError(f"registry {self.host}: blob {digest} in {repo} does not match "
                              "its digest")
        return data

    def blob_source(self, repo: str, digest: str, size: int) -> RegistryBlobSource:
        return RegistryBlobSource(self, repo, self._check_digest(digest), size)

    def _get_ranges(self, repo: str, digest: str, spans: Sequence[tuple[int, int]],
                    what: str) -> tuple[httpx.Response, bytes | None]:
        """GET the blob with a Range header for ``spans`` (start, end exclusive). A 206's
        body (any answer but a 200) is read and returned; a 200 (the whole blob: Range
        ignored) is left streaming, its body None.

        The body is read into bytes of our own, not into the response: an httpx response
        and its stream refer to each other, so only the cyclic collector frees them, and a
        pull runs with the collector off (every range it fetched stayed in memory)."""
        headers = {"Range": "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)}
        resp = self._send("GET", self._blob_url(repo, digest), repo, headers, stream=True)
        if resp.status_code >= 400 and digest in self._blob_urls:
            # Signed redirect targets expire: go back through the registry once.
            resp.close()
            self._blob_urls.pop(digest, None)
            resp = self._send("GET", self._blob_url(repo, digest), repo, headers, stream=True)
        body = None
        if resp.status_code != 200:
            try:
                body = b"".join(resp.iter_bytes())
            finally:
                resp.close()
        if resp.status_code in (400, 416, 431, 501) and len(spans) > 1:
            raise _RangesRejected(resp.status_code)
        if resp.status_code == 416:
            raise FormatError(f"{what}: registry says the ranges lie outside the blob")
        try:
            self._check(resp, repo, what)
        except BaseException:
            resp.close()
            raise
        final = str(resp.url)
        if not final.startswith(self.base_url() + "/"):
            self._blob_urls[digest] = final
        return resp, body

    # ----------------------------------------------------------------- push

    @staticmethod
    def _push_scopes(repo: str, from_repo: str | None = None) -> tuple[str, ...]:
        scopes = (f"repository:{repo}:pull,push",)
        if from_repo and from_repo != repo:
            scopes += (f"repository:{from_repo}:pull",)
        return scopes

    @staticmethod
    def _check_digest(digest: str) -> Digest:
        """A blob digest a caller passed, as a Digest (a no-op for one already)."""
        return Digest.parse(digest, "blob digest", InputError)

    def _upload_location(self, resp: httpx.Response, what: str) -> httpx.URL:
        location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"registry {self.host}: {what}: upload answer has no Location")
        # Registries may answer with a path only; the request URL is what it is relative to.
        return resp.url.join(location)

    def blob_exists(self, repo: str, digest: str, *, push: bool = False) -> bool:
        """Whether ``repo`` has the blob; ``push`` asks for a push token right away, so one
        token serves a whole upload."""
        self._check_digest(digest)
        url = f"{self.base_url()}/v2/{repo}/blobs/{digest}"
        resp = self._send("HEAD", url, repo, scopes=self._push_scopes(repo) if push else ())
        if resp.status_code == 404:
            return False
        self._check(resp, repo, f"blob {digest} in {repo}")
        return True

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Link the blob from ``from_repo`` into ``repo`` without sending it; False when the
        registry could not (it does not have it there, or does not mount at all)."""
        self._check_digest(digest)
        scopes = self._push_scopes(repo, from_repo)
        url = f"{self.base_url()}/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}"
        what = f"mount of blob {digest} from {from_repo} into {repo}"
        resp = self._send("POST", url, repo, scopes=scopes)
        self._check(resp, repo, what)
        if resp.status_code == 201:
            return True
        # 202 opened an ordinary upload session instead; drop it rather than leave it to be
        # purged.  Failing to is harmless, so the answer is not checked.
        if resp.headers.get("location"):
            self._send("DELETE", str(self._upload_location(resp, what)), repo, scopes=scopes)
        return False

    def upload_blob(self, repo: str, digest: str, size: int,
                    open_file: Callable[[], BinaryIO],
                    progress: Callable[[int], None] | None = None) -> None:
        """Upload a blob in one monolithic PUT, streamed from ``open_file()`` (called again
        for each retry); the registry checks ``digest``.  ``progress`` gets byte counts."""
        self._check_digest(digest)
        scopes = self._push_scopes(repo)
        what = f"upload of blob {digest} to {repo}"
        resp = self._send("POST", f"{self.base_url()}/v2/{repo}/blobs/uploads/", repo,
                          scopes=scopes)
        self._check(resp, repo, what)
        url = self._upload_location(resp, what).copy_merge_params({"digest": digest})

        def body() -> Iterator[bytes]:
            with open_file() as f:
                while piece := f.read(_UPLOAD_PIECE):
                    if progress:
                        progress(len(piece))
                    yield piece

        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        resp = self._send("PUT", str(url), repo, headers, scopes=scopes, content=body)
        if resp.status_code == 404 and self.blob_exists(repo, digest, push=True):
            # A retry after the first PUT completed finds the session gone, but the blob in.
            return
        self._check_stored(resp, repo, digest, what)

    def _check_stored(self, resp: httpx.Response, repo: str, digest: str, what: str) -> None:
        """The answer to an upload's last PUT: the blob stored, under ``digest``."""
        if resp.status_code == 400:
            raise VerifyError(f"registry {self.host}: {what} rejected (HTTP 400): "
                              f"{resp.text[:200]}")
        self._check(resp, repo, what)
        claimed = resp.headers.get("docker-content-digest")
        if claimed and claimed != digest:
            raise VerifyError(f"registry {self.host}: {what}: stored as {claimed}")

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """Store ``data`` as a manifest under a tag or digest; return its digest."""
        digest = Digest.of(data)
        pinned = _reference_digest(reference)
        if pinned is not None and pinned != digest:
            raise VerifyError(f"manifest has digest {digest}, not {reference}")
        url = f"{self.base_url()}/v2/{repo}/manifests/{reference}"
        what = f"manifest {repo}:{reference}"
        resp = self._send("PUT", url, repo, {"Content-Type": media_type},
                          scopes=self._push_scopes(repo), content=data)
        if resp.status_code in (400, 415):
            raise RegistryError(f"registry {self.host}: {what} rejected (HTTP "
                                f"{resp.status_code}; a {media_type}): "
                                f"{' '.join(resp.text[:300].split())}")
        self._check(resp, repo, what)
        claimed = resp.headers.get("docker-content-digest", "")
        if claimed != digest:
            raise VerifyError(f"registry {self.host}: {what} stored with digest "
                              f"{claimed or '(none given)'}, expected {digest}")
        return digest


def _reference_digest(reference: str) -> Digest | None:
    """The digest a manifest reference pins, or None for a tag (a tag holds no colon)."""
    if isinstance(reference, Digest):
        return reference
    return Digest.parse(reference, "manifest reference", InputError) if ":" in reference \
        else None


def _claimed_digest(resp: httpx.Response, where: str) -> Digest | None:
    """The registry's Docker-Content-Digest header, parsed; None when absent or of another
    algorithm (which this project cannot check)."""
    claimed = resp.headers.get("docker-content-digest", "")
    if not claimed.startswith("sha256:"):
        return None
    return Digest.parse(claimed, f"{where}: the Docker-Content-Digest header")


# --------------------------------------------------------------------------- platforms


def host_platform() -> tuple[str, str, str]:
    machine = _platform.machine().lower()
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
    return "linux", _GO_ARCH.get(machine, machine), variant


def parse_platform(text: str) -> tuple[str, str, str]:
    """``os/arch[/variant]`` -> ``(os, arch, variant)``."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InputError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


_NO_PLATFORM = Platform()


def choose_manifest(entries: Sequence[Descriptor],
                    want: tuple[str, str, str]) -> Descriptor | None:
    """The index entry for ``want``; among equals, one flagged as zstd-compressed wins."""
    os_, arch, variant = want
    # arm64 images usually omit their only variant, v8.
    norm = {"arm64": "v8"}.get(arch, "")
    matches = []
    for e in entries:
        p = e.platform or _NO_PLATFORM
        if p.os != os_ or p.architecture != arch:
            continue
        if variant and (p.variant or norm) != variant:
            continue
        matches.append(e)
    for e in matches:
        if e.annotations.get(ZSTD_ANNOTATION) == "true":
            return e
    return matches[0] if matches else None


# --------------------------------------------------------------------------- ranged reads

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.I)


def _parse_multipart(body: bytes, boundary: bytes, what: str) -> list[tuple[int, bytes]]:
    """``[(start, data), ...]`` of a multipart/byteranges body.

    Each part is cut by its Content-Range length rather than by searching for the next
    boundary, since blob bytes may well contain the boundary string.
    """
    delim = b"--" + boundary
    parts: list[tuple[int, bytes]] = []
    pos = body.find(delim)
    while pos >= 0:
        pos += len(delim)
        if body.startswith(b"--", pos):
            break
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise FormatError(f"{what}: truncated multipart answer")
        m = _CONTENT_RANGE.search(body[pos:head_end].decode("latin-1"))
        if m is None:
            raise FormatError(f"{what}: multipart part without Content-Range")
        start, length = int(m[1]), int(m[2]) - int(m[1]) + 1
        data = body[head_end + 4 : head_end + 4 + length]
        if len(data) != length:
            raise FormatError(f"{what}: short data in part at {start}")
        parts.append((start, data))
        pos = body.find(delim, head_end + 4 + length)
    return parts


class RegistryBlobSource:
    """A registry blob read with HTTP range requests (a :class:`chunked.read.source.RangeSource`).

    Ranges close together are merged, and all of one call go out in one request (split at
    ``max_ranges``). A host that refuses many ranges in one request (400 or 431: fewer;
    501 or 416: one at a time) is asked for fewer from then on, the requests of one call
    then going out on several connections at once. A server that ignores Range answers 200
    with the whole blob: it is kept as it arrives (in memory up to ``WHOLE_IN_MEMORY``,
    else in a spool file) and every later read is served from it, so no blob moves twice.
    """

    merge_gap = 1024
    max_ranges = 1024
    parallel = 4  # connections for one call's requests, once a host takes few ranges

    def __init__(self, client: RegistryClient, repo: str, digest: str, size: int):
        self.client = client
        self.repo = repo
        self.digest = digest
        self.size = size
        self.name = f"{client.host}/{repo}@{digest}"
        self._full: bytes | None = None
        self._spool: FileSource | None = None
        self._spool_file: Any = None  # the unlinked temporary file behind _spool
        self._whole_lock = threading.Lock()

    def close(self) -> None:
        self._full = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
            self._spool_file.close()

    def __enter__(self) -> RegistryBlobSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _merge(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for off, length in sorted(r for r in ranges if r[1] > 0):
            if spans and off <= spans[-1][1] + self.merge_gap:
                spans[-1] = (spans[-1][0], max(spans[-1][1], off + length))
            else:
                spans.append((off, off + length))
        return spans

    def _limit(self) -> int:
        return self.client.range_limit or self.max_ranges

    def _fetch(self, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]] | None:
        """``[(start, data), ...]`` covering ``spans``; None once the whole blob is kept
        (the server ignored Range)."""
        pending = list(spans)
        out: list[tuple[int, bytes]] = []
        while pending:
            limit = self._limit()
            groups = [pending[i:i + limit] for i in range(0, len(pending), limit)]
            pending = []
            if len(groups) == 1 or limit >= self.max_ranges:
                results = [self._group(g) for g in groups]
            else:
                with cf.ThreadPoolExecutor(min(self.parallel, len(groups)),
                                           "chunked-ranges") as pool:
                    results = list(pool.map(self._group, groups))
            for group, result in zip(groups, results, strict=True):
                if result is None:
                    return None
                if isinstance(result, _RangesRejected):
                    pending.extend(group)  # asked again with the lower limit
                else:
                    out.extend(result)
        return out

    def _group(self, group: list[tuple[int, int]]
               ) -> list[tuple[int, bytes]] | _RangesRejected | None:
        if self._full is not None or self._spool is not None:
            return None
        try:
            resp, body = self.client._get_ranges(self.repo, self.digest, group, self.name)
        except _RangesRejected as exc:
            with self.client._lock:
                limit = self.client.range_limit or self.max_ranges
                limit = 1 if exc.status in (416, 501) else max(1, min(limit, len(group)) // 2)
                if self.client.range_limit is None or limit < self.client.range_limit:
                    self.client.range_limit = limit
            log.debug("%s: HTTP %d to %d ranges; now at most %d a request", self.name,
                      exc.status, len(group), self._limit())
            return exc
        if body is None:  # a 200: the whole blob
            self._keep_whole(resp)
            return None
        return self._parts(resp, body)

    def _keep_whole(self, resp: httpx.Response) -> None:
        """The whole blob, as it streams: in memory if small, else spooled to a file."""
        with self._whole_lock:
            if self._full is not None or self._spool is not None:
                resp.close()
                return
            buf = bytearray()
            spool = None
            n = 0
            try:
                for piece in resp.iter_bytes(1 << 20):
                    n += len(piece)
                    if n > self.size:
                        raise FormatError(f"{self.name}: registry sent more than the "
                                          f"{self.size} bytes of the blob")
                    if spool is None and n > WHOLE_IN_MEMORY:
                        spool = tempfile.NamedTemporaryFile(
                            prefix="chunked-blob-", dir=self.client.spool_dir)
                        spool.write(buf)
                        buf = bytearray()
                    if spool is None:
                        buf += piece
                    else:
                        spool.write(piece)
            except httpx.TransportError as exc:
                raise RegistryError(f"{self.name}: transfer cut: {exc}") from None
            finally:
                resp.close()
            if n != self.size:
                raise FormatError(f"{self.name}: registry sent {n} bytes, expected {self.size}")
            if spool is None:
                self._full = bytes(buf)
                return
            spool.flush()
            # the file is unlinked when closed; the source keeps its own descriptor
            self._spool = FileSource(f"/proc/self/fd/{spool.fileno()}")
            self._spool_file = spool

    def _parts(self, resp: httpx.Response, body: bytes) -> list[tuple[int, bytes]]:
        ctype = resp.headers.get("content-type", "")
        if ctype.lower().startswith("multipart/byteranges"):
            m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', ctype, re.I)
            if m is None:
                raise FormatError(f"{self.name}: multipart answer without a boundary")
            return _parse_multipart(body, (m[1] or m[2]).encode(), self.name)
        m = _CONTENT_RANGE.search(resp.headers.get("content-range", ""))
        if resp.status_code != 206 or m is None:
            raise FormatError(f"{self.name}: HTTP {resp.status_code} answer without a range")
        start, length = int(m[1]), int(m[2]) - int(m[1]) + 1
        if len(body) != length:
            raise FormatError(f"{self.name}: short data at {start}: got {len(body)} "
                              f"of {length} bytes")
        return [(start, body)]

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        check_ranges(self.size, ranges, self.name)
        spans = self._merge(ranges)
        parts = self._fetch(spans) if spans and self._full is None and self._spool is None \
            else None
        if parts is None and spans:
            if self._spool is not None:
                return self._spool.read_ranges(ranges)
            full = self._full
            assert full is not None
            return [full[o : o + n] for o, n in ranges]
        parts = sorted(parts or [])
        starts = [s for s, _ in parts]
        out = []
        for off, length in ranges:
            if length == 0:
                out.append(b"")
                continue
            k = bisect.bisect_right(starts, off) - 1
            if k < 0 or off + length > parts[k][0] + len(parts[k][1]):
                raise FormatError(f"{self.name}: registry did not send bytes {off}+{length}")
            rel = off - parts[k][0]
            out.append(parts[k][1][rel : rel + length])
        return out
