"""Hostile zstd:chunked layers, and an oracle that judges the ``chunked`` CLI on them.

An attacker controls a layer's bytes and its descriptor: whoever writes a TOC can also make
the ``manifest-checksum`` annotation match it (it is only the sha256 of the compressed TOC).
This module

* takes a valid blob of :func:`chunked.builder.build_blob` apart (data frames, TOC,
  tar-split, footer), lets a mutation rewrite any part and re-signs the result, so every
  check that compares the layer only with itself still passes (:func:`assemble`);
* has one deterministic case for every problem the held-back corpus found (:data:`NAMED`)
  and seeded random cases in seven classes (:data:`CLASSES`, :func:`random_case`);
* writes a case as a blob plus descriptor and as a one-image OCI layout
  (:func:`write_case`), and builds what GNU tar extracts from the layer's plain
  decompression: the only truth the oracle trusts (:func:`load_case`);
* runs each CLI command on a case in a sandbox of its own and classifies the outcome as
  ok, refused or failed (:class:`Runner`).

The harness understands the wire format on its own (footer, positions, keys) rather than
through ``chunked.format``, so that it cannot inherit a bug of the code it judges.

``python -m tests.hostile walk ROOT CAP`` is the reader used under a FUSE mount: it runs in
a process of its own, so a hung mount costs a timeout, not the harness.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import posixpath
import random
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from chunked import builder
from chunked import format as chunked_format
from chunked.oci import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, OciLayout, host_arch
from tests.tarfactory import _info, _Writer

REPO = Path(__file__).resolve().parent.parent

# --- the wire format, as the harness reads it ------------------------------------------------

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
MAGIC_CURRENT = b"GNUlInUx"
MAGIC_OLD = b"GnUlInUx"
NEW = "io.github.containers.zstd-chunked."
OLD = "io.containers.zstd-chunked."
ZSTD_MEDIA = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_MEDIA = "application/vnd.oci.image.layer.v1.tar"
U64 = (1 << 64) - 1
TAG = "hostile"
# Absolute names and link targets of the generator point here; it must never appear.
ABS_CANARY = Path("/tmp/chunked-hostile-canary")
# sha256 of 6 GiB of zero bytes (hashlib over 6 << 30 zeros), for a self-consistent TOC.
ZEROS_6GIB_DIGEST = "sha256:5c32c2b28999325bc5ad39d6530bcb46fbdf1f86375a991b7269764c50b0d109"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skippable(payload: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def zstd(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)


def unzstd(data: bytes) -> bytes:
    # frames written by a stream (the builder's) do not record their content size
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data),
                                                      read_across_frames=True).read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def toc_json(doc: Any, *, ascii_only: bool = False) -> bytes:
    """JSON as a TOC carries it; lone surrogates (non-UTF-8 bytes of a name) become the raw
    bytes again unless ``ascii_only`` writes them as ``\\udcXX`` escapes."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Pos:
    offset: int
    length: int
    uncompressed: int

    def text(self, manifest_type: int | None = 1) -> str:
        parts = [self.offset, self.length, self.uncompressed]
        return ":".join(str(p) for p in parts + ([manifest_type] if manifest_type else []))


@dataclass
class Footer:
    toc: Pos
    tarsplit: Pos | None
    old: bool
    manifest_type: int = 1
    magic: bytes | None = None  # None: the format's own

    def encode(self) -> bytes:
        t = self.toc
        if self.old:
            return struct.pack("<4Q8s", t.offset & U64, t.length & U64, t.uncompressed & U64,
                               self.manifest_type & U64, self.magic or MAGIC_OLD)
        ts = self.tarsplit or Pos(0, 0, 0)
        return struct.pack("<7Q8s", t.offset & U64, t.length & U64, t.uncompressed & U64,
                           self.manifest_type & U64, ts.offset & U64, ts.length & U64,
                           ts.uncompressed & U64, self.magic or MAGIC_CURRENT)

    @classmethod
    def decode(cls, blob: bytes) -> Footer:
        if blob.endswith(MAGIC_CURRENT):
            o, n, u, t, tso, tsn, tsu = struct.unpack("<7Q", blob[-64:-8])
            return cls(Pos(o, n, u), Pos(tso, tsn, tsu) if tsn else None, False, t)
        if blob.endswith(MAGIC_OLD):
            o, n, u, t = struct.unpack("<4Q", blob[-40:-8])
            return cls(Pos(o, n, u), None, True, t)
        raise ValueError("no zstd:chunked footer")


# --- base layers ---------------------------------------------------------------------------

HELLO = b"hello world\n"
OTHER = b"another file, longer than hello, to point hello at\n"


def base_tar(seed: int = 7) -> bytes:
    """The small layer every mutation starts from: each entry type, a file of many chunks,
    a file with a zeros chunk, an xattr and a whiteout."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        w = _Writer(tf)
        w.add(_info("etc", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("etc/hello.txt"), HELLO)
        w.add(_info("etc/other.txt"), OTHER)
        w.add(_info("usr", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("usr/multi.bin", mode=0o755), rng.randbytes(150_000))
        w.add(_info("usr/holes.bin"), rng.randbytes(4000) + bytes(20_000) + rng.randbytes(4000))
        w.add(_info("usr/empty"), b"")
        w.add(_info("usr/link", tarfile.SYMTYPE, mode=0o777, linkname="multi.bin"))
        w.add(_info("usr/hard", tarfile.LNKTYPE, linkname="etc/hello.txt"))
        w.add(_info("dev", tarfile.DIRTYPE, mode=0o755))
        w.add(_info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3))
        w.add(_info("dev/fifo", tarfile.FIFOTYPE))
        w.add(_info("meta.txt", pax={"SCHILY.xattr.user.foo": "bar"}), b"meta\n")
        w.add(_info(".wh.gone"), b"")
    return buf.getvalue()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]],
           fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        w = _Writer(tf)
        for ti, data in members:
            w.add(ti, data)
    return buf.getvalue()


@dataclass
class LayerBlob:
    blob: bytes
    descriptor: dict[str, Any]
    kind: str = "zstd"  # how the plain tar is compressed: zstd, gzip or tar


def build(tar: bytes, *, old: bool = False, extra_old_keys: bool = True) -> LayerBlob:
    out = io.BytesIO()
    variant = chunked_format.OLD if old else chunked_format.CURRENT
    result = builder.build_blob(io.BytesIO(tar), out, variant=variant, threads=2,
                                extra_old_keys=extra_old_keys)
    return LayerBlob(out.getvalue(), result.descriptor())


@contextlib.contextmanager
def _names_unchecked() -> Iterator[None]:
    """Let build_blob take a name that is not UTF-8. The builder refuses those (the TOC
    cannot carry them the way Go does), but an attacker writes the TOC by hand, so the
    generator needs the same layer with a consistent TOC."""
    saved = getattr(builder, "_check_utf8", None)
    if saved is not None:
        builder._check_utf8 = lambda *names: None
    try:
        yield
    finally:
        if saved is not None:
            builder._check_utf8 = saved


@functools.cache
def _base_blob(old: bool) -> bytes:
    return build(base_tar(), old=old).blob


def plain_layer(tar: bytes, kind: str) -> LayerBlob:
    """A layer with no zstd:chunked annotations: gzip, plain zstd or an uncompressed tar."""
    blob = (_gzip(tar) if kind == "gzip" else zstd(tar) if kind == "zstd" else tar)
    media = {"gzip": GZIP_MEDIA, "zstd": ZSTD_MEDIA, "tar": TAR_MEDIA}[kind]
    return LayerBlob(blob, {"mediaType": media, "digest": sha(blob), "size": len(blob)}, kind)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


# --- taking a blob apart and re-signing it -------------------------------------------------


@dataclass
class Parts:
    """A zstd:chunked blob taken apart. Mutations change these, then :func:`assemble`."""

    data: bytes  # the data frames: what a plain zstd decoder turns into the tar
    toc: Any  # the TOC JSON as a Python object
    tarsplit: bytes | None  # the tar-split's JSON lines; None in the old format
    old: bool

    @classmethod
    def of(cls, blob: bytes) -> Parts:
        f = Footer.decode(blob)
        toc = unzstd(blob[f.toc.offset:f.toc.offset + f.toc.length])
        ts = None
        if f.tarsplit is not None:
            ts = unzstd(blob[f.tarsplit.offset:f.tarsplit.offset + f.tarsplit.length])
        return cls(blob[:f.toc.offset - 8], json.loads(toc.decode("utf-8", "surrogateescape")),
                   ts, f.old)

    @classmethod
    def base(cls, old: bool = False) -> Parts:
        return cls.of(_base_blob(old))

    @property
    def entries(self) -> list[Any]:
        return self.toc["entries"]

    def entry(self, name: str, kind: str | None = None) -> dict[str, Any]:
        for e in self.entries:
            if isinstance(e, dict) and e.get("name") == name and kind in (None, e.get("type")):
                return e
        raise KeyError(name)

    def file_group(self, name: str) -> list[dict[str, Any]]:
        """A file's entry and the chunk entries after it."""
        head = self.entry(name, "reg")
        i = self.entries.index(head)
        group = [head]
        for e in self.entries[i + 1:]:
            if not (isinstance(e, dict) and e.get("type") == "chunk"):
                break
            group.append(e)
        return group

    def ts_lines(self) -> list[bytes]:
        assert self.tarsplit is not None
        return self.tarsplit.splitlines()

    def set_ts_lines(self, lines: list[bytes]) -> None:
        self.tarsplit = b"".join(line + b"\n" for line in lines)


@dataclass
class Assembly:
    """Where assemble put things: what footer and annotation lies are computed from."""

    toc_pos: Pos
    ts_pos: Pos | None
    toc_z: bytes
    ts_z: bytes | None
    size: int


@dataclass
class Signing:
    """How to re-sign a mutated blob; each field left alone keeps the layer consistent."""

    keys: tuple[str, ...] | None = None  # annotation key sets: "new", "old"; None: by format
    fix_tarsplit_digest: bool = True  # False: keep the TOC's tarSplitDigest as it is
    toc_ascii: bool = False  # write non-ASCII as \\u escapes (surrogates as \\udcXX)
    toc_raw: Callable[[Any], bytes] | None = None  # the TOC bytes from the (signed) TOC
    toc_frame: Callable[[bytes], bytes] | None = None  # compressed TOC -> frame payload
    tarsplit_frame: Callable[[bytes], bytes] | None = None
    footer: Callable[[Footer, Assembly], None] | None = None  # lie in the footer's fields
    footer_bytes: Callable[[bytes], bytes] | None = None
    annotations: Callable[[dict[str, Any], Assembly], dict[str, Any]] | None = None
    descriptor: Callable[[dict[str, Any]], Any] | None = None  # file and manifest alike


def assemble(parts: Parts, signing: Signing | None = None) -> LayerBlob:
    """A blob from the parts, every position, digest and checksum made to match them."""
    s = signing or Signing()
    ts_z = zstd(parts.tarsplit) if parts.tarsplit is not None else None
    if ts_z is not None and s.tarsplit_frame:
        ts_z = s.tarsplit_frame(ts_z)
    if ts_z is not None and s.fix_tarsplit_digest and isinstance(parts.toc, dict):
        parts.toc["tarSplitDigest"] = sha(ts_z)
    raw = s.toc_raw(parts.toc) if s.toc_raw else toc_json(parts.toc, ascii_only=s.toc_ascii)
    toc_z = zstd(raw)
    if s.toc_frame:
        toc_z = s.toc_frame(toc_z)
    out = bytearray(parts.data)
    toc_pos = Pos(len(out) + 8, len(toc_z), len(raw))
    out += skippable(toc_z)
    ts_pos = None
    if ts_z is not None:
        assert parts.tarsplit is not None
        ts_pos = Pos(len(out) + 8, len(ts_z), len(parts.tarsplit))
        out += skippable(ts_z)
    info = Assembly(toc_pos, ts_pos, toc_z, ts_z, len(out) + 8 + (40 if parts.old else 64))
    footer = Footer(Pos(**asdict(toc_pos)), Pos(**asdict(ts_pos)) if ts_pos else None, parts.old)
    if s.footer:
        s.footer(footer, info)
    payload = footer.encode()
    if s.footer_bytes:
        payload = s.footer_bytes(payload)
    out += skippable(payload)
    info.size = len(out)
    ann: dict[str, Any] = {}
    for key in s.keys or (("old",) if parts.old else ("new", "old")):
        prefix = NEW if key == "new" else OLD
        ann[prefix + "manifest-checksum"] = sha(toc_z)
        ann[prefix + "manifest-position"] = toc_pos.text()
        if key == "new" and ts_pos is not None:
            ann[prefix + "tarsplit-position"] = ts_pos.text(None)
    if s.annotations:
        ann = s.annotations(ann, info)
    blob = bytes(out)
    desc: Any = {"mediaType": ZSTD_MEDIA, "digest": sha(blob), "size": len(blob),
                 "annotations": dict(sorted(ann.items()))}
    if s.descriptor:
        desc = s.descriptor(desc)
    return LayerBlob(blob, desc)


# --- cases ---------------------------------------------------------------------------------

OK, REFUSED, FAILED, SKIPPED = "ok", "refused", "failed", "skipped"
COMMANDS = ("inspect", "inspect-json", "verify", "cat", "pull", "verify-oci", "mount")
CHEAP = ("inspect", "inspect-json", "verify", "cat", "pull")


@dataclass
class Case:
    name: str
    klass: str
    layers: list[LayerBlob]
    main: int = 0  # the layer that inspect, verify and cat take as BLOB
    manifest_hook: Callable[[dict[str, Any]], Any] | None = None
    config_hook: Callable[[dict[str, Any]], Any] | None = None
    nofile: int | None = None  # RLIMIT_NOFILE for every chunked command
    env: dict[str, str] = field(default_factory=dict)
    must_succeed: frozenset[str] = frozenset()  # commands for which refusing is a failure
    rss_limit_mib: int | None = None
    timeout: float | None = None
    focus: list[str] = field(default_factory=list)  # names the mutation touched: cat these
    note: str = ""


def _toc_files(blob: bytes) -> list[str]:
    """Names of the TOC's regular files and hard links, read leniently: what cat is given."""
    try:
        toc = Parts.of(blob).toc
        entries = toc.get("entries") if isinstance(toc, dict) else None
    except Exception:  # noqa: BLE001 - a TOC this broken names nothing to cat
        return []
    if not isinstance(entries, list):
        return []
    return [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)
            and e.get("type") in ("reg", "hardlink")]


@dataclass
class Node:
    """One path of a tree: what GNU tar extracted, what pull wrote or what a mount serves."""

    kind: str  # file, dir, symlink, other
    size: int = 0  # bytes read (files)
    sha: str = ""  # sha256 of those bytes
    more: bool = False  # the file had bytes beyond the read cap
    data: bytes | None = None  # the bytes themselves, when small (reference side)
    target: bytes = b""  # symlink target
    error: str = ""  # errno name of a failed open or read
    # under a mount, size, sha, more and error of the buffered read that follows the
    # O_DIRECT one (whose results are the fields above)
    buffered: list[Any] | None = None

    def wire(self, path: bytes) -> dict[str, Any]:
        return {"p": path.hex(), "k": self.kind, "n": self.size, "h": self.sha, "m": self.more,
                "t": self.target.hex(), "e": self.error, "b": self.buffered}

    @classmethod
    def unwire(cls, doc: dict[str, Any]) -> tuple[bytes, Node]:
        return bytes.fromhex(doc["p"]), cls(doc["k"], doc["n"], doc["h"], doc["m"], None,
                                            bytes.fromhex(doc["t"]), doc["e"], doc["b"])


Tree = dict[bytes, Node]


@dataclass
class Plain:
    """The layer as any zstd (or gzip) decoder and GNU tar see it: the oracle's truth."""

    diff_id: str | None  # sha256 of the decompressed stream; None when it does not decompress
    tree: Tree | None  # GNU tar's extraction; None when there is nothing to compare with
    why: str = ""
    # The stream's members by name, the last of each (hard links resolved): what a lazy
    # reader serves for a name GNU tar will not extract (one beneath a symlink, say).
    members: Tree = field(default_factory=dict)


@dataclass
class CaseDir:
    """A case written to disk (fresh or saved by the fuzzer), with its plain truth."""

    root: Path
    meta: dict[str, Any]
    layer: Plain  # the main layer's own tree, whiteouts as plain files: for cat
    image: Tree | None  # the image's merged tree: for pull and mount
    image_diff_ids: list[str | None]
    image_members: Tree = field(default_factory=dict)  # every layer's, the last one wins

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def klass(self) -> str:
        return self.meta["class"]


def write_case(case: Case, root: Path) -> CaseDir:
    """Write ``case`` under ``root``: in/blob, in/descriptor.json and the OCI layout in/layout
    (all the CLI gets), layers/ (each layer's blob, for the oracle) and case.json."""
    (root / "in").mkdir(parents=True)
    (root / "layers").mkdir()
    main = case.layers[case.main]
    (root / "in" / "blob").write_bytes(main.blob)
    (root / "in" / "descriptor.json").write_text(json.dumps(main.descriptor, indent=2))
    plains = []
    for i, lb in enumerate(case.layers):
        path = root / "layers" / f"{i}.{lb.kind}"
        path.write_bytes(lb.blob)
        plains.append(_plain(path, lb.kind, root / "work" / f"stage-{i}"))
    diff_ids = [p.diff_id or sha(b"") for p in plains]
    _write_layout(root / "in" / "layout", case, diff_ids)
    meta = {
        "name": case.name, "class": case.klass, "note": case.note, "main": case.main,
        "layers": [lb.kind for lb in case.layers], "nofile": case.nofile, "env": case.env,
        "must_succeed": sorted(case.must_succeed), "rss_limit_mib": case.rss_limit_mib,
        "timeout": case.timeout, "focus": case.focus, "toc_files": _toc_files(main.blob),
    }
    (root / "case.json").write_text(json.dumps(meta, indent=2, ensure_ascii=True))
    remove_tree(root / "work")
    return _case_dir(root, meta, plains)


def _case_dir(root: Path, meta: dict[str, Any], plains: list[Plain]) -> CaseDir:
    members: Tree = {}
    for p in plains:
        members.update(p.members)
    return CaseDir(root, meta, plains[meta["main"]], _merge([p.tree for p in plains]),
                   [p.diff_id for p in plains], members)


def load_case(root: Path) -> CaseDir:
    """A case the fuzzer saved: its truth computed again from the saved layer blobs."""
    meta = json.loads((root / "case.json").read_text())
    plains = [_plain(root / "layers" / f"{i}.{kind}", kind, root / "work" / f"stage-{i}")
              for i, kind in enumerate(meta["layers"])]
    remove_tree(root / "work")
    return _case_dir(root, meta, plains)


def _write_layout(path: Path, case: Case, diff_ids: list[str]) -> None:
    """A one-image layout whose config holds the true diff_ids, as an attacker who wants a
    consistent image writes it; the case's hooks then bend manifest and config."""
    layout = OciLayout(str(path))
    layout.init()
    for lb in case.layers:
        layout.put_bytes(lb.blob)
    config: Any = {"architecture": host_arch(), "os": "linux", "config": {},
                   "rootfs": {"type": "layers", "diff_ids": diff_ids},
                   "history": [{"created_by": "tests/hostile.py"} for _ in case.layers]}
    if case.config_hook:
        config = case.config_hook(config)
    config_bytes = json.dumps(config).encode()
    manifest: Any = {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": layout.put_bytes(config_bytes),
                   "size": len(config_bytes)},
        "layers": [lb.descriptor for lb in case.layers],
    }
    if case.manifest_hook:
        manifest = case.manifest_hook(manifest)
    manifest_bytes = json.dumps(manifest).encode()
    layout.tag(TAG, layout.put_bytes(manifest_bytes), len(manifest_bytes))


# --- the plain truth: decompress, let GNU tar extract, walk ---------------------------------


def _pieces(path: Path, kind: str) -> Iterator[bytes]:
    import gzip

    with open(path, "rb") as f:
        stream: Any = (gzip.GzipFile(fileobj=f) if kind == "gzip" else
                       zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
                       if kind == "zstd" else f)
        while piece := stream.read(1 << 20):
            yield piece


def _plain(path: Path, kind: str, stage: Path) -> Plain:
    """Stream the decompressed layer into GNU tar (as tests/trees.py extracts layers) while
    hashing all of it: the diff_id covers bytes tar never reads."""
    stage.mkdir(parents=True)
    with tempfile.TemporaryFile() as err:
        tar = subprocess.Popen(["tar", "-x", "--numeric-owner", "-C", str(stage), "-f", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert tar.stdin is not None
        h = hashlib.sha256()
        feeding, failure = True, ""
        try:
            for piece in _pieces(path, kind):
                h.update(piece)
                if feeding:
                    try:
                        tar.stdin.write(piece)
                    except BrokenPipeError:  # tar stops after the end-of-archive blocks
                        feeding = False
        except (zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
            failure = f"the plain decompression fails: {exc}"
        finally:
            with contextlib.suppress(OSError):
                tar.stdin.close()
            tar.wait()
        err.seek(0)
        tar_says = err.read().decode(errors="replace")
    if failure:
        return Plain(None, None, failure)
    diff_id = "sha256:" + h.hexdigest()
    if "does not look like a tar archive" in tar_says:
        return Plain(diff_id, None, "the plain decompression is not a tar")
    tree = dict(walk(stage, 1 << 40, keep=1 << 20))
    return Plain(diff_id, tree, members=_members(path, kind))


class _Stream(io.RawIOBase):
    """A file over an iterator of pieces: tarfile reads what it needs and stops."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._rest:
            self._rest = next(self._pieces, b"")
        n = min(len(b), len(self._rest))
        b[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _members(path: Path, kind: str) -> Tree:
    out: Tree = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(_Stream(_pieces(path, kind))),
                          mode="r|") as tf:
            for m in tf:
                key = os.fsencode(rooted_clean(m.name))
                if m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    h, data = hashlib.sha256(), bytearray()
                    while piece := f.read(1 << 20):
                        h.update(piece)
                        if len(data) <= 1 << 20:
                            data += piece
                    out[key] = Node("file", m.size, h.hexdigest(),
                                    data=bytes(data) if m.size <= 1 << 20 else None)
                elif m.islnk():
                    target = out.get(os.fsencode(rooted_clean(m.linkname)))
                    if target is not None:
                        out[key] = target
                else:
                    out[key] = Node("dir" if m.isdir() else "symlink" if m.issym() else "other")
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError):
        pass  # what was read so far is all the stream offers
    return out


def _merge(trees: list[Tree | None]) -> Tree | None:
    """Layers applied in order with overlay whiteouts, as tests/trees.apply_whiteouts does
    on disk: a layer's whiteouts act on the layers below it, then its entries land."""
    root: Tree = {}
    for tree in trees:
        if tree is None:
            return None
        for path in tree:
            parent, _, base = path.rpartition(b"/")
            if base == b".wh..wh..opq":
                _drop(root, parent, keep_top=True)
            elif base.startswith(b".wh."):
                _drop(root, (parent + b"/" if parent else b"") + base[4:])
        for path, node in tree.items():
            if path.rpartition(b"/")[2].startswith(b".wh."):
                continue
            old = root.get(path)
            if old is not None and (old.kind != "dir" or node.kind != "dir"):
                _drop(root, path)
            root[path] = node
    return root


def _drop(tree: Tree, path: bytes, *, keep_top: bool = False) -> None:
    prefix = path + b"/" if path else b""
    for p in [p for p in tree if p.startswith(prefix) or (p == path and not keep_top)]:
        del tree[p]


def walk(root: str | Path, cap: int, *, keep: int = 0, limit: int = 200_000,
         before: Callable[[bytes], None] | None = None,
         fine: bool = False) -> Iterator[tuple[bytes, Node]]:
    """Every path under root, files read up to ``cap`` bytes (``fine``: first in small
    O_DIRECT pieces, then buffered, see FINE_PIECE). Directory by directory through
    descriptors (never a path longer than one name, so depth is no limit), with one
    descriptor per level open at a time."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    frames: list[tuple[int, bytes, list[str]]] = []
    count = 0
    try:
        frames.append((top, b"", []))
        dirs = yield from _visit(top, b"", cap, keep, before, fine)
        frames[-1] = (top, b"", dirs)
        while frames:
            fd, rel, todo = frames[-1]
            if not todo:
                os.close(fd)
                frames.pop()
                continue
            name = todo.pop()
            path = (rel + b"/" if rel else b"") + os.fsencode(name)
            count += 1
            if count > limit or len(frames) > 10_000:
                raise _Truncated(f"more than {limit} directories or deeper than 10000")
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                yield path, Node("dir", error=errno.errorcode.get(exc.errno or 0, str(exc)))
                continue
            frames.append((child, path, []))
            dirs = yield from _visit(child, path, cap, keep, before, fine)
            frames[-1] = (child, path, dirs)
    finally:
        for fd, _, _ in frames:
            os.close(fd)


class _Truncated(Exception):
    pass


def _visit(fd: int, rel: bytes, cap: int, keep: int, before: Callable[[bytes], None] | None,
           fine: bool) -> Iterator[tuple[bytes, Node]]:
    """The entries of one directory; returns the names of its subdirectories."""
    dirs: list[str] = []
    try:
        names = sorted(os.listdir(fd), reverse=True)
    except OSError as exc:
        yield rel, Node("dir", error=errno.errorcode.get(exc.errno or 0, str(exc)))
        return dirs
    for name in names:
        path = (rel + b"/" if rel else b"") + os.fsencode(name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            yield path, Node("other", error=errno.errorcode.get(exc.errno or 0, str(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            dirs.append(name)
            yield path, Node("dir")
        elif stat.S_ISLNK(st.st_mode):
            try:
                yield path, Node("symlink", target=os.fsencode(os.readlink(name, dir_fd=fd)))
            except OSError as exc:
                yield path, Node("symlink", error=errno.errorcode.get(exc.errno or 0, ""))
        elif stat.S_ISREG(st.st_mode):
            if before:
                before(path)
            yield path, _read(fd, name, cap, keep, fine)
        else:
            yield path, Node("other")
    return dirs


# Under a mount, a file is first read with O_DIRECT in pieces of this many bytes: each
# pread reaches the server as one request at that offset (the page cache would round it),
# and a prime below 1000 puts a request edge inside every chunk boundary that is off by
# 1,000 bytes or less. Past FINE_SPAN, pieces of 1 MiB.
FINE_PIECE = 997
FINE_SPAN = 512 << 10


def _read(dir_fd: int, name: str, cap: int, keep: int, fine: bool) -> Node:
    node = _read_once(dir_fd, name, cap, keep, direct=fine)
    if fine:  # the page-cache path too, judged on its own: each may serve wrong bytes
        again = _read_once(dir_fd, name, cap, 0, direct=False)
        node.buffered = [again.size, again.sha, again.more, again.error]
    return node


def _read_once(dir_fd: int, name: str, cap: int, keep: int, *, direct: bool) -> Node:
    h = hashlib.sha256()
    kept = bytearray()
    size = 0
    node = Node("file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if direct and exc.errno == errno.EINVAL:  # no O_DIRECT here: buffered only
            return _read_once(dir_fd, name, cap, keep, direct=False)
        node.error = errno.errorcode.get(exc.errno or 0, str(exc))
        return node
    try:
        while size < cap:
            step = FINE_PIECE if direct and size < FINE_SPAN else 1 << 20
            piece = os.pread(fd, min(step, cap - size), size)
            if not piece:
                break
            h.update(piece)
            size += len(piece)
            if size <= keep:
                kept += piece
        node.more = size >= cap and bool(os.pread(fd, 1, size))
    except OSError as exc:
        node.error = errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        os.close(fd)
    node.size, node.sha = size, h.hexdigest()
    node.data = bytes(kept) if keep and size <= keep else None
    return node


def rooted_clean(name: str) -> str:
    """The path a name lands at below the root, ``..`` stopping at the root."""
    return posixpath.normpath("/" + name).lstrip("/")


# --- running a command ---------------------------------------------------------------------


@dataclass
class Run:
    argv: list[str]
    rc: int | None  # None: the harness killed it (timeout, output cap)
    stdout: bytes  # at most the cap asked for
    stdout_total: int
    stderr: str
    seconds: float
    rss_kib: int
    timed_out: bool = False
    capped: bool = False
    memory_killed: bool = False


# Runs the command as its only child and reports that child's peak RSS on the descriptor
# named by its first argument. A child
# cannot be measured from the harness itself: exec folds the old address space's high-water
# mark into ru_maxrss, and a child forked (or vforked) from the harness starts from the
# harness's own, which holds blobs and trees. This launcher is a fresh, small interpreter.
_LAUNCHER = """
import os, sys
report = int(sys.argv[1])
os.set_inheritable(report, False)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(report, b"%d" % usage.ru_maxrss)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_process(argv: list[str], *, env: dict[str, str], timeout: float,
                stdout_cap: int = 1 << 20, kill_at_cap: bool = False,
                nofile: int | None = None, kill_above_mib: int | None = None) -> Run:
    """Run one command in a session of its own, with a timeout, its stdout kept up to a cap
    (and killed past it if asked), and its peak RSS (through :data:`_LAUNCHER`). Past
    ``kill_above_mib`` of RSS it is killed: a failure already, and the machine has other
    commands to run."""
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    start = time.monotonic()
    rss_r, rss_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(rss_w), *argv], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(rss_w,), start_new_session=True,
            preexec_fn=limit_files if nofile else None)
    finally:
        os.close(rss_w)
    out = bytearray()
    total = [0]
    err = bytearray()
    state = {"timed_out": False, "capped": False, "memory_killed": False}

    def kill(why: str) -> None:
        state[why] = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def read_out() -> None:
        assert proc.stdout is not None
        while piece := proc.stdout.read1(1 << 16):
            total[0] += len(piece)
            if len(out) < stdout_cap:
                out.extend(piece[:stdout_cap - len(out)])
            if kill_at_cap and total[0] > stdout_cap and not state["capped"]:
                kill("capped")

    def read_err() -> None:
        assert proc.stderr is not None
        while piece := proc.stderr.read1(1 << 16):
            if len(err) < 1 << 20:
                err.extend(piece)

    seen_kib = [0]

    def watch_memory() -> None:
        assert kill_above_mib is not None
        while proc.poll() is None:
            seen_kib[0] = max(seen_kib[0], _rss_kib(_children(proc.pid)))
            if seen_kib[0] > kill_above_mib << 10:
                kill("memory_killed")
                return
            time.sleep(0.2)

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    if kill_above_mib:
        readers.append(threading.Thread(target=watch_memory, daemon=True))
    for t in readers:
        t.start()
    timer = threading.Timer(timeout, kill, ("timed_out",))
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()
    with os.fdopen(rss_r, "rb") as f:
        rss = f.read()
    for t in readers:
        t.join(5)  # a descendant that kept our pipes open does not hold the harness
    killed = state["timed_out"] or state["capped"] or state["memory_killed"]
    # killed, the launcher reports nothing: what the watchdog saw last stands in
    return Run(argv, None if killed else proc.returncode, bytes(out), total[0],
               err.decode("utf-8", "replace"), time.monotonic() - start,
               int(rss) if rss.isdigit() else seen_kib[0], state["timed_out"],
               state["capped"], state["memory_killed"])


def _children(pid: int) -> list[int]:
    """Every descendant of pid (a background mount's server is the mount command's child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            out += kids
            todo += kids
    return out


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
            total += int(m.group(1)) if m else 0
    return total


def cli_env(case_env: dict[str, str], tmp: Path) -> dict[str, str]:
    """A fixed UTF-8 locale (the case may change it), and TMPDIR inside the sandbox so the
    command's temporary files (a background mount's log) stay with it."""
    drop = {"PYTHONUTF8", "PYTHONIOENCODING", "LC_ALL", "LC_CTYPE", "LANG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(LC_ALL="C.UTF-8", TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    env.update(case_env)
    return env


# --- the sandbox ---------------------------------------------------------------------------


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


def remove_tree(path: Path) -> None:
    """rm -rf: shutil.rmtree recurses once per level, and a case may be 2,000 deep."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


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


# --- judging -------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: str
    klass: str
    command: str
    status: str
    reason: str = ""
    argv: list[str] = field(default_factory=list)
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    rss_mib: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status.upper():7} {self.case} [{self.klass}] {self.command}: {self.reason}"

    def explain(self) -> str:
        rc = self.rc if self.rc is not None else "none, killed by the harness (see above)"
        return (f"{self.line()}\n  argv: {self.argv}\n  exit: {rc}  peak RSS "
                f"{self.rss_mib:.0f} MiB  {self.seconds:.1f} s\n  stderr: "
                f"{_tail(self.stderr, 1500)}\n  stdout: {_tail(self.stdout, 300)}")


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-n:]


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def traceback_summary(stderr: str) -> str | None:
    """``ExcType: message at file:line in function`` for the innermost frame, or None."""
    if "Traceback (most recent call last)" not in stderr:
        return None
    frames = _FRAME.findall(stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    exc = next((ln for ln in reversed(lines) if not ln.startswith((" ", "\t"))), lines[-1])
    if not frames:
        return exc[:300]
    file, line, func = frames[-1]
    with contextlib.suppress(ValueError):
        file = str(Path(file).relative_to(REPO))
    return f"{exc[:300]} at {file}:{line} in {func}"


def judge_exit(run: Run, *, timeout: float, rss_limit_mib: int, must_succeed: bool,
               what: str = "") -> tuple[str, str] | None:
    """FAILED/REFUSED with a reason, or None when the command exited 0 (its output is then
    the caller's to check)."""
    tb = traceback_summary(run.stderr)
    if run.memory_killed:
        return FAILED, (f"unbounded memory: killed past {4 * rss_limit_mib} MiB of RSS "
                        f"(bound {rss_limit_mib} MiB){what}")
    if run.timed_out:
        return FAILED, f"hang: no exit after {timeout:.0f} s{what}"
    if tb:
        return FAILED, f"traceback: {tb}{what}"
    if run.rc is not None and run.rc < 0:
        return FAILED, f"killed by signal {signal.Signals(-run.rc).name}{what}"
    if run.rss_kib > rss_limit_mib << 10:
        return FAILED, f"peak RSS {run.rss_kib >> 10} MiB > {rss_limit_mib} MiB{what}"
    lines = [ln for ln in run.stderr.splitlines()
             if ln.strip() and not ln.startswith("chunked: warning:")]
    if run.rc == 0 or run.capped:
        bad = [ln for ln in lines if ln.startswith("chunked: error:")]
        if bad:
            return FAILED, f"exit 0 but an error line: {bad[0][:200]}{what}"
        return None
    if len(lines) != 1:
        shown = " | ".join(ln[:160] for ln in lines[:4])
        return FAILED, f"exit {run.rc} with {len(lines)} stderr lines: {shown}{what}"
    line = lines[0]
    if not line.startswith("chunked: error:"):
        return FAILED, f"exit {run.rc}, stderr is not 'chunked: error: ...': {line[:200]}{what}"
    if line.startswith("chunked: error: chunked: error:"):
        valid = " (and refused a valid input)" if must_succeed else ""
        return FAILED, f"doubled prefix: {line[:200]}{what}{valid}"
    if must_succeed:
        return FAILED, f"refused a valid input: {line[:200]}{what}"
    return REFUSED, line[:300]


# A layer without a tar-split (the old format) has a TOC nothing checks short of reading the
# whole layer; the issue lets mount and cat serve it as it is, provided they say so. Their
# bytes are then not held to the plain tar (a hang, a traceback or an escape still fail).
UNCHECKED_WARNING = "unchecked against the layer's tar"


def _says_unchecked(run: Run) -> bool:
    return UNCHECKED_WARNING in run.stderr


def compare_served(got: Tree, truth: Tree, members: Tree | None = None) -> list[str]:
    """Files served (cat, mount) must hold the plain tar's bytes; an error is no lie. Under
    a mount each file was read twice (O_DIRECT pieces, then buffered): both are judged.
    Bytes that GNU tar's extraction lacks pass if the stream's last member of that name
    holds them (``members``): GNU tar declines some names a lazy reader may serve."""
    problems = []
    for path, n in sorted(got.items()):
        if n.kind != "file":
            continue
        reads = [("", n.size, n.sha, n.more, n.error)]
        if n.buffered is not None:
            reads = [("O_DIRECT read: ", n.size, n.sha, n.more, n.error),
                     ("buffered read: ", *n.buffered)]
        for how, size, digest, more, error in reads:
            problem = _judge_read(size, digest, more, error, truth.get(path))
            if problem and members and path in members:
                problem = problem if _judge_read(size, digest, more, error, members[path]) \
                    else ""
            if problem:
                problems.append(f"{_show(path)}: {how}{problem}")
                break
    return problems


def _judge_read(size: int, digest: str, more: bool, error: str, want: Node | None) -> str:
    if error and size == 0:
        return ""
    if want is None or want.kind != "file":
        has = "no such path" if want is None else f"a {want.kind}"
        return f"{size} bytes served, the plain tar has {has}"
    if error:
        if want.data is not None and hashlib.sha256(want.data[:size]).hexdigest() != digest:
            return f"wrong bytes in the {size} served before {error}"
        return ""
    if size != want.size or digest != want.sha or more:
        return (f"wrong bytes ({size}{'+' if more else ''} served, sha256 {digest[:12]}; the "
                f"plain tar has {want.size}, {want.sha[:12]})")
    return ""


def compare_trees(got: Tree, truth: Tree) -> list[str]:
    """What pull wrote against GNU tar's extraction: paths, kinds, bytes, symlink targets."""
    problems = []
    for path in sorted(set(got) | set(truth)):
        g, w = got.get(path), truth.get(path)
        shown = _show(path)
        if w is None:
            assert g is not None
            problems.append(f"{shown}: a {g.kind} the plain tar does not have")
        elif g is None:
            problems.append(f"{shown}: the plain tar's {w.kind} is missing")
        elif g.kind != w.kind:
            problems.append(f"{shown}: a {g.kind}, the plain tar has a {w.kind}")
        elif g.kind == "file" and (g.size, g.sha) != (w.size, w.sha):
            problems.append(f"{shown}: wrong bytes ({g.size} bytes, sha256 {g.sha[:12]}; the "
                            f"plain tar has {w.size}, {w.sha[:12]})")
        elif g.kind == "symlink" and g.target != w.target:
            problems.append(f"{shown}: symlink to {g.target!r}, the plain tar's points to "
                            f"{w.target!r}")
    return problems


def _show(path: bytes) -> str:
    text = repr(path)[2:-1]
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


def _problems(found: list[str]) -> str:
    head = "; ".join(found[:3])
    return head + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")


# --- the runner: every command of a case, each in a sandbox of its own ---------------------


@dataclass(frozen=True)
class Limits:
    timeout: float = 60.0  # any command, unless the case says otherwise
    mount_timeout: float = 30.0  # until `chunked mount` returns
    walk_timeout: float = 60.0  # reading everything under a mount
    rss_limit_mib: int = 512  # peak RSS of any command (or mount server)
    cat_paths: int = 6  # paths given to cat per case


class Runner:
    def __init__(self, work: Path, limits: Limits | None = None, jobs: int = 2):
        self.work = work
        self.limits = limits or Limits()
        self.jobs = jobs

    def prepare(self, case: Case) -> CaseDir:
        root = Path(tempfile.mkdtemp(prefix=re.sub(r"[^\w.-]", "_", case.name)[:60] + "-",
                                     dir=self.work))
        return write_case(case, root)

    def run(self, cd: CaseDir, commands: tuple[str, ...] = COMMANDS) -> dict[str, Outcome]:
        """The commands of one case, ``jobs`` at a time (each is mostly a child's CPU)."""
        with cf.ThreadPoolExecutor(self.jobs) as pool:
            futures = {c: pool.submit(self.run_one, cd, c) for c in commands}
        return {c: f.result() for c, f in futures.items()}

    def run_one(self, cd: CaseDir, command: str) -> Outcome:
        sb = Sandbox(cd, cd.root, command)
        try:
            outcome = getattr(self, "_" + command.replace("-", "_"))(cd, sb)
            escaped = sb.escapes()
            if escaped:
                outcome.status = FAILED
                outcome.reason = (f"escape: outside DEST {_problems(escaped)}"
                                  + (f"; {outcome.reason}" if outcome.reason else ""))
            return outcome
        finally:
            sb.close()

    # -- helpers -------------------------------------------------------------------------
    def _timeout(self, cd: CaseDir) -> float:
        return cd.meta.get("timeout") or self.limits.timeout

    def _rss(self, cd: CaseDir) -> int:
        return cd.meta.get("rss_limit_mib") or self.limits.rss_limit_mib

    def _cli(self, cd: CaseDir, sb: Sandbox, args: list[str], *, timeout: float | None = None,
             stdout_cap: int = 1 << 20, kill_at_cap: bool = False) -> Run:
        return run_process([sys.executable, "-m", "chunked.cli", *args],
                           env=cli_env(cd.meta["env"], sb.tmp),
                           timeout=timeout or self._timeout(cd), stdout_cap=stdout_cap,
                           kill_at_cap=kill_at_cap, nofile=cd.meta["nofile"],
                           kill_above_mib=4 * self._rss(cd))

    def _judge(self, cd: CaseDir, command: str, run: Run, *, timeout: float | None = None,
               what: str = "") -> tuple[str, str] | None:
        return judge_exit(run, timeout=timeout or self._timeout(cd), rss_limit_mib=self._rss(cd),
                          must_succeed=command in cd.meta["must_succeed"], what=what)

    @staticmethod
    def _outcome(cd: CaseDir, command: str, run: Run, status: str, reason: str,
                 rss_kib: int | None = None) -> Outcome:
        return Outcome(cd.name, cd.klass, command, status, reason, [str(a) for a in run.argv],
                       run.rc, run.stdout[:4000].decode("utf-8", "replace"), run.stderr[-8000:],
                       (rss_kib if rss_kib is not None else run.rss_kib) / 1024, run.seconds)

    def _simple(self, cd: CaseDir, command: str, run: Run,
                check: Callable[[Run], str | None] | None = None) -> Outcome:
        verdict = self._judge(cd, command, run)
        if verdict is None:
            problem = check(run) if check else None
            verdict = (FAILED, problem) if problem else (OK, "")
        return self._outcome(cd, command, run, *verdict)

    # -- the commands --------------------------------------------------------------------
    def _inspect(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        args = ["inspect", "--descriptor", str(sb.descriptor), "--", str(sb.blob)]
        return self._simple(cd, "inspect", self._cli(cd, sb, args))

    def _inspect_json(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        def check(run: Run) -> str | None:
            if run.stdout_total > len(run.stdout):
                return None  # a TOC bomb's listing: too long to keep, nothing to parse
            try:
                json.loads(run.stdout)
            except ValueError as exc:
                return f"exit 0 but stdout is not JSON: {exc}"
            return None

        args = ["inspect", "--json", "--descriptor", str(sb.descriptor), "--", str(sb.blob)]
        return self._simple(cd, "inspect-json", self._cli(cd, sb, args, stdout_cap=64 << 20),
                            check)

    def _verify(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        def check(run: Run) -> str | None:
            m = re.search(rb"diffID (sha256:[0-9a-f]{64})", run.stdout)
            truth = cd.layer.diff_id
            if m and truth and m.group(1).decode() != truth:
                return (f"exit 0 but diffID {m.group(1).decode()}; the plain decompression "
                        f"is {truth}")
            return None

        args = ["verify", "--descriptor", str(sb.descriptor), "--", str(sb.blob)]
        return self._simple(cd, "verify", self._cli(cd, sb, args), check)

    def _verify_oci(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        return self._simple(cd, "verify-oci", self._cli(cd, sb, ["verify", "-q", "--", sb.ref]))

    def _pull(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        truth = cd.image

        def check(run: Run) -> str | None:
            if truth is None:
                return None
            cap = max((n.size for n in truth.values() if n.kind == "file"), default=0) + 1
            try:
                got = dict(walk(sb.dest, cap))
            except _Truncated as exc:
                return f"pull wrote {exc}"
            found = compare_trees(got, truth)
            return f"wrong tree: {_problems(found)}" if found else None

        args = ["pull", "--no-cache", "-q", "--", sb.ref, str(sb.dest)]
        return self._simple(cd, "pull", self._cli(cd, sb, args), check)

    def cat_paths(self, cd: CaseDir) -> list[str]:
        """The mutated names first, then the plain tar's files, then the TOC's: each path
        once (as it lands), at most ``cat_paths`` of them. A NUL cannot be an argument."""
        names = list(cd.meta["focus"])
        if cd.layer.tree is not None:
            names += [os.fsdecode(p) for p, n in sorted(cd.layer.tree.items()) if n.kind == "file"]
        names += cd.meta["toc_files"]
        seen: set[str] = set()
        out = []
        for name in names:
            key = rooted_clean(name)
            if not key or key in seen or "\0" in name:
                continue
            seen.add(key)
            out.append(name)
            if len(out) == self.limits.cat_paths:
                break
        return out

    def _cat(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        tree = cd.layer.tree
        results: list[tuple[str, str, str, Run]] = []
        for name in self.cat_paths(cd) or ["etc/hello.txt"]:
            key = os.fsencode(rooted_clean(name))
            want = tree.get(key) if tree is not None else None
            cap = want.size + 1 if want is not None and want.kind == "file" else 1 << 16
            args = ["cat", "--descriptor", str(sb.descriptor), "--", str(sb.blob), name]
            run = self._cli(cd, sb, args, stdout_cap=cap, kill_at_cap=True)
            verdict = self._judge(cd, "cat", run, what=f" (cat {_show(os.fsencode(name))})")
            if verdict is None:
                verdict = (OK, "")
                if tree is not None and not _says_unchecked(run):
                    got = Node("file", len(run.stdout), hashlib.sha256(run.stdout).hexdigest(),
                               run.stdout_total > len(run.stdout))
                    found = compare_served({key: got}, tree, cd.layer.members)
                    if found:
                        verdict = (FAILED, f"cat {_show(os.fsencode(name))}: {found[0]}")
            results.append((name, verdict[0], verdict[1], run))
        worst = next(r for s in (FAILED, REFUSED, OK) for r in results if r[1] == s)
        status = worst[1]
        # every failure, but a refusal once: the same message for each path says nothing new
        reasons = [r[2] for r in results if r[1] == status and r[2]]
        reason = "; ".join(reasons if status == FAILED else reasons[:1])
        return self._outcome(cd, "cat", worst[3], status, reason,
                             max(r[3].rss_kib for r in results))

    def _mount(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
            return Outcome(cd.name, cd.klass, "mount", SKIPPED, "no /dev/fuse or fusermount3")
        # a case's own timeout (a bomb's) covers coming up and reading too
        up = max(self.limits.mount_timeout, cd.meta.get("timeout") or 0)
        run = self._cli(cd, sb, ["mount", "--no-cache", "--", sb.ref, str(sb.mnt)], timeout=up)
        m = re.search(rb"\(pid (\d+)", run.stdout)
        pid = int(m.group(1)) if m else None
        try:
            verdict = self._judge(cd, "mount", run, timeout=up,
                                  what=" (the mount never came up)" if run.timed_out else "")
            if verdict is not None:
                status, reason = verdict
                server_tb = _server_traceback(sb)
                if status == REFUSED and server_tb:
                    status, reason = FAILED, f"traceback in the mount server's log: {server_tb}"
                if is_mounted(sb.mnt) and not run.timed_out:
                    status, reason = FAILED, f"mount failed but left a mount behind; {reason}"
                return self._outcome(cd, "mount", run, status, reason)
            if not is_mounted(sb.mnt):
                return self._outcome(cd, "mount", run, FAILED, "exit 0 but nothing is mounted")
            status, reason = self._read_mount(cd, sb, pid, _says_unchecked(run))
            rss = max(run.rss_kib, _vm_hwm_kib(pid))
            if status == OK and rss > self._rss(cd) << 10:
                status, reason = FAILED, (f"peak RSS of the mount server {rss >> 10} MiB > "
                                          f"{self._rss(cd)} MiB")
            um = self._cli(cd, sb, ["umount", str(sb.mnt)], timeout=30)
            if status == OK and um.rc != 0:
                status, reason = FAILED, f"umount fails: {um.stderr.strip()[:200]}"
            elif status == OK and pid and not _wait_gone(pid, 10):
                status, reason = FAILED, "the mount server still runs 10 s after umount"
            server_tb = _server_traceback(sb)
            if status == OK and server_tb:
                status, reason = FAILED, f"traceback in the mount server's log: {server_tb}"
            return self._outcome(cd, "mount", run, status, reason, rss)
        finally:
            _force_unmount(sb.mnt)
            _kill_servers(sb.mnt, pid)

    def _read_mount(self, cd: CaseDir, sb: Sandbox, pid: int | None,
                    unchecked: bool = False) -> tuple[str, str]:
        """Read every file under the mount in a child of its own; compare what was served
        (unless the mount said it serves a TOC it could not check: see _says_unchecked)."""
        truth = cd.image
        cap = (max((n.size for n in truth.values() if n.kind == "file"), default=0) + 1
               if truth is not None else 1 << 20)
        walk_timeout = max(self.limits.walk_timeout, cd.meta.get("timeout") or 0)
        walker = run_process([sys.executable, "-m", "tests.hostile", "walk", str(sb.mnt),
                              str(cap)], env=cli_env({}, sb.tmp), timeout=walk_timeout,
                             stdout_cap=256 << 20)
        got: Tree = {}
        at = b""
        for line in walker.stdout.splitlines():
            doc = json.loads(line)
            if "at" in doc:
                at = bytes.fromhex(doc["at"])
            elif "truncated" in doc:
                return FAILED, f"the mount shows {doc['truncated']} entries (a loop?)"
            elif "fatal" in doc:
                return FAILED, f"the mount cannot be read: {doc['fatal']}"
            else:
                path, node = Node.unwire(doc)
                got[path] = node
        if walker.timed_out:
            return FAILED, (f"hang: reading {_show(at)} under the mount got no answer in "
                            f"{walk_timeout:.0f} s")
        if pid and not _alive(pid):
            return FAILED, "the mount server died while files were read"
        found = compare_served(got, truth, cd.image_members) if truth is not None else []
        if found and not unchecked:
            return FAILED, f"wrong bytes under the mount: {_problems(found)}"
        return OK, ""


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _server_traceback(sb: Sandbox) -> str | None:
    """A traceback in the background server's log (TMPDIR is the sandbox's)."""
    for log in sorted(sb.tmp.glob("chunked-mount-*.log")):
        tb = traceback_summary(log.read_text(errors="replace"))
        if tb:
            return tb
    return None


def _walk_main(root: str, cap: int) -> int:
    """Print every path under root as JSON lines, each file announced before it is read
    (so a hang names its file), for :meth:`Runner._read_mount`: files read with O_DIRECT
    in small pieces, then buffered."""
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one per directory level
    out = sys.stdout

    def announce(path: bytes) -> None:
        out.write(json.dumps({"at": path.hex()}) + "\n")
        out.flush()

    try:
        for path, node in walk(root, cap, before=announce, fine=True):
            out.write(json.dumps(node.wire(path)) + "\n")
    except _Truncated as exc:
        out.write(json.dumps({"truncated": str(exc)}) + "\n")
    except OSError as exc:
        out.write(json.dumps({"fatal": f"{root}: {exc}"}) + "\n")
    out.flush()
    return 0


# --- named cases: one for each problem the held-back corpus found ----------------------------


@dataclass(frozen=True)
class Sizes:
    """Resource bombs: small for the quick test, the issue's sizes for the long run."""

    toc_entries: int  # whiteouts in a TOC (the issue: 4.2 million, 151 MB)
    tarsplit_bytes: int  # a tar-split this long (the issue: 1,000 MiB)
    decompressed_bytes: int  # a gzip/zstd layer that decompresses to this (the issue: 2 GiB)
    bomb_rss_mib: int  # peak RSS allowed on a bomb
    bomb_timeout: float


# A bomb's bound does not grow with its size: memory must not scale with what the attacker
# controls. A command takes about 25 MiB on a small layer; the small sizes are big enough
# that holding the input whole (or twice) passes 128 MiB.
SMALL = Sizes(100_000, 64 << 20, 128 << 20, bomb_rss_mib=128, bomb_timeout=60)
FULL = Sizes(4_200_000, 1000 << 20, 2 << 30, bomb_rss_mib=1024, bomb_timeout=900)

NAMED: dict[str, Callable[[Sizes], Case]] = {}
HELLO_NAME = "etc/hello.txt"
EVERY_COMMAND = frozenset(COMMANDS)


def _named(name: str) -> Callable[[Callable[[Sizes], Case]], Callable[[Sizes], Case]]:
    def register(fn: Callable[[Sizes], Case]) -> Callable[[Sizes], Case]:
        NAMED[name] = fn
        return fn

    return register


def named_case(name: str, sizes: Sizes = SMALL) -> Case:
    case = NAMED[name](sizes)
    case.name = name
    return case


def _mutated(mutate: Callable[[Parts], None], note: str, *, old: bool = False,
             signing: Signing | None = None, focus: tuple[str, ...] = (HELLO_NAME,),
             **kw: Any) -> Case:
    parts = Parts.base(old)
    mutate(parts)
    return Case("", "named", [assemble(parts, signing)], note=note, focus=list(focus), **kw)


def _set(entry_name: str, /, **fields: Any) -> Callable[[Parts], None]:
    def mutate(p: Parts) -> None:
        p.entry(entry_name).update(fields)

    return mutate


def _entries_raw(toc: Any) -> bytes:
    """The TOC's JSON; a raw trick splices bytes into it."""
    return toc_json(toc)


@_named("zeros-chunk-single")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, chunkType="zeros"),
                    "etc/hello.txt (one chunk) marked chunkType zeros, its digest the real one")


@_named("chunk-offset-shifted")
def _(sizes: Sizes) -> Case:
    def mutate(p: Parts) -> None:
        p.file_group("usr/multi.bin")[2]["chunkOffset"] += 1000

    return _mutated(mutate, "the second chunk entry of usr/multi.bin: chunkOffset + 1000",
                    focus=("usr/multi.bin",))


@_named("chunk-offset-first-nonzero")
def _(sizes: Sizes) -> Case:
    def mutate(p: Parts) -> None:
        p.file_group("usr/multi.bin")[0]["chunkOffset"] = 1000

    return _mutated(mutate, "usr/multi.bin's first chunkOffset is 1000, not 0",
                    focus=("usr/multi.bin",))


def _point_hello_at_other(p: Parts) -> None:
    hello, other = p.entry(HELLO_NAME), p.entry("etc/other.txt")
    for key in ("offset", "endOffset", "digest", "size"):
        hello[key] = other[key]


@_named("toc-points-elsewhere-current")
def _(sizes: Sizes) -> Case:
    return _mutated(_point_hello_at_other, "etc/hello.txt's offset, endOffset, digest and size "
                    "are etc/other.txt's: a lie consistent with itself; tar-split untouched")


@_named("toc-points-elsewhere-old")
def _(sizes: Sizes) -> Case:
    return _mutated(_point_hello_at_other, "the same lie in the old format (no tar-split)",
                    old=True)


@_named("toc-points-elsewhere-old-keys")
def _(sizes: Sizes) -> Case:
    def mutate(p: Parts) -> None:
        _point_hello_at_other(p)
        # who writes only the old keys also drops tarSplitDigest, which readers of the
        # old keys never check; the blob still has its tar-split and 64-byte footer
        del p.toc["tarSplitDigest"]

    return _mutated(mutate, "the same lie in a current-format blob whose descriptor has only "
                    "the io.containers.* keys (and a TOC without tarSplitDigest)",
                    signing=Signing(keys=("old",), fix_tarsplit_digest=False))


@_named("uid-gid-2e32")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, uid=1 << 32, gid=1 << 32), "etc/hello.txt: uid, gid 2^32")


@_named("mtime-year-9999")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, modtime="9999-12-31T23:59:59.999999999Z"),
                    "etc/hello.txt: modtime 9999-12-31T23:59:59.999999999Z")


@_named("mtime-year-10000")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, modtime="10000-01-01T00:00:00Z"),
                    "etc/hello.txt: modtime 10000-01-01T00:00:00Z (JSON allows it, RFC 3339 not)")


@_named("mtime-offset-past-9999")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, modtime="9999-12-31T23:59:59-23:59"),
                    "etc/hello.txt: modtime 9999-12-31T23:59:59-23:59, in UTC after year 9999")


@_named("devmajor-2e40")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("dev/null", devMajor=1 << 40), "dev/null: devMajor 2^40", focus=())


_NEST = 100_000


@_named("toc-nested-unknown-key")
def _(sizes: Sizes) -> Case:
    def raw(toc: Any) -> bytes:
        return b'{"deep":' + b"[" * _NEST + b"]" * _NEST + b"," + _entries_raw(toc)[1:]

    return _mutated(lambda p: None, f"TOC JSON nested {_NEST} deep in an unknown key",
                    signing=Signing(toc_raw=raw))


@_named("toc-nested-entry")
def _(sizes: Sizes) -> Case:
    def raw(toc: Any) -> bytes:
        return _entries_raw(toc).replace(b'"entries":[', b'"entries":[' + b"[" * _NEST
                                         + b"]" * _NEST + b",", 1)

    return _mutated(lambda p: None, f"a TOC entry that is a list nested {_NEST} deep",
                    signing=Signing(toc_raw=raw))


@_named("toc-int-5000-digits")
def _(sizes: Sizes) -> Case:
    def raw(toc: Any) -> bytes:
        return b'{"big":' + b"7" * 5000 + b"," + _entries_raw(toc)[1:]

    return _mutated(lambda p: None, "an integer of 5,000 digits in the TOC",
                    signing=Signing(toc_raw=raw))


@_named("toc-entries-ints")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: p.toc.update(entries=[1, 2, 3]), '"entries": [1, 2, 3]')


@_named("toc-entries-object")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: p.toc.update(entries={"type": "reg", "name": HELLO_NAME}),
                    '"entries" is an object')


def _annotation(key: str, value: Any) -> Signing:
    return Signing(annotations=lambda a, info: {**a, key: value})


@_named("position-superscript")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "manifest-position annotation '²:²:²:1'",
                    signing=_annotation(NEW + "manifest-position", "²:²:²:1"))


@_named("position-huge")
def _(sizes: Sizes) -> Case:
    big = 1 << 64 | 1
    return _mutated(lambda p: None, "manifest-position and tarsplit-position of 2^64+1",
                    signing=Signing(annotations=lambda a, info: {
                        **a, NEW + "manifest-position": f"{big}:{big}:{big}:1",
                        NEW + "tarsplit-position": f"{big}:{big}:{big}"}))


@_named("position-5000-digits")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "a manifest-position of a 5,000-digit offset",
                    signing=_annotation(NEW + "manifest-position", "9" * 5000 + ":1:1:1"))


@_named("size-2e63")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, size=1 << 63), "etc/hello.txt: size 2^63")


@_named("zeros-chunk-6gib")
def _(sizes: Sizes) -> Case:
    six = 6 << 30
    return _mutated(_set(HELLO_NAME, size=six, chunkSize=six, chunkType="zeros",
                         digest=ZEROS_6GIB_DIGEST, chunkDigest=ZEROS_6GIB_DIGEST),
                    "etc/hello.txt: one zeros chunk of 6 GiB, size and digests consistent")


@_named("nul-in-name")
def _(sizes: Sizes) -> Case:
    return _mutated(_set(HELLO_NAME, name="etc/hel\0lo.txt"), "a NUL byte in a name")


@_named("nul-in-symlink-target")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("usr/link", linkName="multi\0.bin"), "a NUL byte in a symlink target",
                    focus=())


@_named("nul-in-xattr-name")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("meta.txt", xattrs={"user.foo": b64(b"bar"), "user.a\0b": b64(b"v")}),
                    "a NUL byte in an xattr name", focus=("meta.txt",))


@_named("digest-zzz")
def _(sizes: Sizes) -> Case:
    return _mutated(_set("usr/multi.bin", digest="sha256:" + "z" * 64),
                    "usr/multi.bin (many chunks): digest sha256:zzz...",
                    focus=("usr/multi.bin",))


def _valid(tar: bytes, note: str, **kw: Any) -> Case:
    return Case("", "named", [build(tar)], note=note, **kw)


@_named("deep-path-2000")
def _(sizes: Sizes) -> Case:
    deep = "d/" * 1999 + "f"
    tar = tar_of([(_info(HELLO_NAME), HELLO), (_info(deep), b"deep\n")])
    return _valid(tar, "a valid layer with a 2,000-level-deep path (its parents implicit)",
                  focus=[deep], must_succeed=EVERY_COMMAND)


def _descriptor_hook(hook: Callable[[dict[str, Any]], None]) -> Signing:
    def apply(desc: dict[str, Any]) -> Any:
        hook(desc)
        return desc

    return Signing(descriptor=apply)


@_named("annotation-value-number")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the manifest-checksum annotation is the number 12345",
                    signing=_annotation(NEW + "manifest-checksum", 12345))


@_named("annotation-value-object")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the manifest-position annotation is an object",
                    signing=_annotation(NEW + "manifest-position", {"offset": 1}))


@_named("layer-annotations-string")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the layer's annotations are a string",
                    signing=_descriptor_hook(lambda d: d.update(annotations=NEW)))


@_named("layer-size-string")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the layer descriptor's size is a string",
                    signing=_descriptor_hook(lambda d: d.update(size=str(d["size"]))))


@_named("layer-digest-number")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "the layer descriptor's digest is a number",
                    signing=_descriptor_hook(lambda d: d.update(digest=12345)))


@_named("manifest-layers-string")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the manifest's layers is a string")
    case.manifest_hook = lambda m: {**m, "layers": "sha256:" + "0" * 64}
    return case


@_named("manifest-config-string")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the manifest's config is a string")
    case.manifest_hook = lambda m: {**m, "config": m["config"]["digest"]}
    return case


@_named("config-diff-ids-not-list")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the config's rootfs.diff_ids is an object")

    def hook(c: dict[str, Any]) -> Any:
        c["rootfs"]["diff_ids"] = {"0": c["rootfs"]["diff_ids"][0]}
        return c

    case.config_hook = hook
    return case


@_named("config-not-object")
def _(sizes: Sizes) -> Case:
    case = _mutated(lambda p: None, "the config is a JSON list")
    case.config_hook = lambda c: [c]
    return case


@_named("gzip-and-zstd-layers")
def _(sizes: Sizes) -> Case:
    from tests.layers import LOWER, UPPER, make_tar

    return Case("", "named", [plain_layer(make_tar(LOWER), "gzip"),
                              plain_layer(make_tar(UPPER), "zstd")],
                note="a valid image of one gzip and one plain zstd layer (no chunked "
                     "annotations); inspect/verify/cat get the gzip blob",
                must_succeed=frozenset({"verify-oci", "pull", "mount"}))


def _non_utf8(ascii_only: bool, env: dict[str, str] | None = None) -> Case:
    bad = "usr/bad\udcffname"
    tar = tar_of([(_info(HELLO_NAME), HELLO), (_info(bad), b"bad name\n")], tarfile.GNU_FORMAT)
    with _names_unchecked():
        layer = build(tar)
    parts = Parts.of(layer.blob)
    for e in parts.entries:
        if "\ufffd" in e["name"]:  # what the builder's Go-style JSON made of the byte
            e["name"] = bad
    how = "escaped as \\udcff" if ascii_only else "as a raw 0xff byte"
    env = env or {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "0"}
    return Case("", "named", [assemble(parts, Signing(toc_ascii=ascii_only))], env=env,
                focus=[bad], note=f"a name with the non-UTF-8 byte 0xff, {how} in the TOC (tar "
                "and tar-split agree); run with " + " ".join(f"{k}={v}" for k, v in env.items()))


@_named("non-utf8-name-raw")
def _(sizes: Sizes) -> Case:
    return _non_utf8(False)


@_named("non-utf8-name-escaped")
def _(sizes: Sizes) -> Case:
    return _non_utf8(True)


@_named("non-utf8-name-strict-stdout")
def _(sizes: Sizes) -> Case:
    # Python 3.11 writes stdout with surrogateescape under C.UTF-8 (a locale-coercion
    # target), so the byte above prints; under a UTF-8 locale that is not one (en_US.UTF-8)
    # stdout is strict. PYTHONIOENCODING gives that here, where only C.UTF-8 is installed.
    return _non_utf8(False, {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "0",
                             "PYTHONIOENCODING": "utf-8:strict"})


@_named("root-dot-file")
def _(sizes: Sizes) -> Case:
    tar = tar_of([(_info("."), b"dot\n"), (_info(HELLO_NAME), HELLO)])
    return _valid(tar, "a regular file named '.': the root is a file", focus=["."])


@_named("root-empty-name-file")
def _(sizes: Sizes) -> Case:
    tar = tar_of([(_info(""), b"root\n"), (_info(HELLO_NAME), HELLO)], tarfile.GNU_FORMAT)
    return _valid(tar, "a regular file named '': the root is a file", focus=[""])


@_named("dirs-1500-nofile-1024")
def _(sizes: Sizes) -> Case:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for i in range(1500):
        members.append((_info(f"d{i:04d}", tarfile.DIRTYPE, mode=0o755), None))
        members.append((_info(f"d{i:04d}/f"), b"%d\n" % i))
    return _valid(tar_of(members), "a valid image of 1,500 directories, each command under "
                  "RLIMIT_NOFILE 1024", nofile=1024,
                  must_succeed=frozenset({"pull", "mount", "verify", "verify-oci"}))


@_named("dangling-hardlink")
def _(sizes: Sizes) -> Case:
    tar = tar_of([(_info(HELLO_NAME), HELLO),
                  (_info("etc/dangling", tarfile.LNKTYPE, linkname="nowhere/missing"), None)])
    return _valid(tar, "a hard link to a name the layer does not have; mount must still come "
                  "up (that file missing or EIO)", focus=["etc/dangling"],
                  must_succeed=frozenset({"mount"}))


@_named("mount-fails-bad-toc")
def _(sizes: Sizes) -> Case:
    return _mutated(lambda p: None, "a TOC that is not JSON: every command refuses, and a "
                    "failing mount must not print 'chunked: error: chunked: error:'",
                    signing=Signing(toc_raw=lambda toc: b"{this TOC is not JSON"))


@_named("bomb-toc-whiteouts")
def _(sizes: Sizes) -> Case:
    n = sizes.toc_entries

    def raw(toc: Any) -> bytes:
        # whiteouts of names no layer below has: every one is legal, and costs a reader
        fill = b"".join([b'{"type":"reg","name":".wh.%07d"},' % i for i in range(n)])
        return _entries_raw(toc).replace(b'"entries":[', b'"entries":[' + fill, 1)

    return _mutated(lambda p: None, f"a TOC of {n:,} extra whiteout entries (the issue: 4.2 "
                    "million, 151 MB, inside the 150 MiB limit)", signing=Signing(toc_raw=raw),
                    rss_limit_mib=sizes.bomb_rss_mib, timeout=sizes.bomb_timeout)


@_named("bomb-tarsplit")
def _(sizes: Sizes) -> Case:
    # bytes after the end-of-archive blocks go to the tar-split in 1 MiB segments, base64
    padding = sizes.tarsplit_bytes * 3 // 4 // 512 * 512
    return _valid(base_tar() + bytes(padding),
                  f"a valid layer whose tar-split is ~{sizes.tarsplit_bytes >> 20} MiB (zero "
                  "padding after the tar; the issue: 1,000 MiB, inside the 1 GiB limit)",
                  rss_limit_mib=sizes.bomb_rss_mib, timeout=sizes.bomb_timeout)


@_named("bomb-tarsplit-lines")
def _(sizes: Sizes) -> Case:
    payload = b64(bytes(768))
    n = sizes.tarsplit_bytes // (len(payload) + 40)

    def mutate(p: Parts) -> None:
        # segments the data frames do not hold, before the end-of-archive blocks: a lie
        # every verifier must refuse, which it can see only by reading (or streaming) them
        lines = p.ts_lines()
        fill = [b'{"type":2,"payload":"%s","position":%d}' % (payload.encode(), i)
                for i in range(n)]
        p.set_ts_lines(lines[:-1] + fill + lines[-1:])

    return _mutated(mutate, f"{n:,} extra tar-split segment lines (~"
                    f"{sizes.tarsplit_bytes >> 20} MiB), re-signed: a lie the data does not "
                    "back", focus=(), rss_limit_mib=sizes.bomb_rss_mib,
                    timeout=sizes.bomb_timeout)


def _bomb(kind: str, total: int) -> LayerBlob:
    """A valid tar padded with zeros to ``total`` bytes, compressed as a stream."""
    tar = base_tar()
    c: Any = (zlib.compressobj(9, zlib.DEFLATED, 31) if kind == "gzip" else
              zstandard.ZstdCompressor(level=19).compressobj())
    out = [c.compress(tar)]
    left = total - len(tar)
    zeros = bytes(16 << 20)
    while left > 0:
        out.append(c.compress(zeros[:min(left, len(zeros))]))
        left -= len(zeros)
    out.append(c.flush())
    blob = b"".join(out)
    media = GZIP_MEDIA if kind == "gzip" else ZSTD_MEDIA
    return LayerBlob(blob, {"mediaType": media, "digest": sha(blob), "size": len(blob)}, kind)


@_named("bomb-gzip")
def _(sizes: Sizes) -> Case:
    layer = _bomb("gzip", sizes.decompressed_bytes)
    return Case("", "named", [layer], rss_limit_mib=sizes.bomb_rss_mib,
                timeout=sizes.bomb_timeout,
                note=f"a gzip layer of {len(layer.blob):,} bytes that decompresses to "
                     f"{sizes.decompressed_bytes >> 20} MiB, no chunked annotations")


@_named("bomb-zstd")
def _(sizes: Sizes) -> Case:
    layer = _bomb("zstd", sizes.decompressed_bytes)
    return Case("", "named", [layer], rss_limit_mib=sizes.bomb_rss_mib,
                timeout=sizes.bomb_timeout,
                note=f"a plain zstd layer of {len(layer.blob):,} bytes that decompresses to "
                     f"{sizes.decompressed_bytes >> 20} MiB, no chunked annotations")


BOMBS = ("bomb-toc-whiteouts", "bomb-tarsplit", "bomb-tarsplit-lines", "bomb-gzip",
         "bomb-zstd")


# --- random classes: seeded, reproducible by (seed, index) ---------------------------------

TOC_KEYS = ("type", "name", "linkName", "mode", "size", "uid", "gid", "modtime", "accesstime",
            "changetime", "devMajor", "devMinor", "xattrs", "digest", "offset", "endOffset",
            "chunkSize", "chunkOffset", "chunkDigest", "chunkType")
VALUES: list[Any] = [None, True, False, 0, -1, 1, 1 << 31, 1 << 32, 1 << 63, 1 << 64, -(1 << 63),
                     1.5, 1e308, "", "x", "0", "sha256:", "../x", [], [1], ["a"], {}, {"a": 1}]
ODD_NAMES = ["..", "../x", "../../canary.txt", "/tmp/chunked-hostile-canary/abs", "/",
             "./etc/hello.txt", "etc//hello.txt", "etc/hello.txt/", "etc/./hello.txt",
             "etc/../etc/other.txt", "x" * 300, "deep/" * 300 + "f", "ctl\x01\x1b[31mred",
             "new\nline", "tab\there", " ", ".", "", "//", "usr/link/beneath",
             "dev/null/beneath", "etc/hello.txt/x", "\u202eevil.txt", "n" * 5000,
             ".wh..wh..opq", ".wh.etc", "etc/.wh.hello.txt"]
SYMLINK_OUT = ["../../canary.txt", "../canary", "/tmp/chunked-hostile-canary", "/etc/passwd",
               "../" * 20 + "etc/passwd", "..", "../canary/secret.txt"]
HARDLINK_OUT = ["../canary.txt", "../../canary.txt", "/tmp/chunked-hostile-canary/x",
                "/etc/passwd", "../canary/secret.txt", "../" * 20 + "etc/passwd"]
MTIME = "2023-11-14T22:13:20Z"


def _dicts(p: Parts) -> list[dict[str, Any]]:
    return [e for e in p.entries if isinstance(e, dict)]


def _nm(e: Any) -> str:
    text = repr(e.get("name") if isinstance(e, dict) else e)
    return text if len(text) <= 60 else text[:57] + "..."


def _val(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _other_type(rng: random.Random, old: Any) -> Any:
    return rng.choice([v for v in VALUES if type(v) is not type(old)])


def _focus(*names: Any) -> list[str]:
    return [n for n in names if isinstance(n, str)]


def _case(klass: str, name: str, parts: Parts, signing: Signing | None, note: str,
          focus: list[str]) -> Case:
    return Case(name, klass, [assemble(parts, signing)], note=note, focus=focus)


def rc_type_confusion(rng: random.Random, name: str) -> Case:
    """Any TOC field (or entry, top-level key, tar-split field, annotation) replaced by a
    value of another JSON type."""
    p = Parts.base(old=rng.random() < 0.2)
    s = Signing()
    where = rng.choice(["field", "field", "field", "top", "entry", "tarsplit", "annotation"])
    if where == "tarsplit" and p.tarsplit is None:
        where = "field"
    focus: list[str] = []
    if where == "field":
        e = rng.choice(_dicts(p))
        key = rng.choice(sorted(set(e) | set(TOC_KEYS)))
        focus = _focus(e.get("name"))
        e[key] = _other_type(rng, e.get(key))
        note = f"entry {focus[0] if focus else '?'!r}: {key} = {_val(e[key])}"
    elif where == "top":
        key = rng.choice(["version", "entries", "tarSplitDigest"])
        p.toc[key] = _other_type(rng, p.toc.get(key))
        s.fix_tarsplit_digest = key != "tarSplitDigest"
        note = f"TOC {key} = {_val(p.toc[key])}"
    elif where == "entry":
        i = rng.randrange(len(p.entries))
        old = p.entries[i]
        p.entries[i] = rng.choice([None, 1, HELLO_NAME, [], [old], True, 1.5])
        note = f"TOC entry {i} ({_nm(old)}) = {_val(p.entries[i])}"
    elif where == "tarsplit":
        lines = p.ts_lines()
        i = rng.randrange(len(lines))
        doc = json.loads(lines[i])
        key = rng.choice(sorted(set(doc) | {"type", "payload", "position", "name", "size"}))
        doc[key] = _other_type(rng, doc.get(key))
        lines[i] = json.dumps(doc).encode()
        p.set_ts_lines(lines)
        note = f"tar-split line {i}: {key} = {_val(doc[key])}"
    else:
        key = rng.choice([NEW + "manifest-checksum", NEW + "manifest-position",
                          NEW + "tarsplit-position", OLD + "manifest-checksum",
                          OLD + "manifest-position"])
        if p.old:
            key = OLD + key.rpartition(".")[2]
        value = _other_type(rng, "")
        s.annotations = lambda a, info: {**a, key: value}
        note = f"annotation {key} = {_val(value)}"
    return _case("type-confusion", name, p, s, note, focus + [HELLO_NAME])


def rc_lying_offsets(rng: random.Random, name: str) -> Case:
    """offset, endOffset, size, chunkSize or chunkOffset of a file or chunk changed."""
    p = Parts.base(old=rng.random() < 0.2)
    payload = [e for e in _dicts(p) if "offset" in e]
    e = rng.choice(payload)
    key = rng.choice(["offset", "endOffset", "size", "chunkSize", "chunkOffset"]
                     if e["type"] == "reg" else ["offset", "chunkSize", "chunkOffset"])
    before = e.get(key, 0)
    op = rng.choice(["+1", "-1", "+1000", "-1000", "zero", "2^63", "2^64-1", "negative",
                     "into-toc", "swap", "other-entry", "shift-boundary"])
    if op == "shift-boundary":
        group = p.file_group(e["name"]) if e["type"] == "reg" else []
        if len(group) < 2:  # a boundary needs two chunks
            group = p.file_group(rng.choice(["usr/multi.bin", "usr/holes.bin"]))
        i = rng.randrange(len(group) - 1)
        d = rng.choice([1, -1, 100, -100, 4096])
        group[i]["chunkSize"] += d
        group[i + 1]["chunkSize"] -= d
        group[i + 1]["chunkOffset"] += d
        note = f"{group[0]['name']}: chunk boundary {i}/{i + 1} moved by {d}, sizes consistent"
        return _case("lying-offsets", name, p, None, note, [group[0]["name"]])
    if op == "swap" and "endOffset" in e:
        e["offset"], e["endOffset"] = e["endOffset"], e["offset"]
        note = f"{_nm(e)} ({e['type']}): offset and endOffset swapped"
        return _case("lying-offsets", name, p, None, note, _focus(e["name"]))
    others = [o for o in payload if o is not e and key in o] or [e]
    after = {"+1": before + 1, "-1": before - 1, "+1000": before + 1000,
             "-1000": before - 1000, "zero": 0, "2^63": 1 << 63, "2^64-1": U64,
             "negative": -max(before, 1), "into-toc": len(p.data) + 8,
             "swap": rng.choice(others).get(key, 0),
             "other-entry": rng.choice(others).get(key, 0)}[op]
    e[key] = after
    note = f"{_nm(e)} ({e['type']}): {key} {before} -> {after} ({op})"
    return _case("lying-offsets", name, p, None, note, _focus(e["name"]))


def rc_odd_names_digests(rng: random.Random, name: str) -> Case:
    """Names that are '..', absolute, './', '//', trailing '/', very long, control
    characters; digests that are malformed, of another algorithm or of something else."""
    p = Parts.base(old=rng.random() < 0.2)
    op = rng.choice(["rename", "rename", "add", "digest", "chunkDigest"])
    if op in ("rename", "add"):
        odd = rng.choice(ODD_NAMES)
        if op == "add":
            source = rng.choice([HELLO_NAME, "etc/other.txt"])
            e = dict(p.entry(source))
            e["name"] = odd
            p.entries.insert(rng.randrange(len(p.entries) + 1), e)
            note = f"an extra entry {odd!r} with {source}'s data"[:200]
        else:
            e = rng.choice(_dicts(p))
            old = e.get("name")
            for c in p.entries:  # its chunk entries follow the rename, or not
                if isinstance(c, dict) and c.get("name") == old and (c is e or rng.random() < .5):
                    c["name"] = odd
            note = f"{old!r} renamed {odd!r}"[:200]
        return _case("odd-names-digests", name, p, None, note, [odd, HELLO_NAME])
    key = op
    e = rng.choice([x for x in _dicts(p) if key in x])
    real = e[key]
    hexd = real.partition(":")[2]
    odd = rng.choice(["sha256:" + "Z" * 64, "sha256:" + "0" * 64, "SHA256:" + hexd,
                      "sha256:" + hexd.upper(), "sha512:" + "0" * 128, "", "sha256:",
                      "sha256:" + hexd[:63], "sha256:" + hexd + "\n", "md5:" + "0" * 32,
                      "sha256:" + hashlib.sha256(b"").hexdigest(), "sha256:" + hexd + hexd,
                      rng.choice([x.get(key, "") for x in _dicts(p)])])
    e[key] = odd
    note = f"{_nm(e)} ({e['type']}): {key} = {odd!r}"[:200]
    return _case("odd-names-digests", name, p, None, note, _focus(e["name"]))


def _reg_copy(p: Parts, new_name: str) -> dict[str, Any]:
    e = dict(p.entry(HELLO_NAME))
    e["name"] = new_name
    return e


def _link(name: str, kind: str, target: str) -> dict[str, Any]:
    return {"type": kind, "name": name, "linkName": target,
            "mode": 0o777 if kind == "symlink" else 0o644, "modtime": MTIME}


def rc_link_tricks(rng: random.Random, name: str) -> Case:
    """Symlinks and hard links out of the tree, loops, chains, links to directories, files
    beneath symlinks: in the TOC only, or (the last tricks) in the tar itself."""
    tricks = ["sym-out", "file-beneath-escape", "file-beneath-symlink", "hard-out",
              "hard-loop", "hard-self", "hard-chain", "hard-to-odd", "sym-loop",
              "dir-is-symlink", "tar:sym-escape", "tar:sym-abs", "tar:hard-out",
              "tar:hard-loop", "tar:dir-then-symlink", "tar:hard-to-dir"]
    trick = rng.choice(tricks)
    if trick.startswith("tar:"):
        return _tar_link_trick(rng, name, trick)
    p = Parts.base(old=rng.random() < 0.2)
    focus = [HELLO_NAME]
    if trick == "sym-out":
        target = rng.choice(SYMLINK_OUT)
        p.entry("usr/link")["linkName"] = target
        note = f"usr/link -> {target!r}"
    elif trick == "file-beneath-escape":
        target = rng.choice(SYMLINK_OUT)
        p.entries.extend([_link("esc", "symlink", target), _reg_copy(p, "esc/secret.txt")])
        note, focus = f"symlink esc -> {target!r}, then a file esc/secret.txt", ["esc/secret.txt"]
    elif trick == "file-beneath-symlink":
        p.entries.append(_reg_copy(p, "usr/link/x"))
        note, focus = "a file usr/link/x beneath the symlink usr/link", ["usr/link/x"]
    elif trick == "hard-out":
        target = rng.choice(HARDLINK_OUT)
        p.entry("usr/hard")["linkName"] = target
        note, focus = f"hard link usr/hard -> {target!r}", ["usr/hard"]
    elif trick == "hard-loop":
        p.entry("usr/hard")["linkName"] = "usr/hard2"
        p.entries.append(_link("usr/hard2", "hardlink", "usr/hard"))
        note, focus = "hard links usr/hard -> usr/hard2 -> usr/hard", ["usr/hard", "usr/hard2"]
    elif trick == "hard-self":
        p.entry("usr/hard")["linkName"] = "usr/hard"
        note, focus = "hard link usr/hard -> itself", ["usr/hard"]
    elif trick == "hard-chain":
        n = rng.choice([70, 200])
        p.entries.extend(_link(f"h{i:03d}", "hardlink", f"h{i - 1:03d}" if i else HELLO_NAME)
                         for i in range(n))
        note, focus = f"a chain of {n} hard links to etc/hello.txt", [f"h{n - 1:03d}"]
    elif trick == "hard-to-odd":
        target = rng.choice(["etc", "usr/link", "dev/null", "dev/fifo", ".wh.gone", "", ".",
                             "/", "etc/"])
        p.entry("usr/hard")["linkName"] = target
        note, focus = f"hard link usr/hard -> {target!r}", ["usr/hard"]
    elif trick == "sym-loop":
        p.entry("usr/link")["linkName"] = "link"
        p.entries.extend([_link("usr/a", "symlink", "b"), _link("usr/b", "symlink", "a")])
        note = "symlink loops: usr/link -> link, usr/a -> b -> a"
    else:
        etc = p.entry("etc", "dir") if any(e.get("name") == "etc" for e in _dicts(p)) else \
            p.entry("etc/", "dir")
        target = rng.choice(SYMLINK_OUT)
        etc.update(type="symlink", linkName=target)
        note = f"the directory etc is a symlink -> {target!r}, its files still listed"
    return _case("link-tricks", name, p, None, note, focus)


def _tar_link_trick(rng: random.Random, name: str, trick: str) -> Case:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_info(HELLO_NAME), HELLO)]
    sym, hard, d = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE
    if trick == "tar:sym-escape":
        target = rng.choice(["../canary", "../../", ".."])
        members += [(_info("esc", sym, linkname=target), None),
                    (_info("esc/secret.txt"), b"pwned\n")]
    elif trick == "tar:sym-abs":
        target = str(ABS_CANARY)
        members += [(_info("esc", sym, linkname=target), None), (_info("esc/pwned"), b"pwn\n")]
    elif trick == "tar:hard-out":
        target = rng.choice(HARDLINK_OUT)
        members += [(_info("h", hard, linkname=target), None)]
    elif trick == "tar:hard-loop":
        target = "b"
        members += [(_info("a", hard, linkname="b"), None), (_info("b", hard, linkname="a"), None)]
    elif trick == "tar:dir-then-symlink":
        target = rng.choice(["../canary", str(ABS_CANARY)])
        members = [(_info("etc", sym, linkname=target), None), (_info(HELLO_NAME), HELLO)]
    else:
        target = "etc"
        members += [(_info("d", d), None), (_info("h", hard, linkname="etc"), None)]
    old = rng.random() < 0.3
    layer = build(tar_of(members), old=old)
    note = f"in the tar itself ({'old' if old else 'current'} format): {trick[4:]} -> {target!r}"
    return Case(name, "link-tricks", [layer], note=note,
                focus=[ti.name for ti, _ in members if ti.type != d])


def _pos_fields(text: str) -> list[str]:
    return text.split(":")


def rc_footer_annotation_lies(rng: random.Random, name: str) -> Case:
    """Positions off by one, outside the blob, lengths swapped, wrong magic, a checksum of
    something else, keys missing or disagreeing; in the annotations, the footer or both."""
    p = Parts.base(old=rng.random() < 0.2)
    pre = OLD if p.old else NEW
    pos_key, ts_key, sum_key = pre + "manifest-position", NEW + "tarsplit-position", \
        pre + "manifest-checksum"
    op = rng.choice(["off-by-one", "outside", "swap-lengths", "toc-at-tarsplit",
                     "checksum-other", "manifest-type", "garbage", "drop-tarsplit-position",
                     "footer-no-annotations", "footer-only", "keys-disagree", "old-keys-only",
                     "toc-frame", "footer-bytes"])
    s = Signing()
    if op == "toc-frame":
        how = rng.choice(["uncompressed", "truncated", "garbage", "two-frames"])
        # the checksum is signed over whatever the frame holds: only the content lies
        s.toc_frame = {"uncompressed": unzstd, "truncated": lambda z: z[:len(z) // 2],
                       "garbage": lambda z: z[:4] + bytes(reversed(z[4:])),
                       "two-frames": lambda z: z + zstd(b"{}")}[how]
        note = f"the TOC frame holds the TOC {how} (checksum and positions signed over it)"
        return _case("footer-annotation-lies", name, p, s, note, [HELLO_NAME])
    if op == "footer-bytes":
        how = rng.choice(["truncated", "extended", "zeros", "other-magic"])
        s.footer_bytes = {"truncated": lambda b: b[1:], "extended": lambda b: bytes(16) + b,
                          "zeros": lambda b: bytes(len(b)),
                          "other-magic": lambda b: b[:-8] + (MAGIC_OLD if b.endswith(
                              MAGIC_CURRENT) else MAGIC_CURRENT)}[how]
        keep = rng.random() < 0.5
        if not keep:
            s.annotations = lambda a, info: {}
        note = f"footer payload {how}, {'true' if keep else 'no'} annotations"
        return _case("footer-annotation-lies", name, p, s, note, [HELLO_NAME])
    if op == "off-by-one":
        key = rng.choice([pos_key, ts_key] if not p.old else [pos_key])
        idx, d = rng.randrange(3), rng.choice([1, -1])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            f = _pos_fields(a[key])
            f[idx] = str(int(f[idx]) + d)
            return {**a, key: ":".join(f)}
        s.annotations, note = hook, f"{key}: field {idx} {d:+d}"
    elif op == "outside":
        key, extra = rng.choice([pos_key, ts_key] if not p.old else [pos_key]), \
            rng.choice([0, 1, 100, 1 << 40])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            f = _pos_fields(a[key])
            f[0] = str(info.size + extra)
            return {**a, key: ":".join(f)}
        s.annotations, note = hook, f"{key}: offset = blob size + {extra}"
    elif op == "swap-lengths" and not p.old:
        in_footer = rng.random() < 0.5

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            t, ts = _pos_fields(a[pos_key]), _pos_fields(a[ts_key])
            t[1], ts[1] = ts[1], t[1]
            return {**a, pos_key: ":".join(t), ts_key: ":".join(ts)}

        def fhook(f: Footer, info: Assembly) -> None:
            assert f.tarsplit is not None
            f.toc.length, f.tarsplit.length = f.tarsplit.length, f.toc.length
        if in_footer:
            s.annotations, s.footer = (lambda a, info: {}), fhook
        else:
            s.annotations = hook
        note = f"TOC and tar-split lengths swapped ({'footer' if in_footer else 'annotations'})"
    elif op == "toc-at-tarsplit" and not p.old:
        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            assert info.ts_pos is not None and info.ts_z is not None
            return {**a, pos_key: info.ts_pos.text(), sum_key: sha(info.ts_z),
                    OLD + "manifest-position": info.ts_pos.text(),
                    OLD + "manifest-checksum": sha(info.ts_z)}
        s.annotations, note = hook, "manifest-position and -checksum describe the tar-split"
    elif op == "checksum-other":
        pick = rng.choice(["empty", "tarsplit", "zeros", "upper", "sha512", "data"])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            real = sha(info.toc_z)
            value = {"empty": sha(b""), "tarsplit": sha(info.ts_z or b""),
                     "zeros": "sha256:" + "0" * 64, "upper": "sha256:" + real[7:].upper(),
                     "sha512": "sha512:" + hashlib.sha512(info.toc_z).hexdigest(),
                     "data": sha(p.data)}[pick]
            return {**a, sum_key: value}
        s.annotations, note = hook, f"{sum_key} is the checksum of {pick}"
    elif op == "manifest-type":
        t = rng.choice([0, 2, 99, 1 << 64])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            f = _pos_fields(a[pos_key])
            f[3] = str(t)
            return {**a, pos_key: ":".join(f)}
        s.annotations, note = hook, f"{pos_key}: manifest type {t}"
    elif op == "garbage":
        how = rng.choice(["three", "five", "negative", "space", "newline", "hex", "plus",
                          "empty", "colons", "arabic-digits", "fullwidth"])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            real = a[pos_key]
            f = _pos_fields(real)
            value = {"three": ":".join(f[:3]), "five": real + ":7", "negative": "-" + real,
                     "space": " " + real, "newline": real + "\n", "hex": "0x" + real,
                     "plus": "+" + real, "empty": "", "colons": ":::",
                     "arabic-digits": real.translate(str.maketrans("0123456789",
                                                                   "٠١٢٣٤٥٦٧٨٩")),
                     "fullwidth": real.translate(str.maketrans("0123456789",
                                                               "０１２３４５６７８９"))}[how]
            return {**a, pos_key: value}
        s.annotations, note = hook, f"{pos_key} written {how}"
    elif op == "drop-tarsplit-position" and not p.old:
        s.annotations = lambda a, info: {k: v for k, v in a.items() if k != ts_key}
        note = "no tarsplit-position annotation (the TOC has tarSplitDigest)"
    elif op in ("footer-no-annotations", "footer-only"):
        how = rng.choice(["off-by-one", "outside", "magic", "type", "no-tarsplit", "swap"])
        if p.old and how in ("no-tarsplit", "swap"):
            how = "magic"

        def fhook(f: Footer, info: Assembly) -> None:
            if how == "off-by-one":
                f.toc.offset += rng.choice([1, -1])
            elif how == "outside":
                f.toc.offset = info.size + 10
            elif how == "magic":
                f.magic = b"GNUlInUX"
            elif how == "type":
                f.manifest_type = 2
            elif how == "no-tarsplit":
                f.tarsplit = None
            else:
                assert f.tarsplit is not None
                f.toc, f.tarsplit = f.tarsplit, f.toc
        s.footer = fhook
        if op == "footer-no-annotations":
            s.annotations = lambda a, info: {}
        note = f"footer lie ({how}), {'no' if op == 'footer-no-annotations' else 'true'} " \
               "annotations"
    elif op == "keys-disagree" and not p.old:
        good_new = rng.random() < 0.5

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            key = OLD + "manifest-position" if good_new else pos_key
            f = _pos_fields(a[key])
            f[0] = str(int(f[0]) + 1)
            return {**a, key: ":".join(f)}
        s.annotations = hook
        note = f"{'old' if good_new else 'new'} keys point one byte off, the others are right"
    else:
        s.keys = ("old",)
        note = "only the io.containers.* keys (current-format blob)"
    return _case("footer-annotation-lies", name, p, s, note, [HELLO_NAME])


def _tar_checksum(hdr: bytearray) -> None:
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)


def _poke_header(rng: random.Random, hdr: bytearray) -> str:
    field_name = rng.choice(["mode", "uid", "gid", "size", "name", "mtime", "typeflag",
                             "linkname"])
    if field_name == "mode":
        hdr[100:108] = b"%07o\0" % rng.choice([0o4777, 0o000, 0o7777, 0o640])
    elif field_name in ("uid", "gid"):
        at = 108 if field_name == "uid" else 116
        hdr[at:at + 8] = b"%07o\0" % rng.choice([1, 1000, 0o7777777])
    elif field_name == "size":
        size = int(hdr[124:136].strip(b" \0") or b"0", 8)
        hdr[124:136] = b"%011o\0" % max(0, size + rng.choice([1, -1, 512, 1 << 20]))
    elif field_name == "name":
        new = rng.choice([b"renamed.txt", b"../escape", b"etc/other.txt", b"/abs"])
        hdr[0:100] = new.ljust(100, b"\0")
    elif field_name == "mtime":
        hdr[136:148] = b"%011o\0" % rng.randrange(1 << 33)
    elif field_name == "typeflag":
        hdr[156:157] = rng.choice([b"0", b"1", b"2", b"5", b"6", b"7"])
    else:
        hdr[157:257] = b"../../canary.txt".ljust(100, b"\0")
    _tar_checksum(hdr)
    return field_name


def rc_tarsplit_lies(rng: random.Random, name: str) -> Case:
    """The tar-split changed, its digest re-signed into the TOC: a header field, a CRC, a
    name or size, lines dropped, duplicated, reordered or garbage."""
    p = Parts.base()
    lines = p.ts_lines()
    docs = [json.loads(line) for line in lines]
    files = [i for i, d in enumerate(docs) if d["type"] == 1 and i and docs[i - 1]["type"] == 2]
    op = rng.choice(["header", "header", "header", "crc", "name", "size", "drop", "dup",
                     "swap", "reverse", "garbage", "digest-lie", "raw-frame", "position"])
    s = Signing()
    i = rng.choice(files)
    focus = [docs[i]["name"]]
    if op == "header":
        seg = bytearray(base64.b64decode(docs[i - 1]["payload"]))
        hdr = seg[-512:]
        what = _poke_header(rng, hdr)
        seg[-512:] = hdr
        docs[i - 1]["payload"] = b64(bytes(seg))
        lines[i - 1] = json.dumps(docs[i - 1]).encode()
        note = f"{docs[i]['name']!r}: tar header {what} changed (checksum fixed)"
    elif op in ("crc", "name", "size", "position"):
        d = docs[i]
        if op == "crc":
            d["payload"] = b64(rng.randbytes(8))
        elif op == "name":
            d["name"] = rng.choice(["etc/other.txt", "../x", "renamed", docs[files[0]]["name"]])
        elif op == "size":
            d["size"] = d.get("size", 0) + rng.choice([1, -1, 512])
        else:
            d["position"] = rng.randrange(1000)
        lines[i] = json.dumps(d).encode()
        note = f"tar-split line for {focus[0]!r}: {op} changed"
    elif op == "drop":
        j = rng.randrange(len(lines))
        del lines[j]
        note = f"tar-split line {j} dropped"
    elif op == "dup":
        j = rng.randrange(len(lines))
        lines.insert(j, lines[j])
        note = f"tar-split line {j} duplicated"
    elif op == "swap":
        j, k = rng.sample(range(len(lines)), 2)
        lines[j], lines[k] = lines[k], lines[j]
        note = f"tar-split lines {j} and {k} swapped"
    elif op == "reverse":
        lines.reverse()
        note = "tar-split lines reversed"
    elif op == "garbage":
        junk = rng.choice([b"not json", b"{}", b'{"type":3}', b'{"type":2,"payload":"!!"}', b"",
                           b'{"type":1,"name":"x","size":-1}', b"[1,2]", b"null",
                           b'{"type":2,"payload":"' + b"A" * 100_000 + b'"}'])
        j = rng.randrange(len(lines) + 1)
        lines.insert(j, junk)
        note = f"tar-split line {j} inserted: {junk[:40]!r}"
    elif op == "digest-lie":
        lines[i] = lines[i].replace(b'"type":1', b'"type": 1')
        s.fix_tarsplit_digest = False
        note = "tar-split changed by a space, tarSplitDigest left as it was"
    else:
        how = rng.choice(["not-zstd", "truncated", "uncompressed"])
        s.tarsplit_frame = {"not-zstd": lambda z: b"not zstd at all",
                            "truncated": lambda z: z[:len(z) // 2],
                            "uncompressed": lambda z: unzstd(z)}[how]
        note = f"tar-split frame {how} (its digest signed into the TOC)"
    p.set_ts_lines(lines)
    return _case("tarsplit-lies", name, p, s, note, focus + [HELLO_NAME])


def _random_edit(rng: random.Random, p: Parts) -> tuple[str, Any]:
    """One edit of a random entry: its note, and the entry's name (for cat)."""
    ds = _dicts(p)
    e = rng.choice(ds)
    return _edit(rng, p, ds, e), e.get("name")


def _edit(rng: random.Random, p: Parts, ds: list[dict[str, Any]], e: dict[str, Any]) -> str:
    key = rng.choice(sorted(e))
    op = rng.choice(["set", "set", "set", "delete-field", "add-field", "dup-entry",
                     "del-entry", "swap-entries", "change-type", "case-key", "move-entry"])
    if op == "set":
        v = e[key]
        if isinstance(v, int) and not isinstance(v, bool):
            e[key] = rng.choice([v + 1, v - 1, 0, -v, v * 2, 1 << 31, (1 << 32) - 1,
                                 (1 << 63) - 1, rng.randrange(1 << 20)])
        elif isinstance(v, str):
            e[key] = rng.choice([x[key] for x in ds if isinstance(x.get(key), str)]
                                + ["", "x", "../x", HELLO_NAME, "sha256:" + "0" * 64, "zeros",
                                   "chunk", "reg", "dir", "9999-12-31T23:59:59Z",
                                   "0001-01-01T00:00:00Z"])
        else:
            e[key] = {}
        return f"{_nm(e)}: {key} = {_val(e[key])}"
    if op == "delete-field":
        del e[key]
        return f"{_nm(e)}: {key} deleted"
    if op == "add-field":
        k = rng.choice(["unknown", "x-extra", *TOC_KEYS])
        e.setdefault(k, rng.choice(VALUES))
        return f"{_nm(e)}: {k} = {_val(e[k])}"
    if op == "dup-entry":
        p.entries.insert(rng.randrange(len(p.entries) + 1), dict(e))
        return f"{_nm(e)} duplicated"
    if op == "del-entry":
        p.entries.remove(e)
        return f"{_nm(e)} ({e.get('type')}) deleted"
    if op == "swap-entries":
        i, j = rng.sample(range(len(p.entries)), 2)
        p.entries[i], p.entries[j] = p.entries[j], p.entries[i]
        return f"entries {i} and {j} swapped"
    if op == "change-type":
        e["type"] = rng.choice(["reg", "chunk", "dir", "symlink", "hardlink", "char", "block",
                                "fifo", "REG", "socket"])
        return f"{_nm(e)}: type = {e['type']!r}"
    if op == "case-key":
        alt = key.upper() if key != key.upper() else key.lower()
        e[alt] = rng.choice([x.get(key) for x in ds if key in x])
        return f"{_nm(e)}: {alt} = {_val(e[alt])} beside {key}"
    p.entries.remove(e)
    p.entries.append(e)
    return f"{_nm(e)} moved to the end"


def rc_random_toc(rng: random.Random, name: str) -> Case:
    """One to three random edits of TOC entries, re-signed."""
    p = Parts.base(old=rng.random() < 0.25)
    edits = [_random_edit(rng, p) for _ in range(rng.choice([1, 1, 2, 3]))]
    focus = _focus(*(touched for _, touched in edits))
    return _case("random-toc", name, p, None, "; ".join(note for note, _ in edits)[:300],
                 focus + [HELLO_NAME])


CLASSES: dict[str, Callable[[random.Random, str], Case]] = {
    "type-confusion": rc_type_confusion,
    "lying-offsets": rc_lying_offsets,
    "odd-names-digests": rc_odd_names_digests,
    "link-tricks": rc_link_tricks,
    "footer-annotation-lies": rc_footer_annotation_lies,
    "tarsplit-lies": rc_tarsplit_lies,
    "random-toc": rc_random_toc,
}


def random_case(seed: int, index: int) -> Case:
    """Case ``index`` of ``seed``: the classes in turn, everything else from an RNG seeded
    by both (a str seed is hashed with sha512: the same on every run and machine)."""
    klass = list(CLASSES)[index % len(CLASSES)]
    return CLASSES[klass](random.Random(f"{seed}:{index}"), f"{klass}-{seed}-{index}")


if __name__ == "__main__" and sys.argv[1:2] == ["walk"]:
    sys.exit(_walk_main(sys.argv[2], int(sys.argv[3])))
