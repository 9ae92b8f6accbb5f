"""The public API (``chunked.__all__``): the README's example runs, each call gives what it
says, and bad input raises only :class:`chunked.ChunkedError`."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import chunked

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "the README's Python API section has no example"
    return m.group(1)


def test_readme_example_runs(tmp_path: Path) -> None:
    # in a fresh interpreter, as a user would run it, from outside the checkout
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "refused:" in p.stdout and "Traceback" not in p.stderr


def test_all_names_resolve_and_nothing_else_is_promised() -> None:
    for name in chunked.__all__:
        assert getattr(chunked, name) is not None
    assert issubclass(chunked.VerifyError, chunked.ChunkedError)
    assert issubclass(chunked.MountError, chunked.ChunkedError)
    with pytest.raises(AttributeError):
        chunked.no_such_thing  # noqa: B018
    assert (REPO / "chunked" / "py.typed").exists()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        top = tarfile.TarInfo("usr")
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        tar.addfile(top)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("usr/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "big.bin"
        tar.addfile(link)
    return path


def _noise(n: int) -> bytes:
    out = bytearray()
    seed = b"seed"
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:n])


@pytest.fixture
def image(tmp_path: Path) -> tuple[str, Path, dict[str, bytes]]:
    files = {"usr/big.bin": _noise(600_000), "etc/hostname": b"box\n", "empty": b""}
    tar = _tar(tmp_path / "in.tar", files)
    desc = chunked.build(tar, tmp_path / "layer.blob", image=f"oci:{tmp_path}/img:1")
    assert desc.diff_id == "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    assert desc.digest == "sha256:" + hashlib.sha256(
        (tmp_path / "layer.blob").read_bytes()).hexdigest()
    assert desc.size == (tmp_path / "layer.blob").stat().st_size
    assert desc.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    return f"oci:{tmp_path}/img:1", tmp_path / "layer.blob", files


def test_build_from_a_file_object_equals_build_from_its_path(tmp_path: Path,
                                                            image: tuple) -> None:
    _, blob, _ = image
    with open(tmp_path / "in.tar", "rb") as f:
        desc = chunked.build(f, tmp_path / "again.blob")
    assert (tmp_path / "again.blob").read_bytes() == blob.read_bytes()
    assert desc.to_dict()["diffID"] == desc.diff_id


@pytest.mark.parametrize("kwargs, message", [
    ({}, "say where the layer goes"),
    ({"dst": "x.blob", "level": 0}, "level 0"),
    ({"dst": "x.blob", "format": "estargz"}, "format 'estargz'"),
    ({"dst": "x.blob", "threads": 0}, "threads 0"),
])
def test_build_refuses_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    tar = _tar(tmp_path / "in.tar", {"a": b"a"})
    with pytest.raises(chunked.InputError, match=re.escape(message)):
        chunked.build(tar, **kwargs)
    assert not (tmp_path / "x.blob").exists()


def test_walk_stat_read_and_open(image: tuple) -> None:
    ref, blob, files = image
    for target in (ref, str(blob)):
        with chunked.open_image(target) as img:
            entries = {e.path: e for e in img.walk()}
            assert set(entries) >= {"usr/big.bin", "etc/hostname", "empty", "usr/link"}
            big = entries["usr/big.bin"]
            assert big.type == "reg" and big.size == 600_000 and big.chunks > 1
            assert big.digest == "sha256:" + hashlib.sha256(files["usr/big.bin"]).hexdigest()
            assert big.mtime is not None and big.mtime.timestamp() == 1_700_000_000
            assert entries["usr/link"].type == "symlink"
            assert entries["usr/link"].linkname == "big.bin"
            assert img.stat("/etc/hostname") == entries["etc/hostname"]
            assert img.read("etc/hostname") == b"box\n"
            assert img.read("empty") == b""
            with img.open("usr/big.bin") as f:
                assert f.seekable() and f.readable() and not f.writable()
                f.seek(-10, os.SEEK_END)
                assert f.read() == files["usr/big.bin"][-10:]
                f.seek(123_456)
                assert f.read(70_000) == files["usr/big.bin"][123_456:193_456]
                f.seek(0)
                assert f.read() == files["usr/big.bin"]
            with pytest.raises(chunked.NotFoundError):
                img.stat("nope")
            with pytest.raises(chunked.InputError, match="symlink"):
                img.read("usr/link")
            with pytest.raises(chunked.InputError, match="dir"):
                img.open("usr")


def test_open_fetches_and_verifies_only_what_is_read(image: tuple, tmp_path: Path) -> None:
    """A corrupt chunk is caught when read, and only then: a read elsewhere in the file
    does not trip on it."""
    ref, blob, files = image
    bad = tmp_path / "bad.blob"
    data = bytearray(blob.read_bytes())
    with chunked.open_image(str(blob)) as img:
        assert img.stat("usr/big.bin").chunks > 2
        tail = img.view.entries["usr/big.bin"].info.chunks[-1]  # where its last chunk is
    data[tail.start + (tail.end - tail.start) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with chunked.open_image(str(bad)) as img:
        with img.open("usr/big.bin") as f:
            assert f.read(1000) == files["usr/big.bin"][:1000]
            f.seek(tail.file_offset)
            with pytest.raises(chunked.ChunkedError):
                f.read(10)
        with pytest.raises(chunked.ChunkedError):
            img.read("usr/big.bin")


def test_verify_holds_blobs_and_diff_ids(image: tuple, tmp_path: Path) -> None:
    ref, blob, _ = image
    report = chunked.verify(ref)
    (layer,) = report.layers
    assert layer.digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert layer.files == 2 and layer.tarsplit_checked  # the regular files with content
    desc = tmp_path / "desc.json"
    d = chunked.build(tmp_path / "in.tar", tmp_path / "b2.blob").to_dict()
    desc.write_text(__import__("json").dumps(d))
    assert chunked.verify(tmp_path / "b2.blob", descriptor=desc).layers[0].digest == d["digest"]
    d["digest"] = "sha256:" + "0" * 64
    desc.write_text(__import__("json").dumps(d))
    with pytest.raises(chunked.VerifyError, match="its descriptor says sha256:0000"):
        chunked.verify(tmp_path / "b2.blob", descriptor=desc)


def test_verify_refuses_a_config_that_lies_about_the_diff_id(image: tuple) -> None:
    ref, _, _ = image
    layout = Path(ref[4:].rsplit(":", 1)[0])
    import json

    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    cdigest = manifest["config"]["digest"].split(":")[1]
    config = json.loads((layout / "blobs/sha256" / cdigest).read_text())
    config["rootfs"]["diff_ids"] = ["sha256:" + "1" * 64]
    raw = json.dumps(config).encode()
    new = hashlib.sha256(raw).hexdigest()
    (layout / "blobs/sha256" / new).write_bytes(raw)
    manifest["config"]["digest"] = "sha256:" + new
    manifest["config"]["size"] = len(raw)
    mraw = json.dumps(manifest).encode()
    mnew = hashlib.sha256(mraw).hexdigest()
    (layout / "blobs/sha256" / mnew).write_bytes(mraw)
    index["manifests"][0].update(digest="sha256:" + mnew, size=len(mraw))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(chunked.VerifyError, match="diff_id"):
        chunked.verify(ref)


@pytest.mark.parametrize("target", ["/nonexistent/blob", "oci:/nonexistent/dir", "docker:/x",
                                    "docker://", "in.tar"])
def test_bad_targets_raise_chunked_errors(target: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _tar(tmp_path / "in.tar", {"a": b"a"})
    with pytest.raises(chunked.ChunkedError):
        chunked.open_image(target).close()


def test_pull_writes_the_tree(image: tuple, tmp_path: Path) -> None:
    ref, _, files = image
    summary = chunked.pull(ref, tmp_path / "root")
    for name, data in files.items():
        assert (tmp_path / "root" / name).read_bytes() == data
    assert os.readlink(tmp_path / "root/usr/link") == "big.bin"
    assert summary.files_fetched == 2  # the empty file needs no fetch
    with pytest.raises(chunked.InputError, match="pull takes an image"):
        chunked.pull(str(tmp_path / "layer.blob"), tmp_path / "x")


def test_no_top_level_fuse_module(tmp_path: Path) -> None:
    for cwd in (tmp_path, REPO):
        p = subprocess.run([sys.executable, "-c", "import fuse"], capture_output=True,
                           text=True, cwd=cwd)
        assert p.returncode != 0
        assert "ModuleNotFoundError" in p.stderr or "this is chunked.fuse" in p.stderr
    import chunked.fuse.mount  # noqa: F401 - where it lives
