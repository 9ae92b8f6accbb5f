"""``chunked.push``: an image from an OCI layout to a registry, only the blobs it lacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chunked.errors import ChunkedError
from chunked.oci.layout import OciLayout, OciRef


@dataclass(frozen=True)
class PushSummary:
    digest: str  # of the manifest (or index) pushed
    blobs_uploaded: int
    bytes_uploaded: int
    blobs_skipped: int  # already in the repository
    blobs_mounted: int  # linked from another repository of the registry

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "blobs_uploaded": self.blobs_uploaded,
                "blobs_skipped": self.blobs_skipped, "blobs_mounted": self.blobs_mounted,
                "bytes_uploaded": self.bytes_uploaded}


def registry_client(host: str, *, tls_verify: bool, creds: str | None,
                    authfile: str | None) -> Any:
    """A client for ``host``, insecure where registries.conf says so as well."""
    from chunked.oci import registriesconf
    from chunked.oci.registry import RegistryClient, parse_creds

    return RegistryClient(host, tls_verify=registriesconf.tls_verify(host, "", tls_verify),
                          creds=parse_creds(creds), authfile=authfile)


def push_size(src: str) -> int | None:
    """The bytes a push of ``src`` (``oci:DIR[:TAG]``) may send, for a progress bar; None
    for an index, or a layout the push itself will report trouble with."""
    ref = OciRef.parse(src)
    try:
        manifest = OciLayout(ref.path).manifest(ref.tag)
    except ChunkedError:
        return None
    return manifest.config.size + sum(d.size for d in manifest.layers)


def push(src: str, dst: str, *, tls_verify: bool = True, creds: str | None = None,
         authfile: str | None = None,
         progress: Callable[[int], None] | None = None) -> PushSummary:
    """Push ``src`` (``oci:DIR[:TAG]``) to ``dst`` (``docker://HOST/REPO[:TAG]``); the
    manifest goes up byte for byte, so the image keeps its digest. ``progress(n)`` gets
    the bytes uploaded so far."""
    from chunked.oci.push import push_image
    from chunked.oci.reference import DockerRef

    ref = OciRef.parse(src)
    dest = DockerRef.parse(dst)
    done = 0

    def pushed(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done)

    with registry_client(dest.host, tls_verify=tls_verify, creds=creds,
                         authfile=authfile) as client:
        s = push_image(ref, dest, client, pushed)
    return PushSummary(s["digest"], s["blobs_uploaded"], s["bytes_uploaded"],
                       s["blobs_skipped"], s.get("blobs_mounted", 0))
