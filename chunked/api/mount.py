"""``chunked.mount``, ``chunked.mount_store``, ``chunked.umount``, ``chunked.stats``: the
FUSE filesystems, served by a detached process (or in the caller's, in the foreground)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from chunked.api.image import PathLike
from chunked.read.image import LayerPolicy

if TYPE_CHECKING:
    from chunked.fuse.mount import Mounted

DEFAULT_CACHE_SIZE = 1 << 30  # bytes of memory for fetched chunks


def _mountpoint(path: PathLike) -> str:
    from chunked.errors import InputError

    name = os.fspath(path)
    if not os.path.isdir(name):
        raise InputError(f"{name}: mount point is not a directory")
    return name


def mount(ref: str, mountpoint: PathLike, *, cache: PathLike | None = None,
          cache_size: int = DEFAULT_CACHE_SIZE, prefetch: bool = False,
          require_tarsplit: bool = False, foreground: bool = False, tls_verify: bool = True,
          creds: str | None = None, authfile: str | None = None,
          platform: str | None = None) -> Mounted | None:
    """Mount the merged tree of ``ref`` (``oci:``, ``docker://``) read-only at
    ``mountpoint``; files are fetched as they are read, each checked whole before its
    first byte is served (EIO otherwise). ``cache`` is the shared on-disk store of
    verified chunks, ``cache_size`` the bytes of memory for them; ``prefetch`` fetches
    the rest in the background. Returns once mounted, with the serving process's pid,
    log and warnings (:class:`chunked.Mounted`); with ``foreground``, serves
    in this process until unmounted and returns None."""
    from chunked.fuse.mount import mount_background, serve

    where = _mountpoint(mountpoint)
    run = functools.partial(
        serve, ref, where, tls_verify=tls_verify, creds=creds, authfile=authfile,
        platform=platform, cache_bytes=cache_size, prefetch=prefetch,
        cache_dir=os.fspath(cache) if cache is not None else None,
        policy=LayerPolicy(require_tarsplit=require_tarsplit))
    if foreground:
        run()
        return None
    return mount_background(run, where)


def mount_store(mountpoint: PathLike, *, cache: PathLike | None = None,
                cache_size: int = DEFAULT_CACHE_SIZE, prefetch: bool = False,
                foreground: bool = False, tls_verify: bool = True, creds: str | None = None,
                authfile: str | None = None, platform: str | None = None) -> Mounted | None:
    """Serve the additional layer store for containers/storage's overlay driver at
    ``mountpoint`` (``additionallayerstores = ["MOUNTPOINT:ref"]`` in storage.conf):
    registry images' zstd:chunked layers, their files fetched as the container reads
    them. Options and the result as for :func:`mount`."""
    from chunked.fuse.mount import mount_background, serve_store

    where = _mountpoint(mountpoint)
    run = functools.partial(
        serve_store, where, tls_verify=tls_verify, creds=creds, authfile=authfile,
        platform=platform, cache_bytes=cache_size, prefetch=prefetch,
        cache_dir=os.fspath(cache) if cache is not None else None)
    if foreground:
        run()
        return None
    return mount_background(run, where)


def umount(mountpoint: PathLike) -> None:
    """Unmount what :func:`mount` or :func:`mount_store` mounted."""
    from chunked.fuse.mount import unmount

    unmount(os.fspath(mountpoint))


def stats(mountpoint: PathLike) -> dict[str, Any]:
    """What a mount or a store has fetched so far, per layer (live)."""
    from chunked.fuse.mount import read_stats

    doc: dict[str, Any] = read_stats(os.fspath(mountpoint))
    return doc
