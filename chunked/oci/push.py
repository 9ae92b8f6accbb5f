"""Push an image from an OCI layout on disk to a registry.

Blobs stream from their files; the manifest goes up byte for byte as the layout stores it,
so the pushed image has the digest it had locally.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chunked.errors import FormatError, InputError
from chunked.oci.layout import REF_NAME, OciLayout, OciRef
from chunked.oci.reference import DockerRef
from chunked.oci.registry import OCI_MANIFEST, RegistryClient


@dataclass
class _Tally:
    uploaded: int = 0
    skipped: int = 0
    mounted: int = 0
    bytes: int = 0


def _tagged(layout: OciLayout, tag: str) -> dict[str, Any]:
    for entry in layout.index().get("manifests", []):
        if (entry.get("annotations") or {}).get(REF_NAME) == tag:
            return entry
    raise InputError(f"{layout.path}: no image tagged {tag!r}")


def _media_type(raw: bytes, entry: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise FormatError(f"{where}: manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: manifest is not a JSON object")
    return doc, doc.get("mediaType") or entry.get("mediaType") or OCI_MANIFEST


def _push_blob(layout: OciLayout, desc: dict[str, Any], repo: str, client: RegistryClient,
               mount_from: str | None, progress: Callable[[int], None] | None,
               tally: _Tally) -> None:
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not isinstance(size, int):
        raise FormatError(f"{layout.path}: descriptor without digest or size: {desc}")
    path = layout.blob_path(digest)
    try:
        actual = os.path.getsize(path)
    except FileNotFoundError:
        raise InputError(f"{layout.path}: blob {digest} is missing") from None
    # The registry would catch a wrong size too, but only after the whole upload.
    if actual != size:
        raise FormatError(f"{layout.path}: blob {digest} is {actual} bytes, "
                          f"its descriptor says {size}")
    if client.blob_exists(repo, digest, push=True):
        tally.skipped += 1
        return
    if mount_from and client.mount_blob(repo, digest, mount_from):
        tally.mounted += 1
        return

    def counted(n: int) -> None:
        tally.bytes += n
        if progress:
            progress(n)

    client.upload_blob(repo, digest, size, lambda: open(path, "rb"), counted)
    tally.uploaded += 1


def _push_manifest(layout: OciLayout, entry: dict[str, Any], repo: str, reference: str,
                   client: RegistryClient, mount_from: str | None,
                   progress: Callable[[int], None] | None, tally: _Tally,
                   seen: set[str]) -> str:
    raw = layout.read_bytes(entry["digest"])
    doc, media_type = _media_type(raw, entry, f"{layout.path}: {entry['digest']}")
    if "manifests" in doc:
        # An index: its images go first, by digest, so it never points at a missing one.
        for child in doc["manifests"] or []:
            _push_manifest(layout, child, repo, child["digest"], client, mount_from, progress,
                           tally, seen)
    else:
        config = doc.get("config")
        for desc in ([config] if config else []) + list(doc.get("layers") or []):
            if desc.get("digest") not in seen:
                seen.add(desc.get("digest"))
                _push_blob(layout, desc, repo, client, mount_from, progress, tally)
    return client.put_manifest(repo, reference, raw, media_type)


def push_image(layout_ref: OciRef, dest: DockerRef, client: RegistryClient,
               progress: Callable[[int], None] | None = None, *,
               mount_from: str | None = None) -> dict[str, Any]:
    """Push ``layout_ref`` to ``dest``, sending only blobs the registry lacks.

    ``mount_from`` names a repository on the same registry that may hold the blobs: they
    are then linked across (a mount) instead of sent.  ``progress`` receives the number of
    bytes of each piece uploaded.  Returns ``{"digest", "blobs_uploaded", "blobs_skipped",
    "blobs_mounted", "bytes_uploaded"}``.
    """
    layout = OciLayout(layout_ref.path)
    if not os.path.isdir(layout.path):
        raise InputError(f"{layout.path}: no such OCI layout directory")
    entry = _tagged(layout, layout_ref.tag)
    if dest.digest and dest.digest != entry.get("digest"):
        raise InputError(f"{layout_ref.path}:{layout_ref.tag} is {entry.get('digest')}, "
                         f"not {dest.digest}")
    tally = _Tally()
    digest = _push_manifest(layout, entry, dest.repository, dest.reference, client,
                            mount_from, progress, tally, set())
    return {"digest": digest, "blobs_uploaded": tally.uploaded,
            "blobs_skipped": tally.skipped, "blobs_mounted": tally.mounted,
            "bytes_uploaded": tally.bytes}
