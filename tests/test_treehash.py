"""chunked.puller._pullio.TreeHash (C) and chunked.puller.treehash.PyTreeHash (its spec) on the same
inputs: one SHA-256 over bytes and files read back, and the same refusals."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from chunked.puller.treehash import PyTreeHash
from tests.native import c_module


@pytest.fixture(params=["python", "c"])
def kind(request: pytest.FixtureRequest) -> type:
    if request.param == "c":
        return c_module("chunked.puller._pullio").TreeHash
    return PyTreeHash


@pytest.fixture
def tree(tmp_path: Path) -> int:
    (tmp_path / "small").write_bytes(b"hello")
    (tmp_path / "big").write_bytes(bytes(range(256)) * 9000)  # > one 1 MiB read
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "link").symlink_to("small")
    (tmp_path / "dir").mkdir()
    return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)


def test_bytes_and_files_in_order(kind: type, tree: int) -> None:
    h = kind()
    assert h.update([b"head", (tree, b"small", 5), b"", (tree, b"big", 256 * 9000)]) is None
    assert h.update([(tree, b"empty", 0), b"tail"]) is None
    want = hashlib.sha256(b"head" + b"hello" + bytes(range(256)) * 9000 + b"tail")
    assert h.hexdigest() == want.hexdigest()
    assert h.hexdigest() == want.hexdigest()  # reading the digest does not end the hash
    assert kind().hexdigest() == hashlib.sha256().hexdigest()


@pytest.mark.parametrize(("item", "failure"), [
    ((b"small", 4), (0, "size")),  # grew since written
    ((b"small", 6), (0, "size")),  # shrank
    ((b"dir", 0), (0, "size")),  # not a regular file
    ((b"link", 5), (40, "open")),  # ELOOP: never through a symlink
    ((b"gone", 1), (2, "open")),  # ENOENT
])
def test_refuses_what_is_not_as_written(kind: type, tree: int, item: tuple[bytes, int],
                                        failure: tuple[int, str]) -> None:
    name, size = item
    got = kind().update([b"x", (tree, b"small", 5), (tree, name, size), (tree, b"small", 5)])
    assert got == (2, *failure)


def test_refuses_malformed_items(kind: type, tree: int) -> None:
    with pytest.raises(ValueError):
        kind().update([(tree, b"small", -1)])
    with pytest.raises(ValueError):
        kind().update([(tree, b"sm\0all", 5)])
    with pytest.raises(TypeError):
        kind().update(["text"])
