"""The zstd:chunked reader, byte for byte: what ChunkedLayer hands out, and what it refuses.

Layers come from the project's builder (:func:`tests.hostile.build`); a lie is made by
taking a blob apart and re-signing it (:func:`tests.hostile.assemble`), or by a source
that serves other bytes for a range, as a broken mirror would. Every read is compared
with the tar's own bytes, every refusal with its exact error.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard

from chunked import format as fmt
from chunked.errors import FormatError, InputError, NotFoundError, VerifyError
from chunked.format.chunking import crc64
from chunked.read.layer import (
    ZEROS_PIECE,
    ChunkedLayer,
    ChunkRef,
    FileInfo,
    HashingReader,
    VerifyReport,
    WholeCheck,
    crc_zeros,
    decompress_exact,
    read_every_file,
    zero_pieces,
    zeros_digest,
)
from chunked.read.source import FileSource
from tests import hostile
from tests.hostile import Parts, Signing, assemble, tar_of
from tests.tarfactory import _info, without_padding

RNG = random.Random(11)
MULTI = RNG.randbytes(150_000)  # many chunks
HOLES = RNG.randbytes(4000) + bytes(20_000) + RNG.randbytes(4000)  # data, zeros, data
ZEROS = bytes(5000)  # one zeros chunk, the whole file
TWO = RNG.randbytes(3000) + bytes(3000)  # two chunks: data, then zeros
ONE = b"one chunk\n"
SAME_A = b"A" * 40 + b"\n"
SAME_B = b"B" * 40 + b"\n"  # the size of SAME_A


def _tar() -> bytes:
    return tar_of([
        (_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (_info("etc/one.txt"), ONE),
        (_info("etc/a.txt"), SAME_A),
        (_info("etc/b.txt"), SAME_B),
        (_info("usr", tarfile.DIRTYPE, mode=0o755), None),
        (_info("usr/multi.bin", mode=0o755), MULTI),
        (_info("usr/holes.bin"), HOLES),
        (_info("usr/zeros.bin"), ZEROS),
        (_info("usr/two.bin"), TWO),
        (_info("usr/empty"), b""),
        (_info("usr/hard", tarfile.LNKTYPE, linkname="usr/multi.bin"), None),
        (_info("usr/sym", tarfile.SYMTYPE, mode=0o777, linkname="multi.bin"), None),
    ])


CONTENT = {"etc/one.txt": ONE, "etc/a.txt": SAME_A, "etc/b.txt": SAME_B,
           "usr/multi.bin": MULTI, "usr/holes.bin": HOLES, "usr/zeros.bin": ZEROS,
           "usr/two.bin": TWO, "usr/empty": b""}


def _zeros_parts(parts: Parts) -> Parts:
    """The builder writes a file of zeros alone as data; a TOC may say it is one zeros
    chunk (nothing read, its digest that of the zeros)."""
    parts.entry("usr/zeros.bin")["chunkType"] = "zeros"
    return parts


@functools.cache
def _blob(old: bool = False) -> hostile.LayerBlob:
    built = hostile.build(_tar(), old=old)
    return assemble(_zeros_parts(Parts.of(built.blob)))


def _parts(old: bool = False) -> Parts:
    return Parts.of(_blob(old).blob)


class Recording:
    """A FileSource that records every request, and can serve other bytes for a range
    (``serve``: (offset, length, bytes) -> bytes), as a broken mirror would."""

    def __init__(self, path: Path, serve: Callable[[int, int, bytes], bytes] | None = None):
        self._f = FileSource(path)
        self.name = self._f.name
        self.size = self._f.size
        self.calls: list[list[tuple[int, int]]] = []
        self.serve = serve
        self.failovers: list[str] = []
        self.can_fail_over = False

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        self.calls.append(list(ranges))
        out = self._f.read_ranges(ranges)
        if self.serve is not None:
            out = [self.serve(off, n, data) for (off, n), data in zip(ranges, out, strict=True)]
        return out

    def close(self) -> None:
        self._f.close()


class Mirror(Recording):
    """A source that can move on once to a good one (``failover``, as FallbackSource)."""

    def failover(self, why: str) -> bool:
        self.failovers.append(why)
        if self.serve is None:
            return False
        self.serve = None
        return True


def _write(tmp_path: Path, lb: hostile.LayerBlob, name: str = "blob") -> Path:
    path = tmp_path / name
    path.write_bytes(lb.blob)
    return path


def _open(tmp_path: Path, lb: hostile.LayerBlob | None = None, *, annotations: Any = "desc",
          check: bool = True, source: Any = None) -> ChunkedLayer:
    lb = lb or _blob()
    if source is None:
        source = FileSource(_write(tmp_path, lb))
    ann = lb.descriptor["annotations"] if annotations == "desc" else annotations
    return ChunkedLayer.open(source, ann, check=check)


# -- reading: the exact bytes ----------------------------------------------------------------


def test_the_layer_as_built(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    blob = _blob().blob
    assert layer.kind == "zstd:chunked"
    assert layer.variant is fmt.CURRENT
    assert layer.tarsplit_checked is True
    assert layer.tar_size == len(_tar())
    assert layer.data_end == layer.toc_pos.offset - 8 == len(_parts().data)
    assert layer.checksum == hostile.sha(blob[layer.toc_pos.offset:layer.toc_pos.end])
    assert layer.tarsplit_pos is not None and layer.tarsplit_pos.offset > layer.toc_pos.end
    names = ["etc", "etc/one.txt", "etc/a.txt", "etc/b.txt", "usr", "usr/multi.bin",
             "usr/holes.bin", "usr/zeros.bin", "usr/two.bin", "usr/empty", "usr/hard",
             "usr/sym"]
    assert [e.name.rstrip("/") for e in layer.entries] == names  # (no chunk entries)
    assert list(layer.files) == names
    for name, data in CONTENT.items():
        assert layer.read_file(name) == data, name
        assert b"".join(layer.iter_file(layer.files[name])) == data, name


def test_open_is_one_round_trip(tmp_path: Path) -> None:
    """The TOC and the tar-split are fetched together, and the tar-split checked from
    those bytes, not read again."""
    lb = _blob()
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, source=source)
    assert layer.tarsplit_checked
    assert source.calls == [[(layer.toc_pos.offset, layer.toc_pos.length),
                             (layer.tarsplit_pos.offset, layer.tarsplit_pos.length)]]
    list(layer.tarsplit_stream())
    assert len(source.calls) == 1


def test_unchecked_open_reads_no_tarsplit(tmp_path: Path) -> None:
    lb = _blob()
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, check=False, source=source)
    assert layer.tarsplit_checked is False
    assert layer.tar_size is None
    # one round trip: the TOC and the tar-split together, nothing else
    assert source.calls == [[(layer.toc_pos.offset, layer.toc_pos.length),
                             (layer.tarsplit_pos.offset, layer.tarsplit_pos.length)]]
    assert all(info.crc is None for info in layer.files.values())
    assert layer.read_file("etc/one.txt") == ONE
    # checked later, by verify
    report = layer.verify()
    assert layer.tarsplit_checked is True and report.tarsplit_checked is True
    assert layer.tar_size == len(_tar())


def test_file_info_fields_and_crcs(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    one = layer.files["etc/one.txt"]
    assert one.entry.size == len(ONE) and one.crc == crc64(ONE)
    (c,) = one.chunks
    assert (c.file_offset, c.size, c.zeros, c.crc) == (0, len(ONE), False, crc64(ONE))
    assert c.digest == hostile.sha(ONE) == one.entry.digest
    assert 0 < c.start < c.end <= layer.data_end
    assert one.compressed_size == c.end - c.start

    multi = layer.files["usr/multi.bin"]
    assert multi.crc == crc64(MULTI) and len(multi.chunks) > 2
    assert all(c.crc is None for c in multi.chunks)  # the file's CRC is checked whole
    at = 0
    for c in multi.chunks:
        assert c.file_offset == at and not c.zeros
        assert c.digest == hostile.sha(MULTI[at:at + c.size])
        at += c.size
    assert at == len(MULTI)
    assert multi.compressed_size == sum(c.end - c.start for c in multi.chunks)

    holes = layer.files["usr/holes.bin"]
    assert [(c.file_offset, c.size, c.zeros) for c in holes.chunks] == [
        (0, 4000, False), (4000, 20_000, True), (24_000, 4000, False)]
    assert holes.chunks[1].digest == zeros_digest(20_000)
    # the zeros chunk's compressed bytes are not counted: none are read
    assert holes.compressed_size == sum(c.end - c.start for c in holes.chunks if not c.zeros)
    assert holes.compressed_size < sum(c.end - c.start for c in holes.chunks)

    two = layer.files["usr/two.bin"]
    assert [(c.file_offset, c.size, c.zeros) for c in two.chunks] == [
        (0, 3000, False), (3000, 3000, True)]
    zeros = layer.files["usr/zeros.bin"]
    (z,) = zeros.chunks
    assert z.zeros and z.size == len(ZEROS) and z.crc == crc64(ZEROS) == zeros.crc
    assert layer.files["usr/empty"].chunks == [] or layer.files["usr/empty"].chunks == ()
    assert layer.files["usr/empty"].crc is None
    assert layer.files["etc"].crc is None and not layer.files["etc"].chunks


def test_hard_links_resolve_to_their_target(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    hard = layer.files["usr/hard"]
    assert hard.entry.type == fmt.TYPE_HARDLINK
    assert layer.resolve(hard) is layer.files["usr/multi.bin"]
    assert layer.lookup("usr/hard") is layer.files["usr/multi.bin"]
    assert layer.lookup("./usr/hard") is layer.files["usr/multi.bin"]
    assert layer.resolve(layer.files["etc/one.txt"]) is layer.files["etc/one.txt"]
    assert layer.read_file("usr/hard") == MULTI
    # a symlink is not followed
    assert layer.lookup("usr/sym").entry.type == fmt.TYPE_SYMLINK
    with pytest.raises(NotFoundError, match=r"^usr/nothing: no such file in the layer$"):
        layer.lookup("usr/nothing")


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    for name, kind in (("usr", "dir"), ("usr/sym", "symlink"), ("usr/hard", "hardlink")):
        with pytest.raises(InputError, match=rf"^{name}/?: not a regular file \({kind}\)$"):
            next(layer.iter_file(layer.files[name]))
    with pytest.raises(InputError, match="not a regular file"):
        layer.read_file("usr/sym")
    assert list(layer.iter_file(layer.files["usr/empty"])) == []
    assert layer.read_file("usr/empty") == b""


def test_zeros_are_produced_not_read(tmp_path: Path) -> None:
    lb = _blob()
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, source=source)
    source.calls.clear()
    assert list(layer.iter_file(layer.files["usr/zeros.bin"])) == [ZEROS]
    assert source.calls == [[]]  # nothing to fetch
    source.calls.clear()
    pieces = list(layer.iter_file(layer.files["usr/holes.bin"]))
    assert pieces == [HOLES[:4000], bytes(20_000), HOLES[24_000:]]
    data_chunks = [c for c in layer.files["usr/holes.bin"].chunks if not c.zeros]
    assert source.calls == [[(c.start, c.end - c.start) for c in data_chunks]]


def test_pieces_of_a_file_of_many_chunks(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    info = layer.files["usr/multi.bin"]
    pieces = list(layer.iter_file(info))
    assert pieces == [MULTI[c.file_offset:c.file_offset + c.size] for c in info.chunks]


def test_read_chunks_batches_requests(tmp_path: Path) -> None:
    lb = _blob()
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, source=source)
    chunks = list(layer.files["usr/multi.bin"].chunks)
    sizes = [c.end - c.start for c in chunks]
    ranges = [(c.start, c.end - c.start) for c in chunks]

    def calls(batch: int) -> list[list[tuple[int, int]]]:
        source.calls.clear()
        got = list(layer.read_chunks(chunks, "usr/multi.bin", batch=batch))
        assert [c for c, _ in got] == chunks
        assert b"".join(d for _, d in got if d is not None) == MULTI
        return source.calls

    assert calls(1) == [[r] for r in ranges]  # each chunk its own request
    assert calls(1 << 30) == [ranges]  # all in one
    # a batch closes once it holds at least ``batch`` bytes
    assert calls(sizes[0]) == [[r] for r in ranges]
    assert min(sizes) == sizes[0]  # (so that each chunk after the first fills a batch)
    assert calls(sizes[0] + 1) == [ranges[:2]] + [[r] for r in ranges[2:]]
    assert calls(sizes[0] + sizes[1])[0] == ranges[:2]
    assert calls(sizes[0] + sizes[1] + 1)[0] == ranges[:3]
    assert list(layer.read_chunks([], "x")) == []


def test_zeros_chunks_do_not_count_towards_a_batch(tmp_path: Path) -> None:
    lb = _blob()
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, source=source)
    head, zeros, tail = layer.files["usr/holes.bin"].chunks
    source.calls.clear()
    got = list(layer.read_chunks([zeros, tail, head], "usr/holes.bin",
                                 batch=tail.end - tail.start))
    assert [(c, d) for c, d in got] == [(zeros, None), (tail, HOLES[24_000:]),
                                        (head, HOLES[:4000])]
    # the zeros chunk opened the first batch without filling it; the tail closed it
    assert source.calls == [[(tail.start, tail.end - tail.start)],
                            [(head.start, head.end - head.start)]]


def test_chunks_of_many_files_named_by_offset(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    a, b = layer.files["etc/a.txt"].chunks[0], layer.files["etc/b.txt"].chunks[0]
    got = list(layer.read_chunks([a, b], {a.start: "etc/a.txt", b.start: "etc/b.txt"}))
    assert got == [(a, SAME_A), (b, SAME_B)]
    # b served as a (a lying TOC): the error names b's file by its offset
    liar = ChunkRef(b.file_offset, b.size, b.start, b.end, a.digest, False)
    with pytest.raises(VerifyError, match=r"^etc/b\.txt: digest mismatch in the chunk at "
                                          r"offset 0$"):
        list(layer.read_chunks([a, liar], {a.start: "etc/a.txt", b.start: "etc/b.txt"}))
    with pytest.raises(VerifyError, match=r"^\?: digest mismatch"):
        list(layer.read_chunks([liar], {a.start: "etc/a.txt"}))


# -- reading: what is refused -----------------------------------------------------------------


def _other_frame(chunk: ChunkRef, data: bytes) -> Callable[[int, int, bytes], bytes]:
    """Serve ``data`` (a valid frame of other bytes) for the chunk's range."""
    frame = zstandard.ZstdCompressor().compress(data)

    def serve(off: int, n: int, real: bytes) -> bytes:
        return frame if off == chunk.start else real

    return serve


def test_a_chunk_with_other_bytes_is_refused_and_nothing_of_it_served(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    info = layer.files["usr/multi.bin"]
    bad = info.chunks[3]
    wrong = bytearray(MULTI[bad.file_offset:bad.file_offset + bad.size])
    wrong[7] ^= 1
    source = Recording(_write(tmp_path, _blob()), _other_frame(bad, bytes(wrong)))
    layer.source = source
    out = []
    with pytest.raises(VerifyError, match=rf"^usr/multi\.bin: digest mismatch in the chunk at "
                                          rf"offset {bad.file_offset}$"):
        for piece in layer.iter_file(info):
            out.append(piece)
    # the whole batch (here the file) is checked before any of it is served
    assert out == []
    # in batches of one chunk, the chunks before the bad one
    layer.source = Recording(_write(tmp_path, _blob()), _other_frame(bad, bytes(wrong)))
    got = []
    with pytest.raises(VerifyError, match="digest mismatch in the chunk"):
        for _c, data in layer.read_chunks(info.chunks, "usr/multi.bin", batch=1):
            got.append(data)
    assert b"".join(got) == MULTI[:bad.file_offset]


def test_a_chunk_that_decompresses_to_another_size(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    info = layer.files["usr/multi.bin"]
    bad = info.chunks[1]
    real = MULTI[bad.file_offset:bad.file_offset + bad.size]
    for wrong in (real[:-1], real + b"x"):
        layer.source = Recording(_write(tmp_path, _blob()), _other_frame(bad, wrong))
        with pytest.raises(VerifyError, match=rf"^usr/multi\.bin \(chunk at {bad.file_offset}\)"
                                              rf": compressed data does not decompress to "
                                              rf"{bad.size} bytes$"):
            list(layer.iter_file(info))


def test_corrupt_compressed_bytes_are_refused(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    info = layer.files["etc/one.txt"]
    (c,) = info.chunks

    def flip(off: int, n: int, real: bytes) -> bytes:
        if off != c.start:
            return real
        return real[:-2] + bytes([real[-2] ^ 0xFF]) + real[-1:]

    layer.source = Recording(_write(tmp_path, _blob()), flip)
    with pytest.raises(VerifyError, match=r"^etc/one\.txt \(chunk at 0\): corrupt zstd data"):
        layer.read_file("etc/one.txt")


def test_a_single_chunk_with_other_bytes_of_the_same_digest_fails_the_crc(
        tmp_path: Path) -> None:
    """The TOC points a.txt at b.txt's bytes and digest: only the tar-split's CRC tells."""
    parts = _parts()
    a, b = parts.entry("etc/a.txt"), parts.entry("etc/b.txt")
    for key in ("offset", "endOffset", "digest"):
        a[key] = b[key]
    layer = _open(tmp_path, assemble(parts))
    assert layer.read_file("etc/b.txt") == SAME_B
    with pytest.raises(VerifyError, match=r"^etc/a\.txt: content does not match the "
                                          r"tar-split CRC$"):
        layer.read_file("etc/a.txt")
    with pytest.raises(VerifyError, match="etc/a.txt: content does not match"):
        layer.verify()
    # unchecked, the TOC's word is all there is
    unchecked = _open(tmp_path, assemble(parts), check=False)
    assert unchecked.read_file("etc/a.txt") == SAME_B


def _set_ts_crc(parts: Parts, name: str, crc: int) -> None:
    lines = []
    for x in parts.ts_lines():
        doc = json.loads(x)
        if doc.get("name") == name:
            doc["payload"] = base64.b64encode(crc.to_bytes(8, "big")).decode()
        lines.append(json.dumps(doc, separators=(",", ":")).encode())
    parts.set_ts_lines(lines)


def test_a_file_of_many_chunks_held_to_the_tarsplit_crc(tmp_path: Path) -> None:
    parts = _parts()
    _set_ts_crc(parts, "usr/multi.bin", crc64(MULTI) ^ 1)
    layer = _open(tmp_path, assemble(parts))
    info = layer.files["usr/multi.bin"]
    assert info.crc == crc64(MULTI) ^ 1
    out = []
    with pytest.raises(VerifyError, match=r"^usr/multi\.bin: content does not match the "
                                          r"tar-split CRC$"):
        for piece in layer.iter_file(info):
            out.append(piece)
    # everything but the last piece: the end of a file that does not check out is held back
    last = info.chunks[-1]
    assert b"".join(out) == MULTI[:last.file_offset]


def test_a_zeros_file_held_to_the_tarsplit_crc(tmp_path: Path) -> None:
    parts = _parts()
    _set_ts_crc(parts, "usr/zeros.bin", crc64(ZEROS) ^ 4)
    layer = _open(tmp_path, assemble(parts))
    with pytest.raises(VerifyError, match=r"^usr/zeros\.bin: content does not match the "
                                          r"tar-split CRC$"):
        layer.read_file("usr/zeros.bin")


@pytest.mark.parametrize("name", ["usr/multi.bin", "usr/two.bin"])
def test_a_file_digest_that_lies(tmp_path: Path, name: str) -> None:
    """Every chunk true, the file's digest not: nothing past the last chunk is handed out."""
    parts = _parts()
    parts.entry(name)["digest"] = hostile.sha(b"something else")
    layer = _open(tmp_path, assemble(parts))
    info = layer.files[name]
    out = []
    with pytest.raises(VerifyError, match=rf"^{name}: file digest mismatch$"):
        for piece in layer.iter_file(info):
            out.append(piece)
    assert b"".join(out) == CONTENT[name][:info.chunks[-1].file_offset]


def test_a_chunk_digest_that_lies(tmp_path: Path) -> None:
    parts = _parts()
    group = parts.file_group("usr/multi.bin")
    group[2]["chunkDigest"] = hostile.sha(b"not this")
    layer = _open(tmp_path, assemble(parts))
    at = layer.files["usr/multi.bin"].chunks[2].file_offset
    with pytest.raises(VerifyError, match=rf"^usr/multi\.bin: digest mismatch in the chunk at "
                                          rf"offset {at}$"):
        layer.read_file("usr/multi.bin")


def test_a_zeros_chunk_digest_that_lies(tmp_path: Path) -> None:
    parts = _parts()
    zeros = [e for e in parts.file_group("usr/holes.bin") if e.get("chunkType") == "zeros"]
    assert len(zeros) == 1
    zeros[0]["chunkDigest"] = zeros_digest(19_999)
    layer = _open(tmp_path, assemble(parts))
    with pytest.raises(VerifyError, match=r"^usr/holes\.bin: the zeros chunk at offset 4000 "
                                          r"does not match its digest$"):
        layer.read_file("usr/holes.bin")
    whole = parts.entry("usr/zeros.bin")
    assert whole.get("chunkType") == "zeros"
    whole["digest"] = zeros_digest(len(ZEROS) + 1)
    layer = _open(tmp_path, assemble(parts), check=False)
    with pytest.raises(VerifyError, match=r"^usr/zeros\.bin: the zeros chunk at offset 0 "):
        layer.read_file("usr/zeros.bin")


def test_a_mirror_that_serves_bad_bytes_is_left_for_the_next(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    info = layer.files["usr/multi.bin"]
    bad = info.chunks[-1]
    source = Mirror(_write(tmp_path, _blob()), _other_frame(bad, bytes(bad.size)))
    layer.source = source
    assert list(layer.iter_file(info)) == [
        MULTI[c.file_offset:c.file_offset + c.size] for c in info.chunks]
    assert source.failovers == [f"usr/multi.bin: digest mismatch in the chunk at offset "
                                f"{bad.file_offset}"]
    ranges = [(c.start, c.end - c.start) for c in info.chunks]
    assert source.calls == [ranges, ranges]  # the batch again, from the next source


# -- set_crc, WholeCheck ----------------------------------------------------------------------


def _info_of(size: int, chunks: list[ChunkRef], digest: str = "") -> FileInfo:
    entry = fmt.TocEntry(type="reg", name="f", size=size, digest=digest)
    return FileInfo(entry, chunks)


def test_set_crc_marks_a_lone_chunk_too(tmp_path: Path) -> None:
    layer = _open(tmp_path, check=False)
    one = layer.files["etc/one.txt"]
    c = one.chunks[0]
    layer.set_crc(one, 1234)
    assert one.crc == 1234
    assert one.chunks == [ChunkRef(c.file_offset, c.size, c.start, c.end, c.digest, c.zeros,
                                   1234)]
    multi = layer.files["usr/multi.bin"]
    before = list(multi.chunks)
    layer.set_crc(multi, 99)
    assert multi.crc == 99 and list(multi.chunks) == before


def test_whole_check() -> None:
    data = b"0123456789" * 3
    chunks = [ChunkRef(0, 10, 1, 2, "d", False), ChunkRef(10, 20, 2, 3, "d", False)]
    info = _info_of(len(data), chunks, hostile.sha(data))
    check = WholeCheck(info)
    check.update(data[:10])
    check.update(data[10:])
    check.finish()
    info.crc = crc64(data)
    check = WholeCheck(info)
    check.update(data)
    check.finish()
    check = WholeCheck(info)
    check.update(data[:-1])
    with pytest.raises(VerifyError, match=r"^f: file digest mismatch$"):
        check.finish()
    info.entry = fmt.TocEntry(type="reg", name="f", size=len(data), digest=hostile.sha(data))
    info.crc = crc64(data) ^ 1
    check = WholeCheck(info)
    check.update(data)
    with pytest.raises(VerifyError, match=r"^f: content does not match the tar-split CRC$"):
        check.finish()
    # zeros are fed like bytes
    zeros = ZEROS_PIECE + 3
    info = _info_of(zeros, chunks, hostile.sha(bytes(zeros)))
    info.crc = crc64(bytes(zeros))
    check = WholeCheck(info)
    check.zeros(zeros)
    check.finish()


def test_whole_check_of_one_chunk_leaves_the_digest_to_the_chunk() -> None:
    info = _info_of(3, [ChunkRef(0, 3, 1, 2, "d", False)], hostile.sha(b"abc"))
    check = WholeCheck(info)
    check.update(b"xyz")
    check.finish()  # the chunk's digest, checked with the chunk, is the file's
    info.crc = crc64(b"abc")
    check = WholeCheck(info)
    check.update(b"xyz")
    with pytest.raises(VerifyError, match="tar-split CRC"):
        check.finish()


# -- zeros, decompression ---------------------------------------------------------------------


def test_zero_pieces() -> None:
    assert list(zero_pieces(0)) == []
    assert list(zero_pieces(-5)) == []
    assert list(zero_pieces(1)) == [b"\0"]
    whole = list(zero_pieces(ZEROS_PIECE))
    assert len(whole) == 1 and len(whole[0]) == ZEROS_PIECE
    pieces = list(zero_pieces(2 * ZEROS_PIECE + 7))
    assert [len(p) for p in pieces] == [ZEROS_PIECE, ZEROS_PIECE, 7]
    assert pieces[0] is pieces[1]  # one buffer, shared
    assert b"".join(pieces) == bytes(2 * ZEROS_PIECE + 7)
    assert [len(p) for p in zero_pieces(ZEROS_PIECE - 1)] == [ZEROS_PIECE - 1]


def test_zeros_digest_and_crc() -> None:
    for n in (0, 1, 1000, ZEROS_PIECE, ZEROS_PIECE + 1):
        assert zeros_digest(n) == hostile.sha(bytes(n)), n
    for n in (1, 1000):
        assert crc_zeros(0, n) == crc64(bytes(n)), n
        assert crc_zeros(77, n) == crc64(bytes(n), 77), n
    assert crc_zeros(77, 0) == 77
    # more than one piece: each continues the CRC of the one before
    n = ZEROS_PIECE + 1
    assert crc_zeros(77, n) == crc64(bytes(n), 77)


def test_decompress_exact() -> None:
    data = RNG.randbytes(3000)
    one = zstandard.ZstdCompressor().compress(data)
    assert decompress_exact(one, 3000, "w") == data
    # a frame that does not say its size
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert zstandard.frame_content_size(unsized) == -1
    assert decompress_exact(unsized, 3000, "w") == data
    # several frames
    two = zstandard.ZstdCompressor().compress(data[:1000]) + \
        zstandard.ZstdCompressor().compress(data[1000:])
    assert decompress_exact(two, 3000, "w") == data
    assert decompress_exact(zstandard.ZstdCompressor().compress(b""), 0, "w") == b""
    for size in (2999, 3001):
        for frames in (one, unsized, two):
            with pytest.raises(VerifyError, match=rf"^w: compressed data does not decompress "
                                                  rf"to {size} bytes$"):
                decompress_exact(frames, size, "w")
    for frames in (one + one, unsized + unsized, one[:-5], unsized[:-5]):
        with pytest.raises(VerifyError, match=r"^w: (compressed data does not decompress to "
                                              r"3000 bytes|corrupt zstd data \(.*\))$"):
            decompress_exact(frames, 3000, "w")
    with pytest.raises(VerifyError, match=r"^w: compressed data does not decompress to 3000"):
        decompress_exact(one + one, 3000, "w")
    with pytest.raises(VerifyError, match=r"^w: corrupt zstd data \("):
        decompress_exact(b"\x28\xb5\x2f\xfd" + b"\xff" * 20, 3000, "w")
    with pytest.raises(VerifyError, match=r"^w: "):
        decompress_exact(b"not zstd at all", 3000, "w")


def test_hashing_reader() -> None:
    r = HashingReader(io.BytesIO(b"abcdef"))
    assert r.readable()
    assert r.read(4) == b"abcd"
    r.update(b"XY")
    assert r.read() == b"ef"
    assert r.read(1) == b""
    assert r.digest() == hostile.sha(b"abcdXYef")


# -- verify -----------------------------------------------------------------------------------


def test_verify_reports_what_it_read(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    seen: list[int] = []
    report = layer.verify(seen.append)
    regular = [d for d in CONTENT.values() if d]
    assert report.files == len(regular) == 7
    assert report.chunks == sum(len(layer.files[n].chunks) for n, d in CONTENT.items() if d)
    assert report.bytes == sum(map(len, regular)) == sum(seen)
    assert report.toc_checked_against == layer.checksum
    assert report.tarsplit_checked is True
    assert report.diff_id == "sha256:" + hashlib.sha256(_tar()).hexdigest()
    assert report.blob_digest == hostile.sha(_blob().blob) == _blob().descriptor["digest"]
    assert VerifyReport() == VerifyReport(0, 0, 0, "", False, "", "")


def test_read_every_file_counts(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    report = VerifyReport()
    read_every_file(layer, report, None)
    assert (report.files, report.bytes) == (7, sum(len(d) for d in CONTENT.values()))


def test_data_stream_is_the_data_frames(tmp_path: Path) -> None:
    layer = _open(tmp_path)
    f = layer.data_stream()
    assert f.readable()
    data = f.read()
    assert data == _parts().data
    assert f.read(10) == b""
    assert zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(data), read_across_frames=True).read() == _tar()
    # as much as is asked, up to the end of the data frames and no further
    f = layer.data_stream()
    assert f.read(10) == data[:10]
    assert f.read(5) == data[10:15]
    assert f.read(len(data) - 16) == data[15:-1]
    assert f.read(1) == data[-1:]
    assert f.read(1) == b""


def test_old_format_layer(tmp_path: Path) -> None:
    lb = _blob(old=True)
    layer = _open(tmp_path, lb)
    assert layer.variant is fmt.OLD
    assert layer.tarsplit_pos is None and layer.tarsplit_checked is False
    assert layer.tar_size is None
    for name, data in CONTENT.items():
        assert layer.read_file(name) == data
    with pytest.raises(FormatError, match=r": the layer has no tar-split$"):
        next(layer.tarsplit_stream())
    report = layer.verify()
    assert report.tarsplit_checked is False
    assert report.diff_id == "sha256:" + hashlib.sha256(_tar()).hexdigest()
    # by its footer alone
    source = Recording(_write(tmp_path, lb, "by-footer"))
    layer = _open(tmp_path, lb, annotations=None, source=source)
    assert layer.variant is fmt.OLD and layer.checksum is None
    size = len(lb.blob)
    assert source.calls == [[(size - 72, 72)], [(layer.toc_pos.offset, layer.toc_pos.length)]]
    assert layer.read_file("usr/holes.bin") == HOLES


# -- opening: locating and checking the TOC ---------------------------------------------------


def test_open_by_the_footer(tmp_path: Path) -> None:
    lb = _blob()
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, annotations=None, source=source)
    assert layer.variant is fmt.CURRENT and layer.checksum is None
    assert layer.tarsplit_checked is True
    size = len(lb.blob)
    assert source.calls[0] == [(size - 72, 72)]
    assert source.calls[1] == [(layer.toc_pos.offset, layer.toc_pos.length),
                               (layer.tarsplit_pos.offset, layer.tarsplit_pos.length)]
    assert layer.read_file("usr/multi.bin") == MULTI
    layer = _open(tmp_path, lb, annotations={})
    assert layer.checksum is None and layer.tarsplit_checked


def test_annotations_must_be_an_object(tmp_path: Path) -> None:
    for bad in (["a"], "text", 3):
        with pytest.raises(FormatError, match=r": the layer's annotations are not an object$"):
            _open(tmp_path, annotations=bad)


def test_a_blob_too_small_for_a_footer(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"\0" * 39)
    with pytest.raises(FormatError, match=r"small: 39 bytes is too small to be a zstd:chunked "
                                          r"blob$"):
        ChunkedLayer.open(FileSource(path))
    path.write_bytes(b"\0" * 40)
    with pytest.raises(FormatError, match="no zstd:chunked footer"):
        ChunkedLayer.open(FileSource(path))


def test_the_toc_must_match_its_annotation(tmp_path: Path) -> None:
    lb = _blob()
    ann = dict(lb.descriptor["annotations"])
    other = hostile.sha(b"x")
    ann[fmt.CURRENT_PREFIX + "manifest-checksum"] = other
    actual = lb.descriptor["annotations"][fmt.CURRENT_PREFIX + "manifest-checksum"]
    with pytest.raises(VerifyError, match=rf"blob: TOC does not match its annotation "
                                          rf"\(manifest-checksum {other}, TOC is {actual}\)$"):
        _open(tmp_path, lb, annotations=ann)


def test_old_keys_alone_find_the_tarsplit_in_the_footer(tmp_path: Path) -> None:
    lb = assemble(_parts(), Signing(keys=("old",)))
    source = Recording(_write(tmp_path, lb))
    layer = _open(tmp_path, lb, source=source)
    assert layer.variant is fmt.OLD  # by its annotations
    assert layer.tarsplit_pos is not None and layer.tarsplit_checked is True
    size = len(lb.blob)
    assert source.calls[0] == [(layer.toc_pos.offset, layer.toc_pos.length), (size - 72, 72)]
    assert source.calls[1] == [(layer.tarsplit_pos.offset, layer.tarsplit_pos.length)]
    assert len(source.calls) == 2  # the tar-split is held, not read again to be checked
    assert layer.read_file("etc/one.txt") == ONE


def test_old_keys_and_a_footer_tarsplit_outside_the_blob(tmp_path: Path) -> None:
    def outside(f: hostile.Footer, a: hostile.Assembly) -> None:
        assert f.tarsplit is not None
        f.tarsplit = hostile.Pos(f.tarsplit.offset, a.size, f.tarsplit.uncompressed)

    lb = assemble(_parts(), Signing(keys=("old",), footer=outside))
    with pytest.raises(FormatError, match=r"blob: the tar-split position \d+\+\d+ lies outside "
                                          r"the blob"):
        _open(tmp_path, lb)

    def overlap(f: hostile.Footer, a: hostile.Assembly) -> None:
        f.tarsplit = hostile.Pos(f.toc.offset, f.toc.length, f.toc.uncompressed)

    lb = assemble(_parts(), Signing(keys=("old",), footer=overlap))
    with pytest.raises(FormatError, match=r"blob: the TOC and the tar-split overlap$"):
        _open(tmp_path, lb)


def test_old_keys_and_a_footer_that_disagrees(tmp_path: Path) -> None:
    def lie(f: hostile.Footer, a: hostile.Assembly) -> None:
        f.toc = hostile.Pos(f.toc.offset, f.toc.length, f.toc.uncompressed + 1)

    lb = assemble(_parts(), Signing(keys=("old",), footer=lie))
    with pytest.raises(FormatError, match=r"blob: the footer and the annotations disagree on "
                                          r"where the TOC is$"):
        _open(tmp_path, lb)


def test_old_keys_and_no_footer_for_a_toc_that_needs_a_tarsplit(tmp_path: Path) -> None:
    lb = assemble(_parts(), Signing(keys=("old",), footer_bytes=lambda b: b[:-8] + b"NOTMAGIC"))
    with pytest.raises(FormatError, match=r"blob: TOC requires a tar-split, but no position "
                                          r"for it is known$"):
        _open(tmp_path, lb)


def test_current_keys_without_a_tarsplit_position_use_the_footer(tmp_path: Path) -> None:
    def drop(ann: dict[str, Any], a: hostile.Assembly) -> dict[str, Any]:
        return {k: v for k, v in ann.items() if not k.endswith("tarsplit-position")}

    lb = assemble(_parts(), Signing(keys=("new",), annotations=drop))
    layer = _open(tmp_path, lb)
    assert layer.variant is fmt.CURRENT and layer.tarsplit_checked
    assert layer.tarsplit_pos == fmt.Position(*_footer_ts(lb.blob))


def _footer_ts(blob: bytes) -> tuple[int, int, int]:
    f = hostile.Footer.decode(blob)
    assert f.tarsplit is not None
    return f.tarsplit.offset, f.tarsplit.length, f.tarsplit.uncompressed


def test_toc_that_is_not_compressed(tmp_path: Path) -> None:
    raw = Signing(toc_frame=lambda z: hostile.unzstd(z))
    with pytest.raises(FormatError, match=r"blob: TOC is not zstd-compressed$"):
        _open(tmp_path, assemble(_parts(), raw))
    # containers/storage 1.43 took one
    layer = _open(tmp_path, assemble(_parts(old=True), raw))
    assert layer.read_file("usr/multi.bin") == MULTI


def test_toc_that_does_not_decode(tmp_path: Path) -> None:
    parts = _parts()
    parts.toc["version"] = "one"
    with pytest.raises(FormatError, match=r"^\S*blob: "):
        _open(tmp_path, assemble(parts))


# a position annotation: a template of the Assembly's fields (``{a.toc_pos.offset}``...), or
# a function of the Assembly
Position = str | Callable[[hostile.Assembly], str]


def _text(pos: Position, a: hostile.Assembly) -> str:
    return pos.format(a=a) if isinstance(pos, str) else pos(a)


def _with_positions(toc: Position | None = None, ts: Position | None = None
                    ) -> Callable[[dict[str, Any], hostile.Assembly], dict[str, Any]]:
    def f(ann: dict[str, Any], a: hostile.Assembly) -> dict[str, Any]:
        ann = dict(ann)
        if toc is not None:
            ann[fmt.CURRENT_PREFIX + "manifest-position"] = _text(toc, a)
        if ts is not None:
            ann[fmt.CURRENT_PREFIX + "tarsplit-position"] = _text(ts, a)
        return ann
    return f


def _positions(tmp_path: Path, toc: Position | None = None,
               ts: Position | None = None) -> ChunkedLayer:
    return _open(tmp_path, assemble(_parts(), Signing(keys=("new",),
                                                      annotations=_with_positions(toc, ts))))


def _toc(offset: int | None = None, length: int | None = None,
         uncompressed: int | None = None, mtype: int = 1) -> Position:
    """The TOC's position as assembled, but for the fields given."""
    def text(a: hostile.Assembly) -> str:
        p = a.toc_pos
        return (f"{p.offset if offset is None else offset}:"
                f"{p.length if length is None else length}:"
                f"{p.uncompressed if uncompressed is None else uncompressed}:{mtype}")
    return text


def _ts(offset: int | None = None, length: int | None = None,
        uncompressed: int | None = None) -> Position:
    """The tar-split's position as assembled, but for the fields given."""
    def text(a: hostile.Assembly) -> str:
        p = a.ts_pos
        assert p is not None
        return (f"{p.offset if offset is None else offset}:"
                f"{p.length if length is None else length}:"
                f"{p.uncompressed if uncompressed is None else uncompressed}")
    return text


TOC = "{a.toc_pos.offset}:{a.toc_pos.length}:{a.toc_pos.uncompressed}"
TS = "{a.ts_pos.offset}:{a.ts_pos.length}:{a.ts_pos.uncompressed}"


def test_positions_as_assembled_open(tmp_path: Path) -> None:
    layer = _positions(tmp_path, TOC + ":1", TS)
    assert layer.read_file("etc/one.txt") == ONE
    assert _positions(tmp_path, _toc(), _ts()).read_file("etc/one.txt") == ONE


def test_manifest_type_must_be_crfs(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"blob: invalid manifest type 2$"):
        _positions(tmp_path, _toc(mtype=2))
    with pytest.raises(FormatError, match=r"blob: invalid manifest type 0$"):
        _positions(tmp_path, _toc(mtype=0))


def test_toc_size_limits(tmp_path: Path) -> None:
    limit = fmt.MAX_TOC_SIZE
    with pytest.raises(FormatError, match=rf"blob: TOC of {limit + 1} bytes is too big$"):
        _positions(tmp_path, _toc(uncompressed=limit + 1))
    with pytest.raises(FormatError, match=r"blob: TOC of \d+ bytes is too big$"):
        _positions(tmp_path, _toc(length=limit + 1))
    # at the limit, the position is judged by where it lies
    with pytest.raises(FormatError, match=rf"the TOC position \d+\+{limit} lies outside"):
        _positions(tmp_path, _toc(length=limit))
    with pytest.raises(VerifyError, match=rf"blob: TOC: compressed data does not decompress "
                                          rf"to {limit} bytes$"):
        _positions(tmp_path, _toc(uncompressed=limit))


def test_toc_size_limit_of_the_old_format(tmp_path: Path) -> None:
    """The old format's own limit is lower, but a TOC is held to the larger of the two."""
    limit = fmt.MAX_TOC_SIZE
    assert fmt.OLD.max_toc_size < limit

    def old(length: int) -> hostile.LayerBlob:
        def ann(a: dict[str, Any], at: hostile.Assembly) -> dict[str, Any]:
            p = at.toc_pos
            return {**a, fmt.OLD_PREFIX + "manifest-position":
                    f"{p.offset}:{length}:{p.uncompressed}:1"}
        return assemble(_parts(old=True), Signing(annotations=ann))

    with pytest.raises(FormatError, match=r"blob: TOC of \d+ bytes is too big$"):
        _open(tmp_path, old(limit + 1))
    with pytest.raises(FormatError, match=rf"blob: the TOC position \d+\+{limit} lies outside"):
        _open(tmp_path, old(limit))


def test_tarsplit_size_limits(tmp_path: Path) -> None:
    limit = fmt.MAX_TARSPLIT_SIZE
    with pytest.raises(FormatError, match=r"blob: tar-split is too big$"):
        _positions(tmp_path, ts=_ts(uncompressed=limit + 1))
    with pytest.raises(FormatError, match=r"blob: tar-split is too big$"):
        _positions(tmp_path, ts=_ts(length=limit + 1))
    with pytest.raises(FormatError, match=rf"the tar-split position \d+\+{limit} lies outside"):
        _positions(tmp_path, ts=_ts(length=limit))
    with pytest.raises(FormatError, match=rf"the tar-split is \d+ bytes, its position says "
                                          rf"{limit}$"):
        _positions(tmp_path, ts=_ts(uncompressed=limit))


def test_positions_outside_the_blob(tmp_path: Path) -> None:
    size = len(_blob().blob)
    for what, toc, ts, shown in (
            ("TOC", _toc(offset=7), None, r"7\+\d+"),
            ("TOC", _toc(length=0), None, r"\d+\+0"),
            ("TOC", _toc(offset=size), None, rf"{size}\+\d+"),
            ("tar-split", None, _ts(offset=7), r"7\+\d+"),
            ("tar-split", None, _ts(length=0), r"\d+\+0"),
            ("tar-split", None, _ts(length=size), rf"\d+\+{size}")):
        with pytest.raises(FormatError, match=rf"blob: the {what} position {shown} lies "
                                              rf"outside the blob \({size} bytes\)$"):
            _positions(tmp_path, toc, ts)


def test_positions_at_the_edges_of_the_blob(tmp_path: Path) -> None:
    """Offset 8 (just past a skippable header) and an end at the blob's end are inside:
    what fails then is what the bytes there are."""
    with pytest.raises(VerifyError, match="TOC does not match its annotation"):
        _positions(tmp_path, _toc(offset=8))
    # the tar-split stretched to the end of the blob: its frame, then the footer's
    with pytest.raises(VerifyError, match="tar-split"):
        _positions(tmp_path, ts=lambda a: f"{a.ts_pos.offset}:{a.size - a.ts_pos.offset}:"
                                          f"{a.ts_pos.uncompressed}")
    with pytest.raises(FormatError, match="tar-split position .* lies outside"):
        _positions(tmp_path, ts=lambda a: f"{a.ts_pos.offset}:{a.size - a.ts_pos.offset + 1}:"
                                          f"{a.ts_pos.uncompressed}")


def _toc_end(a: hostile.Assembly) -> int:
    return a.toc_pos.offset + a.toc_pos.length


def test_toc_and_tarsplit_may_not_overlap(tmp_path: Path) -> None:
    overlapping: list[Position] = [
        TOC,  # the same bytes
        lambda a: f"{a.toc_pos.offset - 9}:10:10",  # its last byte on the TOC's first
        lambda a: f"{_toc_end(a) - 1}:10:10",  # its first byte on the TOC's last
        lambda a: f"{a.toc_pos.offset + 1}:1:1",  # inside
    ]
    for ts in overlapping:
        with pytest.raises(FormatError, match=r"blob: the TOC and the tar-split overlap$"):
            _positions(tmp_path, ts=ts)
    # ending right where the TOC starts, or starting right where it ends: apart (and what
    # fails is what those bytes are)
    apart: list[Position] = [lambda a: f"{a.toc_pos.offset - 10}:10:10",
                             lambda a: f"{_toc_end(a)}:10:10"]
    for ts in apart:
        with pytest.raises((FormatError, VerifyError)) as exc:
            _positions(tmp_path, ts=ts)
        assert "overlap" not in str(exc.value)


# -- the tar-split stream ---------------------------------------------------------------------


def test_tarsplit_streamed_from_the_source(tmp_path: Path) -> None:
    """A tar-split not held from the first fetch is read again from the source."""
    held = _open(tmp_path)
    source = Recording(_write(tmp_path, _blob(), "again"))
    layer = ChunkedLayer(source, held.toc, held.variant, held.toc_pos, held.checksum,
                         held.tarsplit_pos, None)
    assert layer.tarsplit_checked is False and layer.tar_size is None
    assert layer.data_end == held.data_end
    assert list(layer.tarsplit_stream()) == list(held.tarsplit_stream())
    pos = held.tarsplit_pos
    assert source.calls == [[(pos.offset, pos.length)]]


def test_tarsplit_that_decompresses_to_other_than_declared(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"blob: the tar-split decompresses to more than the "
                                          r"\d+ bytes declared$"):
        _positions(tmp_path, ts=_ts(uncompressed=100))
    parts = _parts()
    n = len(parts.tarsplit or b"")
    with pytest.raises(FormatError, match=rf"blob: the tar-split decompresses to more than the "
                                          rf"{n - 1} bytes declared$"):
        _positions(tmp_path, ts=_ts(uncompressed=n - 1))
    with pytest.raises(FormatError, match=rf"blob: the tar-split is {n} bytes, its position "
                                          rf"says {n + 1}$"):
        _positions(tmp_path, ts=_ts(uncompressed=n + 1))


def test_corrupt_tarsplit(tmp_path: Path) -> None:
    def damage(z: bytes) -> bytes:
        return z[:20] + bytes(b ^ 0x55 for b in z[20:40]) + z[40:]

    with pytest.raises(VerifyError, match=r"blob: corrupt tar-split \("):
        _open(tmp_path, assemble(_parts(), Signing(tarsplit_frame=damage)))


def test_tarsplit_that_does_not_match_its_digest(tmp_path: Path) -> None:
    parts = _parts()
    parts.toc["tarSplitDigest"] = hostile.sha(b"another tar-split")
    lb = assemble(parts, Signing(fix_tarsplit_digest=False))
    with pytest.raises(VerifyError, match=r"blob: tar-split does not match tarSplitDigest in "
                                          r"the TOC$"):
        _open(tmp_path, lb)
    # nothing learnt from it is kept
    layer = _open(tmp_path, lb, check=False)
    with pytest.raises(VerifyError, match="tarSplitDigest"):
        layer.verify()
    assert layer.tarsplit_checked is False
    assert all(info.crc is None for info in layer.files.values())


def test_tarsplit_the_toc_does_not_vouch_for_is_still_checked(tmp_path: Path) -> None:
    parts = _parts()
    del parts.toc["tarSplitDigest"]
    _set_ts_crc(parts, "etc/one.txt", 5)
    layer = _open(tmp_path, assemble(parts, Signing(fix_tarsplit_digest=False)))
    assert layer.tarsplit_checked is True
    assert layer.files["etc/one.txt"].crc == 5
    with pytest.raises(VerifyError, match="tar-split CRC"):
        layer.read_file("etc/one.txt")


def test_files_read_while_the_tarsplit_streams(tmp_path: Path) -> None:
    """A tar-split of a few MiB is streamed, each file read as its line comes (as a pull
    rebuilds the DiffID): the two decompressions must not share a context."""
    tar = without_padding(tar_of([(_info("a.bin"), MULTI), (_info("b.txt"), ONE)]))
    tar += bytes(3 << 20)  # record padding: the tar-split's lines after the files
    layer = _open(tmp_path, hostile.build(tar))
    got = {}
    for ts in layer.tarsplit_stream():
        if ts.type == fmt.TARSPLIT_FILE:
            got[ts.name] = layer.read_file(ts.name)
    assert got == {"a.bin": MULTI, "b.txt": ONE}
    assert layer.tar_size == len(tar)
