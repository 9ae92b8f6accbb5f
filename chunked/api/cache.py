"""``chunked.cache_stats`` and ``chunked.prune_cache``: the on-disk store shared by mounts,
the layer store, pulls and conversions."""

from __future__ import annotations

import os
from typing import Any

from chunked.api.image import PathLike
from chunked.errors import InputError


def default_cache() -> str:
    """``/var/cache/chunked`` for root, else ``$XDG_CACHE_HOME/chunked``."""
    from chunked.cache.chunks import default_cache_dir

    return default_cache_dir()


def cache_stats(root: PathLike) -> dict[str, Any]:
    """``{"root", "entries", "bytes", "limit"}`` of the cache at ``root``."""
    from chunked.cache.chunks import ContentCache

    return ContentCache(os.fspath(root)).stats()


def prune_cache(root: PathLike, max_bytes: int = 0) -> dict[str, Any]:
    """Evict least-recently-used entries until at most ``max_bytes`` are left, and drop
    the records of pulls whose trees are gone; what was removed, and what is left."""
    from chunked.cache.chunks import ContentCache
    from chunked.cache.pulls import PullIndex

    if max_bytes < 0:
        raise InputError(f"the cache's size limit must not be negative, not {max_bytes}")
    cache = ContentCache(os.fspath(root))
    removed, freed = cache.prune(max_bytes)
    # records of pulls whose trees were deleted only cost time at every later pull
    records = PullIndex(os.fspath(root)).prune()
    return {"removed": removed, "freed": freed, "pullRecordsRemoved": records,
            **cache.stats()}
