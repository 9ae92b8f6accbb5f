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
