"""``chunked.open_image``: an image (or one layer blob) read lazily, every byte verified.

Only the manifest, the config and each layer's TOC and tar-split move when it opens; a
file's frames move when it is read, each chunk checked against the TOC's digest before
any of its bytes is handed out."""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, BinaryIO

import msgspec

from chunked import format as fmt
from chunked.api.types import Descriptor, Entry, entry_of
from chunked.errors import FormatError, InputError, NotFoundError, VerifyError
from chunked.format.tocindex import ChunkRef, FileInfo, clean_name
from chunked.oci.manifest import MAX_MANIFEST_SIZE, parse_descriptor
from chunked.read import image as _image
from chunked.read.image import LayerPolicy, MergedView
from chunked.read.layer import ChunkedLayer
from chunked.read.protocol import LayerReader
from chunked.read.source import FileSource

PathLike = str | os.PathLike[str]


def is_image_ref(target: str) -> bool:
    """Whether ``target`` names an image (``oci:``, ``docker://``) rather than a blob."""
    return target.startswith(("oci:", "docker://"))


def load_descriptor(path: PathLike) -> tuple[dict[str, str], Descriptor | None]:
    """A descriptor file as ``chunked build`` prints it (or a bare annotations object):
    its annotations, and the descriptor itself when the file is one."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_MANIFEST_SIZE + 1)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        doc = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise InputError(f"{name}: not a JSON descriptor") from None
    if isinstance(doc, dict) and "digest" in doc:
        d = parse_descriptor(raw, name)
        diff_id = doc.get("diffID")
        return dict(d.annotations), Descriptor(d.media_type, str(d.digest), d.size,
                                               dict(d.annotations),
                                               diff_id if isinstance(diff_id, str) else "")
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise InputError(f"{name}: not a descriptor or an annotations object")
    return doc, None


class ImageLayer:
    """One layer of an opened image: its descriptor (with the config's DiffID), how it
    is read, and its entries as its own TOC lists them."""

    def __init__(self, descriptor: Descriptor, layer: LayerReader, index: int):
        self.descriptor = descriptor
        self.index = index
        self._layer = layer

    @property
    def format(self) -> str:
        """``current`` or ``old`` for a zstd:chunked layer read lazily; otherwise how the
        layer was read whole (``tar``)."""
        if isinstance(self._layer, ChunkedLayer):
            return str(self._layer.variant.name)
        return "tar"

    @property
    def lazy(self) -> bool:
        """True for a zstd:chunked layer read through its TOC; False for one fetched whole
        (gzip, plain zstd or tar, or an old-format layer when asked)."""
        return isinstance(self._layer, ChunkedLayer)

    @property
    def tarsplit_checked(self) -> bool:
        """Whether the TOC was checked against the layer's tar-split (always so for a layer
        read whole, whose tar was read)."""
        return bool(self._layer.tarsplit_checked)

    @property
    def toc_checksum(self) -> str | None:
        """The digest the TOC was checked against (its annotation), when there was one."""
        if isinstance(self._layer, ChunkedLayer):
            return self._layer.checksum or None
        return None

    @property
    def tarsplit_digest(self) -> str | None:
        if isinstance(self._layer, ChunkedLayer):
            return self._layer.toc.tarsplit_digest or None
        return None

    def __len__(self) -> int:
        return len(self._layer.entries)

    def entries(self) -> Iterator[Entry]:
        """Every entry of the layer in TOC order, whiteouts included."""
        files = self._layer.files
        for e in self._layer.entries:
            path = clean_name(e.name)
            chunks = 0
            if e.type == fmt.TYPE_REG and e.size:
                info = files.get(path)
                chunks = len(info.chunks) if info is not None else 0
            yield entry_of(path, e, self.index, chunks)


class Image:
    """An opened image (``oci:``, ``docker://``) or layer blob; a context manager.

    ``manifest`` and ``config`` are the JSON documents as parsed (``None`` for a bare
    blob); ``layers`` the layers bottom first. Paths are relative to the image's root
    (a leading ``/`` or ``./`` is accepted too)."""

    def __init__(self, layers: list[ImageLayer], manifest: dict[str, Any] | None,
                 config: dict[str, Any] | None, closers: list[Any],
                 inner: _image.Image | None = None):
        self.layers = layers
        self._inner = inner  # the image as the readers hold it (None for a blob)
        self.manifest = manifest
        self.config = config
        self._closers = closers
        self._view: MergedView | None = None

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        for c in self._closers:
            c.close()
        self._closers = []

    def __enter__(self) -> Image:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the tree ---------------------------------------------------------------------
    @property
    def view(self) -> MergedView:
        """The merged view the readers use (internal: its types are not the API's)."""
        if self._view is None:
            self._view = MergedView([il._layer for il in self.layers])
        return self._view

    def walk(self) -> Iterator[Entry]:
        """Every path of the merged tree (whiteouts applied), in the order the layers
        list them, lower layers first."""
        for m in self.view.entries.values():
            e = m.info.entry
            chunks = len(m.info.chunks) if e.type == fmt.TYPE_REG else 0
            yield entry_of(m.path, e, m.layer_index, chunks)

    def stat(self, path: str) -> Entry:
        """The entry at ``path``, as the TOC lists it (a hard link as a hard link, a
        symlink not followed)."""
        m = self.view.entries.get(clean_name(path))
        if m is None:
            raise NotFoundError(f"{path}: no such file in the image")
        e = m.info.entry
        return entry_of(m.path, e, m.layer_index,
                        len(m.info.chunks) if e.type == fmt.TYPE_REG else 0)

    def _regular(self, path: str) -> tuple[LayerReader, FileInfo]:
        layer, info = self.view.lookup(path)
        t = info.entry.type
        if t == fmt.TYPE_SYMLINK:
            raise InputError(f"{path}: is a symlink (to {info.entry.link_name!r}), not a "
                             "regular file")
        if t != fmt.TYPE_REG:
            raise InputError(f"{path}: is a {t}, not a regular file")
        return layer, info

    def read(self, path: str) -> bytes:
        """A regular file's whole content (a hard link's target's), verified chunk by
        chunk and whole (digest and tar-split CRC-64) before it is returned."""
        layer, info = self._regular(path)
        return b"".join(layer.iter_file(info))

    def copy(self, path: str, out: BinaryIO) -> int:
        """A regular file's content written to ``out`` as it arrives, each chunk verified
        first and the whole file before its last piece; the bytes written."""
        layer, info = self._regular(path)
        n = 0
        for piece in layer.iter_file(info):
            out.write(piece)
            n += len(piece)
        return n

    def open(self, path: str) -> io.BufferedReader:
        """A seekable, read-only binary file over a regular file's content that fetches
        only the chunks read, each checked against its digest before its bytes are given.
        (The tar-split's CRC-64 covers a file whole: it is checked for files of one
        chunk, as each read then covers the whole chunk, and by :meth:`read`.)"""
        layer, info = self._regular(path)
        return io.BufferedReader(ImageFile(layer, info, path), buffer_size=1 << 16)


class ImageFile(io.RawIOBase):
    """One regular file, read by chunks on demand; the last chunk read is kept."""

    def __init__(self, layer: LayerReader, info: FileInfo, name: str):
        self._layer = layer
        self._chunks: list[ChunkRef] = list(info.chunks)
        self._starts = [c.file_offset for c in self._chunks]
        self._size = info.entry.size
        self._pos = 0
        self._held: tuple[int, bytes] | None = None  # (chunk index, its bytes)
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _chunk(self, i: int) -> bytes:
        if self._held is not None and self._held[0] == i:
            return self._held[1]
        c = self._chunks[i]
        (_, data), = list(self._layer.read_chunks([c], self.name))
        got = bytes(c.size) if data is None else data
        self._held = (i, got)
        return got

    def readinto(self, b: Any) -> int:
        if self._pos >= self._size:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        if i < 0:
            raise VerifyError(f"{self.name}: no chunk covers offset {self._pos}")
        c = self._chunks[i]
        data = self._chunk(i)
        at = self._pos - c.file_offset
        view = memoryview(b).cast("B")
        n = min(len(view), len(data) - at, self._size - self._pos)
        if n <= 0:
            raise FormatError(f"{self.name}: the chunks do not cover offset {self._pos}")
        view[:n] = data[at:at + n]
        self._pos += n
        return n


def _blob_layer(path: str, descriptor: PathLike | Mapping[str, str] | None,
                require_tarsplit: bool) -> Image:
    annotations: Mapping[str, str] = {}
    desc: Descriptor | None = None
    if isinstance(descriptor, Mapping):
        annotations = descriptor
    elif descriptor is not None:
        annotations, desc = load_descriptor(descriptor)
    source = FileSource(path)
    try:
        if desc is not None and desc.size != source.size:
            raise VerifyError(f"{path}: blob is {source.size} bytes, its descriptor says "
                              f"{desc.size}")
        layer = ChunkedLayer.open(source, annotations)
        if require_tarsplit and not layer.tarsplit_checked:
            raise FormatError(f"{path} has no tar-split, so its TOC cannot be checked "
                              "against its tar (refused: require_tarsplit, --require-tarsplit)")
    except BaseException:
        source.close()
        raise
    if desc is None:
        desc = Descriptor(fmt.LAYER_MEDIA_TYPE, "", source.size, dict(annotations), "")
    return Image([ImageLayer(desc, layer, 0)], None, None, [source])


def open_image(ref: PathLike, *, tls_verify: bool = True, creds: str | None = None,
               authfile: str | None = None, platform: str | None = None,
               descriptor: PathLike | Mapping[str, str] | None = None,
               require_tarsplit: bool = False, whole_if_unchecked: bool = False) -> Image:
    """Open an image, ``oci:DIR[:TAG]`` or ``docker://HOST/REPO[:TAG|@DIGEST]``, or a
    zstd:chunked layer blob at a path: its manifest, config and every layer's TOC, each
    checked against its annotation and its tar-split.

    Registry options: ``tls_verify``, ``creds`` (``USER:PASS``), ``authfile``, and
    ``platform`` (``os/arch[/variant]``, default this host's) for an index. For a blob,
    ``descriptor`` (a descriptor file's path, or its annotations) locates and checks the
    TOC, and the blob's size. A zstd:chunked layer without a tar-split (the old format)
    is served as its TOC says; ``require_tarsplit`` refuses it, ``whole_if_unchecked``
    fetches it whole and reads its tar instead."""
    target = os.fspath(ref)
    if not is_image_ref(target):
        return _blob_layer(target, descriptor, require_tarsplit)
    inner = _image.open_image(target, tls_verify=tls_verify, creds=creds, authfile=authfile,
                              platform=platform,
                              policy=LayerPolicy(require_tarsplit=require_tarsplit,
                                                 whole_if_unchecked=whole_if_unchecked))
    layers = [ImageLayer(Descriptor(il.descriptor.media_type, str(il.descriptor.digest),
                                    il.descriptor.size, dict(il.descriptor.annotations),
                                    str(il.diff_id)), il.layer, i)
              for i, il in enumerate(inner.layers)]
    # (enc_hook: the manifest's and the config's digests are chunked.digest.Digest)
    return Image(layers, msgspec.to_builtins(inner.manifest, enc_hook=str),
                 msgspec.to_builtins(inner.config, enc_hook=str), [inner], inner)
