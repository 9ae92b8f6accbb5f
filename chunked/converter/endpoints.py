"""Where a conversion reads and writes: a registry (``docker://``) or an OCI layout
(``oci:DIR[:TAG]``), behind one interface each way.

A source gives manifests (digest-checked), small blobs (configs) and any blob as a
RangeSource; a sink says which blobs it has, links one from another repository of the same
registry, takes a blob whose digest is known (a copy) or one written as it is built
(:meth:`Sink.new_blob`), and stores manifests by digest and under the tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO, Protocol

from chunked.digest import Digest
from chunked.errors import FormatError, InputError
from chunked.oci.layout import OciLayout, OciRef
from chunked.oci.manifest import MAX_MANIFEST_SIZE, Descriptor
from chunked.oci.mirrors import MirroredClient, pull_client
from chunked.oci.reference import DockerRef, parse_reference
from chunked.oci.registriesconf import tls_verify as _tls_verify
from chunked.oci.registry import RegistryClient, parse_creds
from chunked.oci.upload import BlobUpload
from chunked.read.source import FileSource, RangeSource


class BlobWriter(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def commit(self, digest: str) -> None: ...

    def abort(self) -> None: ...


class Source(Protocol):
    name: str
    location: str | None  # "host/repo" of a registry source, for cross-repository mounts
    reference: str  # the tag or digest asked for

    def manifest(self, reference: str) -> tuple[bytes, str, str]: ...

    def blob_bytes(self, digest: str) -> bytes: ...

    def blob_source(self, desc: Descriptor) -> RangeSource: ...

    def close(self) -> None: ...


class Sink(Protocol):
    name: str
    location: str | None
    reference: str

    def has_blob(self, digest: str) -> bool: ...

    def mount(self, digest: str, location: str) -> bool: ...

    def copy_blob(self, desc: Descriptor, open_source: Callable[[], BinaryIO]) -> None: ...

    def new_blob(self) -> BlobWriter: ...

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- registry


class RegistrySource:
    def __init__(self, ref: DockerRef, client: RegistryClient | MirroredClient):
        self.ref, self.client = ref, client
        self.name = str(ref)
        self.location = f"{ref.host}/{ref.repository}"
        self.reference = ref.reference

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        return self.client.get_manifest(self.ref.repository, reference)

    def blob_bytes(self, digest: str) -> bytes:
        return self.client.get_blob(self.ref.repository, digest)

    def blob_source(self, desc: Descriptor) -> RangeSource:
        return self.client.blob_source(self.ref.repository, desc.digest, desc.size)

    def close(self) -> None:
        self.client.close()


class RegistrySink:
    def __init__(self, ref: DockerRef, client: RegistryClient):
        self.ref, self.client = ref, client
        self.name = str(ref)
        self.location = f"{ref.host}/{ref.repository}"
        self.reference = ref.reference

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_exists(self.ref.repository, digest, push=True)

    def mount(self, digest: str, location: str) -> bool:
        host, _, repo = location.partition("/")
        if host != self.ref.host or repo == self.ref.repository:
            return False
        return self.client.mount_blob(self.ref.repository, digest, repo)

    def copy_blob(self, desc: Descriptor, open_source: Callable[[], BinaryIO]) -> None:
        self.client.upload_blob(self.ref.repository, desc.digest, desc.size, open_source)

    def new_blob(self) -> BlobWriter:
        return BlobUpload(self.client, self.ref.repository)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        return self.client.put_manifest(self.ref.repository, reference, raw, media_type)

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- OCI layout


class LayoutSource:
    def __init__(self, ref: OciRef):
        self.layout = OciLayout(ref.path)
        self.name = f"oci:{ref.path}:{ref.tag}"
        self.location = None
        self.reference = ref.tag
        self._tag = ref.tag

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        if reference == self._tag:
            desc = self.layout.tagged(reference)
            digest, media = desc.digest, desc.media_type
        else:
            digest, media = reference, ""
        return self.layout.read_bytes(digest), media, digest

    def blob_bytes(self, digest: str) -> bytes:
        return self.layout.read_bytes(digest, MAX_MANIFEST_SIZE)

    def blob_source(self, desc: Descriptor) -> RangeSource:
        source = FileSource(self.layout.blob_path(desc.digest))
        if source.size != desc.size:
            source.close()
            raise FormatError(f"{self.name}: blob {desc.digest} is {source.size} bytes, its "
                              f"descriptor says {desc.size}")
        return source

    def close(self) -> None:
        pass


class _FileBlob:
    """A blob written into the layout under a temporary name, renamed by its digest."""

    def __init__(self, layout: OciLayout):
        self.layout = layout
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", dir=layout.blobs)
        self.f = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        return self.f.write(data)

    def commit(self, digest: str) -> None:
        self.f.close()
        if Digest.from_hash(self._hash) != digest:
            os.unlink(self.tmp)
            raise FormatError(f"{self.layout.path}: blob written is not {digest}")
        os.replace(self.tmp, self.layout.blob_path(digest))

    def abort(self) -> None:
        self.f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class LayoutSink:
    def __init__(self, ref: OciRef):
        self.layout = OciLayout(ref.path)
        self.layout.init()
        self.name = f"oci:{ref.path}:{ref.tag}"
        self.location = None
        self.reference = ref.tag

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.layout.blob_path(digest))

    def mount(self, digest: str, location: str) -> bool:
        return False

    def copy_blob(self, desc: Descriptor, open_source: Callable[[], BinaryIO]) -> None:
        w = self.new_blob()
        try:
            with open_source() as f:
                while piece := f.read(1 << 20):
                    w.write(piece)
            w.commit(desc.digest)
        except BaseException:
            w.abort()
            raise

    def new_blob(self) -> BlobWriter:
        return _FileBlob(self.layout)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        digest = self.layout.put_bytes(raw)
        if reference != digest:
            self.layout.tag(reference, digest, len(raw), media_type)
        return digest

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- opening


def _client(ref: DockerRef, tls_verify: bool, creds: str | None,
            authfile: str | None) -> RegistryClient:
    return RegistryClient(ref.host, tls_verify=_tls_verify(ref.host, ref.repository,
                                                           tls_verify),
                          creds=parse_creds(creds), authfile=authfile)


def open_source(text: str, *, tls_verify: bool = True, creds: str | None = None,
                authfile: str | None = None) -> Source:
    ref = parse_reference(text)
    if isinstance(ref, OciRef):
        if not os.path.isdir(ref.path):
            raise InputError(f"{ref.path}: no such OCI layout directory")
        return LayoutSource(ref)
    return RegistrySource(ref, pull_client(ref, tls_verify=tls_verify, creds=creds,
                                           authfile=authfile))


def open_sink(text: str, *, tls_verify: bool = True, creds: str | None = None,
              authfile: str | None = None) -> Sink:
    ref = parse_reference(text)
    if isinstance(ref, OciRef):
        return LayoutSink(ref)
    if ref.digest:
        raise InputError(f"{text!r}: a destination is a tag, not a digest")
    return RegistrySink(ref, _client(ref, tls_verify, creds, authfile))
