"""Image manifests, indexes, descriptors and configs, parsed once where they enter.

Whatever a registry or a layout on disk hands us is decoded here into typed values, each
field checked for its JSON type and its limits; nothing downstream looks a key up in a
dict or checks a type again. Unknown keys are skipped, as the OCI spec asks; the raw
bytes stay with whoever must send them on unchanged (push).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from chunked import digest as _digest
from chunked.digest import Digest
from chunked.errors import FormatError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

# containers/image refuses manifests and configs above 4 MiB; so do we, before parsing.
MAX_MANIFEST_SIZE = 4 << 20
MAX_CONFIG_SIZE = 4 << 20
# Docker's own limit is 127 layers; overlay cannot stack many more.
MAX_LAYERS = 1000
MAX_INSTANCES = 1000
MAX_BLOB_SIZE = (1 << 63) - 1

_Annotations = dict[Annotated[str, msgspec.Meta(max_length=1024)], str]


class Platform(msgspec.Struct, frozen=True, rename={"os_version": "os.version"}):
    architecture: str = ""
    os: str = ""
    variant: str = ""
    os_version: str = ""

    def text(self) -> str:
        return "/".join(p for p in (self.os or "?", self.architecture or "?", self.variant)
                        if p)


class Descriptor(msgspec.Struct, frozen=True, omit_defaults=True,
                 rename={"media_type": "mediaType"}):
    """A content descriptor: what a blob or manifest is, its digest and size."""

    digest: Digest
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_BLOB_SIZE)]
    media_type: str = ""
    annotations: _Annotations = {}
    platform: Platform | None = None


class Manifest(msgspec.Struct, frozen=True, rename={"schema_version": "schemaVersion",
                                                    "media_type": "mediaType"}):
    """An image manifest (OCI or Docker schema 2)."""

    config: Descriptor
    layers: Annotated[list[Descriptor], msgspec.Meta(max_length=MAX_LAYERS)]
    schema_version: int = 2
    media_type: str = ""
    annotations: _Annotations = {}


class Index(msgspec.Struct, frozen=True, rename={"schema_version": "schemaVersion",
                                                 "media_type": "mediaType"}):
    """An image index (OCI) or manifest list (Docker)."""

    manifests: Annotated[list[Descriptor], msgspec.Meta(max_length=MAX_INSTANCES)]
    schema_version: int = 2
    media_type: str = ""
    annotations: _Annotations = {}


class RootFS(msgspec.Struct, frozen=True):
    diff_ids: Annotated[list[Digest], msgspec.Meta(max_length=MAX_LAYERS)] = []
    type: str = "layers"


class ImageConfig(msgspec.Struct, frozen=True):
    """The parts of an image config this project reads."""

    rootfs: RootFS = RootFS()
    architecture: str = ""
    os: str = ""


class _Kind(msgspec.Struct):
    """Just enough to tell an index from a manifest."""

    media_type: str = msgspec.field(default="", name="mediaType")
    manifests: msgspec.Raw = msgspec.Raw(b"")


_DOC_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def _decode(raw: bytes, kind: type, what: str, limit: int):  # noqa: ANN202 - kind's type
    if len(raw) > limit:
        raise FormatError(f"{what} is {len(raw)} bytes, more than the {limit} allowed")
    try:
        # every Digest field becomes a Digest here (chunked.digest.dec_hook), once
        return msgspec.json.decode(raw, type=kind, dec_hook=_digest.dec_hook)
    except msgspec.ValidationError as exc:
        raise FormatError(f"{what}: {str(exc).replace('`', '')}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON ({exc})") from None


def is_index(raw: bytes, media_type: str, what: str) -> bool:
    """Whether a manifest document is an index (by its media type, else its shape)."""
    kind = _decode(raw, _Kind, what, MAX_MANIFEST_SIZE)
    media = kind.media_type or media_type
    return media in INDEX_TYPES or (media not in (OCI_MANIFEST, DOCKER_MANIFEST)
                                    and len(kind.manifests) > 0)


def parse_manifest(raw: bytes, what: str) -> Manifest:
    return _decode(raw, Manifest, what, MAX_MANIFEST_SIZE)


def parse_index(raw: bytes, what: str) -> Index:
    return _decode(raw, Index, what, MAX_MANIFEST_SIZE)


def parse_config(raw: bytes, what: str) -> ImageConfig:
    return _decode(raw, ImageConfig, what, MAX_CONFIG_SIZE)


def parse_descriptor(raw: bytes, what: str) -> Descriptor:
    return _decode(raw, Descriptor, what, MAX_MANIFEST_SIZE)


def to_builtins(value: object) -> object:
    """A parsed document as JSON-ready dicts and lists (msgspec needs a hook for Digest)."""
    return msgspec.to_builtins(value, enc_hook=_digest.enc_hook)
