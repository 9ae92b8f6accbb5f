"""``chunked cache show`` and ``chunked cache prune``: the bodies, for cli.py to wire up.

OSError is left to propagate: cli.main already turns it into one line and exit code 1.
"""

from __future__ import annotations

import json

from chunked.cache.chunks import ContentCache
from chunked.cache.pulls import PullIndex
from chunked.errors import InputError


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cmd_cache_show(root: str, as_json: bool) -> int:
    stats = ContentCache(root).stats()
    if as_json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{stats['root']}: {stats['entries']} entries, {_human(int(stats['bytes']))} "
              f"(limit {_human(int(stats['limit']))})")
    return 0


def cmd_cache_prune(root: str, max_bytes: int, as_json: bool) -> int:
    if max_bytes < 0:
        raise InputError(f"--max-bytes must not be negative, not {max_bytes}")
    cache = ContentCache(root)
    removed, freed = cache.prune(max_bytes)
    # records of pulls whose trees were deleted only cost time at every later pull
    records = PullIndex(root).prune()
    stats = cache.stats()
    if as_json:
        print(json.dumps({"removed": removed, "freed": freed, "pullRecordsRemoved": records,
                          **stats}, indent=2))
    else:
        print(f"{stats['root']}: removed {removed} files, freed {_human(freed)}, "
              f"dropped {records} records of deleted pulls; "
              f"{stats['entries']} entries, {_human(int(stats['bytes']))} left")
    return 0
