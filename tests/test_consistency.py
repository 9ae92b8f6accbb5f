"""One view of a layer: a TOC that disagrees with its tar-split (or its plain tar) is refused
by every command, field by field; a tar-split that lies is caught too.

The layers are re-signed (tests/hostile/): every digest that covers only the layer itself
matches, so nothing but the TOC/tar comparison can catch them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chunked.errors import FormatError, VerifyError
from chunked.read.layer import ChunkedLayer
from chunked.read.source import FileSource
from tests import hostile
from tests.clirun import chunked
from tests.hostile import HELLO, OTHER, Case, Parts, assemble
from tests.native import c_module

# (entry, TOC field, the lie): every field containers/storage compares, each on an entry
# that has it
FIELD_LIES = [
    ("etc/hello.txt", "name", "etc/hello.TXT"),
    ("usr/link", "type", "hardlink"),
    ("usr/link", "linkName", "other.bin"),
    ("etc/hello.txt", "mode", 0o600),
    ("etc/", "size", 512),
    ("etc/hello.txt", "uid", 1234),
    ("etc/hello.txt", "gid", 4321),
    ("etc/hello.txt", "modtime", "2001-02-03T04:05:06Z"),
    ("etc/hello.txt", "accesstime", "2001-02-03T04:05:06Z"),
    ("etc/hello.txt", "changetime", "2001-02-03T04:05:06Z"),
    ("dev/null", "devMajor", 5),
    ("dev/null", "devMinor", 9),
    ("meta.txt", "xattrs", {"user.foo": base64.b64encode(b"baz").decode()}),
]


def _lie(entry: str, field: str, value: Any, *, old: bool = False) -> hostile.LayerBlob:
    parts = Parts.base(old)
    parts.entry(entry)[field] = value
    return assemble(parts)


def _open(lb: hostile.LayerBlob, tmp_path: Path) -> ChunkedLayer:
    path = tmp_path / "blob"
    path.write_bytes(lb.blob)
    source = FileSource(path)
    return ChunkedLayer.open(source, lb.descriptor["annotations"])


@pytest.mark.parametrize(("entry", "field", "value"), FIELD_LIES,
                         ids=[f"{f}" for _, f, _ in FIELD_LIES])
def test_toc_field_that_disagrees_with_the_tarsplit(tmp_path: Path, entry: str, field: str,
                                                    value: Any) -> None:
    with pytest.raises(FormatError, match=f"disagree on .*: {field} is "):
        _open(_lie(entry, field, value), tmp_path)


@pytest.mark.parametrize(("entry", "field", "value"), FIELD_LIES,
                         ids=[f"{f}" for _, f, _ in FIELD_LIES])
def test_old_format_toc_that_disagrees_with_the_plain_tar(tmp_path: Path, entry: str,
                                                          field: str, value: Any) -> None:
    """No tar-split to check against: verify decompresses the layer and compares."""
    layer = _open(_lie(entry, field, value, old=True), tmp_path)
    assert not layer.tarsplit_checked
    with pytest.raises(FormatError, match="disagree on|not list|does not match"):
        layer.verify()


def _point_hello_at_other(parts: Parts) -> None:
    """etc/hello.txt served from etc/other.txt's frames, with other's digest and size."""
    hello, other = parts.entry("etc/hello.txt"), parts.entry("etc/other.txt")
    for key in ("offset", "endOffset", "digest", "size"):
        hello[key] = other[key]


def test_toc_pointing_a_file_at_other_bytes(tmp_path: Path) -> None:
    parts = Parts.base()
    _point_hello_at_other(parts)
    with pytest.raises(FormatError, match="hello.txt.*size"):
        _open(assemble(parts), tmp_path)


def test_content_is_checked_against_the_tarsplit_crc(tmp_path: Path) -> None:
    """Same size, the other file's bytes and digest: only the CRC-64 can tell."""
    parts = Parts.base()
    hello = parts.entry("etc/hello.txt")
    # a third file of exactly hello's size, whose bytes the TOC now serves as hello's
    twin = parts.entry("etc/other.txt")
    assert len(OTHER) != len(HELLO)
    lines = parts.ts_lines()
    layer = _open(assemble(parts), tmp_path)
    assert layer.read_file("etc/hello.txt") == HELLO
    crc = next(json.loads(x) for x in lines if b'"etc/hello.txt"' in x)["payload"]
    assert crc and twin and hello
    # now the lie: the tar-split's CRC for hello replaced (the TOC and the bytes are true)
    parts = Parts.base()
    bad = []
    for x in parts.ts_lines():
        doc = json.loads(x)
        if doc.get("name") == "etc/hello.txt":
            doc["payload"] = base64.b64encode(bytes(8)).decode()
        bad.append(json.dumps(doc, separators=(",", ":")).encode())
    parts.set_ts_lines(bad)
    layer = _open(assemble(parts), tmp_path)
    with pytest.raises(VerifyError, match="tar-split CRC"):
        layer.read_file("etc/hello.txt")


def _tarsplit_header_lie(parts: Parts, name: bytes, offset: int, value: bytes) -> None:
    """Change a field of a header inside the tar-split's segments (checksum fixed up)."""
    lines = parts.ts_lines()
    for i, line in enumerate(lines):
        doc = json.loads(line)
        if doc["type"] != 2:
            continue
        seg = bytearray(base64.b64decode(doc["payload"]))
        at = seg.find(name + b"\0")
        if at < 0 or (at - len(seg)) % 512:
            continue
        seg[at + offset:at + offset + len(value)] = value
        seg[at + 148:at + 156] = b" " * 8
        seg[at + 148:at + 156] = b"%06o\0 " % sum(seg[at:at + 512])
        doc["payload"] = base64.b64encode(bytes(seg)).decode()
        lines[i] = json.dumps(doc, separators=(",", ":")).encode()
        parts.set_ts_lines(lines)
        return
    raise AssertionError(f"no header for {name!r} in the tar-split")


def test_tarsplit_header_that_disagrees_with_the_toc(tmp_path: Path) -> None:
    parts = Parts.base()
    _tarsplit_header_lie(parts, b"etc/other.txt", 100, b"0000600")  # the mode field
    with pytest.raises(FormatError, match="other.txt.*mode"):
        _open(assemble(parts), tmp_path)


def test_tarsplit_that_hides_an_entry(tmp_path: Path) -> None:
    """A header the TOC does not list, slipped into a segment: a plain tar -x would create
    it, so the layer is refused."""
    parts = Parts.base()
    lines = parts.ts_lines()
    last_file = max(i for i, x in enumerate(lines) if json.loads(x)["type"] == 1)
    import tarfile

    hidden = tarfile.TarInfo("hidden")
    hidden.type = tarfile.DIRTYPE
    seg = {"type": 2, "payload": base64.b64encode(hidden.tobuf()).decode(), "position": 0}
    lines.insert(last_file + 1, json.dumps(seg).encode())
    parts.set_ts_lines(lines)
    with pytest.raises(FormatError, match="entry the TOC does not list|more between"):
        _open(assemble(parts), tmp_path)


# -- every command, through the CLI ---------------------------------------------------------

_chunked = chunked


def _one_error_line(p: subprocess.CompletedProcess[str], want: str) -> None:
    assert p.returncode != 0, p.stdout
    lines = [x for x in p.stderr.splitlines() if not x.startswith("chunked: warning:")]
    assert len(lines) == 1 and lines[0].startswith("chunked: error: "), p.stderr
    assert re.search(want, lines[0]), lines[0]


@pytest.fixture(scope="module")
def lying_case(tmp_path_factory: pytest.TempPathFactory) -> hostile.CaseDir:
    parts = Parts.base()
    parts.entry("etc/hello.txt")["mode"] = 0o4755  # a setuid bit the tar does not have
    root = tmp_path_factory.mktemp("lie") / "case"
    return hostile.write_case(Case("mode-lie", "test", [assemble(parts)]), root)


@pytest.mark.parametrize("command", ["inspect", "cat", "verify", "pull", "verify-oci", "mount"])
def test_every_command_refuses_a_toc_the_tar_contradicts(lying_case: hostile.CaseDir,
                                                         tmp_path: Path, command: str) -> None:
    blob = str(lying_case.root / "in" / "blob")
    desc = str(lying_case.root / "in" / "descriptor.json")
    image = f"oci:{lying_case.root / 'in' / 'layout'}:{hostile.TAG}"
    want = "disagree on 'etc/hello.txt': mode"
    if command == "mount":
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        p = _chunked("mount", image, str(mnt), "--no-cache")
        if os.path.ismount(mnt):
            _chunked("umount", str(mnt))
        _one_error_line(p, want)
        return
    argv = {
        "inspect": ["inspect", blob, "--descriptor", desc],
        "cat": ["cat", blob, "etc/hello.txt", "--descriptor", desc],
        "verify": ["verify", blob, "--descriptor", desc, "-q"],
        "pull": ["pull", image, str(tmp_path / "dest"), "--no-cache", "-q"],
        "verify-oci": ["verify", image, "-q"],
    }[command]
    p = _chunked(*argv)
    _one_error_line(p, want)
    assert p.stdout == ""
    if command == "pull":
        assert not (tmp_path / "dest" / "etc" / "hello.txt").exists()


def test_old_format_lie_is_pulled_as_the_plain_tar_and_refused_on_demand(
        tmp_path: Path) -> None:
    """No tar-split: pull reads the layer whole and writes what tar would; with
    --require-tarsplit it refuses; cat serves the TOC but says it could not check it."""
    parts = Parts.base(old=True)
    _point_hello_at_other(parts)
    case = hostile.write_case(Case("old-lie", "test", [assemble(parts)]), tmp_path / "case")
    image = f"oci:{case.root / 'in' / 'layout'}:{hostile.TAG}"
    p = _chunked("pull", image, str(tmp_path / "dest"), "--no-cache", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "dest" / "etc" / "hello.txt").read_bytes() == HELLO
    p = _chunked("pull", image, str(tmp_path / "dest2"), "--no-cache", "-q",
                 "--require-tarsplit")
    _one_error_line(p, "no tar-split.*--require-tarsplit")
    p = _chunked("cat", image, "etc/other.txt")
    assert p.returncode == 0 and p.stdout.encode() == OTHER
    assert p.stderr.count("chunked: warning:") == 1 and "unchecked" in p.stderr
    p = _chunked("verify", image, "-q")
    _one_error_line(p, "hello.txt")


# -- each check of the TOC against the tar-split, with its exact message ---------------------

def _docs(parts: Parts) -> list[dict[str, Any]]:
    return [json.loads(x) for x in parts.ts_lines()]


def _set_docs(parts: Parts, docs: list[dict[str, Any]]) -> None:
    parts.set_ts_lines([json.dumps(d, separators=(",", ":")).encode() for d in docs])


def _seg(data: bytes) -> dict[str, Any]:
    return {"type": 2, "payload": base64.b64encode(data).decode(), "position": 0}


def _line(docs: list[dict[str, Any]], name: str) -> int:
    return next(i for i, d in enumerate(docs) if d.get("name") == name)


def _header(name: str, kind: bytes = b"5", size: int = 0) -> bytes:
    import tarfile

    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mtime = kind, size, 1_700_000_000
    return ti.tobuf(tarfile.USTAR_FORMAT)


def _refused(tmp_path: Path, parts: Parts, message: str,
             exc: type[Exception] = FormatError) -> None:
    lb = assemble(parts)
    with pytest.raises(exc, match=message) as info:
        _open(lb, tmp_path)
    assert str(info.value).startswith(str(tmp_path / "blob") + ": "), str(info.value)


def test_exact_message_of_a_field_lie(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"blob: the TOC and the tar disagree on "
                                          r"'etc/hello\.txt': mode is 384 in the TOC, 420 in "
                                          r"the tar$"):
        _open(_lie("etc/hello.txt", "mode", 0o600), tmp_path)
    with pytest.raises(FormatError, match=r"disagree on 'usr/link': linkName is 'other\.bin' "
                                          r"in the TOC, 'multi\.bin' in the tar$"):
        _open(_lie("usr/link", "linkName", "other.bin"), tmp_path)


def test_a_long_value_is_cut_short_in_the_message(tmp_path: Path) -> None:
    long = "x" * 100
    with pytest.raises(FormatError) as exc:
        _open(_lie("usr/link", "linkName", long), tmp_path)
    shown = "'" + "x" * 56 + "..."  # the repr's first 57 characters
    assert str(exc.value).endswith(f"linkName is {shown} in the TOC, 'multi.bin' in the tar")
    sixty = "y" * 58  # its repr is exactly 60 characters: shown whole
    with pytest.raises(FormatError, match=rf"linkName is '{sixty}' in the TOC"):
        _open(_lie("usr/link", "linkName", sixty), tmp_path)
    with pytest.raises(FormatError, match=rf"linkName is '{'y' * 56}\.\.\. in the TOC"):
        _open(_lie("usr/link", "linkName", sixty + "y"), tmp_path)


def test_no_time_and_the_epoch_are_alike() -> None:
    from chunked.read.consistency import _t

    assert _t(None) is None and _t(0) is None
    assert _t(1) == 1 and _t(-1) == -1


@pytest.mark.parametrize("keep", [0, 100, 499])
def test_missing_padding(tmp_path: Path, keep: int) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    i = _line(docs, "etc/other.txt")
    assert -len(HELLO) % 512 == 500  # the padding after etc/hello.txt
    docs[i - 1] = _seg(base64.b64decode(docs[i - 1]["payload"])[:keep])
    _set_docs(parts, docs)
    _refused(tmp_path, parts, r": tar-split is missing the padding of a file$")


def test_padding_and_no_header(tmp_path: Path) -> None:
    """The padding is all there, the header of the next file is not."""
    parts = Parts.base()
    docs = _docs(parts)
    i = _line(docs, "etc/other.txt")
    docs[i - 1] = _seg(base64.b64decode(docs[i - 1]["payload"])[:500])
    _set_docs(parts, docs)
    _refused(tmp_path, parts, r": the tar has an entry the TOC does not list$")


def test_a_bad_header_in_the_tarsplit(tmp_path: Path) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    i = _line(docs, "etc/other.txt")
    seg = bytearray(base64.b64decode(docs[i - 1]["payload"]))
    seg[-512 + 148:-512 + 156] = b"0000001\0"  # a header checksum that is wrong
    docs[i - 1] = _seg(bytes(seg))
    _set_docs(parts, docs)
    _refused(tmp_path, parts, r": tar-split holds a bad tar header \(.+\)$")


def test_two_headers_between_two_files(tmp_path: Path) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    i = _line(docs, "etc/other.txt")
    seg = base64.b64decode(docs[i - 1]["payload"])
    pad = -len(HELLO) % 512
    docs[i - 1] = _seg(seg[:pad] + _header("hidden") + seg[pad:])
    _set_docs(parts, docs)
    _refused(tmp_path, parts, r": tar-split holds more between two files than one header$")


def test_a_file_without_its_crc(tmp_path: Path) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    docs[_line(docs, "etc/other.txt")]["payload"] = None
    _set_docs(parts, docs)
    _refused(tmp_path, parts, r": tar-split has no CRC for 'etc/other\.txt'$")


@pytest.mark.parametrize(("key", "value"), [("name", "etc/OTHER.txt"), ("size", 52)])
def test_a_tarsplit_line_that_does_not_match_its_header(tmp_path: Path, key: str,
                                                        value: Any) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    docs[_line(docs, "etc/other.txt")][key] = value
    _set_docs(parts, docs)
    shown = value if key == "name" else "etc/other.txt"
    _refused(tmp_path, parts, rf": tar-split line for '{re.escape(shown)}' does not match its "
                              r"header$")


def test_a_tar_entry_the_toc_does_not_list(tmp_path: Path) -> None:
    parts = Parts.base()
    parts.entries.remove(parts.entry(".wh.gone"))  # the last entry
    _refused(tmp_path, parts, r": the tar has an entry the TOC does not list$")


def test_a_header_in_place_of_the_end_of_the_archive(tmp_path: Path) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    last = max(i for i, d in enumerate(docs) if d["type"] == 1)
    _set_docs(parts, docs[:last + 1] + [_seg(_header("hidden"))])
    _refused(tmp_path, parts, r": the tar has an entry the TOC does not list$")


def test_toc_entries_the_tar_does_not_have(tmp_path: Path) -> None:
    parts = Parts.base()
    parts.entries.append({"type": "dir", "name": "zzz/", "mode": 0o755,
                          "modtime": "2023-11-14T22:13:20Z"})
    _refused(tmp_path, parts, r": the TOC has entries the tar does not$")


def test_nothing_is_recorded_from_a_tarsplit_that_fails(tmp_path: Path) -> None:
    from chunked.read.consistency import check_tarsplit

    parts = Parts.base()
    parts.entries.append({"type": "dir", "name": "zzz/", "mode": 0o755})
    path = tmp_path / "blob"
    lb = assemble(parts)
    path.write_bytes(lb.blob)
    layer = ChunkedLayer.open(FileSource(path), lb.descriptor["annotations"], check=False)
    with pytest.raises(FormatError, match="the TOC has entries the tar does not"):
        check_tarsplit(layer)
    assert layer.tarsplit_checked is False and layer.tar_size is None
    assert all(info.crc is None for info in layer.files.values())
    assert layer.files["etc/hello.txt"].chunks[0].crc is None


def test_check_tarsplit_records_every_crc_and_the_tar_size(tmp_path: Path) -> None:
    from chunked.format.chunking import crc64
    from chunked.read.consistency import check_tarsplit

    lb = hostile.build(hostile.base_tar())
    path = tmp_path / "blob"
    path.write_bytes(lb.blob)
    layer = ChunkedLayer.open(FileSource(path), lb.descriptor["annotations"], check=False)
    check_tarsplit(layer)
    assert layer.tarsplit_checked is True
    assert layer.tar_size == len(hostile.base_tar())
    for name, info in layer.files.items():
        if info.entry.type == "reg" and info.entry.size:
            assert info.crc == crc64(layer.read_file(name)), name
        else:
            assert info.crc is None, name
    assert layer.files["etc/hello.txt"].crc == crc64(HELLO)
    assert layer.files["etc/hello.txt"].chunks[0].crc == crc64(HELLO)


def _trailer_tar(extra: int) -> bytes:
    """A tar whose last member is a directory, then ``extra`` zero bytes after its
    end-of-archive blocks."""
    import tarfile

    from tests.tarfactory import _info, without_padding

    tar = hostile.tar_of([(_info("etc", tarfile.DIRTYPE, mode=0o755), None),
                          (_info("etc/hello.txt"), HELLO),
                          (_info("zdir", tarfile.DIRTYPE, mode=0o755), None)])
    return without_padding(tar) + bytes(extra)


def test_a_long_trailer_is_read_in_pieces(tmp_path: Path) -> None:
    from chunked.read.consistency import _MAX_GAP, rebuilt_diff_id, tarsplit_pairs

    tar = _trailer_tar(5 << 20)
    lb = hostile.build(tar)
    layer = _open(lb, tmp_path)
    assert layer.tar_size == len(tar)
    pairs = list(tarsplit_pairs(layer))
    files = [ts.name for _, ts in pairs if ts is not None]
    assert files == ["etc/", "etc/hello.txt", "zdir/"]
    tail = [len(gap) for gap, ts in pairs[3:]]
    assert all(ts is None for _, ts in pairs[3:]) and len(tail) >= 2
    assert all(n > _MAX_GAP for n in tail[:-1]) and tail[-1] <= _MAX_GAP
    assert sum(len(g) for g, _ in pairs) + len(HELLO) == len(tar)
    report = layer.verify()
    assert report.diff_id == hostile.sha(tar)
    assert rebuilt_diff_id(layer, layer.iter_file) == hostile.sha(tar)


def test_a_file_after_the_end_of_the_archive(tmp_path: Path) -> None:
    parts = Parts.of(hostile.build(_trailer_tar(5 << 20)).blob)
    docs = _docs(parts)
    docs.append({"type": 1, "name": "late", "payload": None, "position": 0})
    _set_docs(parts, docs)
    _refused(tmp_path, parts, r": tar-split has a file after the end of the archive$")


def test_rebuilt_diff_id_takes_the_files_bytes_from_the_reader(tmp_path: Path) -> None:
    from chunked.read.consistency import rebuilt_diff_id

    layer = _open(hostile.build(hostile.base_tar()), tmp_path)
    assert rebuilt_diff_id(layer, layer.iter_file) == hostile.sha(hostile.base_tar())
    read: list[str] = []

    def wrong(info: Any) -> Any:
        read.append(info.entry.name)
        return iter([b"\0" * info.entry.size])

    assert rebuilt_diff_id(layer, wrong) != hostile.sha(hostile.base_tar())
    assert read == ["etc/hello.txt", "etc/other.txt", "usr/multi.bin", "usr/holes.bin",
                    "meta.txt"]


def test_same_bytes_however_they_are_cut() -> None:
    from chunked.read.consistency import _same_bytes

    def same(a: list[bytes], b: list[bytes]) -> bool:
        return _same_bytes(iter(a), iter(b))

    assert same([b"ab", b"c"], [b"a", b"bc"]) and same([], []) and same([b""], [])
    assert same([b"", b"abc", b""], [b"a", b"", b"b", b"c"])
    assert not same([b"abc"], [b"ab"]) and not same([b"ab"], [b"abc"])
    assert not same([b"ab", b"c"], [b"ab", b"d"]) and not same([b"a"], [])
    assert not same([], [b"a"]) and not same([b"xbc"], [b"a", b"bc"])


# -- verify: the plain tar against the TOC and the tar-split ---------------------------------


def test_verify_checks_an_unchecked_layer_against_its_tarsplit(tmp_path: Path) -> None:
    lb = hostile.build(hostile.base_tar())
    path = tmp_path / "blob"
    path.write_bytes(lb.blob)
    layer = ChunkedLayer.open(FileSource(path), lb.descriptor["annotations"], check=False)
    assert not layer.tarsplit_checked
    report = layer.verify()
    assert report.tarsplit_checked is True and layer.tarsplit_checked is True
    assert report.diff_id == hostile.sha(hostile.base_tar())
    assert report.blob_digest == hostile.sha(lb.blob)
    assert report.toc_checked_against == lb.descriptor["annotations"][
        hostile.NEW + "manifest-checksum"]
    # found by its footer: no annotation checked the TOC
    by_footer = ChunkedLayer.open(FileSource(path))
    assert by_footer.verify().toc_checked_against == ""


def _shifted(parts: Parts, prefix: bytes) -> Parts:
    """``prefix`` (zstd frames) before the data frames, the TOC's offsets moved with it."""
    parts.data = prefix + parts.data
    for e in parts.entries:
        for key in ("offset", "endOffset"):
            if e.get(key):
                e[key] += len(prefix)
    return parts


@pytest.mark.parametrize("old", [False, True])
def test_data_that_is_not_a_tar(tmp_path: Path, old: bool) -> None:
    parts = _shifted(Parts.base(old), hostile.zstd(b"x" * 512))
    layer = _open(assemble(parts), tmp_path)
    assert layer.read_file("etc/hello.txt") == HELLO
    with pytest.raises(FormatError, match=r"blob: the layer's data is not a valid tar \(.+\)$"):
        layer.verify()


def test_an_empty_frame_before_the_data_is_harmless(tmp_path: Path) -> None:
    lb = assemble(_shifted(Parts.base(), hostile.zstd(b"")))
    report = _open(lb, tmp_path).verify()
    assert report.diff_id == hostile.sha(hostile.base_tar())
    assert report.blob_digest == hostile.sha(lb.blob)


def test_an_empty_frame_after_the_tar_is_in_the_blob_digest(tmp_path: Path) -> None:
    parts = Parts.base()
    parts.data += hostile.zstd(b"")
    lb = assemble(parts)
    report = _open(lb, tmp_path).verify()
    assert report.diff_id == hostile.sha(hostile.base_tar())
    assert report.blob_digest == hostile.sha(lb.blob)


def test_old_format_tar_entry_the_toc_does_not_list(tmp_path: Path) -> None:
    parts = Parts.base(old=True)
    parts.entries.remove(parts.entry(".wh.gone"))
    layer = _open(assemble(parts), tmp_path)
    with pytest.raises(FormatError, match=r"blob: the tar has '\.wh\.gone', which the TOC does "
                                          r"not list$"):
        layer.verify()


def test_old_format_toc_entries_the_tar_does_not_have(tmp_path: Path) -> None:
    parts = Parts.base(old=True)
    parts.entries.append({"type": "dir", "name": "zzz/", "mode": 0o755})
    layer = _open(assemble(parts), tmp_path)
    with pytest.raises(FormatError, match=r"blob: the TOC has entries the tar does not$"):
        layer.verify()


def test_old_format_file_served_from_another_of_its_size(tmp_path: Path) -> None:
    """The TOC points a file at another's bytes and digest, of the same size: every read
    checks out, only the plain tar tells."""
    from tests.tarfactory import _info

    same_a, same_b = b"A" * 40, b"B" * 40
    tar = hostile.tar_of([(_info("a"), same_a), (_info("b"), same_b)])
    parts = Parts.of(hostile.build(tar, old=True).blob)
    a, b = parts.entry("a"), parts.entry("b")
    for key in ("offset", "endOffset", "digest"):
        a[key] = b[key]
    layer = _open(assemble(parts), tmp_path)
    assert layer.read_file("a") == same_b
    with pytest.raises(VerifyError, match=r"blob: 'a' in the tar does not match its TOC "
                                          r"digest$"):
        layer.verify()


def test_tarsplit_header_bytes_that_are_not_the_tar(tmp_path: Path) -> None:
    """A header field the TOC does not carry (the owner's name) changed in the tar-split:
    the TOC check passes, the rebuild does not."""
    parts = Parts.base()
    _tarsplit_header_lie(parts, b"etc/other.txt", 265, b"mallory\0")
    layer = _open(assemble(parts), tmp_path)
    assert layer.read_file("etc/other.txt") == OTHER
    with pytest.raises(FormatError, match=r"blob: the tar-split does not rebuild the tar at "
                                          r"'etc/other\.txt'$"):
        layer.verify()


@pytest.mark.parametrize("how", ["changed", "dropped", "longer"])
def test_tarsplit_trailer_that_is_not_the_tar(tmp_path: Path, how: str) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    last = base64.b64decode(docs[-1]["payload"])
    assert docs[-1]["type"] == 2 and last == bytes(len(last))
    if how == "changed":
        docs[-1] = _seg(last[:-1] + b"\1")
    elif how == "dropped":
        docs = docs[:-1]
    else:
        docs.append(_seg(bytes(512)))
    _set_docs(parts, docs)
    layer = _open(assemble(parts), tmp_path)
    with pytest.raises(VerifyError, match=r"blob: the tar rebuilt from the tar-split differs "
                                          r"from the decompressed layer at its end$"):
        layer.verify()


def test_corrupt_frame_in_the_data(tmp_path: Path) -> None:
    parts = Parts.base()
    data = bytearray(parts.data)
    first = min(e["offset"] for e in parts.entries if e.get("offset"))
    # the frames before the first file's bytes hold headers only: no read of a file sees them
    data[first // 2] ^= 0xFF
    parts.data = bytes(data)
    layer = _open(assemble(parts), tmp_path)
    assert layer.read_file("etc/hello.txt") == HELLO
    with pytest.raises((VerifyError, FormatError), match=r"blob: (corrupt zstd frame in the data"
                                                         r"|the layer's data is not a valid)"):
        layer.verify()


def test_old_format_trailer_bound(tmp_path: Path) -> None:
    from chunked.read.consistency import _MAX_TRAILER

    # the two end-of-archive blocks count: at most _MAX_TRAILER bytes after the last header
    ok = _open(hostile.build(_trailer_tar(_MAX_TRAILER - 1024), old=True), tmp_path)
    assert ok.verify().diff_id == hostile.sha(_trailer_tar(_MAX_TRAILER - 1024))
    big = _open(hostile.build(_trailer_tar(_MAX_TRAILER - 1023), old=True), tmp_path)
    with pytest.raises(FormatError, match=rf"blob: more than {_MAX_TRAILER} bytes follow the "
                                          rf"end of the tar$"):
        big.verify()


def test_an_empty_segment_is_no_bytes(tmp_path: Path) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    i = _line(docs, "etc/other.txt")
    docs.insert(i - 1, {"type": 2, "payload": None, "position": 0})
    _set_docs(parts, docs)
    layer = _open(assemble(parts), tmp_path)
    assert layer.tarsplit_checked and layer.read_file("etc/other.txt") == OTHER
    assert layer.verify().diff_id == hostile.sha(hostile.base_tar())


def test_a_bad_header_in_place_of_the_end_of_the_archive(tmp_path: Path) -> None:
    parts = Parts.base()
    docs = _docs(parts)
    last = max(i for i, d in enumerate(docs) if d["type"] == 1)
    bad = bytearray(_header("hidden"))
    bad[148:156] = b"0000001\0"
    _set_docs(parts, docs[:last + 1] + [_seg(bytes(bad) + bytes(1024))])
    _refused(tmp_path, parts, r": tar-split holds a bad tar header \(.+\)$")


def test_access_and_change_times_of_the_tar_are_compared(tmp_path: Path) -> None:
    from tests.tarfactory import _info

    pax = {"atime": "1700000100.25", "ctime": "1700000200"}
    tar = hostile.tar_of([(_info("timed", pax=pax), b"times\n")])
    lb = hostile.build(tar)
    layer = _open(lb, tmp_path)
    e = layer.files["timed"].entry
    assert (e.atime, e.ctime) == (1_700_000_100_250_000_000, 1_700_000_200_000_000_000)
    assert layer.verify().diff_id == hostile.sha(tar)
    for field in ("accesstime", "changetime"):
        parts = Parts.of(lb.blob)
        parts.entry("timed")[field] = "2001-02-03T04:05:06Z"
        with pytest.raises(FormatError, match=rf"disagree on 'timed': {field} is "):
            _open(assemble(parts), tmp_path)


def test_old_format_lie_names_the_layer(tmp_path: Path) -> None:
    layer = _open(_lie("etc/hello.txt", "mode", 0o600, old=True), tmp_path)
    where = re.escape(str(tmp_path / "blob"))
    with pytest.raises(FormatError, match=rf"^{where}: the TOC and the tar disagree on "
                                          r"'etc/hello\.txt': mode is 384 in the TOC, 420 in "
                                          r"the tar$"):
        layer.verify()


def test_the_c_matcher_takes_lone_plain_headers(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """check_tarsplit offers every file line to the C matcher (when compiled, whatever
    CHUNKED_PURE_PYTHON says here): it answers a lone plain header with its payload size
    and leaves anything else (-1) to the Python, which gives the same verdicts."""
    import types

    from chunked.read import consistency

    c = c_module("chunked.format._tocindex")
    answers: list[tuple[str, int]] = []

    def spy(*args: Any) -> int:
        out = c.tar_entry_matches(*args)
        answers.append((args[3], out))
        return out

    monkeypatch.setattr(consistency, "_tocindex", types.SimpleNamespace(tar_entry_matches=spy))
    layer = _open(hostile.build(hostile.base_tar()), tmp_path)
    assert layer.tarsplit_checked
    assert [name for name, _ in answers] == [
        "etc/", "etc/hello.txt", "etc/other.txt", "usr/", "usr/multi.bin", "usr/holes.bin",
        "usr/empty", "usr/link", "usr/hard", "dev/", "dev/null", "dev/fifo", "meta.txt",
        ".wh.gone"]
    got = dict(answers)
    assert got["etc/hello.txt"] == len(HELLO) and got["usr/multi.bin"] == 150_000
    assert got["etc/"] == 0 and got["usr/link"] == 0
    assert got["meta.txt"] == -1  # a PAX header (its xattr): the Python's to judge
    assert layer.read_file("etc/hello.txt") == HELLO
    answers.clear()
    with pytest.raises(FormatError, match=r"disagree on 'etc/hello\.txt': mode is 384 in the "
                                          r"TOC, 420 in the tar$"):
        _open(_lie("etc/hello.txt", "mode", 0o600), tmp_path)
    assert answers[-1] == ("etc/hello.txt", -1)
    # a line whose name_raw (the name that counts) differs from its plain name, which
    # matches the header: the C must leave it to the Python, which refuses it
    parts = Parts.base()
    docs = _docs(parts)
    docs[_line(docs, "etc/other.txt")]["name_raw"] = base64.b64encode(b"etc/\xff").decode()
    _set_docs(parts, docs)
    answers.clear()
    with pytest.raises(FormatError, match=r"tar-split line for 'etc/\\udcff' does not match "
                                          r"its header$"):
        _open(assemble(parts), tmp_path)
    assert answers[-1] == ("etc/other.txt", -1)
