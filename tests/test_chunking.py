"""The chunker against a model of containers/storage's rule, fed in pieces of every size.

The model takes the whole file at once and says the rule plainly: a maximal run of at
least HOLE_THRESHOLD zero bytes is a hole (one chunk, rolled into the checksum without
split tests); everything else is data, split after each byte where the rolling checksum
fires. The chunker works on a stream of pieces and holds back trailing zeros, so its
output must not depend on where the pieces were cut.
"""

from __future__ import annotations

import random
import re

import pytest

from chunked.format import HOLE_THRESHOLD
from chunked.format.chunking import Chunker, RollSum


class Recorder:
    """A ChunkSink that keeps the chunk stream: ("data", bytes) and ("hole", n)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes | int]] = []
        self._pending = bytearray()
        self.splits = 0

    def data(self, piece: memoryview) -> None:
        assert isinstance(piece, memoryview)
        assert len(piece) > 0, "an empty data piece"
        self._pending += piece

    def split(self) -> None:
        self.splits += 1
        if self._pending:
            self.chunks.append(("data", bytes(self._pending)))
            self._pending.clear()

    def hole(self, n: int) -> None:
        assert not self._pending, "a hole while a data chunk is pending"
        self.chunks.append(("hole", n))

    def close(self) -> list[tuple[str, bytes | int]]:
        assert not self._pending, "data left pending after finish()"
        return self.chunks


def model(payload: bytes) -> list[tuple[str, bytes | int]]:
    out: list[tuple[str, bytes | int]] = []
    rs = RollSum()

    def data(seg: bytes) -> None:
        start = 0
        while start < len(seg):
            j = rs.feed(seg, start, len(seg))
            end = len(seg) if j < 0 else j
            out.append(("data", seg[start:end]))
            start = end

    pos = 0
    for m in re.finditer(rb"\x00{%d,}" % HOLE_THRESHOLD, payload):
        data(payload[pos:m.start()])
        rs.roll_zeros(m.end() - m.start())
        out.append(("hole", m.end() - m.start()))
        pos = m.end()
    data(payload[pos:])
    return out


def chunk(payload: bytes, cuts: list[int]) -> tuple[list[tuple[str, bytes | int]], Recorder]:
    rec = Recorder()
    c = Chunker(rec)
    prev = 0
    for cut in [*cuts, len(payload)]:
        c.feed(payload[prev:cut])
        prev = cut
    c.finish()
    return rec.close(), rec


def every(payload: bytes, size: int) -> list[int]:
    return list(range(size, len(payload), size))


def _random(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# the rule fires about once per 64 KiB; these 80 KiB split eight times
DATA = _random(2138, 80 << 10)
Z = HOLE_THRESHOLD


def _payloads() -> dict[str, bytes]:
    return {
        "random": DATA,
        "hole-in-middle": DATA[:30_000] + bytes(5000) + DATA[30_000:],
        "holes-at-ends": bytes(3 * Z) + DATA[:60_000] + bytes(Z),
        "threshold-runs": (DATA[:20_000] + bytes(Z - 1) + DATA[20_000:40_000] + bytes(Z)
                           + DATA[40_000:60_000] + bytes(Z + 1) + DATA[60_000:]),
        "short-zero-runs": b"".join(DATA[i:i + 9000] + bytes(i % 700)
                                    for i in range(0, len(DATA), 9000)),
        "trailing-short-zeros": DATA[:50_000] + bytes(Z - 1),
        "all-zero": bytes(3 * Z + 17),
        "short-all-zero": bytes(Z - 1),
    }


@pytest.mark.parametrize("name", sorted(_payloads()))
@pytest.mark.parametrize("size", [None, 1000, Z - 1, Z, Z + 1, 4096, 65536])
def test_pieces_of_any_size_cut_as_the_model(name: str, size: int | None) -> None:
    payload = _payloads()[name]
    want = model(payload)
    got, _ = chunk(payload, every(payload, size) if size else [])
    assert got == want
    assert b"".join(c if isinstance(c, bytes) else bytes(c) for _, c in got) == payload


def test_the_test_data_exercises_the_rule() -> None:
    # guard the tests above: their inputs must split, hole and straddle the threshold
    for name, payload in _payloads().items():
        kinds = [k for k, _ in model(payload)]
        if name not in ("all-zero", "short-all-zero", "trailing-short-zeros"):
            assert kinds.count("data") >= 3, name
    assert [k for k, _ in model(_payloads()["hole-in-middle"])].count("hole") == 1
    # the data after the hole splits too, so a hole not rolled into the checksum shows
    after = model(_payloads()["hole-in-middle"])
    hole_at = [k for k, _ in after].index("hole")
    assert [k for k, _ in after[hole_at + 1:]].count("data") >= 2


def test_random_cuts_match_the_model() -> None:
    rng = random.Random(3)
    payload = _payloads()["threshold-runs"]
    want = model(payload)
    for _ in range(6):
        cuts = sorted(rng.sample(range(1, len(payload)), 40))
        assert chunk(payload, cuts)[0] == want


def test_byte_by_byte_feeding() -> None:
    payload = DATA[:3000] + bytes(Z) + DATA[3000:4000] + bytes(Z - 1) + b"\1" + bytes(Z + 5)
    assert chunk(payload, list(range(1, len(payload))))[0] == model(payload)


@pytest.mark.parametrize("run, want", [
    (Z - 1, [("data", b"a" + bytes(Z - 1) + b"b")]),
    (Z, [("data", b"a"), ("hole", Z), ("data", b"b")]),
    (Z + 1, [("data", b"a"), ("hole", Z + 1), ("data", b"b")]),
])
def test_threshold_exactly(run: int, want: list[tuple[str, bytes | int]]) -> None:
    payload = b"a" + bytes(run) + b"b"
    assert chunk(payload, [])[0] == want
    # the run cut in two across pieces: the held-back zeros still count as one run
    assert chunk(payload, [1 + run // 2])[0] == want
    assert chunk(payload, [1, 1 + run])[0] == want


def test_zeros_held_back_across_pieces() -> None:
    # 600 zeros end one piece and 600 start the next: one hole of 1200
    payload = b"x" + bytes(1200) + b"y"
    assert chunk(payload, [601])[0] == [("data", b"x"), ("hole", 1200), ("data", b"y")]
    # three pieces of zeros only, between data: still one hole
    assert chunk(payload, [1, 300, 700, 1201])[0] == \
        [("data", b"x"), ("hole", 1200), ("data", b"y")]
    # 500 + 500 is under the threshold: data, in order
    payload = b"x" + bytes(1000) + b"y"
    assert chunk(payload, [501])[0] == [("data", payload)]


def test_finish_flushes_trailing_zeros() -> None:
    assert chunk(b"q" + bytes(Z - 1), [1])[0] == [("data", b"q" + bytes(Z - 1))]
    assert chunk(b"q" + bytes(Z), [1])[0] == [("data", b"q"), ("hole", Z)]
    assert chunk(bytes(Z - 1), [])[0] == [("data", bytes(Z - 1))]
    assert chunk(bytes(Z), [100])[0] == [("hole", Z)]


def test_empty_pieces_and_empty_file() -> None:
    rec = Recorder()
    c = Chunker(rec)
    c.feed(b"")
    c.feed(b"ab")
    c.feed(b"")
    c.feed(b"c")
    c.finish()
    assert rec.close() == [("data", b"abc")]
    got, rec = chunk(b"", [])
    assert got == [] and rec.splits == 1  # finish() always ends the (empty) chunk


def test_split_positions_follow_the_rolling_sum() -> None:
    # each data chunk but the last ends on a byte where the checksum fired, from a state
    # carried over from the chunk before (not restarted per chunk)
    got = [c for k, c in model(DATA) if k == "data"]
    rs = RollSum()
    for piece in got[:-1]:
        assert isinstance(piece, bytes)
        assert rs.feed(piece[:-1]) == -1
        assert rs.feed(piece[-1:]) == 1
    assert isinstance(got[-1], bytes) and rs.feed(got[-1]) == -1
    assert chunk(DATA, every(DATA, 4096))[0] == model(DATA)


def test_a_hole_rolls_the_sum_without_split_tests() -> None:
    # after a hole, splits fall where a checksum that rolled the zeros puts them
    tail = DATA
    got = chunk(b"z" + bytes(2000) + tail, [])[0]
    assert got[:2] == [("data", b"z"), ("hole", 2000)]
    rs = RollSum()
    assert rs.feed(b"z") == -1
    rs.roll_zeros(2000)
    ends = []
    pos = 0
    while (j := rs.feed(tail, pos, len(tail))) >= 0:
        ends.append(j)
        pos = j
    assert ends, "the tail must split"
    lengths = [len(c) for k, c in got[2:] if isinstance(c, bytes)]
    assert lengths[:len(ends)] == [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]
