"""A sandbox per command: a fresh copy of the case's inputs, canaries beside DEST and a
snapshot to find escapes (:class:`Sandbox`); and the clean-up of the FUSE mounts and mount
servers a command leaves behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.hostile.cases import TAG, CaseDir, remove_tree

# Absolute names and link targets of the generator point here; it must never appear.
ABS_CANARY = Path("/tmp/chunked-hostile-canary")


class Sandbox:
    """A fresh directory per command: the case's inputs copied in (never shared: a link
    count or ctime changed by another command would look like an escape), canaries beside
    DEST, and a snapshot of everything but DEST, the mount point and TMPDIR."""

    def __init__(self, case: CaseDir, parent: Path, label: str):
        self.root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=parent))
        self.box = self.root / "box"
        self.box.mkdir()
        shutil.copytree(case.root / "in", self.box / "in")
        (self.root / "canary.txt").write_text("canary two levels above DEST\n")
        (self.box / "canary.txt").write_text("canary beside DEST\n")
        (self.box / "canary").mkdir()
        (self.box / "canary" / "secret.txt").write_text("secret beside DEST\n")
        self.dest = self.box / "dest"
        self.mnt = self.box / "mnt"
        self.tmp = self.root / "tmp"
        for d in (self.dest, self.mnt, self.tmp):
            d.mkdir()
        self.blob = self.box / "in" / "blob"
        self.descriptor = self.box / "in" / "descriptor.json"
        self.ref = f"oci:{self.box / 'in' / 'layout'}:{TAG}"
        self._skip = {self.dest, self.mnt, self.tmp}
        self._before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            dirnames[:] = [n for n in dirnames if here / n not in self._skip]
            for n in dirnames + filenames:
                p = here / n
                if p in self._skip:
                    continue
                st = os.lstat(p)
                extra: Any = None
                if stat.S_ISLNK(st.st_mode):
                    extra = os.readlink(p)
                elif stat.S_ISREG(st.st_mode) and st.st_size <= 1 << 20:
                    extra = hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p.relative_to(self.root))] = (
                    st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                    st.st_ctime_ns, st.st_nlink, extra)
        return out

    def escapes(self) -> list[str]:
        after = self.snapshot()
        found = []
        for p in sorted(set(self._before) | set(after)):
            if self._before.get(p) != after.get(p):
                how = ("created" if p not in self._before else "removed" if p not in after
                       else "changed")
                found.append(f"{p} {how}")
        if os.path.lexists(ABS_CANARY):
            found.append(f"{ABS_CANARY} created")
            with contextlib.suppress(OSError):
                shutil.rmtree(ABS_CANARY) if ABS_CANARY.is_dir() else ABS_CANARY.unlink()
        return found

    def close(self) -> None:
        if _mounts_under(self.root):
            for m in _mounts_under(self.root):
                _force_unmount(Path(m))
        if not _mounts_under(self.root):  # never delete through a live mount
            remove_tree(self.root)


def _mountinfo() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    return [m for m in _mountinfo() if m.startswith(prefix)]


def is_mounted(path: Path) -> bool:
    # not os.path.ismount: a mount whose server died answers lstat with ENOTCONN
    return str(path) in _mountinfo()


def _force_unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u", str(path)], ["fusermount3", "-uz", str(path)],
                ["umount", "-l", str(path)]):
        if not is_mounted(path):
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(cmd, capture_output=True, timeout=15)


def _kill_servers(mnt: Path, pid: int | None) -> None:
    """Kill the mount servers this harness started for ``mnt`` (a path unique to one
    sandbox): the one the mount command named, and any whose argv names that path."""
    pids = {pid} if pid else set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(str(mnt)) in argv and b"--foreground" in argv:
            pids.add(int(entry))
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in text


def _vm_hwm_kib(pid: int | None) -> int:
    if not pid:
        return 0
    with contextlib.suppress(OSError):
        m = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
        return int(m.group(1)) if m else 0
    return 0
