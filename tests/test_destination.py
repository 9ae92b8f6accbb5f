"""chunked.puller.destination on small handmade entries: names that would leave the
destination are refused, nothing is ever written through a symlink or outside the
tree, and what is written gets exactly the entry's metadata (run as root: owners and
devices are checked too)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunked import format as fmt
from chunked.puller import destination, pullio_spec
from chunked.puller.destination import (
    TMP_PREFIX,
    Destination,
    UnsafePathError,
    check_name,
    digest_fd,
    entry_times,
    write_all,
)
from tests.need import ROOT, need_root

T1 = 1_700_000_000_123_456_789  # ns: the sub-second part must survive
T2 = 1_600_000_000_987_654_321


def _e(name: str, kind: str = fmt.TYPE_REG, mode: int = 0o644, **kw: object) -> fmt.TocEntry:
    kw.setdefault("modtime", fmt.GoTime(T1))
    return fmt.TocEntry(type=kind, name=name, mode=mode, **kw)  # type: ignore[arg-type]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _open_paths() -> set[str]:
    """What the process's descriptors are open on."""
    paths = set()
    for n in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # (listdir's own, closed by now)
            paths.add(os.readlink(f"/proc/self/fd/{n}"))
    return paths


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def dest(tmp_path: Path, umask022: None) -> Iterator[Destination]:
    d = Destination(str(tmp_path / "dest"), as_root=ROOT)
    try:
        yield d
    finally:
        if d.root_fd != -1:
            d.close()


def _everything(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "want"), [
    ("a", "a"), ("a/b/c", "a/b/c"), ("./a", "a"), ("././a/b", "a/b"), ("./ab", "ab"),
    ("a//b", "a/b"), ("a/./b/.", "a/b"), ("a/b/", "a/b"), (".", ""), ("./", ""), ("", ""),
    ("..a/b..", "..a/b.."), ("a/...", "a/..."), (".hidden", ".hidden"), ("a\0b", "a\0b"),
])
def test_check_name_cleans_a_name_inside_the_destination(raw: str, want: str) -> None:
    assert check_name(raw, "entry") == want


@pytest.mark.parametrize("raw", ["..", "../x", "a/../../x", "a/..", "./..", "a//../b",
                                 "/", "/etc/passwd", "//x", "/./a"])
def test_check_name_refuses_a_name_that_leaves_the_destination(raw: str) -> None:
    with pytest.raises(UnsafePathError) as exc:
        check_name(raw, "hard link 'h' ->")
    assert str(exc.value) == (f"hard link 'h' -> {raw!r} would land outside the "
                              "destination; refusing")
    assert exc.value.exit_code == 6


# -- small helpers -------------------------------------------------------------------------

def test_entry_times() -> None:
    assert entry_times(_e("a", modtime=fmt.GoTime(T1), accesstime=fmt.GoTime(T2))) == \
        (T2, T1)
    assert entry_times(_e("a", modtime=fmt.GoTime(T1))) == (T1, T1)  # no atime: the mtime
    assert entry_times(_e("a", modtime=None)) == (0, 0)  # no time: the epoch
    assert entry_times(_e("a", modtime=fmt.GO_ZERO, accesstime=fmt.GO_ZERO)) == (0, 0)
    assert entry_times(_e("a", modtime=None, accesstime=fmt.GoTime(T2))) == (T2, 0)
    assert entry_times(_e("a", modtime=fmt.GoTime(0), accesstime=fmt.GoTime(0))) == (0, 0)


def test_digest_fd_hashes_exactly_the_first_bytes(tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 12345)  # several pieces and a partial one
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert digest_fd(fd, len(data)) == _sha(data)
        assert digest_fd(fd, (1 << 20) + 1) == _sha(data[:(1 << 20) + 1])
        assert digest_fd(fd, 1 << 20) == _sha(data[:1 << 20])
        assert digest_fd(fd, 7) == _sha(data[:7])
        assert digest_fd(fd, 0) == _sha(b"")
        # a file shorter than asked: what it has
        assert digest_fd(fd, len(data) + 5000) == _sha(data)
    finally:
        os.close(fd)


def test_write_all(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    out = tmp_path / "f"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, data)
        write_all(fd, memoryview(b"tail"))
        write_all(fd, b"")
    finally:
        os.close(fd)
    assert out.read_bytes() == data + b"tail"


# -- the destination root ------------------------------------------------------------------

def test_a_new_or_empty_root_is_fresh_a_used_one_is_not(tmp_path: Path) -> None:
    d = Destination(str(tmp_path / "new/deeper"), as_root=ROOT)
    assert (tmp_path / "new/deeper").is_dir() and d.is_fresh("")
    d.close()
    assert d.root_fd == -1
    (tmp_path / "empty").mkdir()
    d = Destination(str(tmp_path / "empty"), as_root=ROOT)
    assert d.is_fresh("")
    d.close()
    (tmp_path / "used").mkdir()
    (tmp_path / "used/x").write_bytes(b"")
    d = Destination(str(tmp_path / "used"), as_root=ROOT)
    assert not d.is_fresh("")
    assert not d.owned("")
    d.close()


def test_tmp_names_are_unique_and_marked(dest: Destination) -> None:
    pid = os.getpid()
    assert [dest.tmp_name() for _ in range(3)] == [
        f".chunked-tmp-{pid}-0", f".chunked-tmp-{pid}-1", f".chunked-tmp-{pid}-2"]
    assert TMP_PREFIX == ".chunked-tmp-"


def test_what_root_creates_in_fresh_directories_is_owned(tmp_path: Path,
                                                         umask022: None) -> None:
    need_root("owning what it creates")
    d = Destination(str(tmp_path / "dest"), as_root=True)
    d.make_dir("a/b")
    assert d.owned("") and d.owned("a") and d.owned("a/b")
    assert not d.owned("elsewhere")
    d.close()
    # not as root: nothing is taken as owned 0:0
    d = Destination(str(tmp_path / "dest2"), as_root=False)
    d.make_dir("a")
    assert not d.owned("") and not d.owned("a")
    d.close()
    # a set-group-ID root passes its group on: the root is not plainly owned
    sg = tmp_path / "sgid"
    sg.mkdir()
    os.chown(sg, 0, 4321)
    os.chmod(sg, 0o2755)
    d = Destination(str(sg), as_root=True)
    d.make_dir("a")
    assert d.is_fresh("") and not d.owned("") and d.owned("a")
    d.close()
    # an existing directory held something before: not owned
    d = Destination(str(tmp_path / "dest"), as_root=True)
    assert not d.owned("") and not d.owned("a")
    d.make_dir("a/c")
    assert not d.owned("a") and d.owned("a/c")
    d.close()


def test_owner_and_mode(tmp_path: Path, umask022: None) -> None:
    d = Destination(str(tmp_path / "dest"), as_root=True)
    r = _e("f", mode=0o644)
    u = _e("f", mode=0o644, uid=5)
    g = _e("f", mode=0o644, gid=5)
    assert d.owner_and_mode(r, owned=True) == (False, False)  # 0644 less 022: as it is
    assert d.owner_and_mode(r, owned=False) == (True, True)
    assert d.owner_and_mode(u, owned=True) == (True, True)
    assert d.owner_and_mode(g, owned=True) == (True, True)
    # created 0664, less the umask 0644: nothing to change
    assert d.owner_and_mode(_e("f", mode=0o644), True, created=0o664) == (False, False)
    assert d.owner_and_mode(_e("f", mode=0o664), True, created=0o664) == (False, True)
    assert d.owner_and_mode(_e("f", mode=0o755), True, created=0o755) == (False, False)
    assert d.owner_and_mode(_e("f", mode=0o700), True, created=0o755) == (False, True)
    # the umask took bits the entry wants; setuid bits come only with a chmod
    assert d.owner_and_mode(_e("f", mode=0o666), True) == (False, True)
    assert d.owner_and_mode(_e("f", mode=0o4755), True) == (False, True)
    assert d.owner_and_mode(_e("f", mode=0o100644), True) == (False, False)  # type bits
    d.close()
    d = Destination(str(tmp_path / "dest2"), as_root=False)
    assert d.owner_and_mode(u, owned=True) == (False, False)
    assert d.owner_and_mode(u, owned=False) == (False, True)
    assert d.owner_and_mode(_e("f", mode=0o600), owned=True) == (False, False)
    d.close()


# -- directories ---------------------------------------------------------------------------

def test_make_dir_makes_the_missing_parents_0755(tmp_path: Path, dest: Destination) -> None:
    root = tmp_path / "dest"
    (root / "old").mkdir(mode=0o700)
    dest.make_dir("old/a/b/c")
    dest.make_dir("old/a/b/c")  # again: nothing to do
    dest.make_dir("")
    for rel in ("old/a", "old/a/b", "old/a/b/c"):
        assert stat.S_IMODE((root / rel).lstat().st_mode) == 0o755, rel
        assert dest.is_fresh(rel), rel
    assert stat.S_IMODE((root / "old").lstat().st_mode) == 0o700
    assert not dest.is_fresh("old") and dest.is_fresh("")  # "old" came before, empty root
    assert _everything(root) == ["old", "old/a", "old/a/b", "old/a/b/c"]


@pytest.mark.parametrize("planted", ["symlink-to-dir", "symlink-to-file", "dangling",
                                     "file", "fifo"])
def test_make_dir_never_goes_through_what_is_not_a_directory(tmp_path: Path,
                                                             planted: str) -> None:
    root = tmp_path / "dest"
    (root / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "outside-file").write_bytes(b"precious")
    where = root / "a/x"
    if planted == "symlink-to-dir":
        where.symlink_to(outside)
    elif planted == "symlink-to-file":
        where.symlink_to(tmp_path / "outside-file")
    elif planted == "dangling":
        where.symlink_to(tmp_path / "nowhere")
    elif planted == "file":
        where.write_bytes(b"file")
    else:
        os.mkfifo(where)
    d = Destination(str(root), as_root=ROOT)
    try:
        for rel in ("a/x", "a/x/y/z"):
            with pytest.raises(UnsafePathError) as exc:
                d.make_dir(rel)
            assert str(exc.value) == ("'a/x' in the destination is not a directory (a "
                                      "symlink?); refusing to write through it")
            assert exc.value.__suppress_context__
            with pytest.raises(UnsafePathError):
                d.new_file(rel + "/f", _e("f")).__enter__()
        e = _e("a/x/s", fmt.TYPE_SYMLINK, 0o777, link_name="t")
        with pytest.raises(UnsafePathError):
            d.special("a/x/s", e)
        (root / "a/t").write_bytes(b"t")
        with pytest.raises(UnsafePathError):
            d.hardlink("a/x/h", "a/t")
        with pytest.raises(UnsafePathError):
            d.hardlink("a/h", "a/x/t")
        assert not os.path.exists(tmp_path / "nowhere")
    finally:
        d.close()
    assert list(outside.iterdir()) == []
    assert (tmp_path / "outside-file").read_bytes() == b"precious"
    assert sorted(os.listdir(root / "a")) == ["t", "x"]


def test_an_open_error_other_than_not_a_directory_is_raised_as_is(tmp_path: Path) -> None:
    d = Destination(str(tmp_path / "dest"), as_root=ROOT)
    try:
        with pytest.raises(OSError) as exc:
            d.make_dir("x" * 300)
        assert exc.value.errno == errno.ENAMETOOLONG
        assert not isinstance(exc.value, UnsafePathError)
    finally:
        d.close()


def test_directory_descriptors_stay_bounded_and_pinned_ones_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(destination, "MAX_DIR_FDS", 3)
    root = tmp_path / "dest"
    before = _open_fds()
    d = Destination(str(root), as_root=ROOT)
    pinned = d.pin("keep/me")
    pinned_again = d.pin("keep/me")
    assert pinned_again == pinned
    for i in range(12):
        d.make_dir(f"d{i}/e{i}")
        assert len(_open_fds() - before) <= 1 + 3 + 1, i  # root, the table, the pinned one
    d.unpin("keep/me")  # still pinned once
    for i in range(12):
        d.make_dir(f"d{i}/f")
    assert os.fstat(pinned).st_ino == (root / "keep/me").stat().st_ino
    with d.pinned("keep/me") as fd:
        assert fd == pinned
    d.unpin("keep/me")
    for i in range(12):
        d.make_dir(f"d{i}/g")
    assert len(_open_fds() - before) <= 1 + 3
    # reopened when needed again, as the right directory
    with d.pinned("keep/me") as fd:
        assert os.fstat(fd).st_ino == (root / "keep/me").stat().st_ino
    with d.pinned("d3/e3") as fd:
        assert os.fstat(fd).st_ino == (root / "d3/e3").stat().st_ino
        assert sorted(os.listdir(fd)) == []
    with d.pinned("d3") as fd:
        assert sorted(os.listdir(fd)) == ["e3", "f", "g"]
    with d.pinned("") as fd:
        assert fd == d.root_fd
    d.close()
    assert _open_fds() == before


def test_every_descriptor_is_closed(tmp_path: Path) -> None:
    before = _open_fds()
    d = Destination(str(tmp_path / "dest"), as_root=ROOT)
    d.make_dir("a/b/c/d")
    d.make_dir("a/b/x")  # from an ancestor already open
    d.make_dir("a/y/z")
    d.make_dir("q")
    with d.pinned("a/b/c/d") as fd:
        assert os.fstat(fd).st_ino == (tmp_path / "dest/a/b/c/d").stat().st_ino
    with d.pinned("a/b/x") as fd:
        assert os.fstat(fd).st_ino == (tmp_path / "dest/a/b/x").stat().st_ino
    opened = _open_fds() - before
    assert len(opened) == 1 + 8  # the root, and each of the 8 directories once
    d.close()
    assert _open_fds() == before
    assert _everything(tmp_path / "dest") == ["a", "a/b", "a/b/c", "a/b/c/d", "a/b/x",
                                              "a/y", "a/y/z", "q"]


def test_a_path_deeper_than_the_descriptor_limit(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of directories deep works under a low ``ulimit -n``: the table is trimmed
    on the way down, not only once there."""
    monkeypatch.setattr(destination, "MAX_DIR_FDS", 8)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    d = Destination(str(tmp_path / "dest"), as_root=ROOT)
    deep = "/".join(["d"] * 150)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(_open_fds()) + 40, hard))
        d.make_dir(deep)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        d.close()
    assert (tmp_path / "dest" / deep).is_dir()


def test_remove_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    for rel in ("a", "b", "c"):
        (root / rel).mkdir(parents=True)
    (root / "a/.chunked-tmp-1-0").write_bytes(b"half")
    (root / "a/.chunked-tmp-1-1").write_bytes(b"half")
    (root / "a/.chunked-tmp-dir").mkdir()  # cannot be unlinked: left, the rest goes on
    (root / "a/keep").write_bytes(b"keep")
    (root / "a/x.chunked-tmp-1").write_bytes(b"keep")
    (root / "b/.chunked-tmp-2-0").write_bytes(b"half")
    (root / "c/.chunked-tmp-3-0").write_bytes(b"half")
    (root / ".chunked-tmp-4-0").write_bytes(b"half")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".chunked-tmp-5-0").write_bytes(b"not ours")
    (root / "link").symlink_to(outside)
    d = Destination(str(root), as_root=ROOT)
    d.make_dir("new")
    fd = os.open(".chunked-tmp-6-0", os.O_CREAT | os.O_WRONLY, dir_fd=d.root_fd)
    os.close(fd)
    with d.pinned("new") as nfd:  # a directory made now holds only what this pull makes
        os.close(os.open(".chunked-tmp-7-0", os.O_CREAT | os.O_WRONLY, dir_fd=nfd))
    # in this order: a directory skipped (made by this pull, or not safe to enter) must not
    # end the cleanup of the ones after it
    d.remove_leftovers(["new", "link", "a", "", "b"])
    d.close()
    assert sorted(os.listdir(root / "a")) == [".chunked-tmp-dir", "keep", "x.chunked-tmp-1"]
    assert os.listdir(root / "b") == []
    assert os.listdir(root / "c") == [".chunked-tmp-3-0"]  # not asked for
    assert os.listdir(root / "new") == [".chunked-tmp-7-0"]
    assert sorted(os.listdir(root)) == ["a", "b", "c", "link", "new"]
    assert os.listdir(outside) == [".chunked-tmp-5-0"]


# -- regular files -------------------------------------------------------------------------

def test_new_file_gets_its_bytes_metadata_and_name_at_once(tmp_path: Path,
                                                           dest: Destination) -> None:
    root = tmp_path / "dest"
    e = _e("etc/f", mode=0o4750, uid=1234, gid=5678, accesstime=fmt.GoTime(T2),
           xattrs={"bogus.name": b"refused", "user.one": b"1", "user.two": b"\0\xff"})
    dest.make_dir("etc")
    with dest.new_file("etc/f", e) as fd:
        write_all(fd, b"content")
        names = os.listdir(root / "etc")
        assert len(names) == 1 and names[0].startswith(f"{TMP_PREFIX}{os.getpid()}-")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o750  # the creation mode: & 0777
    st = (root / "etc/f").lstat()
    assert os.listdir(root / "etc") == ["f"]
    assert (root / "etc/f").read_bytes() == b"content"
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4750
    assert (st.st_atime_ns, st.st_mtime_ns) == (T2, T1)
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.getxattr(root / "etc/f", "user.one") == b"1"
    assert os.getxattr(root / "etc/f", "user.two") == b"\0\xff"
    assert sorted(os.listxattr(root / "etc/f")) == ["user.one", "user.two"]


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o755, 0o666, 0o2755, 0o1777])
def test_new_file_modes_in_a_fresh_tree(tmp_path: Path, dest: Destination,
                                        mode: int) -> None:
    e = _e("f", mode=mode, modtime=None)
    with dest.new_file("a/f", e) as fd:
        write_all(fd, b"x")
    st = (tmp_path / "dest/a/f").lstat()
    assert stat.S_IMODE(st.st_mode) == mode
    assert (st.st_atime_ns, st.st_mtime_ns) == (0, 0)
    assert (st.st_uid, st.st_gid) == (0, 0)


@pytest.mark.parametrize("as_root", [True, False])
def test_new_file_owner_only_as_root(tmp_path: Path, umask022: None, as_root: bool) -> None:
    need_root("chown")
    root = tmp_path / "dest"
    root.mkdir()
    (root / "used").write_bytes(b"")
    os.chown(root, 0, 0)
    d = Destination(str(root), as_root=as_root)
    for name, uid, gid in (("u", 7, 0), ("g", 0, 7), ("z", 0, 0)):
        with d.new_file(name, _e(name, mode=0o644, uid=uid, gid=gid)) as fd:
            os.fchown(fd, 99, 99)  # as an earlier owner would have it
    d.close()
    for name, uid, gid in (("u", 7, 0), ("g", 0, 7), ("z", 0, 0)):
        st = (root / name).stat()
        assert (st.st_uid, st.st_gid) == ((uid, gid) if as_root else (99, 99)), name


def test_new_file_replaces_an_old_file_and_never_follows_a_symlink(
        tmp_path: Path, dest: Destination) -> None:
    root = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    dest.make_dir("d")
    (root / "d/old").write_bytes(b"old content, longer")
    (root / "d/link").symlink_to(outside)
    for name in ("old", "link"):
        with dest.new_file(f"d/{name}", _e(name)) as fd:
            write_all(fd, b"new")
        assert not (root / "d" / name).is_symlink()
        assert (root / "d" / name).read_bytes() == b"new"
    assert outside.read_bytes() == b"precious"
    assert sorted(os.listdir(root / "d")) == ["link", "old"]


def test_a_failed_file_leaves_nothing(tmp_path: Path, dest: Destination) -> None:
    root = tmp_path / "dest"
    (root / "keep").write_bytes(b"before")
    with pytest.raises(RuntimeError, match="^stop$"), dest.new_file("keep", _e("keep")) as fd:
        write_all(fd, b"half")
        raise RuntimeError("stop")
    assert os.listdir(root) == ["keep"] and (root / "keep").read_bytes() == b"before"
    with pytest.raises(KeyboardInterrupt), dest.new_file("other", _e("other")):
        raise KeyboardInterrupt
    assert os.listdir(root) == ["keep"]
    # a name the kernel refuses (a NUL in it): refused at the rename, nothing left
    with pytest.raises(ValueError, match="null"), dest.new_file("a\0b", _e("a\0b")) as fd:
        write_all(fd, b"x")
    assert os.listdir(root) == ["keep"]
    # a directory in the way of the final name
    (root / "dir").mkdir()
    (root / "dir/inside").write_bytes(b"")
    with pytest.raises(OSError) as exc, dest.new_file("dir", _e("dir")) as fd:
        write_all(fd, b"x")
    assert exc.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert sorted(os.listdir(root)) == ["dir", "keep"]
    assert os.listdir(root / "dir") == ["inside"]


def test_link_file_links_the_open_inode(tmp_path: Path, dest: Destination) -> None:
    root = tmp_path / "dest"
    src = tmp_path / "src"
    src.write_bytes(b"verified")
    fd = os.open(src, os.O_RDONLY)
    try:
        os.rename(src, tmp_path / "moved")  # its old path no longer matters
        src.write_bytes(b"impostor")
        dest.link_file("fresh/a", fd)
        (root / "old").mkdir()
        (root / "old/a").write_bytes(b"stale")
        d2 = Destination(str(root), as_root=ROOT)
        d2.link_file("old/a", fd)
        d2.link_file("old/b", fd)
        d2.close()
    finally:
        os.close(fd)
    ino = (tmp_path / "moved").stat().st_ino
    for rel in ("fresh/a", "old/a", "old/b"):
        assert (root / rel).stat().st_ino == ino, rel
    assert sorted(os.listdir(root / "old")) == ["a", "b"]
    assert os.listdir(root / "fresh") == ["a"]


def test_link_file_failure_leaves_no_temporary(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    (root / "d/in-the-way").mkdir(parents=True)
    (root / "d/in-the-way/x").write_bytes(b"")
    src = tmp_path / "src"
    src.write_bytes(b"data")
    fd = os.open(src, os.O_RDONLY)
    d = Destination(str(root), as_root=ROOT)
    try:
        with pytest.raises(OSError):
            d.link_file("d/in-the-way", fd)
    finally:
        d.close()
        os.close(fd)
    assert os.listdir(root / "d") == ["in-the-way"]


def test_matches_in_place(tmp_path: Path, umask022: None) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    data = b"the right bytes"
    (root / "right").write_bytes(data)
    os.chmod(root / "right", 0o600)
    (root / "wrong").write_bytes(b"the wrong bytes")  # same size
    (root / "short").write_bytes(data[:-1])
    (root / "empty").write_bytes(b"")
    (root / "dir").mkdir()
    (root / "link").symlink_to("right")
    os.mkfifo(root / "fifo")
    (root / "theirs").write_bytes(data)  # right bytes, another owner and mode
    os.chmod(root / "theirs", 0o600)
    if ROOT:
        os.chown(root / "theirs", 99, 99)
    d = Destination(str(root), as_root=ROOT)
    try:
        def entry(size: int = len(data), digest: str = _sha(data)) -> fmt.TocEntry:
            return _e("x", mode=0o640, size=size, digest=digest, uid=3, gid=4,
                      accesstime=fmt.GoTime(T2), xattrs={"user.kept": b"in place"})
        for name in ("wrong", "short", "dir", "link", "missing", "fifo"):
            assert d.matches_in_place(name, entry()) is False, name
        assert d.matches_in_place("right", entry(len(data) + 1)) is False
        assert d.matches_in_place("empty", entry()) is False
        assert d.matches_in_place("empty", entry(0, "")) is True
        assert d.matches_in_place("right", entry()) is True
        assert d.matches_in_place("theirs", _e("x", mode=0o644, size=len(data),
                                               digest=_sha(data))) is True
    finally:
        d.close()
    st = (root / "right").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_atime_ns, st.st_mtime_ns) == (T2, T1)
    assert os.getxattr(root / "right", "user.kept") == b"in place"
    if ROOT:
        assert (st.st_uid, st.st_gid) == (3, 4)
    assert os.listxattr(root / "wrong") == []
    st = (root / "theirs").stat()
    assert stat.S_IMODE(st.st_mode) == 0o644
    if ROOT:
        assert (st.st_uid, st.st_gid) == (0, 0)
    st = (root / "wrong").stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_mtime_ns != T1  # untouched
    assert (root / "link").is_symlink()
    assert sorted(os.listdir(root)) == ["dir", "empty", "fifo", "link", "right", "short",
                                        "theirs", "wrong"]


# -- symlinks, devices, fifos, hard links, directories -------------------------------------

def test_special_entries(tmp_path: Path, dest: Destination) -> None:
    root = tmp_path / "dest"
    entries = [
        _e("s", fmt.TYPE_SYMLINK, 0o777, link_name="../../outside", uid=11, gid=12,
           accesstime=fmt.GoTime(T2)),
        _e("p", fmt.TYPE_FIFO, 0o1640, uid=13, gid=14),
    ]
    if ROOT:
        entries += [_e("c", fmt.TYPE_CHAR, 0o620, dev_major=4, dev_minor=65, gid=5),
                    _e("b", fmt.TYPE_BLOCK, 0o2660, dev_major=259, dev_minor=1048575,
                       uid=6)]
    for e in entries:
        assert dest.special(f"dev/{e.name}", e) is True
    st = (root / "dev/s").lstat()
    assert stat.S_ISLNK(st.st_mode) and os.readlink(root / "dev/s") == "../../outside"
    assert (st.st_atime_ns, st.st_mtime_ns) == (T2, T1)  # the link's own times
    st = (root / "dev/p").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o1640
    assert (st.st_atime_ns, st.st_mtime_ns) == (T1, T1)
    if ROOT:
        assert ((root / "dev/s").lstat().st_uid, (root / "dev/s").lstat().st_gid) == (11, 12)
        assert (st.st_uid, st.st_gid) == (13, 14)
        st = (root / "dev/c").lstat()
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
        assert st.st_rdev == os.makedev(4, 65) and (st.st_uid, st.st_gid) == (0, 5)
        st = (root / "dev/b").lstat()
        assert stat.S_ISBLK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o2660
        assert st.st_rdev == os.makedev(259, 1048575) and (st.st_uid, st.st_gid) == (6, 0)
    assert not (tmp_path / "outside").exists()


def test_devices_need_root(tmp_path: Path, umask022: None) -> None:
    d = Destination(str(tmp_path / "dest"), as_root=False)
    try:
        for kind in (fmt.TYPE_CHAR, fmt.TYPE_BLOCK):
            e = _e("dev", kind, 0o600, dev_major=1, dev_minor=3)
            assert d.special("dev", e) is False
        assert d.special("fifo", _e("fifo", fmt.TYPE_FIFO, 0o600)) is True
    finally:
        d.close()
    assert os.listdir(tmp_path / "dest") == ["fifo"]


def test_special_replaces_what_is_there_but_not_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    (root / "d/dir").mkdir(parents=True)
    (root / "d/dir/inside").write_bytes(b"keep")
    (root / "d/file").write_bytes(b"old")
    (root / "d/link").symlink_to("file")
    os.mkfifo(root / "d/fifo")
    d = Destination(str(root), as_root=ROOT)
    try:
        d.special("d/file", _e("file", fmt.TYPE_SYMLINK, 0o777, link_name="t1"))
        d.special("d/link", _e("link", fmt.TYPE_SYMLINK, 0o777, link_name="t2"))
        d.special("d/fifo", _e("fifo", fmt.TYPE_SYMLINK, 0o777, link_name="t3"))
        d.special("d/new", _e("new", fmt.TYPE_FIFO, 0o600))
        with pytest.raises(UnsafePathError) as exc:
            d.special("d/dir", _e("image/dir", fmt.TYPE_SYMLINK, 0o777, link_name="x"))
        assert str(exc.value) == "'image/dir': a directory is in the way"
    finally:
        d.close()
    assert [os.readlink(root / "d" / n) for n in ("file", "link", "fifo")] == \
        ["t1", "t2", "t3"]
    assert (root / "d/dir/inside").read_bytes() == b"keep"
    assert stat.S_ISFIFO((root / "d/new").lstat().st_mode)


def test_hardlinks(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    (root / "old").mkdir(parents=True)
    (root / "old/stale").write_bytes(b"stale")
    (root / "old/f").write_bytes(b"target")
    (root / "old/sym").symlink_to("f")
    d = Destination(str(root), as_root=ROOT)
    try:
        d.hardlink("new/a/h", "old/f")
        d.hardlink("old/stale", "old/f")
        d.hardlink("old/h2", "new/a/h")
        d.hardlink("new/sym-link", "old/sym")  # the symlink itself, not its target
        with pytest.raises(FileNotFoundError):
            d.hardlink("new/x", "old/missing")
    finally:
        d.close()
    ino = (root / "old/f").stat().st_ino
    for rel in ("new/a/h", "old/stale", "old/h2"):
        assert (root / rel).lstat().st_ino == ino, rel
    assert (root / "old/f").stat().st_nlink == 4
    assert (root / "new/sym-link").lstat().st_ino == (root / "old/sym").lstat().st_ino
    assert sorted(os.listdir(root / "new")) == ["a", "sym-link"]


def test_directory_meta(tmp_path: Path, umask022: None) -> None:
    need_root("setting a directory's owner")
    root = tmp_path / "dest"
    (root / "old").mkdir(parents=True)
    d = Destination(str(root), as_root=True)
    cases = {
        "a": _e("a", fmt.TYPE_DIR, 0o755),  # as made: only the times
        "a/b": _e("a/b", fmt.TYPE_DIR, 0o700, uid=8, gid=9),
        "a/t": _e("a/t", fmt.TYPE_DIR, 0o1777, accesstime=fmt.GoTime(T2),
                  xattrs={"user.dir": b"attr"}),
        # made in a fresh directory, but not by this pull: not taken as owned 0:0
        "a/ext": _e("a/ext", fmt.TYPE_DIR, 0o755),
        "old": _e("old", fmt.TYPE_DIR, 0o755, uid=0, gid=0),
        "old/c": _e("old/c", fmt.TYPE_DIR, 0o2755, gid=50, modtime=None),
    }
    try:
        for rel in cases:
            if rel != "a/ext":
                d.make_dir(rel)
        os.mkdir(root / "a/ext", 0o700)
        os.chown(root / "a/ext", 1, 1)
        os.chown(root / "old", 1, 1)
        os.chmod(root / "old", 0o700)
        for rel, e in sorted(cases.items(), key=lambda kv: -kv[0].count("/")):
            d.directory_meta(rel, e)
    finally:
        d.close()
    for rel, e in cases.items():
        st = (root / rel).lstat()
        assert stat.S_IMODE(st.st_mode) == e.mode, rel
        assert (st.st_uid, st.st_gid) == (e.uid, e.gid), rel
        atime, mtime = entry_times(e)
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), rel
    assert os.getxattr(root / "a/t", "user.dir") == b"attr"


def test_clone_where_the_file_system_cannot(tmp_path: Path, dest: Destination,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without reflinks (ext4, tmpfs) a clone is refused, and the file system remembered
    as one that cannot; on one that can, the bytes are shared."""
    monkeypatch.setattr(pullio_spec, "_no_clone", set())
    (tmp_path / "src").write_bytes(b"cloned bytes")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        with dest.new_file("f", _e("f")) as fd:
            dev = os.fstat(fd).st_dev
            cloned = dest.clone(fd, src)
            if cloned:
                assert os.pread(fd, 100, 0) == b"cloned bytes"
            else:
                assert pullio_spec._no_clone == {dev}
                assert dest.clone(fd, src) is False
    finally:
        os.close(src)


def test_descriptors_are_not_inherited_and_the_umask_is_kept(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        d = Destination(str(tmp_path / "dest"), as_root=ROOT)
        assert os.umask(0o027) == 0o027  # read without changing it
        try:
            assert os.get_inheritable(d.root_fd) is False
            with d.pinned("a/b") as fd:
                assert os.get_inheritable(fd) is False
            with d.pinned("a") as fd:
                assert os.get_inheritable(fd) is False
            with d.new_file("a/f", _e("f", mode=0o666)) as fd:
                assert os.get_inheritable(fd) is False
            assert stat.S_IMODE((tmp_path / "dest/a/f").stat().st_mode) == 0o666
            assert d.owner_and_mode(_e("f", mode=0o640), owned=True) == (False, False)
            assert d.owner_and_mode(_e("f", mode=0o644), owned=True) == (False, True)
        finally:
            d.close()
    finally:
        os.umask(old)


def test_missing_parents_are_0755_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        d = Destination(str(tmp_path / "dest"), as_root=ROOT)
        try:
            d.make_dir("a/b")
        finally:
            d.close()
    finally:
        os.umask(old)
    for rel in ("a", "a/b"):
        assert stat.S_IMODE((tmp_path / "dest" / rel).stat().st_mode) == 0o755, rel


def test_nodes_are_made_with_their_entrys_mode(tmp_path: Path, umask022: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A fifo or device node never exists with more permission bits than its entry gives,
    not even until the chmod after it."""
    need_root("mknod")
    made: list[tuple[str, int]] = []
    real_mkfifo, real_mknod = os.mkfifo, os.mknod

    def mkfifo(name: str, mode: int = 0o666, **kw: object) -> None:
        made.append((name, mode))
        real_mkfifo(name, mode, **kw)  # type: ignore[arg-type]

    def mknod(name: str, mode: int = 0o600, device: int = 0, **kw: object) -> None:
        made.append((name, mode))
        real_mknod(name, mode, device, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkfifo", mkfifo)
    monkeypatch.setattr(os, "mknod", mknod)
    d = Destination(str(tmp_path / "dest"), as_root=True)
    try:
        assert d.special("fifo", _e("fifo", fmt.TYPE_FIFO, 0o640))
        assert d.special("null", _e("null", fmt.TYPE_CHAR, 0o620, dev_major=1, dev_minor=3))
        assert d.special("sda", _e("sda", fmt.TYPE_BLOCK, 0o600, dev_major=8))
    finally:
        d.close()
    assert made == [("fifo", 0o640), ("null", stat.S_IFCHR | 0o620),
                    ("sda", stat.S_IFBLK | 0o600)]


def test_what_a_fresh_pull_made_as_root_needs_no_chown_or_chmod(
        tmp_path: Path, umask022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directories and files this pull made are 0:0 with the mode they were made with:
    an entry that asks for just that costs no chown and no chmod (the calls that are most
    of a first pull's time in the kernel); any other owner or mode still gets them."""
    need_root("owning what it creates")
    calls: list[str] = []
    for fn in ("fchown", "fchmod", "chown", "chmod"):
        real = getattr(os, fn)
        monkeypatch.setattr(os, fn, lambda *a, _f=fn, _r=real, **k: (calls.append(_f),
                                                                      _r(*a, **k))[1])
    d = Destination(str(tmp_path / "dest"), as_root=True)
    try:
        d.make_dir("a/b")
        d.directory_meta("a", _e("a", fmt.TYPE_DIR, 0o755))
        d.directory_meta("a/b", _e("a/b", fmt.TYPE_DIR, 0o755))
        with d.new_file("a/b/f", _e("a/b/f", mode=0o644)) as fd:
            write_all(fd, b"x")
        assert calls == []
        d.directory_meta("a/b", _e("a/b", fmt.TYPE_DIR, 0o700))
        assert calls == ["fchmod"]
        calls.clear()
        d.directory_meta("a", _e("a", fmt.TYPE_DIR, 0o755, uid=5))
        assert calls == ["fchown", "fchmod"]
    finally:
        d.close()
    assert (tmp_path / "dest/a").stat().st_uid == 5
    assert stat.S_IMODE((tmp_path / "dest/a/b").stat().st_mode) == 0o700


def test_a_table_full_of_pinned_directories(tmp_path: Path, umask022: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With every descriptor of the table pinned, a walk several directories deep keeps
    each one open until it has opened the next (it was closed first: EBADF, or in a
    pull its number reused by another thread). A directory pinned twice stays open until
    unpinned twice, and then the table shrinks back to its bound."""
    monkeypatch.setattr(destination, "MAX_DIR_FDS", 1)
    root = tmp_path / "dest"
    base, base_paths = _open_fds(), _open_paths()
    d = Destination(str(root), as_root=ROOT)
    try:
        with d.pinned("a") as fa:
            with d.pinned("b/c/d") as fd:
                assert os.fstat(fd).st_ino == (root / "b/c/d").stat().st_ino
            with d.pinned("a") as again:
                assert again == fa
            d.make_dir("e/f/g")
            assert os.fstat(fa).st_ino == (root / "a").stat().st_ino  # still open, still a
        d.make_dir("h")
        # nothing pinned: only the root and the newest directory stay open
        assert _open_paths() - base_paths == {str(root), str(root / "h")}
    finally:
        d.close()
    assert _open_fds() <= base
    assert sorted(_everything(root)) == ["a", "b", "b/c", "b/c/d", "e", "e/f", "e/f/g", "h"]
