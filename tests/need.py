"""What a test needs from the machine, and what happens when it is missing.

Outside the test command a developer may lack root, FUSE, a loop device or the peers: the
test is skipped, saying why. Under ``CI`` or ``scripts/test.sh`` (which sets
``CHUNKED_REQUIRE_PEERS=1``) the setup script must have provided all of it, so the test
fails with the same reason instead: a run there never passes by skipping. The one
exception is upstream's test vectors, which come from ``../shared`` beside the clone: the
test command skips them on a clone alone, and only ``CI`` requires them.
"""

from __future__ import annotations

import os
import shutil

import pytest


def strict() -> bool:
    """Whether a missing requirement fails the test rather than skipping it."""
    return bool(os.environ.get("CI")) or os.environ.get("CHUNKED_REQUIRE_PEERS") == "1"


def need(ok: bool, why: str, *, ci_only: bool = False) -> None:
    """Skip (outside strict runs) or fail the calling test unless ``ok``; ``ci_only``
    makes only ``CI`` strict about it."""
    if ok:
        return
    if bool(os.environ.get("CI")) if ci_only else strict():
        pytest.fail(f"required here, but missing: {why}", pytrace=False)
    pytest.skip(why)


HAS_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
ROOT = os.geteuid() == 0


def need_fuse() -> None:
    need(HAS_FUSE, "needs /dev/fuse and fusermount3 (Debian fuse3; scripts/setup.sh)")


def need_root(what: str) -> None:
    need(ROOT, f"{what} needs root")
