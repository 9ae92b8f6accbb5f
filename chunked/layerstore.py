"""The additional layer store: layers of registry images, served to containers/storage.

containers/storage's overlay driver, configured with ``additionallayerstores =
["DIR:ref"]``, looks a layer up at ``DIR/<base64 of the image reference>/<key>/`` and
wants there ``diff/`` (the layer's tree, used as an overlay lower directory as it is),
``info`` (JSON decoded as a storage Layer) and ``blob`` (the compressed layer). The key
is the layer's compressed blob digest for containers/image < 5.31 (podman 4.3) and its
TOC digest for containers/image >= 5.31 (podman >= 5.1). The engine creates
``<key>/use`` when it starts using a layer and removes ``<key>`` when done; a store that
counts them answers ENOENT to both.

This module is what the FUSE server (:mod:`chunked.fuse.store`) asks: names decoded and resolved
(one manifest fetch per image however many lookups arrive at once; one opened layer per
blob digest, shared between references), ``info`` bytes, the verified blob, and the
reference counts. A layer is served only when it is zstd:chunked and its TOC checked
against its tar-split: anything else is "not here", and the engine pulls it itself.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures as cf
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import ChunkedError, FormatError, InputError, VerifyError
from chunked.oci.manifest import Descriptor, parse_config
from chunked.oci.mirrors import MirroredClient, pull_client
from chunked.oci.reference import DockerRef
from chunked.oci.registry import RegistryClient
from chunked.read.layer import ChunkedLayer
from chunked.read.source import failover_once

log = logging.getLogger("chunked.layerstore")

# containers/storage's pkg/archive Compression: 4 is zstd (zstd:chunked is zstd to it).
COMPRESSION_ZSTD = 4
# A tag may move: a key the cached manifest does not list re-resolves the reference
# once this long after the last resolution.
_RESOLVE_AGAIN_AFTER = 10.0
_BLOB_PIECE = 8 << 20

T = TypeVar("T")


class StoreError(ChunkedError):
    """A name or key the store cannot serve (the FUSE server answers ENOENT)."""


def decode_name(name: str) -> DockerRef:
    """The image reference a store directory is named after: base64 (standard alphabet)
    of ``host/repo:tag``, ``host/repo@digest`` or both (then the digest decides)."""
    try:
        text = base64.b64decode(name.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise StoreError(f"{name!r} is not the base64 of an image reference") from None
    if not text or any(ord(c) < 0x21 for c in text):
        raise StoreError(f"{name!r} decodes to {text!r}, not an image reference")
    head, at, digest = text.partition("@")
    if at:
        # "repo:tag@digest": the digest pins the image, the tag is a label
        slash = head.rfind("/")
        colon = head.rfind(":")
        if colon > slash:
            head = head[:colon]
        text = f"{head}@{digest}"
    try:
        return DockerRef.parse("docker://" + text)
    except InputError as exc:
        raise StoreError(f"{name!r}: {exc}") from None


@dataclass
class StoreLayer:
    """One zstd:chunked layer as the store serves it, shared by every reference to it."""

    descriptor: Descriptor
    diff_id: str
    layer: ChunkedLayer
    refs: int = 0
    images: set[str] = field(default_factory=set)
    opened_at: float = field(default_factory=time.monotonic)
    open_seconds: float = 0.0
    _blob_path: str | None = None
    _blob_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def toc_digest(self) -> str:
        return self.layer.checksum or ""

    def info(self, by_toc: bool) -> bytes:
        """``info`` as containers/storage decodes it into a Layer. By blob digest
        (podman 4.3): the DiffID the config gives as ``diff-digest``, from which the engine
        names the layer. By TOC digest (containers/image >= 5.31): that DiffID only as the
        ``expected-layer-diffid`` flag (the engine trusts ``diff-digest`` as verified, and
        a lazily served layer's tar is never read whole), as stargz-store writes it."""
        doc: dict[str, Any] = {}
        if not by_toc:
            doc["compressed-diff-digest"] = self.digest
        doc["compressed-size"] = self.descriptor.size
        if not by_toc:
            doc["diff-digest"] = self.diff_id
        doc["diff-size"] = self.layer.tar_size if self.layer.tar_size is not None else -1
        doc["compression"] = COMPRESSION_ZSTD
        doc["toc-digest"] = self.toc_digest
        doc["flags"] = {"expected-layer-diffid": self.diff_id}
        return json.dumps(doc).encode()

    def blob_file(self, spool_dir: str) -> str:
        """A local file holding the whole compressed blob, fetched on first use and held
        to its digest before any byte of it is served."""
        with self._blob_lock:
            if self._blob_path is not None:
                return self._blob_path
            source = self.layer.source
            fd, path = tempfile.mkstemp(prefix="blob-", dir=spool_dir)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as f:
                    for off in range(0, source.size, _BLOB_PIECE):
                        n = min(_BLOB_PIECE, source.size - off)
                        (data,) = source.read_ranges([(off, n)])
                        h.update(data)
                        f.write(data)
                actual = Digest.from_hash(h)
                if actual != self.digest:
                    raise VerifyError(f"{source.name}: blob is {actual}, not {self.digest}")
            except BaseException:
                os.unlink(path)
                raise
            self._blob_path = path
            return path

    def free(self) -> None:
        with self._blob_lock:
            if self._blob_path is not None:
                try:
                    os.unlink(self._blob_path)
                except OSError:
                    pass
                self._blob_path = None
        self.layer.source.close()


@dataclass
class StoreImage:
    """A resolved reference: its manifest's layers by blob and TOC digest, and the
    DiffIDs its config gives them."""

    name: str
    ref: DockerRef
    client: RegistryClient | MirroredClient
    by_digest: dict[str, tuple[Descriptor, str]]  # blob digest -> (descriptor, diff_id)
    by_toc: dict[str, str]  # TOC digest -> blob digest
    resolved_at: float = field(default_factory=time.monotonic)


class LayerStore:
    """Resolves names and keys, opens and shares layers, and counts their users.

    Safe to call from many threads at once: a resolution or an opening in progress is
    waited for, never started twice.
    """

    def __init__(self, *, tls_verify: bool = True, creds: str | None = None,
                 authfile: str | None = None, platform: str | None = None,
                 spool_dir: str | None = None,
                 on_open: Callable[[StoreLayer], None] | None = None,
                 on_free: Callable[[StoreLayer], None] | None = None):
        self._tls_verify = tls_verify
        self._creds = creds
        self._authfile = authfile
        self._platform = platform
        self._own_spool = spool_dir is None
        self.spool_dir = spool_dir or tempfile.mkdtemp(prefix="chunked-store-")
        self._on_open = on_open
        self._on_free = on_free
        self._lock = threading.Lock()
        self._images: dict[str, StoreImage] = {}
        self._layers: dict[str, StoreLayer] = {}  # blob digest -> layer
        self._pending: dict[tuple[str, str], cf.Future[Any]] = {}
        # TOCs fetched as soon as a manifest names their layers, while the config comes:
        # the engine asks for every layer next (blob digest -> (layer, seconds))
        self._early: dict[str, cf.Future[tuple[ChunkedLayer, float]]] = {}
        self._pool = cf.ThreadPoolExecutor(4, "chunked-store-open")
        self._clients: dict[tuple[str, str, bool], RegistryClient | MirroredClient] = {}

    # -- once ----------------------------------------------------------------------------
    def _once(self, key: tuple[str, str], make: Callable[[], T]) -> T:
        """``make()`` run by one caller for ``key``; the others arriving meanwhile wait
        for its result (or its error)."""
        with self._lock:
            fut = self._pending.get(key)
            mine = fut is None
            if mine:
                fut = self._pending[key] = cf.Future()
        assert fut is not None
        if not mine:
            return fut.result()
        try:
            result = make()
        except BaseException as exc:
            fut.set_exception(exc)
            with self._lock:
                self._pending.pop(key, None)
            raise
        fut.set_result(result)
        with self._lock:
            self._pending.pop(key, None)
        return result

    # -- images ----------------------------------------------------------------------------
    def _client(self, ref: DockerRef) -> RegistryClient | MirroredClient:
        """One client per repository (mirrors may differ by repository) and pin kind."""
        key = (ref.host, ref.repository, ref.digest is not None)
        with self._lock:
            client = self._clients.get(key)
        if client is None:
            client = pull_client(ref, tls_verify=self._tls_verify, creds=self._creds,
                                 authfile=self._authfile)
            with self._lock:
                self._clients.setdefault(key, client)
                client = self._clients[key]
        return client

    def image(self, name: str, *, fresh: bool = False) -> StoreImage:
        """The image a top-level name stands for, resolved once (again if ``fresh``)."""
        with self._lock:
            img = self._images.get(name)
        if img is not None and not fresh:
            return img
        return self._once(("image", name), lambda: self._resolve(name))

    def _resolve(self, name: str) -> StoreImage:
        ref = decode_name(name)
        client = self._client(ref)
        manifest, _digest = client.resolve(ref.repository, ref.reference, self._platform)
        for desc in manifest.layers:
            try:
                chunked = fmt.LayerAnnotations.find(desc.annotations) is not None
            except FormatError:
                continue  # the lookup says why
            with self._lock:
                # not when opened, being opened, or already on its way
                if chunked and desc.digest not in self._layers and \
                        desc.digest not in self._early and \
                        ("layer", desc.digest) not in self._pending:
                    self._early[desc.digest] = self._pool.submit(self._fetch_toc, client, ref,
                                                                 desc)
        config = parse_config(client.get_blob(ref.repository, manifest.config.digest),
                              f"registry {ref.host}: config {manifest.config.digest}")
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise FormatError(f"{ref}: the config lists {len(diff_ids)} diff_ids for "
                              f"{len(manifest.layers)} layers")
        by_digest: dict[str, tuple[Descriptor, str]] = {}
        by_toc: dict[str, str] = {}
        for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
            by_digest.setdefault(desc.digest, (desc, diff_id))
            ann = fmt.LayerAnnotations.find(desc.annotations)
            if ann is not None:
                by_toc.setdefault(ann.checksum, desc.digest)
        img = StoreImage(name, ref, client, by_digest, by_toc)
        with self._lock:
            self._images[name] = img
        log.info("%s: %d layers, %d zstd:chunked", ref, len(by_digest), len(by_toc))
        return img

    # -- layers ----------------------------------------------------------------------------
    def layer(self, name: str, key: str) -> tuple[StoreLayer, bool]:
        """The layer ``key`` (blob or TOC digest) of image ``name``, opened, and whether
        the key was its TOC digest. :class:`StoreError` (or the registry's error) when it
        is not one the store serves."""
        key = Digest.parse(key, "layer key", StoreError)
        img = self.image(name)
        found = self._find(img, key)
        if found is None and time.monotonic() - img.resolved_at > _RESOLVE_AGAIN_AFTER:
            img = self.image(name, fresh=True)
            found = self._find(img, key)
        if found is None:
            raise StoreError(f"{img.ref}: no layer {key}")
        digest, by_toc = found
        desc, diff_id = img.by_digest[digest]
        if fmt.LayerAnnotations.find(desc.annotations) is None:
            raise StoreError(f"{img.ref}: layer {digest} is not zstd:chunked ({desc.media_type})")
        with self._lock:
            sl = self._layers.get(digest)
        if sl is None:
            sl = self._once(("layer", digest), lambda: self._open(img, desc, diff_id))
        with self._lock:
            sl.images.add(str(img.ref).removeprefix("docker://"))
        return sl, by_toc

    @staticmethod
    def _find(img: StoreImage, key: str) -> tuple[str, bool] | None:
        if key in img.by_digest:
            return key, False
        if key in img.by_toc:
            return img.by_toc[key], True
        return None

    @staticmethod
    def _fetch_toc(client: RegistryClient | MirroredClient, ref: DockerRef, desc: Descriptor
                   ) -> tuple[ChunkedLayer, float]:
        """The layer opened: TOC and tar-split fetched (one request) and checked."""
        t0 = time.monotonic()
        source = client.blob_source(ref.repository, desc.digest, desc.size)
        try:
            layer = failover_once(source, lambda: ChunkedLayer.open(source, desc.annotations))
            if not layer.tarsplit_checked:
                raise StoreError(f"{ref}: layer {desc.digest} has no tar-split, so its TOC "
                                 "cannot be checked: left to the engine to pull")
        except BaseException:
            source.close()
            raise
        return layer, time.monotonic() - t0

    def _open(self, img: StoreImage, desc: Descriptor, diff_id: str) -> StoreLayer:
        with self._lock:
            sl = self._layers.get(desc.digest)
            early = self._early.pop(desc.digest, None)
        if sl is not None:
            return sl
        if early is not None:
            layer, seconds = early.result()
        else:
            layer, seconds = self._fetch_toc(img.client, img.ref, desc)
        sl = StoreLayer(desc, diff_id, layer, open_seconds=seconds)
        if self._on_open is not None:
            self._on_open(sl)
        with self._lock:
            self._layers[desc.digest] = sl
        log.info("%s: layer %s opened in %.3f s (%d entries)", img.ref, desc.digest,
                 sl.open_seconds, len(layer.entries))
        return sl

    # -- use and release ---------------------------------------------------------------------
    def use(self, sl: StoreLayer) -> None:
        with self._lock:
            sl.refs += 1

    def release(self, sl: StoreLayer) -> None:
        """One user fewer; the last one out frees what the layer holds (its index, cached
        chunks and spooled blob): a later lookup opens it again."""
        with self._lock:
            sl.refs = max(0, sl.refs - 1)
            if sl.refs or self._layers.get(sl.digest) is not sl:
                return
            del self._layers[sl.digest]
        sl.refs = 0
        if self._on_free is not None:
            self._on_free(sl)
        sl.free()
        log.info("layer %s released", sl.digest)

    def layers(self) -> list[StoreLayer]:
        with self._lock:
            return list(self._layers.values())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            early, self._early = list(self._early.values()), {}
        for fut in early:
            if fut.done() and fut.exception() is None:
                fut.result()[0].source.close()
        for sl in self.layers():
            sl.free()
        for client in self._clients.values():
            client.close()
        if self._own_spool:
            try:
                for f in os.listdir(self.spool_dir):
                    os.unlink(os.path.join(self.spool_dir, f))
                os.rmdir(self.spool_dir)
            except OSError:
                pass

