"""The command line: happy paths, and bad input getting one line and a non-zero exit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from chunked import format as fmt
from tests.clirun import chunked
from tests.tarfactory import features_tar, gnu_tar


def run(*args: str, input: bytes | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[bytes]:
    return chunked(*args, text=False, input=input, cwd=cwd, timeout=120)


def assert_clean_failure(p: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = p.stderr.decode()
    assert p.returncode != 0, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("chunked: error: ")
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, dict, bytes]:
    d = tmp_path_factory.mktemp("cli")
    tar = features_tar()
    (d / "in.tar").write_bytes(tar)
    p = run("build", str(d / "in.tar"), "-o", str(d / "layer.blob"),
            "--image", f"oci:{d / 'image'}:v1")
    assert p.returncode == 0, p.stderr.decode()
    desc = json.loads(p.stdout)
    (d / "desc.json").write_text(json.dumps(desc))
    return d, d / "layer.blob", desc, tar


def test_build_prints_descriptor(built):
    d, blob, desc, tar = built
    assert desc["mediaType"] == fmt.LAYER_MEDIA_TYPE
    assert desc["size"] == blob.stat().st_size
    assert desc["digest"] == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert desc["diffID"] == "sha256:" + hashlib.sha256(tar).hexdigest()
    a = desc["annotations"]
    assert set(a) == {fmt.CURRENT.checksum_key, fmt.CURRENT.position_key,
                      fmt.CURRENT.tarsplit_key, fmt.OLD.checksum_key, fmt.OLD.position_key}


def test_build_writes_oci_image(built):
    d, blob, desc, tar = built
    layout = d / "image"
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_text())
    assert manifest["layers"][0] == {k: v for k, v in desc.items() if k != "diffID"}
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    assert config["rootfs"] == {"type": "layers", "diff_ids": [desc["diffID"]]}
    assert (blobs / desc["digest"].split(":")[1]).read_bytes() == blob.read_bytes()
    assert not [p for p in blobs.iterdir() if p.name.startswith(".tmp")]


def test_build_from_stdin(tmp_path):
    tar = gnu_tar()
    p = run("build", "-", "-o", str(tmp_path / "x.blob"), input=tar)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["diffID"] == "sha256:" + hashlib.sha256(tar).hexdigest()


_TOC_TYPES = {tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
              tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
              tarfile.FIFOTYPE: "fifo"}


def _toc_frame(blob: bytes) -> bytes:
    """The TOC's zstd frame, found through the footer as the format lays it out (offset,
    compressed length, ... as little-endian u64, then the magic), not by our reader."""
    footer = blob[-64:]
    assert footer[-8:] == b"GNUlInUx"
    offset, length = struct.unpack_from("<QQ", footer)
    return blob[offset:offset + length]


def _listed(m: tarfile.TarInfo) -> tuple[str, str]:
    """How ``inspect`` lists a tar member: its mode string and its name column."""
    letter = "h" if m.islnk() else stat.filemode(_S_IFMT[m.type] | m.mode)[0]
    mode = letter + stat.filemode(stat.S_IFREG | m.mode)[1:]
    shown = m.name + (f" -> {m.linkname}" if m.issym() or m.islnk() else "")
    return mode, shown


_S_IFMT = {tarfile.REGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
           tarfile.SYMTYPE: stat.S_IFLNK, tarfile.LNKTYPE: stat.S_IFREG,
           tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
           tarfile.FIFOTYPE: stat.S_IFIFO}


def test_inspect_lists_every_tar_entry(built):
    d, blob, desc, tar = built
    members = tarfile.open(fileobj=io.BytesIO(tar)).getmembers()
    p = run("inspect", str(blob), "--json")
    assert p.returncode == 0, p.stderr.decode()
    entries = json.loads(p.stdout)["entries"]
    assert len(entries) == len(members)
    for e, m in zip(entries, members, strict=True):
        want = {"name": m.name + ("/" if m.isdir() else ""), "type": _TOC_TYPES[m.type],
                "size": m.size if m.isreg() else 0, "mode": m.mode,
                "uid": m.uid, "gid": m.gid, "linkName": m.linkname}
        got = {"name": e["name"], "type": e["type"], "size": e.get("size", 0),
               "mode": e["mode"], "uid": e.get("uid", 0), "gid": e.get("gid", 0),
               "linkName": e.get("linkName", "")}
        assert got == want, m.name
        if m.ischr() or m.isblk():
            assert (e.get("devMajor", 0), e.get("devMinor", 0)) == (m.devmajor, m.devminor)

    # the text listing: one line per member, in tar order, with its mode, owner, size
    p = run("inspect", str(blob), "--descriptor", str(d / "desc.json"))
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    head, _, listing = out.partition("\n")
    assert f"entries: {len(members)}" in head
    assert "TOC verified against annotation: yes" in head
    pos = 0
    for m in members:
        mode, shown = _listed(m)
        size = f"{m.devmajor},{m.devminor}" if m.ischr() or m.isblk() else \
            str(m.size if m.isreg() else 0)
        line = re.compile(rf"^{re.escape(mode)} +{m.uid}:{m.gid} +{re.escape(size)} .*"
                          rf" {re.escape(shown)}$", re.M)
        found = line.search(listing, pos)
        assert found is not None, (m.name, listing[pos:pos + 200])
        pos = found.end()
    assert listing[pos:].strip() == ""


def test_inspect_verify_cat(built):
    d, blob, desc, tar = built
    p = run("verify", str(blob), "--descriptor", str(d / "desc.json"), "--json")
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads(p.stdout)
    assert report["diffID"] == desc["diffID"]
    toc = hashlib.sha256(_toc_frame(blob.read_bytes())).hexdigest()
    assert report["tocChecksum"] == "sha256:" + toc
    assert desc["annotations"][fmt.CURRENT.checksum_key] == "sha256:" + toc
    tf = tarfile.open(fileobj=io.BytesIO(tar))
    for name in ("etc/hello.txt", "usr/holes.bin", "names/a&b<c>d", "usr/hard"):
        m = tf.getmember(name)
        want = tf.extractfile(m).read()
        p = run("cat", str(blob), name)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout == want


def test_missing_input(tmp_path):
    assert_clean_failure(run("build", str(tmp_path / "nope.tar"), "-o", str(tmp_path / "o")),
                         "no such file")
    assert not (tmp_path / "o").exists()


def test_not_a_tar(tmp_path):
    (tmp_path / "x").write_bytes(b"this is not a tar archive\n" * 100)
    assert_clean_failure(run("build", str(tmp_path / "x"), "-o", str(tmp_path / "o")),
                         "not a valid tar")
    assert os.listdir(tmp_path) == ["x"]


def test_truncated_tar(tmp_path):
    tar = features_tar()
    (tmp_path / "t.tar").write_bytes(tar[:len(tar) // 3 + 100])
    assert_clean_failure(run("build", str(tmp_path / "t.tar"), "-o", str(tmp_path / "o")),
                         "truncated")
    assert sorted(os.listdir(tmp_path)) == ["t.tar"]


def test_failed_build_keeps_image_clean(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01" * 5000)
    p = run("build", str(tmp_path / "x"), "--image", f"oci:{tmp_path / 'img'}")
    assert_clean_failure(p, "not a valid tar", "header checksum mismatch")
    assert list((tmp_path / "img" / "blobs" / "sha256").iterdir()) == []


def _tar_with(*infos: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in infos:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_duplicate_paths_rejected_like_upstream(tmp_path):
    tar = _tar_with((tarfile.TarInfo("a"), b"1"), (tarfile.TarInfo("./a"), b"2"))
    (tmp_path / "d.tar").write_bytes(tar)
    assert_clean_failure(run("build", str(tmp_path / "d.tar"), "-o", str(tmp_path / "o")),
                         "twice")
    # the old format (containers/storage 1.43) accepted them
    p = run("build", str(tmp_path / "d.tar"), "-o", str(tmp_path / "o"), "--format", "old")
    assert p.returncode == 0


def test_global_header_rejected(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tf:
        tf.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    (tmp_path / "g.tar").write_bytes(buf.getvalue())
    assert_clean_failure(run("build", str(tmp_path / "g.tar"), "-o", str(tmp_path / "o")),
                         "global header")


def test_non_utf8_name_rejected(tmp_path):
    ti = tarfile.TarInfo("bad-\udcff-name")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      errors="surrogateescape") as tf:
        tf.addfile(ti, io.BytesIO(b""))
    (tmp_path / "n.tar").write_bytes(buf.getvalue())
    assert_clean_failure(run("build", str(tmp_path / "n.tar"), "-o", str(tmp_path / "o")),
                         "not valid UTF-8")


def test_gnu_sparse_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(src), "-cf",
                    str(tmp_path / "s.tar"), "sparse"], check=True)
    assert_clean_failure(run("build", str(tmp_path / "s.tar"), "-o", str(tmp_path / "o")),
                         "sparse")


def _corrupt(src: Path, dst: Path, offset: int) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x55
    dst.write_bytes(bytes(data))


def test_flipped_byte_in_file_frame(built, tmp_path):
    d, blob, desc, tar = built
    p = run("inspect", str(blob), "--json")
    assert p.returncode == 0, p.stderr.decode()
    inspect = json.loads(p.stdout)["entries"]
    hello = next(e for e in inspect if e["name"] == "usr/text.txt")
    bad = tmp_path / "bad.blob"
    _corrupt(blob, bad, hello["offset"] + 20)
    p = run("verify", str(bad), "--descriptor", str(d / "desc.json"), "-q")
    assert_clean_failure(p, "usr/text.txt")
    p = run("cat", str(bad), "usr/text.txt", "--descriptor", str(d / "desc.json"))
    assert_clean_failure(p, "usr/text.txt")
    assert p.stdout == b""  # not one unverified byte
    # other files are still served
    assert run("cat", str(bad), "etc/hello.txt").stdout == b"hello\n"


def test_flipped_byte_in_header_frame(built, tmp_path):
    """Bytes no file digest covers (tar headers) are still checked by verify."""
    d, blob, desc, tar = built
    bad = tmp_path / "bad.blob"
    _corrupt(blob, bad, 30)
    assert_clean_failure(run("verify", str(bad), "-q"), str(bad), "corrupt zstd frame")


def test_flipped_byte_in_toc(built, tmp_path):
    d, blob, desc, tar = built
    pos = fmt.Position.parse(desc["annotations"][fmt.CURRENT.position_key], with_type=True,
                             key="")
    bad = tmp_path / "bad.blob"
    _corrupt(blob, bad, pos.offset + pos.length // 2)
    assert_clean_failure(run("verify", str(bad), "--descriptor", str(d / "desc.json")),
                         "TOC does not match its annotation")
    # no annotation: zstd's checksum catches it
    assert_clean_failure(run("inspect", str(bad)), "TOC: corrupt zstd data",
                         "doesn't match checksum")


def test_truncated_blob(built, tmp_path):
    d, blob, desc, tar = built
    bad = tmp_path / "bad.blob"
    bad.write_bytes(blob.read_bytes()[:-30])
    assert_clean_failure(run("inspect", str(bad)), "footer")
    assert_clean_failure(run("verify", str(bad), "--descriptor", str(d / "desc.json")),
                         "descriptor says")
    # with bare annotations (no size to compare), the cut tar-split lies outside the blob
    (tmp_path / "ann.json").write_text(json.dumps(desc["annotations"]))
    bad.write_bytes(blob.read_bytes()[:-500])
    assert_clean_failure(run("inspect", str(bad), "--descriptor", str(tmp_path / "ann.json")),
                         "outside the blob")


def test_footer_pointing_outside(built, tmp_path):
    d, blob, desc, tar = built
    data = bytearray(blob.read_bytes())
    data[-64:-56] = (len(data) + 1000).to_bytes(8, "little")
    bad = tmp_path / "bad.blob"
    bad.write_bytes(bytes(data))
    assert_clean_failure(run("inspect", str(bad)), "outside the blob")


def test_cat_missing_path_and_directory(built):
    d, blob, desc, tar = built
    assert_clean_failure(run("cat", str(blob), "no/such"), "no such file")
    assert_clean_failure(run("cat", str(blob), "etc"), "not a regular file")


def test_missing_blob(tmp_path):
    assert_clean_failure(run("verify", str(tmp_path / "nope")), "no such file")
