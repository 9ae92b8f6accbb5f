"""The C allocator's settings for a command's process (the CLI's to make, not a library's).

A build's and a pull's threads each get a glibc malloc arena of their own, and an arena
keeps what was freed in it for its thread's next use: the decompressed chunks that pass
through a pull are freed in one arena and asked for again in another. One arena serves
these threads as well (the GIL orders most of what they allocate). Debian rootfs pull
from a registry, peak RSS: 136 MiB with glibc's defaults, 124-127 with one arena; its
build: 72 MiB and 68. (A fixed mmap threshold of 256 KiB took 3 MiB more off a pull and
11 off a build, but cost the build 1.5 s of system time in page faults: not set.)
"""

from __future__ import annotations

import contextlib
import ctypes

_M_ARENA_MAX = -8  # glibc's malloc.h


def tune_malloc(arenas: int = 1) -> bool:
    """Ask glibc for at most ``arenas`` arenas; False where that is not glibc. Call it
    before threads start."""
    with contextlib.suppress(OSError, AttributeError):
        # the process's own symbols, libc's among them (ctypes.util costs 10 ms to import)
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    return False
