"""The builder's shortcuts give the blob its general path gives, byte for byte: a payload
read whole without a hole skips the Chunker (forced off here by making every payload look
like it has a hole), and the threads change nothing."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from chunked import builder
from tests.tarfactory import all_tars


def _payloads_tar() -> bytes:
    rng = random.Random(8)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(120):
            kind = i % 6
            size = rng.choice([1, 100, 1023, 1024, 5000, 70_000, 300_000, 1_500_000])
            data = rng.randbytes(size)
            if kind == 1:
                data += bytes(rng.randint(1, 1023))  # zeros at the end, short of a hole
            elif kind == 2:
                data += bytes(1024) + rng.randbytes(50)  # a hole
            elif kind == 3:
                data = bytes(rng.randint(1, 3000))
            elif kind == 4:
                data = b"a" * size  # a rolling checksum that may never split
            ti = tarfile.TarInfo(f"d/f{i:03d}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return out.getvalue()


def _build(tar: bytes, threads: int) -> bytes:
    out = io.BytesIO()
    builder.build_blob(io.BytesIO(tar), out, threads=threads)
    return out.getvalue()


@pytest.mark.parametrize("name", ["payloads", *sorted(all_tars())])
def test_buffered_payloads_build_what_the_chunker_builds(name, monkeypatch):
    tar = _payloads_tar() if name == "payloads" else all_tars()[name]
    fast = _build(tar, 2)
    assert _build(tar, 1) == fast
    monkeypatch.setattr(builder, "_HOLE", b"")  # every payload takes the Chunker
    assert _build(tar, 2) == fast
