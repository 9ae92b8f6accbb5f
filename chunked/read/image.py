"""An image as a stack of layers, and its merged root filesystem.

reference -> manifest -> layers (each opened through a RangeSource, its TOC verified
against its annotation and against its tar-split) -> merged view with overlay semantics:
later layers replace earlier paths, ``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` hides
everything the lower layers had in that directory.

A zstd:chunked layer without a tar-split (the old format) has a TOC nothing can check
short of reading the whole layer. :func:`open_image` serves it as it is and lists it in
``Image.unchecked`` (lazy readers say so), fetches it whole and reads the plain tar
(``whole_if_unchecked``: what a pull does), or refuses it (``require_tarsplit``).
"""

from __future__ import annotations

import concurrent.futures as cf
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chunked import format as fmt
from chunked.errors import FormatError, InputError, NotFoundError, VerifyError
from chunked.oci.layout import OciLayout, OciRef
from chunked.oci.manifest import Descriptor, ImageConfig, Manifest, parse_config
from chunked.read.layer import ChunkedLayer, FileInfo, VerifyReport, clean_name
from chunked.read.protocol import LayerReader
from chunked.read.source import FileSource, RangeSource, failover_once
from chunked.read.tarlayer import TarLayer

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


@dataclass(frozen=True)
class LayerPolicy:
    """What to do with a zstd:chunked layer whose TOC cannot be checked (no tar-split)."""

    require_tarsplit: bool = False  # refuse it
    whole_if_unchecked: bool = False  # fetch it whole and read the plain tar


@dataclass
class ImageLayer:
    descriptor: Descriptor
    layer: LayerReader
    diff_id: str  # what the image config says the layer decompresses to


@dataclass(slots=True)
class MergedEntry:
    path: str
    layer_index: int
    info: FileInfo


@dataclass
class MergedView:
    """Paths of the image's root filesystem, as the layers applied in order give them."""

    layers: list[LayerReader]
    entries: dict[str, MergedEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, layer in enumerate(self.layers):
            self._apply(index, layer)

    def _apply(self, index: int, layer: LayerReader) -> None:
        added: dict[str, FileInfo] = {}
        gone: set[str] = set()  # paths whose lower entry and everything below it go
        opaque: set[str] = set()  # directories whose lower contents go
        for path, info in layer.files.items():  # (keyed by clean name)
            parent, _, base = path.rpartition("/")
            if base == OPAQUE_MARKER:
                opaque.add(parent)
            elif base.startswith(WHITEOUT_PREFIX):
                gone.add(posixpath.join(parent, base[len(WHITEOUT_PREFIX):]))
            else:
                added[path] = info
                old = self.entries.get(path)
                if old is not None and (old.info.entry.type != fmt.TYPE_DIR
                                        or info.entry.type != fmt.TYPE_DIR):
                    # a file replacing a directory takes the directory's children with it
                    gone.add(path)
        if gone or opaque:
            # one pass over what the lower layers left, however many whiteouts there are
            doomed = [p for p in self.entries if _hidden(p, gone, opaque)]
            for p in doomed:
                del self.entries[p]
        for path, info in added.items():
            self.entries[path] = MergedEntry(path, index, info)

    @property
    def paths(self) -> Iterable[str]:
        return self.entries.keys()

    def lookup(self, path: str) -> tuple[LayerReader, FileInfo]:
        entry = self.entries.get(clean_name(path))
        if entry is None:
            raise NotFoundError(f"{path}: no such file in the image")
        layer = self.layers[entry.layer_index]
        return layer, layer.resolve(entry.info)


def _hidden(path: str, gone: set[str], opaque: set[str]) -> bool:
    if path in gone:
        return True
    p = path
    while p:
        p = p.rpartition("/")[0]
        if p in gone or p in opaque:
            return True
    return False


@dataclass
class Image:
    manifest: Manifest
    config: ImageConfig
    layers: list[ImageLayer]
    on_close: Callable[[], None] | None = None

    def merged(self) -> MergedView:
        return MergedView([il.layer for il in self.layers])

    @property
    def unchecked(self) -> list[ImageLayer]:
        """zstd:chunked layers served by a TOC no tar-split vouched for."""
        return [il for il in self.layers if not il.layer.tarsplit_checked]

    def verify(self, progress: Callable[[int], Callable[[int], None] | None] | None = None
               ) -> list[VerifyReport]:
        """Every layer verified (:meth:`LayerReader.verify`) and its DiffID held against the
        config; ``progress(i)`` may give a callback for layer ``i``'s bytes."""
        reports = []
        for i, il in enumerate(self.layers):
            report = il.layer.verify(progress=progress(i) if progress else None)
            if report.diff_id != il.diff_id:
                raise VerifyError(f"layer {i} ({il.descriptor.digest}) decompresses to "
                                  f"{report.diff_id}, the config's diff_id is {il.diff_id}")
            reports.append(report)
        return reports

    def close(self) -> None:
        for il in self.layers:
            il.layer.source.close()
        if self.on_close is not None:
            self.on_close()


def _declared_tar_size(layer: ChunkedLayer) -> int:
    """The most a layer's tar can hold, by its TOC: every payload rounded up to a block,
    room for each entry's headers (long names, PAX records), and for trailing padding."""
    return sum(-(-e.size // 512) * 512 + (8 << 10) for e in layer.entries) + (16 << 20)


def _open_layer(desc: Descriptor, source: RangeSource, policy: LayerPolicy) -> LayerReader:
    if desc.size != source.size:
        raise FormatError(f"layer {desc.digest}: blob is {source.size} bytes, the manifest "
                          f"says {desc.size}")
    if fmt.LayerAnnotations.find(desc.annotations) is not None:
        layer = failover_once(source, lambda: ChunkedLayer.open(source, desc.annotations))
        if layer.tarsplit_checked:
            return layer
        if policy.require_tarsplit:
            raise FormatError(f"layer {desc.digest} has no tar-split, so its TOC cannot be "
                              "checked against its tar (refused: require_tarsplit, "
                              "--require-tarsplit)")
        if not policy.whole_if_unchecked:
            return layer
        cap = _declared_tar_size(layer)
        del layer  # its index is as large as the one the whole layer gets: not both at once
    else:
        cap = None
    # not zstd:chunked, or not to be trusted lazily: fetched whole, verified and indexed
    media = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    whole = failover_once(source, lambda: TarLayer.fetch(media, source, cap=cap))
    source.close()
    return whole


def open_layers(manifest: Manifest, sources: list[RangeSource],
                policy: LayerPolicy = LayerPolicy()) -> list[LayerReader]:
    """Every layer opened (its TOC fetched and checked) at once: over a real link each is
    a round trip, and an image has ten of them."""
    descs = manifest.layers
    if len(descs) != len(sources):
        raise FormatError("manifest and layer sources do not match")
    if len(descs) <= 1:
        return [_open_layer(d, s, policy) for d, s in zip(descs, sources, strict=True)]
    with cf.ThreadPoolExecutor(min(8, len(descs)), "chunked-open") as pool:
        futures = [pool.submit(_open_layer, d, s, policy)
                   for d, s in zip(descs, sources, strict=True)]
        cf.wait(futures)
    return [f.result() for f in futures]  # the first layer's error, in layer order


def _image(manifest: Manifest, config: ImageConfig, layers: list[LayerReader],
           on_close: Callable[[], None] | None = None) -> Image:
    """The image, each layer with the DiffID its config gives; a layer read whole is held
    to it at once."""
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(layers):
        raise FormatError(f"the image config lists {len(diff_ids)} diff_ids for "
                          f"{len(layers)} layers")
    image = Image(manifest, config, [ImageLayer(d, layer, i) for d, layer, i in
                                     zip(manifest.layers, layers, diff_ids, strict=True)],
                  on_close)
    for il in image.layers:
        if isinstance(il.layer, TarLayer) and il.layer.diff_id != il.diff_id:
            raise VerifyError(f"layer {il.descriptor.digest} decompresses to "
                              f"{il.layer.diff_id}, the config's diff_id is {il.diff_id}")
    return image


def open_oci(ref: OciRef, policy: LayerPolicy = LayerPolicy()) -> Image:
    layout = OciLayout(ref.path)
    manifest = layout.manifest(ref.tag)
    config = parse_config(layout.read_bytes(manifest.config.digest),
                          f"{ref.path}: config {manifest.config.digest}")
    sources: list[RangeSource] = []
    try:
        for d in manifest.layers:
            sources.append(FileSource(layout.blob_path(d.digest)))
        layers = open_layers(manifest, sources, policy)
    except BaseException:
        for s in sources:
            s.close()
        raise
    try:
        return _image(manifest, config, layers)
    except BaseException:
        for layer in layers:
            layer.source.close()
        raise


def open_image(target: str, *, tls_verify: bool = True, creds: str | None = None,
               authfile: str | None = None, platform: str | None = None,
               policy: LayerPolicy = LayerPolicy()) -> Image:
    """Open ``oci:DIR[:TAG]`` or ``docker://...``: manifest, config, and every layer's TOC."""
    if target.startswith("oci:"):
        return open_oci(OciRef.parse(target), policy)
    return open_docker(target, tls_verify=tls_verify, creds=creds, authfile=authfile,
                       platform=platform, policy=policy)


def open_docker(target: str, *, tls_verify: bool = True, creds: str | None = None,
                authfile: str | None = None, platform: str | None = None,
                policy: LayerPolicy = LayerPolicy()) -> Image:
    from chunked.oci.mirrors import pull_client
    from chunked.oci.reference import DockerRef, parse_reference

    ref = parse_reference(target)
    if not isinstance(ref, DockerRef):
        raise InputError(f"{target!r} is not a docker:// reference")
    client = pull_client(ref, tls_verify=tls_verify, creds=creds, authfile=authfile)
    try:
        manifest, _digest = client.resolve(ref.repository, ref.reference, platform)
        sources: list[RangeSource] = [client.blob_source(ref.repository, d.digest, d.size)
                                      for d in manifest.layers]
        # the config is one more round trip: made while the layers open
        with cf.ThreadPoolExecutor(1, "chunked-config") as pool:
            config_blob = pool.submit(client.get_blob, ref.repository, manifest.config.digest)
            layers = open_layers(manifest, sources, policy)
            config = parse_config(config_blob.result(),
                                  f"registry {ref.host}: config {manifest.config.digest}")
        return _image(manifest, config, layers, client.close)
    except BaseException:
        client.close()
        raise
