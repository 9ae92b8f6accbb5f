"""chunked.puller.pull's checks on small images in oci: layouts built here: the tree's
names and hard links (check_tree, _link_target), the DiffID of each lazily read layer
rebuilt from the files as written (check_diff_ids), and the entries that need no
fetching (_specials)."""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import itertools
import os
import random
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunked import format as fmt
from chunked.builder import build_blob
from chunked.errors import VerifyError
from chunked.oci.layout import OciLayout, write_image
from chunked.puller import pull as pullmod
from chunked.puller.destination import Destination, UnsafePathError
from chunked.puller.pull import (
    _link_target,
    _specials,
    _Written,
    check_diff_ids,
    check_tree,
    pull_image,
)
from chunked.read.image import Image, open_image
from tests.layers import make_image
from tests.need import ROOT, need_root

MTIME = 1_700_000_000

Member = tuple[tarfile.TarInfo, bytes | None]


def _ti(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: object
        ) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, MTIME
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            ti.size = len(data) if data is not None else 0
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _dir(name: str) -> Member:
    return _ti(name, tarfile.DIRTYPE, 0o755), None


def _file(name: str, data: bytes = b"data\n") -> Member:
    return _ti(name), data


def _sym(name: str, target: str) -> Member:
    return _ti(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def _hard(name: str, target: str) -> Member:
    return _ti(name, tarfile.LNKTYPE, linkname=target), None


def _layout(path: Path, layers: list[list[Member]], diff_ids: list[str] | None = None
            ) -> str:
    """An image of one chunked layer per member list (the DiffIDs as given, else the
    right ones); its oci: reference."""
    layout = OciLayout(str(path))
    layout.init()
    descs = []
    for i, members in enumerate(layers):
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(_tar(members)), out)
        layout.commit_blob(result.digest)
        descs.append((result.descriptor(), diff_ids[i] if diff_ids else result.diff_id))
    write_image(layout, "t", descs)
    return f"oci:{path}:t"


@pytest.fixture
def opened() -> Iterator[list[Image]]:
    images: list[Image] = []
    yield images
    for image in images:
        image.close()


def _open(ref: str, opened: list[Image]) -> Image:
    image = open_image(ref)
    opened.append(image)
    return image


def _refused(tmp_path: Path, opened: list[Image], layers: list[list[Member]]) -> str:
    image = _open(_layout(tmp_path / "img", layers), opened)
    with pytest.raises(UnsafePathError) as exc:
        check_tree(image)
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(UnsafePathError) as again:
        pull_image(image, str(box / "dest"))
    assert str(again.value) == str(exc.value)
    assert list(box.iterdir()) == []  # refused before DEST is made
    return str(exc.value)


# -- check_tree ----------------------------------------------------------------------------

def test_check_tree_gives_the_merged_tree_and_its_layers(tmp_path: Path,
                                                         opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [
        [_dir("a"), _file("a/low"), _file("a/both", b"v1"), _sym("a/s", "/etc/passwd"),
         _dir("a/d"), _file("deep/er/f")],
        [_file("a/both", b"version 2"), _file("a/d/up"), _hard("a/h", "a/low"),
         _sym("a/s2", "../../../../outside")],
    ]), opened)
    tree = check_tree(image)
    lower, upper = (il.layer for il in image.layers)
    assert list(tree) == ["a", "a/both", "a/d", "a/d/up", "a/h", "a/low", "a/s", "a/s2",
                          "deep/er/f"]  # the parents a layer omits are not entries
    owner = {p: ("lower" if layer is lower else "upper" if layer is upper else None)
             for p, (layer, _) in tree.items()}
    assert owner == {"a": "lower", "a/both": "upper", "a/d": "lower", "a/d/up": "upper",
                     "a/h": "upper", "a/low": "lower", "a/s": "lower", "a/s2": "upper",
                     "deep/er/f": "lower"}
    for p, (layer, info) in tree.items():
        assert layer.files[p] is info, p
    assert tree["a/both"][1].entry.size == len(b"version 2")


@pytest.mark.parametrize(("name", "shown"), [("../escape", "'../escape'"),
                                             ("/abs", "'/abs'"),
                                             ("a/../../x", "'a/../../x'")])
def test_an_entry_outside_is_refused(tmp_path: Path, opened: list[Image], name: str,
                                     shown: str) -> None:
    msg = _refused(tmp_path, opened, [[_file("ok")], [_file(name)]])
    assert msg == f"entry {shown} would land outside the destination; refusing"


def test_a_hard_link_outside_is_refused(tmp_path: Path, opened: list[Image]) -> None:
    msg = _refused(tmp_path, opened, [[_file("ok"), _hard("h", "../../etc/passwd")]])
    assert msg == ("hard link 'h' -> '../../etc/passwd' would land outside the "
                   "destination; refusing")


def test_a_hidden_entry_outside_is_refused_too(tmp_path: Path, opened: list[Image]) -> None:
    """Every layer's names are checked, not only what the merged tree keeps."""
    msg = _refused(tmp_path, opened, [[_dir("d"), _hard("d/h", "../../x")],
                                      [_file(".wh.d", b"")]])
    assert msg == "hard link 'd/h' -> '../../x' would land outside the destination; refusing"


@pytest.mark.parametrize(("layers", "msg"), [
    ([[_sym("link", "/tmp"), _file("link/f")]],
     "'link/f' lies beneath 'link', which is a symlink; refusing to write through it"),
    ([[_sym("link", "/tmp"), _file("link/sub/deeper/f")]],
     "'link/sub/deeper/f' lies beneath 'link', which is a symlink; refusing to write "
     "through it"),
    ([[_dir("a"), _dir("a/b"), _sym("a/b/l", "."), _file("a/b/l/f")]],
     "'a/b/l/f' lies beneath 'a/b/l', which is a symlink; refusing to write through it"),
    ([[_file("f"), _file("f/x")]],
     "'f/x' lies beneath 'f', which is a reg; refusing to write through it"),
    ([[_file("t"), _hard("h", "t"), _file("h/x")]],
     "'h/x' lies beneath 'h', which is a hardlink; refusing to write through it"),
    ([[(_ti("fifo", tarfile.FIFOTYPE), None)], [_dir("fifo/d")]],
     "'fifo/d' lies beneath 'fifo', which is a fifo; refusing to write through it"),
    # a symlink in a lower layer, a file beneath it in an upper one
    ([[_dir("etc"), _sym("etc/cfg", "/etc")], [_file("etc/cfg/passwd")]],
     "'etc/cfg/passwd' lies beneath 'etc/cfg', which is a symlink; refusing to write "
     "through it"),
    # a directory replaced by a symlink, then a file under the old name
    ([[_dir("d"), _file("d/f")], [_sym("d", "/")], [_file("d/x")]],
     "'d/x' lies beneath 'd', which is a symlink; refusing to write through it"),
], ids=["symlink", "symlink-implied-dirs", "deep-symlink", "file", "hardlink", "fifo",
        "across-layers", "dir-replaced"])
def test_a_path_beneath_a_non_directory_is_refused(tmp_path: Path, opened: list[Image],
                                                   layers: list[list[Member]],
                                                   msg: str) -> None:
    assert _refused(tmp_path, opened, layers) == msg


def test_paths_beneath_directories_pass(tmp_path: Path, opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [
        [_dir("a"), _dir("a/b"), _file("a/b/f"), _file("x/y/z/f"), _sym("a/l", "b")],
        [_dir("a/b/c"), _file("a/b/c/g"), _file("x/y/g")],
        # a symlink replaced by a directory: what was beneath may be written now
        [_dir("a/l"), _file("a/l/f")],
    ]), opened)
    tree = check_tree(image)
    assert sorted(tree) == ["a", "a/b", "a/b/c", "a/b/c/g", "a/b/f", "a/l", "a/l/f",
                            "x/y/g", "x/y/z/f"]
    assert tree["a/l"][1].entry.type == fmt.TYPE_DIR


# -- hard links ----------------------------------------------------------------------------

def test_link_targets_resolve_through_links_to_links(tmp_path: Path,
                                                     opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [
        [_dir("d"), _file("d/f", b"shared\n"), _hard("d/h1", "d/f"), _hard("./h2", "./d/h1"),
         _hard("h3", "h2"), _file("plain")],
    ]), opened)
    tree = check_tree(image)
    assert _link_target(tree, "d/h1") == "d/f"
    assert _link_target(tree, "h2") == "d/f"
    assert _link_target(tree, "h3") == "d/f"
    assert _link_target(tree, "d/f") == "d/f"
    assert _link_target(tree, "plain") == "plain"
    assert _link_target(tree, "d") == "d"
    dest = tmp_path / "dest"
    pull_image(image, str(dest))
    ino = (dest / "d/f").stat().st_ino
    assert [(dest / p).lstat().st_ino == ino for p in ("d/h1", "h2", "h3")] == [True] * 3
    assert (dest / "d/f").stat().st_nlink == 4
    assert (dest / "plain").stat().st_ino != ino


@pytest.mark.parametrize(("members", "msg"), [
    ([_file("f"), _hard("h", "missing")], "hard link 'h' -> 'missing': no such file in the "
     "image"),
    ([_dir("d"), _hard("h", "d")], "hard link 'h' -> 'd': no such file in the image"),
    ([_dir("d"), _hard("./h", "./d/")], "hard link './h' -> './d/': no such file in the "
     "image"),
    ([_file("f"), _hard("h", "h")], "hard link 'h' -> 'h': no such file in the image"),
    # a cycle: named by the link where it closes
    ([_hard("h1", "h2"), _hard("h2", "h1")], "hard link 'h2' -> 'h1': no such file in the "
     "image"),
    # a cycle that does not come back to the first link
    ([_hard("h1", "h2"), _hard("h2", "h3"), _hard("h3", "h2")], "hard link 'h3' -> 'h2': "
     "no such file in the image"),
    # in a chain, the link that points nowhere is named
    ([_hard("a1", "a2"), _hard("a2", "gone")], "hard link 'a2' -> 'gone': no such file in "
     "the image"),
], ids=["missing", "directory", "directory-dot", "self", "cycle", "cycle-later", "chain"])
def test_a_hard_link_to_no_file_is_refused(tmp_path: Path, opened: list[Image],
                                           members: list[Member], msg: str) -> None:
    assert _refused(tmp_path, opened, [members]) == msg


def test_a_hard_link_to_a_file_a_later_layer_deleted(tmp_path: Path,
                                                     opened: list[Image]) -> None:
    msg = _refused(tmp_path, opened, [[_file("f"), _hard("h", "f")], [_file(".wh.f", b"")]])
    assert msg == "hard link 'h' -> 'f': no such file in the image"


# -- DiffIDs -------------------------------------------------------------------------------

def _image_with(tmp_path: Path, opened: list[Image], n: int = 3) -> tuple[Image, Path]:
    members: list[Member] = [_dir("d")]
    members += [_file(f"d/f{i:03d}", b"file %d\n" % i) for i in range(n)]
    members += [_file("d/empty", b""), _sym("d/s", "f000"), _hard("d/h", "d/f000")]
    image = _open(_layout(tmp_path / "img", [members]), opened)
    dest = tmp_path / "dest"
    pull_image(image, str(dest))
    return image, dest


def _check(image: Image, dest: Path, **kw: object) -> None:
    d = Destination(str(dest), as_root=ROOT)
    try:
        check_diff_ids(image, check_tree(image), d, **kw)  # type: ignore[arg-type]
    finally:
        d.close()


def test_a_layer_whose_files_make_another_tar_than_its_diff_id(tmp_path: Path,
                                                               opened: list[Image]) -> None:
    members = [_dir("d"), _file("d/f", b"the content\n")]
    right = _layout(tmp_path / "right", [members])
    real = open_image(right).layers[0].diff_id
    fake = "sha256:" + hashlib.sha256(b"another tar").hexdigest()
    image = _open(_layout(tmp_path / "img", [[_file("base")], members],
                          diff_ids=[open_image(_layout(tmp_path / "b", [[_file("base")]]))
                                    .layers[0].diff_id, fake]), opened)
    blob = image.layers[1].descriptor.digest
    with pytest.raises(VerifyError) as exc:
        pull_image(image, str(tmp_path / "dest"))
    assert str(exc.value) == (f"layer 1 ({blob}): the files pulled and its tar-split make a "
                              f"tar of DiffID {real}, the config says {fake}")


def test_the_check_reads_the_files_as_written(tmp_path: Path, opened: list[Image]) -> None:
    image, dest = _image_with(tmp_path, opened)
    _check(image, dest)  # as pulled: the DiffID holds
    diff_id = image.layers[0].diff_id
    blob = image.layers[0].descriptor.digest
    (dest / "d/f001").write_bytes(b"file X\n")  # the same size, other bytes
    with pytest.raises(VerifyError) as exc:
        _check(image, dest)
    assert str(exc.value).startswith(f"layer 0 ({blob}): the files pulled and its "
                                     "tar-split make a tar of DiffID sha256:")
    assert str(exc.value).endswith(f", the config says {diff_id}")
    (dest / "d/f001").write_bytes(b"file 1\n")
    _check(image, dest)


@pytest.mark.parametrize(("change", "want"), [
    ("longer", "d/f002: changed in the destination during the pull"),
    ("dir", "d/f002: changed in the destination during the pull"),
    ("missing", (errno.ENOENT, "open 'd/f002' to check the DiffID: No such file or "
                 "directory")),
    ("symlink", (errno.ELOOP, "open 'd/f002' to check the DiffID: Too many levels of "
                 "symbolic links")),
])
@pytest.mark.parametrize("files", [3, 300], ids=["one-batch", "batches"])
def test_a_file_gone_or_changed_is_named(tmp_path: Path, opened: list[Image], change: str,
                                         want: str | tuple[int, str], files: int) -> None:
    image, dest = _image_with(tmp_path, opened, files)
    p = dest / "d/f002"
    p.unlink()
    if change == "longer":
        p.write_bytes(b"file 2, longer\n")
    elif change == "dir":
        p.mkdir()
    elif change == "symlink":
        p.symlink_to("f001")
    if isinstance(want, str):
        with pytest.raises(VerifyError) as exc:
            _check(image, dest)
        assert str(exc.value) == want
    else:
        with pytest.raises(OSError) as oexc:
            _check(image, dest)
        assert oexc.value.errno == want[0]
        assert oexc.value.strerror == want[1]
        assert not isinstance(oexc.value, VerifyError)
    if files == 300:  # a later batch: named as well
        (dest / "d/f290").write_bytes(b"file 290 plus\n")
        if p.is_dir():
            p.rmdir()
        elif p.is_symlink() or p.exists():
            p.unlink()
        p.write_bytes(b"file 2\n")
        with pytest.raises(VerifyError) as exc:
            _check(image, dest)
        assert str(exc.value) == "d/f290: changed in the destination during the pull"


def test_many_files_in_batches_hash_as_one_tar(tmp_path: Path, opened: list[Image],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    image, dest = _image_with(tmp_path, opened, 600)
    _check(image, dest)
    monkeypatch.setattr(pullmod, "_HASH_BYTES", 40)  # a batch every few files
    _check(image, dest)
    monkeypatch.setattr(pullmod, "_HASH_FILES", 1)
    _check(image, dest)


def test_a_big_file_alone_fills_a_batch(tmp_path: Path, opened: list[Image],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pullmod, "_HASH_BYTES", 1000)
    members = [_file("small", b"s\n"), _file("big", os.urandom(5000)), _file("after", b"a")]
    image = _open(_layout(tmp_path / "img", [members]), opened)
    pull_image(image, str(tmp_path / "dest"))  # the check of the pull itself passes
    (tmp_path / "dest/big").write_bytes(os.urandom(5000))
    with pytest.raises(VerifyError):
        _check(image, tmp_path / "dest")


def test_hidden_files_are_checked_as_fetched(tmp_path: Path, opened: list[Image],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A lower layer's file that an upper one replaces or deletes is not in the tree: its
    bytes come from the layer, in pieces, batched as the rest."""
    monkeypatch.setattr(pullmod, "_HASH_BYTES", 4096)
    image = _open(make_image(tmp_path / "img"), opened)
    dest = tmp_path / "dest"
    pull_image(image, str(dest))
    assert not (dest / "etc/old.conf").exists() and not (dest / "gone").exists()
    _check(image, dest)
    (dest / "usr/big.bin").write_bytes(bytes(len((dest / "usr/big.bin").read_bytes())))
    with pytest.raises(VerifyError) as exc:
        _check(image, dest)
    assert str(exc.value).startswith(f"layer 0 ({image.layers[0].descriptor.digest}): ")


def test_the_check_waits_for_each_file_not_yet_written(tmp_path: Path,
                                                       opened: list[Image]) -> None:
    image, dest = _image_with(tmp_path, opened, 4)
    tree = check_tree(image)
    waited: list[str] = []
    asked: list[str] = []

    def done(info: object) -> bool:
        asked.append(info.entry.name)  # type: ignore[attr-defined]
        return info.entry.name in ("d/f001", "d/f003")  # type: ignore[attr-defined]

    def wait(info: object) -> None:
        waited.append(info.entry.name)  # type: ignore[attr-defined]

    d = Destination(str(dest), as_root=ROOT)
    try:
        check_diff_ids(image, tree, d, wait, done)
    finally:
        d.close()
    # regular files with bytes, in tar order: not the empty one, links or the directory
    assert asked == ["d/f000", "d/f001", "d/f002", "d/f003"]
    assert waited == ["d/f000", "d/f002"]


def test_written_tells_done_and_waits() -> None:
    class Info:
        def __init__(self, name: str) -> None:
            self.entry = fmt.TocEntry(type="reg", name=name)

    a, b, c, x = Info("a"), Info("b"), Info("c"), Info("x")
    w = _Written({id(a)})
    assert w.done(a) and not w.done(b)  # type: ignore[arg-type]
    w.add(b)  # type: ignore[arg-type]
    assert w.done(b) and not w.done(c)  # type: ignore[arg-type]
    outcome: dict[str, object] = {}

    def waiter(info: Info) -> None:
        try:
            w.wait(info)  # type: ignore[arg-type]
            outcome[info.entry.name] = "written"
        except pullmod._Aborted as exc:
            outcome[info.entry.name] = exc.args

    # a wait for a file not yet written returns once it is (the waits run in threads: a
    # wait that never returned would block the test, not fail it)
    t = threading.Thread(target=waiter, args=(c,), daemon=True)
    t.start()
    w.add(c)  # type: ignore[arg-type]
    t.join(10)
    assert outcome == {"c": "written"}
    # after an abort: a wait for what is in place still returns, one for another raises
    t = threading.Thread(target=waiter, args=(x,), daemon=True)
    t.start()
    w.abort()
    t.join(10)
    assert outcome == {"c": "written", "x": ("x",)}
    w.wait(a)  # type: ignore[arg-type]
    w.wait(b)  # type: ignore[arg-type]
    w.wait(c)  # type: ignore[arg-type]
    assert w.done(a) and w.done(c) and not w.done(x)  # type: ignore[arg-type]


# -- specials and the pull around them -----------------------------------------------------

def test_specials_made_and_those_skipped_named(tmp_path: Path) -> None:
    d = Destination(str(tmp_path / "dest"), as_root=False)
    entries = [
        ("dev/null", fmt.TocEntry(type="char", name="./dev/null", mode=0o666, dev_major=1,
                                  dev_minor=3)),
        ("dev/fifo", fmt.TocEntry(type="fifo", name="./dev/fifo", mode=0o600)),
        ("dev/sda", fmt.TocEntry(type="block", name="./dev/sda", mode=0o660, dev_major=8)),
        ("s", fmt.TocEntry(type="symlink", name="s", mode=0o777, link_name="dev")),
    ]
    try:
        assert _specials(d, entries) == ["./dev/null", "./dev/sda"]
        assert _specials(d, []) == []
    finally:
        d.close()
    assert sorted(os.listdir(tmp_path / "dest")) == ["dev", "s"]
    assert os.listdir(tmp_path / "dest/dev") == ["fifo"]


def test_the_pull_makes_every_special(tmp_path: Path, opened: list[Image]) -> None:
    members: list[Member] = [_dir("dev")]
    members += [(_ti(f"dev/fifo{i}", tarfile.FIFOTYPE, 0o600 + i), None) for i in range(5)]
    members += [_sym(f"s{i}", f"target{i}") for i in range(5)]
    members += [(_ti("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
                (_ti("dev/loop9", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=9, gid=6),
                 None)]
    image = _open(_layout(tmp_path / "img", [members]), opened)
    dest = tmp_path / "dest"
    s = pull_image(image, str(dest))
    for i in range(5):
        st = (dest / f"dev/fifo{i}").lstat()
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 + i
        assert os.readlink(dest / f"s{i}") == f"target{i}"
    if ROOT:
        assert s.skipped == []
        st = (dest / "dev/loop9").lstat()
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 9)
        assert st.st_gid == 6 and stat.S_IMODE(st.st_mode) == 0o660
        assert (dest / "dev/null").lstat().st_rdev == os.makedev(1, 3)
    else:
        assert sorted(s.skipped) == ["dev/loop9", "dev/null"]
    assert (dest / "dev").stat().st_mtime_ns == MTIME * 10**9


def test_the_pull_reports_the_bytes_it_will_write(tmp_path: Path,
                                                  opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [[_file("a", b"12345"), _file("b", b"678"),
                                              _file("e", b"")]]), opened)
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []
    pull_image(image, str(tmp_path / "dest"),
               progress=lambda *a, **kw: calls.append((a, kw)))
    assert calls[0] == ((0,), {"total": 8})
    # then the bytes written so far, file by file, up to the total
    done = [a[0] for a, kw in calls[1:]]
    assert all(not kw for _, kw in calls[1:]) and sorted(done) == done
    assert done[-1] == 8 and len(done) == 3
    calls.clear()
    s = pull_image(image, str(tmp_path / "dest"))  # in place: nothing to write
    assert s.reused_by["inPlace"] == 3
    pull_image(image, str(tmp_path / "dest"),
               progress=lambda *a, **kw: calls.append((a, kw)))
    assert calls[0] == ((0,), {"total": 0})


def test_the_pull_keeps_the_collector_as_it_was(tmp_path: Path,
                                                opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [[_file("a")]]), opened)
    assert gc.isenabled()
    pull_image(image, str(tmp_path / "d1"))
    assert gc.isenabled()
    gc.disable()
    try:
        pull_image(image, str(tmp_path / "d2"))
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(UnsafePathError):  # and when it fails
        pull_image(_open(_layout(tmp_path / "bad", [[_file("../x")]]), opened),
                   str(tmp_path / "d3"))
    assert gc.isenabled()


def test_a_fifo_in_place_of_a_file_is_replaced(tmp_path: Path, opened: list[Image]) -> None:
    """An old tree's fifo under a file's name is not opened (which would block): it is
    replaced by the file."""
    image = _open(_layout(tmp_path / "img", [[_file("f", b"content")]]), opened)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.mkfifo(dest / "f")
    s = pull_image(image, str(dest))
    assert (dest / "f").read_bytes() == b"content"
    assert s.files_fetched == 1


def test_a_pull_without_root_skips_devices_and_owners(tmp_path: Path, opened: list[Image],
                                                      monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    need_root("a pull as another user, simulated from root,")
    members: list[Member] = [
        _dir("dev"), (_ti("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (_ti("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8), None),
        (_ti("dev/fifo", tarfile.FIFOTYPE), None), (_ti("f", uid=1234, gid=99), b"x"),
        (_ti("dev/zero", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=5), None),
    ]
    image = _open(_layout(tmp_path / "img", [members]), opened)
    monkeypatch.setattr(pullmod.os, "geteuid", lambda: 1000)
    s = pull_image(image, str(tmp_path / "dest"))
    assert sorted(s.skipped) == ["dev/null", "dev/sda", "dev/zero"]
    assert sorted(os.listdir(tmp_path / "dest/dev")) == ["fifo"]
    st = (tmp_path / "dest/f").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)  # as the pulling user: no chown


def test_leftovers_of_an_interrupted_pull_are_removed(tmp_path: Path,
                                                      opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [[_dir("d"), _file("d/f"), _file("g/h")]]),
                  opened)
    dest = tmp_path / "dest"
    for rel in ("", "d", "g", "other"):
        (dest / rel).mkdir(parents=True, exist_ok=True)
        (dest / rel / ".chunked-tmp-1-0").write_bytes(b"half")
    s = pull_image(image, str(dest))
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "d", "d/f", "g", "g/h", "other", "other/.chunked-tmp-1-0"]  # only the image's dirs
    assert s.files_fetched == 2


def test_files_in_place_are_kept_and_counted(tmp_path: Path, opened: list[Image]) -> None:
    image = _open(_layout(tmp_path / "img", [[_dir("d"), _file("d/a", b"12345"),
                                              _file("b", b"678"), _file("d/e", b"")]]),
                  opened)
    dest = tmp_path / "dest"
    pull_image(image, str(dest))
    (dest / "b").write_bytes(b"xyz")  # wrong: written again
    inode = (dest / "d/a").stat().st_ino
    s = pull_image(image, str(dest))
    assert s.reused_by["inPlace"] == 2 and s.bytes_reused == 5 and s.files_fetched == 1
    assert (dest / "d/a").stat().st_ino == inode and (dest / "b").read_bytes() == b"678"


class _Clock:
    """pull.py's ``time``, ticking one second per reading: durations without a timer."""

    def __init__(self) -> None:
        self._ticks = itertools.count(100)

    def monotonic(self) -> float:
        return float(next(self._ticks))


def test_the_pull_reports_its_duration(tmp_path: Path, opened: list[Image],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    image = _open(_layout(tmp_path / "img", [[_file("a")]]), opened)
    monkeypatch.setattr(pullmod, "time", _Clock())
    s = pull_image(image, str(tmp_path / "dest"))
    # read at the start, at each of the five stages (logged or not) and at the end
    assert s.seconds == 6.0


def test_the_check_leaves_no_directory_pinned(tmp_path: Path, opened: list[Image],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from chunked.puller import destination
    monkeypatch.setattr(destination, "MAX_DIR_FDS", 2)
    monkeypatch.setattr(pullmod, "_HASH_FILES", 3)
    members: list[Member] = [_file(f"d{i}/f{j}", b"%d %d\n" % (i, j))
                             for i in range(8) for j in range(4)]
    image = _open(_layout(tmp_path / "img", [members]), opened)
    dest = tmp_path / "dest"
    pull_image(image, str(dest))
    before = set(os.listdir("/proc/self/fd"))
    d = Destination(str(dest), as_root=ROOT)
    try:
        check_diff_ids(image, check_tree(image), d)
        assert len(set(os.listdir("/proc/self/fd")) - before) <= 1 + 2
        d.make_dir("x/y/z")  # every directory unpinned: the table stays bounded
        assert len(set(os.listdir("/proc/self/fd")) - before) <= 1 + 2
    finally:
        d.close()


def test_the_debug_log_traces_each_stage(tmp_path: Path, opened: list[Image],
                                         caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """At DEBUG level the pull logs each stage done, with the seconds since it started
    and what it counted."""
    image = _open(_layout(tmp_path / "img", [[_dir("d"), _file("d/a", b"a"), _file("b"),
                                              _sym("s", "b"), _file("e", b"")]]), opened)
    caplog.set_level("DEBUG", logger="chunked.puller.pull")
    monkeypatch.setattr(pullmod, "time", _Clock())
    s = pull_image(image, str(tmp_path / "dest"))
    records = [r for r in caplog.records if r.name == "chunked.puller.pull"]
    stages = [r.getMessage() for r in records]
    assert stages == ["1.00 s: 5 entries checked",
                      "2.00 s: directories made, 3 files to write",
                      "3.00 s: files written",
                      "4.00 s: hard links and directory metadata done",
                      "5.00 s: DiffIDs rebuilt and checked"]
    assert s.seconds == 6.0


def test_a_trailer_in_pieces_is_hashed_whole(tmp_path: Path, opened: list[Image],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The tar's trailer (end-of-archive blocks and record padding: up to 10 KiB from
    Python's tarfile) may come from the tar-split in several pieces: every one counts."""
    from chunked.read import consistency
    monkeypatch.setattr(consistency, "_MAX_GAP", 1024)
    image = _open(_layout(tmp_path / "img", [[_file("a", b"a" * 700)]]), opened)
    dest = tmp_path / "dest"
    pull_image(image, str(dest))  # raises if the rebuilt tar is not the DiffID's
    _check(image, dest)


@pytest.mark.parametrize("where", ["d", "p"], ids=["directory-entry", "implied-parent"])
def test_a_file_in_the_way_of_a_directory_is_refused_before_writing(
        tmp_path: Path, opened: list[Image], where: str) -> None:
    """A directory of the image (an entry, or a parent the layer omits) where the old tree
    has a file: refused while the directories are made, before any file is written."""
    # (p holds only a symlink: nothing looks into p but the making of directories)
    image = _open(_layout(tmp_path / "img", [[_dir("d"), _file("a0"), _file("a1"),
                                              _sym("p/s", "../a0"), _file("z")]]), opened)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / where).write_bytes(b"in the way")
    with pytest.raises(UnsafePathError) as exc:
        pull_image(image, str(dest))
    assert str(exc.value) == (f"{where!r} in the destination is not a directory (a "
                              "symlink?); refusing to write through it")
    assert sorted(os.listdir(dest)) == sorted({where, "d"})
    assert (dest / where).read_bytes() == b"in the way"


def test_the_pull_threads_are_named_for_their_work(tmp_path: Path,
                                                   opened: list[Image]) -> None:
    """Thread names say what each thread does (a stack dump of a stuck pull, a log with
    threadName): specials, the DiffID check, the layers' rebuilt tars."""
    image = _open(_layout(tmp_path / "img", [[_file("a", b"a"), _sym("s", "a"),
                                              _sym("t", "a")]]), opened)
    seen: list[set[str]] = []
    pull_image(image, str(tmp_path / "dest"),
               progress=lambda *a, **kw: seen.append({t.name for t in threading.enumerate()}))
    assert {"chunked-special_0", "chunked-check_0"} <= seen[0], seen[0]
    names: list[str] = []

    def done(info: object) -> bool:
        names.append(threading.current_thread().name)
        return True

    d = Destination(str(tmp_path / "dest"), as_root=ROOT)
    try:
        check_diff_ids(image, check_tree(image), d, done=done)
    finally:
        d.close()
    assert names and all(n.startswith("chunked-diffid_") for n in names), names


Batch = list[tuple[str, int]]  # ("b", n): n bytes hashed as they are; ("f", n): a file


def _hash_batches(monkeypatch: pytest.MonkeyPatch, image: Image, dest: Path,
                  most_files: int, most_bytes: int) -> list[list[Batch]]:
    """Every batch the DiffID check hands to TreeHash under these bounds, per layer."""
    runs: list[list[Batch]] = []
    real = pullmod.TreeHash

    class Log:
        def __init__(self) -> None:
            self._h = real()
            self._batches: list[Batch] = []
            runs.append(self._batches)

        def update(self, batch: list[object]) -> object:
            self._batches.append([("b", len(x)) if isinstance(x, bytes)
                                  else ("f", x[2]) for x in batch])  # type: ignore[index]
            return self._h.update(batch)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    with monkeypatch.context() as m:
        m.setattr(pullmod, "TreeHash", Log)
        m.setattr(pullmod, "_HASH_FILES", most_files)
        m.setattr(pullmod, "_HASH_BYTES", most_bytes)
        _check(image, dest)  # the DiffIDs hold, however the batches are cut
    assert len(runs) == 2  # one per layer
    return runs


def _ends_at_files(batches: list[Batch], most: int) -> None:
    for i, batch in enumerate(batches):
        files = sum(k == "f" for k, _ in batch)
        assert files <= most, batch
        assert i == len(batches) - 1 or (batch[-1][0] == "f" and files == most), batch


def _ends_at_bytes(batches: list[Batch], most: int) -> None:
    """Below the bound at every file but the one that ends a batch (a header's bytes are
    no point to stop at, so only files are looked at), and at the bound at its end."""
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        running = list(itertools.accumulate(n for _, n in batch))
        upto = len(batch) if last else len(batch) - 1
        assert all(running[j] < most for j in range(upto) if batch[j][0] == "f"), batch
        assert last or running[-1] >= most, batch


def test_each_hash_batch_ends_at_the_first_item_that_reaches_a_bound(
        tmp_path: Path, opened: list[Image], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the DiffID check holds in memory (and keeps pinned) at once is bounded: a
    batch is handed over as soon as a file (or a fetched piece of a hidden one) brings it
    to _HASH_FILES files or _HASH_BYTES bytes, and not before. Swept over many bounds, so
    that some land exactly on a running total."""
    small = [_file(f"d/{c}", b"%s\n" % c.encode() * 3) for c in "abcdefgh"]
    lower = [_dir("d"), *small[:4], _file("d/big", random.Random(7).randbytes(150_000)),
             *small[4:]]
    image = _open(_layout(tmp_path / "img", [lower, [_dir("d"), _file("d/big", b"new\n")]]),
                  opened)  # the lower d/big is hidden: its chunks are fetched, in pieces
    assert len(image.layers[0].layer.lookup("d/big").chunks) > 2
    dest = tmp_path / "dest"
    pull_image(image, str(dest))
    cuts = 0
    for most in range(1, 5):
        for batches in _hash_batches(monkeypatch, image, dest, most, 10**12):
            _ends_at_files(batches, most)
            cuts += len(batches) - 1
    assert cuts >= 4
    # each running total of a layer's stream and one past it, and a sweep
    whole = _hash_batches(monkeypatch, image, dest, 10**9, 10**12)
    totals = {t for (batch,) in whole for t in itertools.accumulate(n for _, n in batch)}
    bounds = sorted({t + d for t in totals for d in (0, 1)} | set(range(1000, 1100)))
    cuts = 0
    for most in bounds:
        for batches in _hash_batches(monkeypatch, image, dest, 10**9, most):
            _ends_at_bytes(batches, most)
            cuts += len(batches) - 1
    assert cuts >= len(bounds)


def test_a_first_pull_probes_no_file_in_place(tmp_path: Path, opened: list[Image],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Under directories this pull made there is nothing an interrupted pull could have
    left: no file is looked for in place (a failed open per file, else); a second pull
    into the same tree looks for every one, and keeps them."""
    image, dest = _image_with(tmp_path / "first", opened, 3)
    probed: list[str] = []
    real = Destination.matches_in_place

    def spy(self: Destination, path: str, e: fmt.TocEntry) -> bool:
        probed.append(path)
        return real(self, path, e)

    monkeypatch.setattr(Destination, "matches_in_place", spy)
    s = pull_image(image, str(tmp_path / "fresh"))
    assert probed == [] and s.files_fetched == 3
    s = pull_image(image, str(dest))
    assert sorted(probed) == ["d/empty", "d/f000", "d/f001", "d/f002"]
    assert s.reused_by["inPlace"] == 4 and s.files_fetched == 0


def test_directories_get_their_metadata_deepest_first(tmp_path: Path, opened: list[Image],
                                                      monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """A directory's metadata comes after its subdirectories': its mode may take away the
    search permission a pull without root reaches them through."""
    members: list[Member] = [_dir(n) for n in ("a", "a/b", "a/b/c", "a/z", "m", "m/n")]
    members.append(_file("a/b/c/f"))
    image = _open(_layout(tmp_path / "img", [members]), opened)
    order: list[str] = []
    real = Destination.directory_meta

    def spy(self: Destination, path: str, e: fmt.TocEntry) -> None:
        order.append(path)
        real(self, path, e)

    monkeypatch.setattr(Destination, "directory_meta", spy)
    pull_image(image, str(tmp_path / "dest"))
    assert sorted(order) == ["a", "a/b", "a/b/c", "a/z", "m", "m/n"]
    for i, p in enumerate(order):
        assert not any(q.startswith(p + "/") for q in order[i + 1:]), order
