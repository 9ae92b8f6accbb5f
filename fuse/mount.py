"""Mount and unmount: foreground serving, or a detached server the command waits for."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from chunked.cache.chunks import ContentCache
from chunked.errors import ChunkedError, InputError, MountError
from chunked.read.image import LayerPolicy, open_image

log = logging.getLogger("chunked.fuse")
WARNING = "chunked: warning: "


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


# The write end of the pipe a background server tells its command on that it is mounted
# (set in the forked server only).
_ready_fd: int | None = None


def notify_mounted() -> None:
    """Tell the waiting command the mount is up: called from the filesystem's ``init``,
    which libfuse runs once the kernel has the mount and the first request comes."""
    global _ready_fd
    fd, _ready_fd = _ready_fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b"\n")
            os.close(fd)


@dataclass(frozen=True)
class Mounted:
    """A mount served by a detached process: where, by whom, its log, and the warnings
    it gave while starting (one line each)."""

    mountpoint: str
    pid: int
    log: str
    warnings: tuple[str, ...] = ()


def mount_background(serve_it: Callable[[], None], mountpoint: str,
                     timeout: float = 120.0) -> Mounted:
    """Serve in a forked, detached child (``serve_it()`` blocks until unmounted); return
    once the mount is up, with the server's warnings, or raise its one-line error.

    A fork, not a new interpreter: the child has the modules and arguments already, which
    saves an interpreter's start and its imports (about a fifth of a second) before the
    mount is ready. Nothing has started a thread yet when it forks. The child says when it
    is mounted on a pipe (:func:`notify_mounted`), whose end-of-file without a word means
    it has failed: no polling stands between the mount and the command's return."""
    global _ready_fd
    if not os.path.isdir(mountpoint):
        raise InputError(f"{mountpoint}: mount point is not a directory")
    log_file = tempfile.NamedTemporaryFile(prefix="chunked-mount-", suffix=".log", delete=False)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        code = 0
        try:
            os.close(ready_r)
            _ready_fd = ready_w
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            serve_it()
        except ChunkedError as exc:
            print(f"chunked: error: {exc}", file=sys.stderr, flush=True)
            code = exc.exit_code
        except BaseException:  # noqa: BLE001 - a server must not unwind into the CLI
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(ready_w)
    try:
        readable, _, _ = select.select([ready_r], [], [], timeout)
        said = os.read(ready_r, 1) if readable else None
    finally:
        os.close(ready_r)
    if said is None:
        os.kill(pid, 9)
        raise MountError(f"{mountpoint}: not mounted after {timeout:.0f}s")
    if said:
        # (libfuse runs init once the kernel has the mount: this loop is a safeguard)
        deadline = time.monotonic() + 2
        while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.001)
        if not os.path.ismount(mountpoint):
            os.kill(pid, 9)
            raise MountError(f"{mountpoint}: the server started, but nothing is mounted")
        with open(log_file.name, errors="replace") as f:
            warnings = tuple(line.rstrip("\n").removeprefix(WARNING) for line in f
                             if line.startswith(WARNING))
        return Mounted(mountpoint, pid, log_file.name, warnings)
    _, status = os.waitpid(pid, 0)  # it closed the pipe unmounted: it is ending
    with open(log_file.name, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    # the server's own one-line error, without its "chunked: error:"
    last = lines[-1].removeprefix("chunked: error: ") if lines else \
        f"mount exited with {os.waitstatus_to_exitcode(status)}"
    raise MountError(last)


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
