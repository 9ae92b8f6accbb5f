"""The batch writer and copier of partial pulls: chunked/puller/_pullio.c (C) and
chunked/puller/pullio_spec.py (its executable spec), every test on both, through the same
entry points and job records."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from chunked.puller import pullio_spec
from tests.native import c_module
from tests.need import need, need_root

ROOT = os.geteuid() == 0
OpenDir = Callable[[Path], int]


@pytest.fixture(params=["c", "python"])
def io(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "c":
        return c_module("chunked.puller._pullio")
    return pullio_spec


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
def opendir() -> Iterator[OpenDir]:
    """A directory (made if missing) as a descriptor, closed after the test (and before
    a file system the test mounted is unmounted, if asked for after it)."""
    fds: list[int] = []

    def open_dir(path: Path) -> int:
        path.mkdir(exist_ok=True)
        fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        return fds[-1]

    yield open_dir
    for fd in fds:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_job(dfd: int, name: str, pieces: list, size: int, whole: bytes = b"",
               mode: int = 0o644, *, chmod: bool = True, chown: bool = False,
               uid: int = 0, gid: int = 0, atime: int = 10**9,
               mtime: int = 2 * 10**9 + 5) -> tuple:
    return (dfd, b".tmp-" + name.encode(), name.encode(), size, mode, uid, gid, atime,
            mtime, chown, chmod, pieces, whole)


def _copy_job(src: Path, dfd: int, name: str, digest: bytes, size: int, *,
              mode: int = 0o600, uid: int = 0, gid: int = 0, mtime: int = 0,
              link: bool = False, chmod: bool = True) -> tuple:
    return (os.fsencode(src), dfd, b".tmp-" + name.encode(), name.encode(), size, mode,
            uid, gid, mtime, mtime, False, chmod, digest, link)


MISS = (0, 0, None)


# -- write_files ---------------------------------------------------------------------------

def test_write_files_holes_times_and_whole_digest(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    dfd = opendir(tmp_path / "d")
    data = b"a" * 5000 + bytes(70_000) + b"b" * 10
    jobs = [
        _write_job(dfd, "holes", [b"a" * 5000, 70_000, b"b" * 10], len(data), _sha(data)),
        _write_job(dfd, "tail-hole", [b"x" * 10, 4096], 4106, _sha(b"x" * 10 + bytes(4096))),
        _write_job(dfd, "empty", [], 0, mode=0o4755),
    ]
    assert io.write_files(jobs) == [(1, 0, None)] * 3
    d = tmp_path / "d"
    st = (d / "holes").stat()  # before reading, which may move atime (relatime)
    assert st.st_mtime_ns == 2 * 10**9 + 5 and st.st_atime_ns == 10**9
    assert st.st_blocks * 512 < 70_000  # the hole stayed a hole
    assert (d / "holes").read_bytes() == data
    assert (d / "tail-hole").read_bytes() == b"x" * 10 + bytes(4096)
    assert (d / "empty").stat().st_mode & 0o7777 == 0o4755
    assert sorted(os.listdir(d)) == ["empty", "holes", "tail-hole"]


def test_write_files_empty_and_all_holes(io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    dfd = opendir(tmp_path / "d")
    jobs = [
        _write_job(dfd, "empty", [], 0, _sha(b"")),
        _write_job(dfd, "empty-piece", [b""], 0, _sha(b"")),
        _write_job(dfd, "zeros", [1 << 20, 1 << 16], (1 << 20) + (1 << 16),
                   _sha(bytes((1 << 20) + (1 << 16)))),
        _write_job(dfd, "zero-hole", [0], 0),  # a hole of nothing: still truncated to size
    ]
    assert [r[0] for r in io.write_files(jobs)] == [1, 1, 1, 1]
    d = tmp_path / "d"
    assert (d / "empty").read_bytes() == b"" and (d / "empty-piece").read_bytes() == b""
    assert (d / "zeros").read_bytes() == bytes((1 << 20) + (1 << 16))
    assert (d / "zeros").stat().st_blocks == 0  # a file of holes only holds no blocks
    assert (d / "zero-hole").stat().st_size == 0


def test_write_files_without_a_whole_digest_trusts_the_pieces(io: ModuleType,
                                                             tmp_path: Path,
                                                             opendir: OpenDir) -> None:
    """The caller checked each chunk on arrival; with no whole digest the pieces are
    written as they are, and a file not ending in a hole is as long as its pieces."""
    dfd = opendir(tmp_path / "d")
    assert io.write_files([_write_job(dfd, "f", [b"abc", 2, b"d"], 99)]) == [(1, 0, None)]
    assert (tmp_path / "d" / "f").read_bytes() == b"abc\0\0d"


def test_write_files_refuses_pieces_that_do_not_add_up(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    dfd = opendir(tmp_path / "d")
    jobs = [_write_job(dfd, "fine", [b"ok"], 2, _sha(b"ok")),
            _write_job(dfd, "lie", [b"one", b"two"], 6, _sha(b"onetwX")),
            _write_job(dfd, "after", [b"x"], 1)]
    # the mismatch ends the batch: the job after it is a miss, never started
    assert io.write_files(jobs) == [(1, 0, None), (-2, 0, None), MISS]
    assert os.listdir(tmp_path / "d") == ["fine"]


def test_write_files_reports_destination_errors_and_stops(io: ModuleType,
                                                          tmp_path: Path, opendir: OpenDir) -> None:
    dfd = opendir(tmp_path / "d")
    (tmp_path / "d" / "taken").mkdir()  # renaming a file over a directory fails
    results = io.write_files([_write_job(dfd, "taken", [b"x"], 1),
                              _write_job(dfd, "after", [b"y"], 1)])
    assert results[0][0] == -1 and results[0][1] in (errno.EISDIR, errno.EEXIST,
                                                     errno.ENOTEMPTY)
    assert results[0][2] == "rename" and results[1] == MISS
    assert os.listdir(tmp_path / "d") == ["taken"]  # no temporary file left


def test_write_files_in_a_removed_directory(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    dfd = opendir(tmp_path / "d")
    os.rmdir(tmp_path / "d")
    assert io.write_files([_write_job(dfd, "f", [b"x"], 1)]) == [(-1, errno.ENOENT, "create")]


def test_a_symlink_in_the_way_is_never_followed(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    d = tmp_path / "d"
    dfd = opendir(d)
    # at the temporary name: refused (O_EXCL | O_NOFOLLOW), the target untouched
    (d / ".tmp-a").symlink_to(outside)
    assert io.write_files([_write_job(dfd, "a", [b"pwned"], 5)]) == \
        [(-1, errno.EEXIST, "create")]
    # at the final name: the symlink itself is replaced by the file
    (d / "b").symlink_to(outside)
    assert io.write_files([_write_job(dfd, "b", [b"new"], 3)]) == [(1, 0, None)]
    assert not (d / "b").is_symlink() and (d / "b").read_bytes() == b"new"
    assert outside.read_bytes() == b"precious"
    # copy_files likewise
    src = tmp_path / "src"
    src.write_bytes(b"copied")
    (d / "c").symlink_to(outside)
    assert io.copy_files([_copy_job(src, dfd, "c", _sha(b"copied"), 6)])[0][0] in (1, 2)
    assert not (d / "c").is_symlink() and (d / "c").read_bytes() == b"copied"
    assert outside.read_bytes() == b"precious"


def test_an_existing_file_is_replaced_whole(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    """Never written into: a reader (or a hard link) of the old file keeps the old bytes."""
    d = tmp_path / "d"
    dfd = opendir(d)
    for name in ("w", "c"):
        (d / name).write_bytes(b"old contents")
        os.link(d / name, d / f"{name}-old")
    src = tmp_path / "src"
    src.write_bytes(b"copy")
    assert io.write_files([_write_job(dfd, "w", [b"new"], 3)]) == [(1, 0, None)]
    assert io.copy_files([_copy_job(src, dfd, "c", _sha(b"copy"), 4)])[0][0] in (1, 2)
    for name, new in (("w", b"new"), ("c", b"copy")):
        assert (d / name).read_bytes() == new
        assert (d / f"{name}-old").read_bytes() == b"old contents"
        assert (d / name).stat().st_ino != (d / f"{name}-old").stat().st_ino
    assert sorted(os.listdir(d)) == ["c", "c-old", "w", "w-old"]


def test_permissions_and_times(io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    dfd = opendir(tmp_path / "d")
    before_1970 = -1_500_000_001  # nanoseconds are never negative: -2 s + 499999999 ns
    jobs = [
        _write_job(dfd, "exact", [b"x"], 1, mode=0o4750),
        _write_job(dfd, "umasked", [b"x"], 1, mode=0o4777, chmod=False),
        _write_job(dfd, "old", [b"x"], 1, atime=7, mtime=before_1970),
    ]
    assert [r[0] for r in io.write_files(jobs)] == [1, 1, 1]
    d = tmp_path / "d"
    assert (d / "exact").stat().st_mode & 0o7777 == 0o4750
    # no chmod: the file keeps the mode it was created with, the umask applied
    assert (d / "umasked").stat().st_mode & 0o7777 == 0o777 & ~_umask()
    st = (d / "old").stat()
    assert st.st_mtime_ns == before_1970 and st.st_atime_ns == 7


def test_chown_comes_before_chmod(io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    """chown clears setuid bits; chmod after it puts them back."""
    need_root("chown")
    dfd = opendir(tmp_path / "d")
    assert io.write_files([_write_job(dfd, "s", [b"x"], 1, mode=0o6755, chown=True,
                                      uid=1234, gid=5678)]) == [(1, 0, None)]
    st = (tmp_path / "d" / "s").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o6755)


def test_ids_beyond_uid_t_are_refused(io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    """2^32 must not wrap to 0 (root) on its way into C; (uid_t)-1 means "unchanged"."""
    dfd = opendir(tmp_path / "d")
    for uid in (2**32, 2**32 - 1, 2**40, -1):
        with pytest.raises(OverflowError):
            io.write_files([_write_job(dfd, "x", [b"a"], 1, chown=True, uid=uid)])
    assert os.listdir(tmp_path / "d") == []
    if ROOT:
        job = _write_job(dfd, "x", [b"a"], 1, chown=True, uid=2**32 - 2, gid=7)
        assert io.write_files([job]) == [(1, 0, None)]
        st = (tmp_path / "d" / "x").stat()
        assert (st.st_uid, st.st_gid) == (2**32 - 2, 7)


@pytest.mark.parametrize(("bad", "exc"), [
    (lambda j: j[:12], TypeError),  # too short
    (lambda j: (*j[:12], j[12], b""), TypeError),  # too long
    (lambda j: ("d", *j[1:]), TypeError),  # dirfd not an int
    (lambda j: (j[0], "tmp", *j[2:]), TypeError),  # a path not bytes
    (lambda j: (j[0], b"t\0mp", *j[2:]), ValueError),
    (lambda j: (*j[:2], b"na\0me", *j[3:]), ValueError),
    (lambda j: (*j[:7], 2**63, *j[8:]), OverflowError),  # atime beyond int64 ns
    (lambda j: (*j[:11], (b"x",), j[12]), TypeError),  # pieces not a list
    (lambda j: (*j[:11], [b"x", -1], j[12]), ValueError),  # a negative hole
    (lambda j: (*j[:11], [bytearray(b"x")], j[12]), TypeError),
    (lambda j: (*j[:11], [b"x", 1.0], j[12]), TypeError),
    (lambda j: (*j[:12], b"short"), ValueError),  # a digest not 0 or 32 bytes
    (lambda j: list(j), TypeError),  # a job is a tuple
])
def test_write_files_malformed_jobs_raise_before_anything_is_done(
        io: ModuleType, tmp_path: Path, bad, exc: type,
        opendir: OpenDir) -> None:  # type: ignore[no-untyped-def]
    dfd = opendir(tmp_path / "d")
    good = _write_job(dfd, "first", [b"x"], 1)
    with pytest.raises(exc):
        io.write_files([good, bad(_write_job(dfd, "second", [b"y"], 1))])
    assert os.listdir(tmp_path / "d") == []
    with pytest.raises(TypeError):
        io.write_files(7)


# -- copy_files ----------------------------------------------------------------------------

def test_copy_files_verifies_and_misses_cleanly(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"content" * 1000)
    (tmp_path / "link").symlink_to(src)
    (tmp_path / "dir").mkdir()
    dfd = opendir(tmp_path / "d")
    good = _sha(b"content" * 1000)
    results = io.copy_files([
        _copy_job(src, dfd, "ok", good, 7000),
        _copy_job(src, dfd, "wrong-digest", _sha(b"other"), 7000),
        _copy_job(src, dfd, "wrong-size", good, 7001),
        _copy_job(tmp_path / "link", dfd, "via-symlink", good, 7000),  # never followed
        _copy_job(tmp_path / "gone", dfd, "gone", good, 7000),
        _copy_job(tmp_path / "dir", dfd, "a-dir", good, 4096),
    ])
    assert results[0] in ((1, 0, None), (2, 0, None)) and results[1:] == [MISS] * 5
    assert os.listdir(tmp_path / "d") == ["ok"]
    assert (tmp_path / "d" / "ok").read_bytes() == b"content" * 1000
    assert (tmp_path / "d" / "ok").stat().st_mode & 0o777 == 0o600


def test_copy_files_of_an_empty_file(io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"")
    dfd = opendir(tmp_path / "d")
    results = io.copy_files([_copy_job(src, dfd, "e", _sha(b""), 0, mtime=3 * 10**9),
                             _copy_job(src, dfd, "lie", _sha(b"x"), 0)])
    assert results[0][0] in (1, 2) and results[1] == MISS
    assert (tmp_path / "d" / "e").read_bytes() == b""
    assert (tmp_path / "d" / "e").stat().st_mtime_ns == 3 * 10**9
    assert os.listdir(tmp_path / "d") == ["e"]


def test_copy_files_keeps_holes_readable_as_zeros(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.write(b"head")
        f.truncate(3 << 20)  # a long hole after the head
    want = b"head" + bytes((3 << 20) - 4)
    dfd = opendir(tmp_path / "d")
    assert io.copy_files([_copy_job(src, dfd, "h", _sha(want), len(want))])[0][0] in (1, 2)
    assert (tmp_path / "d" / "h").read_bytes() == want


def test_copy_files_links_only_when_metadata_match(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"shared")
    os.chmod(src, 0o640)
    os.utime(src, ns=(5, 7 * 10**9 + 3))
    tagged = tmp_path / "tagged"  # the same, but with an xattr the entry does not have
    tagged.write_bytes(b"shared")
    os.chmod(tagged, 0o640)
    os.utime(tagged, ns=(5, 7 * 10**9 + 3))
    try:
        os.setxattr(tagged, "user.note", b"x")
        has_xattr = True
    except OSError:
        has_xattr = False
    dfd = opendir(tmp_path / "d")
    good = _sha(b"shared")
    st = src.stat()

    def job(source: Path, name: str, mode: int, mtime: int) -> tuple:
        return _copy_job(source, dfd, name, good, 6, mode=mode, uid=st.st_uid, gid=st.st_gid,
                         mtime=mtime, link=True)

    results = io.copy_files([job(src, "same", 0o640, 7 * 10**9 + 3),
                             job(src, "other-mode", 0o644, 7 * 10**9 + 3),
                             job(src, "other-time", 0o640, 7 * 10**9),
                             job(tagged, "xattr", 0o640, 7 * 10**9 + 3)])
    # a reflink is preferred where the file system can; a hard link where it cannot
    assert results[0][0] in (2, 3) and all(r[0] in (1, 2) for r in results[1:3])
    assert results[3][0] in ((1, 2) if has_xattr else (2, 3))
    d = tmp_path / "d"
    assert ((d / "same").stat().st_ino == src.stat().st_ino) == (results[0][0] == 3)
    assert (d / "other-mode").stat().st_ino != src.stat().st_ino
    assert (d / "other-mode").stat().st_mode & 0o7777 == 0o644
    assert (d / "other-time").stat().st_mtime_ns == 7 * 10**9
    assert sorted(os.listdir(d)) == ["other-mode", "other-time", "same", "xattr"]


def test_copy_files_link_replaces_an_existing_file(
        io: ModuleType, tmp_path: Path, opendir: OpenDir) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"shared")
    os.utime(src, ns=(0, 0))
    st = src.stat()
    d = tmp_path / "d"
    dfd = opendir(d)
    (d / "f").write_bytes(b"old")
    job = _copy_job(src, dfd, "f", _sha(b"shared"), 6, mode=st.st_mode & 0o7777,
                    uid=st.st_uid, gid=st.st_gid, link=True)
    status = io.copy_files([job])[0][0]
    assert status in (2, 3)
    assert (d / "f").read_bytes() == b"shared" and os.listdir(d) == ["f"]


def test_copy_files_reports_destination_errors_and_stops(io: ModuleType,
                                                         tmp_path: Path, opendir: OpenDir) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    d = tmp_path / "d"
    dfd = opendir(d)
    (d / "taken").mkdir()
    (d / "taken" / "x").write_bytes(b"")  # a non-empty directory in the way
    results = io.copy_files([_copy_job(src, dfd, "taken", _sha(b"data"), 4),
                             _copy_job(src, dfd, "after", _sha(b"data"), 4)])
    assert results[0][0] == -1 and results[0][2] == "rename" and results[1] == MISS
    assert sorted(os.listdir(d)) == ["taken"]
    # a destination directory that cannot be told apart fails; a missing source first misses
    assert io.copy_files([_copy_job(tmp_path / "gone", -1, "x", _sha(b"data"), 4),
                          _copy_job(src, -1, "x", _sha(b"data"), 4)]) == \
        [MISS, (-1, errno.EBADF, "stat")]


@pytest.mark.parametrize(("bad", "exc"), [
    (lambda j: j[:13], TypeError),
    (lambda j: ("src", *j[1:]), TypeError),
    (lambda j: (b"s\0rc", *j[1:]), ValueError),
    (lambda j: (*j[:12], b"x" * 31, j[13]), ValueError),
    (lambda j: (*j[:12], "digest", j[13]), TypeError),
    (lambda j: (*j[:5], -1, *j[6:]), OverflowError),  # mode
    (lambda j: (*j[:4], 2**63, *j[5:]), OverflowError),  # size
])
def test_copy_files_malformed_jobs_raise_before_anything_is_done(
        io: ModuleType, tmp_path: Path, bad, exc: type,
        opendir: OpenDir) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.write_bytes(b"data")
    dfd = opendir(tmp_path / "d")
    good = _copy_job(src, dfd, "first", _sha(b"data"), 4)
    with pytest.raises(exc):
        io.copy_files([good, bad(_copy_job(src, dfd, "second", _sha(b"data"), 4))])
    assert os.listdir(tmp_path / "d") == []


def test_clone_capability_is_per_file_system(io: ModuleType, tmp_path: Path,
                                             xfs: Path, opendir: OpenDir) -> None:
    """A file system that cannot clone (ext4, tmpfs) must not stop clones on another one
    the same process writes to: one job after the other, and in one batch."""
    plain = tmp_path / "plain"
    plain.mkdir()
    if os.stat(plain).st_dev == os.stat(xfs).st_dev:
        need(False, "tmp_path is on the XFS mount")
    fds = {}
    for where in (plain, xfs):
        (where / "src").write_bytes(b"clone me" * 5000)
        fds[where] = opendir(where / "d")
    digest = _sha(b"clone me" * 5000)

    def job(where: Path, name: str) -> tuple:
        return _copy_job(where / "src", fds[where], name, digest, 40_000)

    first = io.copy_files([job(plain, "a")])[0][0]
    if first == 2:
        need(False, "tmp_path's file system can clone too: no file system here refuses")
    assert first == 1
    assert io.copy_files([job(xfs, "a")]) == [(2, 0, None)]
    assert [r[0] for r in io.copy_files([job(plain, "b"), job(xfs, "b"), job(plain, "c"),
                                         job(xfs, "c")])] == [1, 2, 1, 2]
    for where in (plain, xfs):
        for name in "abc":
            assert (where / "d" / name).read_bytes() == b"clone me" * 5000


def test_clone_falls_back_to_a_link_where_asked(io: ModuleType, tmp_path: Path,
                                                xfs: Path, opendir: OpenDir) -> None:
    """With link asked and the metadata matching, XFS clones and ext4 links."""
    results = []
    for where in (tmp_path / "plain", xfs):
        where.mkdir(exist_ok=True)
        src = where / "src"
        src.write_bytes(b"both")
        st = src.stat()
        dfd = opendir(where / "d")
        job = _copy_job(src, dfd, "f", _sha(b"both"), 4, mode=st.st_mode & 0o7777,
                        uid=st.st_uid, gid=st.st_gid, mtime=st.st_mtime_ns, link=True)
        results.append(io.copy_files([job])[0][0])
    assert results == [3, 2]
