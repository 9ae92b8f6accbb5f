"""``chunked.convert``: an image's layers rebuilt as zstd:chunked, optionally beside the
original in one index."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from chunked.api.build import check_level, variant_of
from chunked.api.image import PathLike
from chunked.builder import DEFAULT_LEVEL

if TYPE_CHECKING:
    from chunked.converter import ConvertSummary


def convert(src: str, dst: str, *, add_compression: bool = False, platform: str | None = None,
            level: int = DEFAULT_LEVEL, format: str = "current",
            cache: PathLike | None = None, tls_verify: bool = True, creds: str | None = None,
            authfile: str | None = None, jobs: int | None = None,
            progress: Callable[[str, int | None], Callable[[int], None] | None] | None = None
            ) -> ConvertSummary:
    """Convert ``src`` into ``dst`` (each ``docker://`` or ``oci:DIR[:TAG]``): every
    gzip, zstd or plain tar layer rebuilt as zstd:chunked, held to its digest and DiffID
    before it is stored; layers already zstd:chunked and the config kept. With
    ``add_compression``, ``dst`` is an index listing each original manifest first, then its
    zstd:chunked twin. ``platform`` converts one platform of an index (default all);
    ``cache`` keeps the record of converted layers, so a second run uploads nothing.
    ``progress(label, total)`` may return a callback per layer."""
    from chunked.converter import convert as _convert

    return _convert(src, dst, add_compression=add_compression, platform=platform,
                    level=check_level(level), variant=variant_of(format),
                    tls_verify=tls_verify, creds=creds, authfile=authfile,
                    cache_dir=os.fspath(cache) if cache is not None else None, jobs=jobs,
                    progress=progress)
