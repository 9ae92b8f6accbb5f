"""Taking a zstd:chunked blob apart and re-signing it.

An attacker controls a layer's bytes and its descriptor: whoever writes a TOC can also make
the ``manifest-checksum`` annotation match it (it is only the sha256 of the compressed TOC).
:class:`Parts` takes a valid blob of :func:`chunked.builder.build_blob` apart (data frames,
TOC, tar-split, footer), a mutation rewrites any part, and :func:`assemble` re-signs the
result, so every check that compares the layer only with itself still passes (unless the
:class:`Signing` asks for a lie).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tests.hostile.base_layers import LayerBlob, _base_blob
from tests.hostile.wire import (
    NEW,
    OLD,
    ZSTD_MEDIA,
    Footer,
    Pos,
    sha,
    skippable,
    toc_json,
    unzstd,
    zstd,
)


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
