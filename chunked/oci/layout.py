"""OCI image layouts on disk: write a one-layer image, read manifests back.

Blobs land under ``blobs/sha256/`` by their digest, written to a temporary
name first and renamed into place, so a crash never leaves a blob whose name
claims content it does not have.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from chunked.digest import Digest
from chunked.errors import FormatError, InputError
from chunked.oci.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    parse_index,
    parse_manifest,
)

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


def host_arch() -> str:
    m = platform.machine()
    return _GOARCH.get(m, m)


@dataclass(frozen=True)
class OciRef:
    """``oci:DIR[:TAG]``, as skopeo spells it."""

    path: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OciRef:
        if not text.startswith("oci:"):
            raise InputError(f"{text!r} is not an oci:DIR[:TAG] reference")
        rest = text[4:]
        path, sep, tag = rest.rpartition(":")
        if not sep or "/" in tag:
            path, tag = rest, "latest"
        if not path:
            raise InputError(f"{text!r}: no directory given")
        return cls(path, tag or "latest")


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class OciLayout:
    def __init__(self, path: str):
        self.path = path
        self.blobs = os.path.join(path, "blobs", "sha256")

    def init(self) -> None:
        os.makedirs(self.blobs, exist_ok=True)
        marker = os.path.join(self.path, "oci-layout")
        if not os.path.exists(marker):
            self._atomic_write(marker, b'{"imageLayoutVersion":"1.0.0"}')

    def blob_path(self, digest: Digest) -> str:
        """``blobs/sha256/<hex>``: the name is a Digest's hex, never text unchecked (a
        path-safety boundary; parsing a Digest again is free)."""
        return os.path.join(self.blobs, Digest.parse(digest, f"{self.path}: blob digest").hex)

    @contextlib.contextmanager
    def new_blob(self) -> Iterator[BinaryIO]:
        """A temporary file in the blob directory; ``commit_blob`` gives it its name."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.blobs)
        f = os.fdopen(fd, "w+b")
        try:
            yield f
        except BaseException:
            f.close()
            os.unlink(tmp)
            raise
        f.close()
        self._tmp = tmp

    def commit_blob(self, digest: Digest) -> None:
        os.replace(self._tmp, self.blob_path(digest))

    def put_bytes(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self._atomic_write(path, data)
        return digest

    def _atomic_write(self, path: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read_bytes(self, digest: Digest, limit: int = MAX_MANIFEST_SIZE) -> bytes:
        """A small blob's bytes (at most ``limit``), checked against its digest."""
        try:
            with open(self.blob_path(digest), "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise InputError(f"{self.path}: blob {digest} is missing") from None
        except OSError as exc:
            raise InputError(f"{self.path}: blob {digest}: {exc.strerror}") from None
        if len(data) > limit:
            raise FormatError(f"{self.path}: blob {digest} is more than {limit} bytes")
        if Digest.of(data) != digest:
            raise FormatError(f"{self.path}: blob {digest} does not match its digest")
        return data

    def read_json(self, digest: Digest) -> dict[str, Any]:
        data = self.read_bytes(digest)
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise FormatError(f"{self.path}: blob {digest} is not JSON") from None
        if not isinstance(doc, dict):
            raise FormatError(f"{self.path}: blob {digest} is not a JSON object")
        return doc

    def index(self) -> dict[str, Any]:
        """index.json as a dict (to add to it, keeping what we do not know)."""
        try:
            with open(os.path.join(self.path, "index.json"), "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
        except (ValueError, RecursionError):
            raise FormatError(f"{self.path}/index.json is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise FormatError(f"{self.path}/index.json is not an image index")
        return doc

    def tag(self, tag: str, manifest_digest: Digest, manifest_size: int,
            media_type: str = MANIFEST_MEDIA_TYPE) -> None:
        index = self.index()
        kept = [m for m in index.get("manifests", [])
                if not isinstance(m, dict) or not isinstance(m.get("annotations"), dict)
                or m["annotations"].get(REF_NAME) != tag]
        kept.append({"mediaType": media_type, "digest": manifest_digest,
                     "size": manifest_size, "annotations": {REF_NAME: tag}})
        index["manifests"] = kept
        index.setdefault("mediaType", INDEX_MEDIA_TYPE)
        self._atomic_write(os.path.join(self.path, "index.json"), _json_bytes(index))

    def tagged(self, tag: str) -> Descriptor:
        """The descriptor index.json gives the image tagged ``tag``."""
        where = f"{self.path}/index.json"
        try:
            with open(os.path.join(self.path, "index.json"), "rb") as f:
                raw = f.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            raise InputError(f"{self.path}: not an OCI layout (no index.json)") from None
        except IsADirectoryError:
            raise InputError(f"{where} is a directory") from None
        for m in parse_index(raw, where).manifests:
            if m.annotations.get(REF_NAME) == tag:
                return m
        raise InputError(f"{self.path}: no image tagged {tag!r}")

    def manifest(self, tag: str) -> Manifest:
        """The image manifest tagged ``tag``, digest-checked and parsed."""
        desc = self.tagged(tag)
        return parse_manifest(self.read_bytes(desc.digest),
                              f"{self.path}: manifest {desc.digest}")


def write_image(layout: OciLayout, tag: str,
                layers: list[tuple[dict[str, Any], str]]) -> Digest:
    """Write config, manifest and index entry for an image of the given layers
    (descriptor, diff_id), bottom first; return the manifest digest."""
    config = {
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        "history": [{"created_by": "chunked build"} for _ in layers],
    }
    config_bytes = _json_bytes(config)
    config_digest = layout.put_bytes(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [desc for desc, _ in layers],
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = layout.put_bytes(manifest_bytes)
    layout.tag(tag, manifest_digest, len(manifest_bytes))
    return manifest_digest
