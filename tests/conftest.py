"""Shared pytest configuration; real-peer fixtures live in tests/peers.py."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.need import need, need_root
from tests.peers import podman, registry, registry_repo  # noqa: F401  (fixtures)


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A small XFS file system with reflinks, on a loop device (root only)."""
    need_root("mounting a loop device")
    need(shutil.which("mkfs.xfs") is not None,
         "mkfs.xfs missing (Debian xfsprogs; scripts/setup.sh installs it)")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                             capture_output=True, text=True)
    # (e.g. a container without loop devices)
    need(mounted.returncode == 0, f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
