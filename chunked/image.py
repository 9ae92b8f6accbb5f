"""An image as a stack of zstd:chunked layers, and its merged root filesystem.

reference -> manifest -> layers (each opened through a RangeSource, its TOC
verified against its annotation) -> merged view with overlay semantics: later
layers replace earlier paths, ``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` hides
everything the lower layers had in that directory.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import format as fmt
from .errors import FormatError, InputError, NotFoundError
from .oci import OciLayout, OciRef
from .reader import FileInfo, Layer, clean_name
from .source import FileSource, RangeSource
from .tarlayer import TarLayer

# A zstd:chunked layer read lazily, or a whole layer fetched and indexed locally.
AnyLayer = Layer | TarLayer

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


@dataclass
class ImageLayer:
    descriptor: dict[str, Any]
    layer: AnyLayer


@dataclass
class MergedEntry:
    path: str
    layer_index: int
    info: FileInfo


@dataclass
class MergedView:
    """Paths of the image's root filesystem, as the layers applied in order give them."""

    layers: list[AnyLayer]
    entries: dict[str, MergedEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, layer in enumerate(self.layers):
            self._apply(index, layer)

    def _remove_tree(self, path: str, below: int, *, keep_root: bool = False) -> None:
        """Drop path and everything under it that came from layers before ``below``."""
        prefix = path + "/" if path else ""
        doomed = [p for p, e in self.entries.items()
                  if e.layer_index < below
                  and ((p == path and not keep_root) or p.startswith(prefix))]
        for p in doomed:
            del self.entries[p]

    def _apply(self, index: int, layer: AnyLayer) -> None:
        for info in layer.files.values():
            path = clean_name(info.entry.name)
            parent, base = posixpath.split(path)
            if base == OPAQUE_MARKER:
                # the directory stays; what lower layers had below it goes
                self._remove_tree(parent, index, keep_root=True)
                continue
            if base.startswith(WHITEOUT_PREFIX):
                self._remove_tree(posixpath.join(parent, base[len(WHITEOUT_PREFIX):]), index)
                continue
            old = self.entries.get(path)
            if old is not None and (old.info.entry.type != fmt.TYPE_DIR
                                    or info.entry.type != fmt.TYPE_DIR):
                # a file replacing a directory takes the directory's children with it
                self._remove_tree(path, index)
            self.entries[path] = MergedEntry(path, index, info)

    def lookup(self, path: str) -> tuple[AnyLayer, FileInfo]:
        entry = self.entries.get(clean_name(path))
        if entry is None:
            raise NotFoundError(f"{path}: no such file in the image")
        layer = self.layers[entry.layer_index]
        if entry.info.entry.type == fmt.TYPE_HARDLINK:
            return layer, layer.lookup(entry.info.entry.name)
        return layer, entry.info


@dataclass
class Image:
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[ImageLayer]
    on_close: Callable[[], None] | None = None

    def merged(self) -> MergedView:
        return MergedView([il.layer for il in self.layers])

    def close(self) -> None:
        for il in self.layers:
            il.layer.source.close()
        if self.on_close is not None:
            self.on_close()


def _open_layer(desc: dict[str, Any], source: RangeSource) -> ImageLayer:
    # The tar-split is fetched later, and only by what needs it (verify).
    annotations = desc.get("annotations") or {}
    if desc.get("size") != source.size:
        raise FormatError(f"layer {desc.get('digest')}: blob is {source.size} bytes, "
                          f"the manifest says {desc.get('size')}")
    if fmt.LayerAnnotations.find(annotations) is None:
        # not zstd:chunked: fetched whole once, verified and indexed locally
        layer = ImageLayer(desc, TarLayer.fetch(desc, source))
        source.close()
        return layer
    return ImageLayer(desc, Layer.open(source, annotations, with_tarsplit=False))


def open_layers(manifest: dict[str, Any], sources: list[RangeSource]) -> list[ImageLayer]:
    """Every layer opened (its TOC fetched and checked) at once: over a real link each is
    a round trip, and an image has ten of them."""
    descs = manifest["layers"]
    if len(descs) != len(sources):
        raise FormatError("manifest and layer sources do not match")
    if len(descs) <= 1:
        return [_open_layer(d, s) for d, s in zip(descs, sources, strict=True)]
    with cf.ThreadPoolExecutor(min(8, len(descs)), "chunked-open") as pool:
        futures = [pool.submit(_open_layer, d, s) for d, s in zip(descs, sources, strict=True)]
        cf.wait(futures)
    return [f.result() for f in futures]  # the first layer's error, in layer order


def open_oci(ref: OciRef) -> Image:
    layout = OciLayout(ref.path)
    manifest = layout.manifest(ref.tag)
    if "layers" not in manifest:
        raise InputError(f"oci:{ref.path}:{ref.tag} is not a single-platform image manifest")
    config = layout.read_json(manifest["config"]["digest"])
    sources: list[RangeSource] = [FileSource(layout.blob_path(d["digest"]))
                                  for d in manifest["layers"]]
    return Image(manifest, config, open_layers(manifest, sources))


def open_image(target: str, *, tls_verify: bool = True, creds: str | None = None,
               authfile: str | None = None, platform: str | None = None) -> Image:
    """Open ``oci:DIR[:TAG]`` or ``docker://...``: manifest, config, and every layer's TOC."""
    if target.startswith("oci:"):
        return open_oci(OciRef.parse(target))
    return open_docker(target, tls_verify=tls_verify, creds=creds, authfile=authfile,
                       platform=platform)


def open_docker(target: str, *, tls_verify: bool = True, creds: str | None = None,
                authfile: str | None = None, platform: str | None = None) -> Image:
    from .reference import DockerRef, parse_reference
    from .registry import RegistryClient, parse_creds

    ref = parse_reference(target)
    if not isinstance(ref, DockerRef):
        raise InputError(f"{target!r} is not a docker:// reference")
    client = RegistryClient(ref.host, tls_verify=tls_verify, creds=parse_creds(creds),
                            authfile=authfile)
    try:
        manifest, _digest = client.resolve(ref.repository, ref.reference, platform)
        sources: list[RangeSource] = [client.blob_source(ref.repository, d["digest"], d["size"])
                                      for d in manifest["layers"]]
        # the config is one more round trip: made while the layers open
        with cf.ThreadPoolExecutor(1, "chunked-config") as pool:
            config_blob = pool.submit(client.get_blob, ref.repository,
                                      manifest["config"]["digest"])
            layers = open_layers(manifest, sources)
            config = json.loads(config_blob.result())
        return Image(manifest, config, layers, client.close)
    except BaseException:
        client.close()
        raise
