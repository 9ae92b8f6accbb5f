"""The TOC index and string checks in C (chunked/format/_tocindex.c) against their Python
specification (chunked/format/tocindex.py, chunked/format/__init__.py), on the same inputs.

The C takes the common case and answers None (or False) for anything else, so that the
Python runs and tells why: where the Python indexes, the C must give the same index or
None; where the Python refuses, the C must answer None. On real layers the C must not give
up at all, or it buys nothing.
"""

from __future__ import annotations

import functools
import importlib
import io
import random
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chunked import _kernels
from chunked import format as fmt
from chunked.builder import build_blob
from chunked.errors import FormatError, InputError
from chunked.format import tocindex
from chunked.read import consistency
from chunked.read.layer import ChunkedLayer
from chunked.read.source import FileSource
from tests.tarfactory import all_tars

# the C module itself, wired in or not (CHUNKED_PURE_PYTHON=1 runs the Python paths)
_tocindex = importlib.import_module("chunked.format._tocindex")

DATA_END = 1 << 40


@functools.cache
def _entries(tar: bytes, variant: fmt.Variant) -> tuple[list[fmt.TocEntry], int]:
    with tempfile.NamedTemporaryFile() as out:
        result = build_blob(io.BytesIO(tar), out, variant=variant)
        out.flush()
        with FileSource(Path(out.name)) as source:
            layer = ChunkedLayer.open(source, result.annotations, check=False)
    return layer.toc.entries, layer.data_end


LAYERS = [pytest.param(name, variant, id=f"{name}-{variant.name}")
          for name in all_tars() for variant in (fmt.CURRENT, fmt.OLD)]


def _python(entries: list[fmt.TocEntry], data_end: int) -> dict[str, Any] | str:
    try:
        return tocindex.index_entries(entries, data_end)
    except FormatError as exc:
        return str(exc)


def _c(entries: list[fmt.TocEntry], data_end: int) -> dict[str, Any] | None:
    return _tocindex.index(entries, data_end, tocindex.clean_name, tocindex.FileInfo,
                           tocindex.ChunkRef)


def test_c_is_compiled() -> None:
    assert _tocindex.__file__.endswith(".so")
    if _kernels.PURE_PYTHON:  # the Python paths asked for: the C is built but not wired in
        assert tocindex._c is None and fmt._strings_c is None
    else:
        assert tocindex._c is _tocindex and fmt._strings_c is _tocindex


@pytest.mark.parametrize(("name", "variant"), LAYERS)
def test_c_indexes_real_layers_as_the_python_does(name: str, variant: fmt.Variant) -> None:
    entries, data_end = _entries(all_tars()[name], variant)
    want = _python(entries, data_end)
    assert isinstance(want, dict) and (want or name == "empty")
    got = _c(entries, data_end)
    assert got is not None, "the C gave up on a layer the builder wrote"
    assert list(got) == list(want)
    assert got == want
    assert all(type(i) is tocindex.FileInfo for i in got.values())
    assert _tocindex.strings_ok(entries) is fmt.strings_ok(entries) is True


# Values a hostile TOC puts in a field: around every boundary the index checks.
_ODD: dict[str, list[Any]] = {
    "name": ["", ".", "./", "/", "a", "a/", "./a/../b", "a//b", "a/./b", ".hidden",
             "dir/.hidden", "/abs/path", "x" * 256, "d/" + "y" * 255, "d/" + "y" * 256,
             "é/" + "é" * 128, "é" * 40, "etc/hello.txt", "usr/bin/multi.bin"],
    "type": ["reg", "chunk", "dir", "symlink", "hardlink", "fifo"],
    "size": [0, 1, 2, 4095, 4096, 1 << 20, 1 << 40, 1 << 56],
    "offset": [0, 1, 7, 8, 100, 1 << 20, DATA_END - 1, DATA_END, DATA_END + 1],
    "end_offset": [0, 1, 8, 100, DATA_END, DATA_END + 1],
    "chunk_size": [0, 1, 100, 1 << 20, 1 << 56],
    "chunk_offset": [0, 1, 100, 1 << 20],
    "chunk_type": ["", "zeros"],
    "digest": ["", "sha256:" + "0" * 64],
    "chunk_digest": ["", "sha256:" + "1" * 64],
}


def _mutate(entries: list[fmt.TocEntry], rng: random.Random) -> list[fmt.TocEntry]:
    out = list(entries)
    for _ in range(rng.choice((1, 1, 2, 3))):
        i = rng.randrange(len(out))
        roll = rng.random()
        if roll < 0.1:
            out.insert(rng.randrange(len(out) + 1), out[i])  # a duplicate
        elif roll < 0.15:
            del out[i]
        else:
            key = rng.choice(sorted(_ODD))
            out[i] = msgspec.structs.replace(out[i], **{key: rng.choice(_ODD[key])})
    return out


@pytest.mark.parametrize("seed", range(8))
def test_c_agrees_with_the_python_on_mutated_tocs(seed: int) -> None:
    rng = random.Random(seed)
    base = [_entries(tar, v) for tar in all_tars().values() for v in (fmt.CURRENT, fmt.OLD)
            if _entries(tar, v)[0]]
    refused = taken = 0
    for _ in range(400):
        entries, data_end = rng.choice(base)
        if rng.random() < 0.2:
            data_end = rng.choice((0, 1, 100, data_end - 1, data_end + 1))
        mutated = _mutate(entries, rng)
        want = _python(mutated, data_end)
        got = _c(mutated, data_end)
        if isinstance(want, str):
            assert got is None, f"the C indexed what the Python refuses: {want}"
            refused += 1
        else:
            assert got is None or got == want
            taken += got is not None
    assert refused > 50 and taken > 50  # both sides of every check were exercised


def test_the_dispatch_gives_the_pythons_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    entries, data_end = _entries(all_tars()["pax-features"], fmt.CURRENT)
    dup = [*entries, entries[-1]]
    with pytest.raises(FormatError, match="appears twice"):
        tocindex.index(dup, data_end)
    monkeypatch.setattr(tocindex, "_c", None)
    with pytest.raises(FormatError, match="appears twice"):
        tocindex.index(dup, data_end)
    assert tocindex.index(entries, data_end) == _python(entries, data_end)


_ODD_STRINGS = ["", "a", "a\0b", "\ud800", "a\udfffb", "\U0001f600", "é", "\0",
                "sha256:" + "a" * 64, "sha256:" + "A" * 64, "sha256:" + "a" * 63,
                "sha256:" + "a" * 65, "sha512:" + "a" * 64, "sha256:" + "g" * 64,
                "sha256:" + "é" * 64, " sha256:" + "a" * 63]


@pytest.mark.parametrize("key", ["name", "link_name", "digest", "chunk_digest", "xattrs"])
def test_string_checks_agree(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, _ = _entries(all_tars()["pax-features"], fmt.CURRENT)
    for i in (0, len(entries) // 2, len(entries) - 1):
        for s in _ODD_STRINGS:
            value: Any = {s: b"v"} if key == "xattrs" else s
            mutated = list(entries)
            mutated[i] = msgspec.structs.replace(mutated[i], **{key: value})
            want = fmt.strings_ok(mutated)
            assert _tocindex.strings_ok(mutated) is want, (key, s)
            assert _tocindex.strings_ok(mutated, False) is fmt.strings_ok(mutated, False)
            raised = []
            for c in (_tocindex, None):
                monkeypatch.setattr(fmt, "_strings_c", c)
                try:
                    fmt.check_strings(mutated)
                    raised.append(None)
                except FormatError as exc:
                    raised.append(str(exc))
            assert raised[0] == raised[1]
            assert (raised[0] is None) is want


def test_a_decoded_toc_is_held_to_its_strings() -> None:
    good = "sha256:" + "a" * 64
    doc = '{"version":1,"entries":[{"type":"reg","name":"a","size":1,"digest":"%s"}]}'
    assert fmt.Toc.decode((doc % good).encode()).entries[0].digest == good
    with pytest.raises(FormatError, match=r"entry \[0\]\.digest"):
        fmt.Toc.decode((doc % good.upper()).encode())
    with pytest.raises(FormatError, match=r"entry \[0\]\.name"):
        fmt.Toc.decode(b'{"version":1,"entries":[{"type":"dir","name":"a\\u0000"}]}')
    with pytest.raises(FormatError, match=r"entry \[1\]\.xattrs"):
        fmt.Toc.decode(b'{"version":1,"entries":[{"type":"dir","name":"a"},'
                       b'{"type":"dir","name":"b","xattrs":{"user.\\u0000":""}}]}')
    # a raw NUL is not JSON; a literal backslash-u only costs the names' check
    with pytest.raises(FormatError, match="not valid JSON"):
        fmt.Toc.decode(b'{"version":1,"entries":[{"type":"dir","name":"a\0"}]}')
    assert fmt.Toc.decode(b'{"version":1,"entries":[{"type":"dir","name":"\\\\u0000"}]}'
                          ).entries[0].name == "\\u0000"
    # msgspec refuses a lone surrogate itself; check_strings is there for any decoder
    with pytest.raises(FormatError, match="surrogate"):
        fmt.Toc.decode(b'{"version":1,"entries":[{"type":"dir","name":"\\udc80"}]}')


# --- the tar-split check's pairs --------------------------------------------------------------

def _pairs(tar: bytes) -> list[tuple[bytes, int, Any, Any]]:
    """(gap, prev_payload, info, tar-split line) for every file of the layer, as
    check_tarsplit meets them."""
    with tempfile.NamedTemporaryFile() as out:
        result = build_blob(io.BytesIO(tar), out)
        out.flush()
        with FileSource(Path(out.name)) as source:
            layer = ChunkedLayer.open(source, result.annotations)
            infos = iter(layer.files.values())
            got, prev = [], 0
            for gap, ts in consistency.tarsplit_pairs(layer):
                if ts is None:
                    break
                info = next(infos)
                got.append((bytes(gap), prev, info, ts))
                prev = consistency.check_pair(gap, prev, info, ts, "t")
    return got


def _judge(gap: bytes, prev: int, info: Any, ts: Any) -> tuple[int, int | str]:
    c = _tocindex.tar_entry_matches(gap, prev, info.entry, ts.name, ts.name_raw, ts.size,
                                    fmt.GO_ZERO)
    try:
        want: int | str = consistency.check_pair(gap, prev, info, ts, "t")
    except (FormatError, InputError) as exc:
        want = str(exc)
    return c, want


def _plain_tar(fmt_: int) -> bytes:
    """Headers of plain fields only, as GNU tar writes a root filesystem by default."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt_) as t:
        for i in range(40):
            kind = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)[i % 4]
            ti = tarfile.TarInfo(f"d{i // 8}/" + ("sub/" * (i % 3)) + f"f{i}")
            ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, 0o640 + i % 8, i, 2 * i, 10**9 + i
            data = b"x" * (i * 37) if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = "d0/f1"
            t.addfile(ti, io.BytesIO(data))
    return out.getvalue()


TARS = {**all_tars(), "plain-gnu": _plain_tar(tarfile.GNU_FORMAT),
        "plain-ustar": _plain_tar(tarfile.USTAR_FORMAT)}


@pytest.mark.parametrize("name", sorted(TARS))
def test_c_checks_real_tar_split_pairs_as_the_python_does(name: str) -> None:
    pairs = _pairs(TARS[name])
    taken = 0
    for gap, prev, info, ts in pairs:
        c, want = _judge(gap, prev, info, ts)
        assert isinstance(want, int)
        assert c in (-1, want)
        taken += c >= 0
    if name.startswith("plain-"):
        assert taken == len(pairs) > 0  # the C takes every plain header, or it buys nothing


def _resum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


_HEADER_FIELDS = [(0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (156, 1),
                  (157, 100), (257, 8), (329, 8), (337, 8), (345, 155), (508, 4)]
_ENTRY_FIELDS: dict[str, list[Any]] = {
    "mode": [0, 0o644, 0o755, 0o4755], "uid": [0, 1, 1000], "gid": [0, 1, 1000],
    "size": [0, 1, 5, 4096], "modtime": [None, fmt.GO_ZERO, fmt.GoTime(0),
                                         fmt.GoTime(1_000_000_000), fmt.GoTime(1)],
    "accesstime": [None, fmt.GO_ZERO, fmt.GoTime(5)], "changetime": [None, fmt.GoTime(7)],
    "dev_major": [0, 1], "dev_minor": [0, 3], "xattrs": [None, {}, {"user.a": b""}],
    "type": ["reg", "dir", "symlink", "hardlink", "char", "fifo"],
    "name": ["a", "hello.txt", "etc/hello.txt"], "link_name": ["", "a", "hello.txt"],
}


@pytest.mark.parametrize("seed", range(6))
def test_c_agrees_with_the_python_on_mutated_pairs(seed: int) -> None:
    rng = random.Random(seed)
    pairs = [p for name in ("plain-gnu", "plain-ustar", "ustar-prefix", "pax-features")
             for p in _pairs(TARS[name])]
    refused = taken = 0
    for _ in range(1500):
        gap, prev, info, ts = rng.choice(pairs)
        gap = bytearray(gap)
        roll = rng.random()
        pad = -prev % 512
        if roll < 0.5 and len(gap) >= pad + 512:
            at, n = rng.choice(_HEADER_FIELDS)
            for _ in range(rng.choice((1, 1, 2))):
                gap[pad + at + rng.randrange(n)] = rng.choice(b"\0 01234567x/a\x80\xff")
            if rng.random() < 0.8:
                _resum(memoryview(gap)[pad:pad + 512])  # type: ignore[arg-type]
        elif roll < 0.8:
            key = rng.choice(sorted(_ENTRY_FIELDS))
            info = tocindex.FileInfo(msgspec.structs.replace(
                info.entry, **{key: rng.choice(_ENTRY_FIELDS[key])}))
        elif roll < 0.9:
            prev = rng.choice((0, 1, 511, 512, 513, prev + 1))
        else:
            gap = gap[:rng.randrange(len(gap) + 1)] if rng.random() < 0.5 else gap + b"\0" * 512
        c, want = _judge(bytes(gap), prev, info, ts)
        if isinstance(want, str):
            assert c == -1, f"the C accepted what the Python refuses: {want}"
            refused += 1
        else:
            assert c in (-1, want)
            taken += c >= 0
    assert refused > 200 and taken > 200
