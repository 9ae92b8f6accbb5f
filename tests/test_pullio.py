"""The C batch writer and copier of partial pulls (chunked/puller/_pullio.c), on their own."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

_pullio = pytest.importorskip("chunked.puller._pullio")


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _dir(path: Path) -> int:
    path.mkdir(exist_ok=True)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _write_job(dfd: int, name: str, pieces: list, size: int, whole: bytes = b"",
               mode: int = 0o644) -> tuple:
    return (dfd, b".tmp-" + name.encode(), name.encode(), size, mode, 0, 0, 10**9,
            2 * 10**9 + 5, False, True, pieces, whole)


def test_write_files_holes_times_and_whole_digest(tmp_path: Path) -> None:
    dfd = _dir(tmp_path / "d")
    data = b"a" * 5000 + bytes(70_000) + b"b" * 10
    jobs = [
        _write_job(dfd, "holes", [b"a" * 5000, 70_000, b"b" * 10], len(data), _sha(data)),
        _write_job(dfd, "tail-hole", [b"x" * 10, 4096], 4106, _sha(b"x" * 10 + bytes(4096))),
        _write_job(dfd, "empty", [], 0, mode=0o4755),
    ]
    assert [r[0] for r in _pullio.write_files(jobs)] == [1, 1, 1]
    d = tmp_path / "d"
    st = (d / "holes").stat()  # before reading, which may move atime (relatime)
    assert st.st_mtime_ns == 2 * 10**9 + 5 and st.st_atime_ns == 10**9
    assert st.st_blocks * 512 < 70_000  # the hole stayed a hole
    assert (d / "holes").read_bytes() == data
    assert (d / "tail-hole").read_bytes() == b"x" * 10 + bytes(4096)
    assert (d / "empty").stat().st_mode & 0o7777 == 0o4755
    assert sorted(os.listdir(d)) == ["empty", "holes", "tail-hole"]


def test_write_files_refuses_pieces_that_do_not_add_up(tmp_path: Path) -> None:
    dfd = _dir(tmp_path / "d")
    job = _write_job(dfd, "lie", [b"one", b"two"], 6, _sha(b"onetwX"))
    assert _pullio.write_files([job])[0][0] == -2
    assert os.listdir(tmp_path / "d") == []


def test_write_files_reports_destination_errors(tmp_path: Path) -> None:
    dfd = _dir(tmp_path / "d")
    (tmp_path / "d" / "taken").mkdir()  # renaming a file over a directory fails
    status, err, stage = _pullio.write_files([_write_job(dfd, "taken", [b"x"], 1)])[0]
    assert status == -1 and stage == "rename" and err != 0
    assert os.listdir(tmp_path / "d") == ["taken"]


def test_copy_files_verifies_and_misses_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"content" * 1000)
    (tmp_path / "link").symlink_to(src)
    dfd = _dir(tmp_path / "d")

    def job(source: Path, name: str, digest: bytes, size: int = 7000) -> tuple:
        return (os.fsencode(source), dfd, b".tmp-" + name.encode(), name.encode(), size,
                0o600, 0, 0, 0, 0, False, True, digest, False)

    good = _sha(b"content" * 1000)
    results = _pullio.copy_files([
        job(src, "ok", good),
        job(src, "wrong-digest", _sha(b"other")),
        job(src, "wrong-size", good, size=7001),
        job(tmp_path / "link", "via-symlink", good),  # never followed
        job(tmp_path / "gone", "gone", good),
    ])
    assert [r[0] for r in results] in ([1, 0, 0, 0, 0], [2, 0, 0, 0, 0])
    assert os.listdir(tmp_path / "d") == ["ok"]
    assert (tmp_path / "d" / "ok").read_bytes() == b"content" * 1000
    assert (tmp_path / "d" / "ok").stat().st_mode & 0o777 == 0o600


def test_copy_files_links_only_when_metadata_match(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"shared")
    os.chmod(src, 0o640)
    os.utime(src, ns=(5, 7 * 10**9 + 3))
    dfd = _dir(tmp_path / "d")
    good = _sha(b"shared")

    def job(name: str, mode: int, mtime: int) -> tuple:
        st = src.stat()
        return (os.fsencode(src), dfd, b".tmp-" + name.encode(), name.encode(), 6, mode,
                st.st_uid, st.st_gid, mtime, mtime, False, True, good, True)

    results = _pullio.copy_files([job("same", 0o640, 7 * 10**9 + 3),
                                  job("other-mode", 0o644, 7 * 10**9 + 3),
                                  job("other-time", 0o640, 7 * 10**9)])
    # a reflink is preferred where the file system can; a hard link where it cannot
    assert results[0][0] in (2, 3) and all(r[0] in (1, 2) for r in results[1:])
    d = tmp_path / "d"
    assert ((d / "same").stat().st_ino == src.stat().st_ino) == (results[0][0] == 3)
    assert (d / "other-mode").stat().st_ino != src.stat().st_ino
    assert (d / "other-mode").stat().st_mode & 0o7777 == 0o644
    assert sorted(os.listdir(d)) == ["other-mode", "other-time", "same"]


def test_write_files_refuses_ids_beyond_uid_t(tmp_path: Path) -> None:
    """2^32 must not wrap to 0 (root) on its way into C; (uid_t)-1 means "unchanged"."""
    dfd = _dir(tmp_path / "d")
    for uid in (2**32, 2**32 - 1, 2**40):
        job = (dfd, b".tmp-x", b"x", 1, 0o644, uid, 0, 0, 0, True, True, [b"a"], b"")
        with pytest.raises(OverflowError):
            _pullio.write_files([job])
    job = (dfd, b".tmp-x", b"x", 1, 0o644, 2**32 - 2, 7, 0, 0, True, True, [b"a"], b"")
    assert _pullio.write_files([job])[0][0] == 1
    st = (tmp_path / "d" / "x").stat()
    assert (st.st_uid, st.st_gid) == (2**32 - 2, 7)
