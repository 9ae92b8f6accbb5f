"""The C allocator's settings for a command's process (the CLI's to make, not a library's).

A pull's fetch, write and copy threads each get a glibc malloc arena of their own, and an
arena keeps what was freed in it for its thread's next use: the decompressed chunks that
pass through a pull are freed in one arena and asked for again in another. Two arenas
serve these threads as well (the GIL orders most of what they allocate). And glibc raises
its mmap threshold as big blocks are freed, after which the megabyte bodies of range
answers come from the heap and stay there; a fixed threshold maps and unmaps them.
Debian rootfs pull from a registry, peak RSS: 136 MiB with the defaults' arenas and
threshold, 124-125 with these.
"""

from __future__ import annotations

import contextlib
import ctypes

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_M_ARENA_MAX = -8


def tune_malloc(arenas: int = 2, mmap_threshold: int = 256 << 10) -> bool:
    """Ask glibc for at most ``arenas`` arenas and to map blocks of ``mmap_threshold``
    bytes and more; False where that is not glibc. Call it before threads start."""
    with contextlib.suppress(OSError, AttributeError):
        # the process's own symbols, libc's among them (ctypes.util costs 10 ms to import)
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas)) and \
            bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    return False
