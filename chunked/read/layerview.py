"""One layer's tree as containers/storage's overlay driver keeps a layer's ``diff/``.

The layer's tar says "delete NAME" with an entry ``.wh.NAME`` and "hide everything the
lower layers had here" with ``DIR/.wh..wh..opq``. The overlay driver stores the first as
a character device 0/0 named NAME, the second as the xattr ``trusted.overlay.opaque=y``
on DIR, and keeps no ``.wh.`` entry: that is the tree the kernel's overlayfs reads as a
lower directory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

import msgspec

from chunked import format as fmt
from chunked.errors import NotFoundError
from chunked.read.image import OPAQUE_MARKER, WHITEOUT_PREFIX
from chunked.read.layer import FileInfo, clean_name
from chunked.read.protocol import LayerReader

OPAQUE_XATTR = "trusted.overlay.opaque"


class OverlayLayerView:
    """The paths of one layer, whiteouts and opaque markers in the overlay format."""

    def __init__(self, layer: LayerReader):
        self.layers = [layer]
        self.entries: dict[str, FileInfo] = {}
        opaque: list[tuple[str, fmt.TocEntry]] = []
        for key, info in layer.files.items():
            path = clean_name(key)
            parent, base = posixpath.split(path)
            if base == OPAQUE_MARKER:
                opaque.append((parent, info.entry))
            elif base.startswith(WHITEOUT_PREFIX):
                name = posixpath.join(parent, base[len(WHITEOUT_PREFIX):])
                e = info.entry
                self.entries[name] = FileInfo(fmt.TocEntry(
                    type=fmt.TYPE_CHAR, name=name, uid=e.uid, gid=e.gid, modtime=e.modtime))
            else:
                self.entries.setdefault(path, info)
        for parent, marker in opaque:
            info = self.entries.get(parent)
            if info is None:
                entry = fmt.TocEntry(type=fmt.TYPE_DIR, name=parent, mode=0o755,
                                     uid=marker.uid, gid=marker.gid, modtime=marker.modtime)
            elif info.entry.type == fmt.TYPE_DIR:
                entry = info.entry
            else:
                continue  # a marker beneath a file: nothing to mark
            xattrs = dict(entry.xattrs or {})
            xattrs[OPAQUE_XATTR] = b"y"
            self.entries[parent] = FileInfo(msgspec.structs.replace(entry, xattrs=xattrs))

    @property
    def paths(self) -> Iterable[str]:
        return self.entries.keys()

    def lookup(self, path: str) -> tuple[LayerReader, FileInfo]:
        info = self.entries.get(clean_name(path))
        if info is None:
            raise NotFoundError(f"{path}: no such file in the layer")
        layer = self.layers[0]
        if info.entry.type == fmt.TYPE_HARDLINK:
            return layer, layer.resolve(info)
        return layer, info
