"""Mount and unmount: foreground serving, or a detached server the command waits for."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

from chunked.cache import ContentCache
from chunked.errors import ChunkedError, InputError
from chunked.image import LayerPolicy, open_image

log = logging.getLogger("chunked.fuse")
WARNING = "chunked: warning: "


class MountError(ChunkedError):
    pass


def serve(target: str, mountpoint: str, *, tls_verify: bool, creds: str | None,
          authfile: str | None, platform: str | None, cache_bytes: int,
          prefetch: bool = False, cache_dir: str | None = None,
          policy: LayerPolicy | None = None) -> None:
    """Open the image and serve it at mountpoint until unmounted (blocks)."""
    from mfusepy import FUSE

    from .fs import ChunkedFS

    if not os.path.isdir(mountpoint):
        raise InputError(f"{mountpoint}: mount point is not a directory")
    image = open_image(target, tls_verify=tls_verify, creds=creds, authfile=authfile,
                       platform=platform, policy=policy or LayerPolicy())
    try:
        for il in image.unchecked:
            # in the CLI's own words: a background mount relays these lines to its caller
            print(f"{WARNING}layer {il.descriptor.digest} has no tar-split: its TOC is "
                  "served as it is, unchecked against the layer's tar", file=sys.stderr,
                  flush=True)
        disk = ContentCache(cache_dir) if cache_dir else None
        fs = ChunkedFS(image.merged(), cache_bytes=cache_bytes, disk=disk,
                       layer_digests=[il.descriptor.digest for il in image.layers])
        if prefetch:
            fs.start_prefetch()
        # An image never changes under the mount: the kernel may keep file pages across
        # opens (kernel_cache) and attributes and names for long (timeouts), so warm
        # reads and lookups never come back to us.
        FUSE(fs, mountpoint, foreground=True, ro=True, fsname="chunked",
             subtype="chunked", default_permissions=True, allow_other=os.geteuid() == 0,
             kernel_cache=True, use_ino=True, attr_timeout=3600, entry_timeout=3600,
             negative_timeout=3600)
    finally:
        image.close()


def serve_store(mountpoint: str, *, tls_verify: bool, creds: str | None,
                authfile: str | None, platform: str | None, cache_bytes: int,
                prefetch: bool = False, cache_dir: str | None = None) -> None:
    """Serve the additional layer store at mountpoint until unmounted (blocks)."""
    from mfusepy import FUSE

    from .store import StoreFS

    if not os.path.isdir(mountpoint):
        raise InputError(f"{mountpoint}: mount point is not a directory")
    disk = ContentCache(cache_dir) if cache_dir else None
    spool = None
    if cache_dir:
        spool = os.path.join(cache_dir, "store-blobs")
        os.makedirs(spool, exist_ok=True)
    fs = StoreFS({"tls_verify": tls_verify, "creds": creds, "authfile": authfile,
                  "platform": platform, "spool_dir": spool},
                 cache_bytes=cache_bytes, disk=disk, prefetch=prefetch)
    try:
        # Not mounted read-only: the engine's `use` (create) and release (rmdir) must
        # reach the store, which refuses every other write itself. Layers never change:
        # long attribute and name timeouts; a failed lookup is remembered for a second
        # only, as the registry may come back.
        FUSE(fs, mountpoint, foreground=True, fsname="chunked-store", subtype="chunked",
             default_permissions=True, allow_other=os.geteuid() == 0, kernel_cache=True,
             use_ino=True, attr_timeout=3600, entry_timeout=3600, negative_timeout=1)
    finally:
        fs.store.close()


def mount_background(argv: list[str], mountpoint: str, timeout: float = 120.0) -> int:
    """Run this same mount in the foreground as a detached process; return once it is up."""
    log_file = tempfile.NamedTemporaryFile(prefix="chunked-mount-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "chunked.cli", *argv, "--foreground"],
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            with open(log_file.name, errors="replace") as f:
                for line in f:
                    if line.startswith(WARNING):
                        print(line.rstrip("\n"), file=sys.stderr)
            print(f"mounted at {mountpoint} (pid {proc.pid}, log {log_file.name})")
            return 0
        if proc.poll() is not None:
            with open(log_file.name, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            # the foreground mount's own one-line error, without its "chunked: error:"
            last = lines[-1].removeprefix("chunked: error: ") if lines else \
                f"mount exited with {proc.returncode}"
            raise MountError(last)
        time.sleep(0.05)
    proc.kill()
    raise MountError(f"{mountpoint}: not mounted after {timeout:.0f}s")


def read_stats(mountpoint: str) -> dict:
    from .fs import STATS_XATTR

    try:
        return json.loads(os.getxattr(mountpoint, STATS_XATTR))
    except OSError as exc:
        raise MountError(f"{mountpoint}: not a chunked mount ({exc.strerror})") from None


def unmount(mountpoint: str) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", mountpoint] if tool else ["umount", mountpoint]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise MountError(f"{mountpoint}: {p.stderr.strip() or 'unmount failed'}")
