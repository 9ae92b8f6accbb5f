"""The TOC index and string checks in C (chunked/_tocindex.c) against their Python
specification (chunked/tocindex.py, chunked/format.py), on the same inputs.

The C takes the common case and answers None (or False) for anything else, so that the
Python runs and tells why: where the Python indexes, the C must give the same index or
None; where the Python refuses, the C must answer None. On real layers the C must not give
up at all, or it buys nothing.
"""

from __future__ import annotations

import functools
import io
import random
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chunked import _tocindex, tocindex
from chunked import format as fmt
from chunked.builder import build_blob
from chunked.errors import FormatError
from chunked.reader import Layer
from chunked.source import FileSource
from tests.tarfactory import all_tars

DATA_END = 1 << 40


@functools.cache
def _entries(tar: bytes, variant: fmt.Variant) -> tuple[list[fmt.TocEntry], int]:
    with tempfile.NamedTemporaryFile() as out:
        result = build_blob(io.BytesIO(tar), out, variant=variant)
        out.flush()
        with FileSource(Path(out.name)) as source:
            layer = Layer.open(source, result.annotations, check=False)
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
    assert tocindex._c is _tocindex and fmt._tocindex is _tocindex


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
            raised = []
            for c in (_tocindex, None):
                monkeypatch.setattr(fmt, "_tocindex", c)
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
    # msgspec refuses a lone surrogate itself; check_strings is there for any decoder
    with pytest.raises(FormatError, match="surrogate"):
        fmt.Toc.decode(b'{"version":1,"entries":[{"type":"dir","name":"\\udc80"}]}')
