"""``chunked.pull``: an image's root filesystem written into a directory, fetching only
what this host does not already have."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from chunked.api.image import PathLike, is_image_ref, open_image
from chunked.errors import InputError

if TYPE_CHECKING:
    from chunked.puller.files import PullSummary


def pull(ref: str, dest: PathLike, *, cache: PathLike | None = None, hardlink: bool = False,
         require_tarsplit: bool = False, tls_verify: bool = True, creds: str | None = None,
         authfile: str | None = None, platform: str | None = None,
         progress: Callable[..., None] | None = None) -> PullSummary:
    """Write the merged tree of ``ref`` (``oci:`` or ``docker://``) into ``dest`` with
    exact metadata, every byte verified before it is written, and the tree as written held
    to the config's DiffIDs. ``cache`` is the store shared with ``mount`` and earlier
    pulls (their verified chunks and files: content is taken from there first); without
    it only what is already in ``dest`` is reused. ``hardlink`` links files an earlier
    pull wrote instead of copying them, where their metadata match. A zstd:chunked layer
    without a tar-split is fetched whole (``require_tarsplit`` refuses it).
    ``progress(done, total=None)`` gets bytes written (the total once it is known).
    Devices a non-root caller cannot make are listed in the summary's ``skipped``."""
    from chunked.cache.chunks import ContentCache
    from chunked.puller.pull import pull_image

    if not is_image_ref(ref):
        raise InputError(f"{ref!r}: pull takes an image, oci:DIR[:TAG] or docker://...")
    store = ContentCache(os.fspath(cache)) if cache is not None else None
    with open_image(ref, tls_verify=tls_verify, creds=creds, authfile=authfile,
                    platform=platform, require_tarsplit=require_tarsplit,
                    whole_if_unchecked=True) as image:
        assert image._inner is not None
        return pull_image(image._inner, os.fspath(dest), cache=store, hardlink=hardlink,
                          progress=progress)
