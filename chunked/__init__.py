"""Build zstd:chunked container layers and read container images lazily.

The public API is what this module exports (``__all__``); everything else is internal::

    import chunked

    desc = chunked.build("rootfs.tar", "layer.blob", image="oci:/tmp/img:1")
    with chunked.open_image("oci:/tmp/img:1") as image:
        print(image.stat("etc/os-release"), image.read("etc/os-release"))
    chunked.verify("oci:/tmp/img:1")

Names load on first use, so ``import chunked`` costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chunked.errors import (
    ChunkedError,
    FormatError,
    InputError,
    MountError,
    NotFoundError,
    UnsupportedError,
    VerifyError,
)

__version__ = "0.1.0"

_LAZY = {
    "build": "chunked.api.build",
    "Descriptor": "chunked.api.types",
    "Entry": "chunked.api.types",
    "open_image": "chunked.api.image",
    "Image": "chunked.api.image",
    "ImageLayer": "chunked.api.image",
    "verify": "chunked.api.verify",
    "VerifyReport": "chunked.api.verify",
    "LayerReport": "chunked.api.verify",
    "pull": "chunked.api.pull",
    "PullSummary": "chunked.puller.files",
    "push": "chunked.api.push",
    "PushSummary": "chunked.api.push",
    "mount": "chunked.api.mount",
    "mount_store": "chunked.api.mount",
    "umount": "chunked.api.mount",
    "stats": "chunked.api.mount",
    "Mounted": "chunked.fuse.mount",
    "convert": "chunked.api.convert",
    "ConvertSummary": "chunked.converter",
    "default_cache": "chunked.api.cache",
    "cache_stats": "chunked.api.cache",
    "prune_cache": "chunked.api.cache",
}

__all__ = [
    "ChunkedError", "FormatError", "InputError", "MountError", "NotFoundError",
    "UnsupportedError", "VerifyError", "__version__",
    "build", "Descriptor", "Entry", "open_image", "Image", "ImageLayer", "verify",
    "VerifyReport", "LayerReport", "pull", "PullSummary", "push", "PushSummary", "mount",
    "mount_store", "umount", "stats", "Mounted", "convert", "ConvertSummary",
    "default_cache", "cache_stats", "prune_cache",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chunked' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from chunked.api.build import build
    from chunked.api.cache import cache_stats, default_cache, prune_cache
    from chunked.api.convert import convert
    from chunked.api.image import Image, ImageLayer, open_image
    from chunked.api.mount import mount, mount_store, stats, umount
    from chunked.api.pull import pull
    from chunked.api.push import PushSummary, push
    from chunked.api.types import Descriptor, Entry
    from chunked.api.verify import LayerReport, VerifyReport, verify
    from chunked.converter import ConvertSummary
    from chunked.fuse.mount import Mounted
    from chunked.puller.files import PullSummary
