"""The zstd:chunked wire format (chunked/format/__init__.py) byte for byte: the footers,
skippable frames, annotations, positions, times, TOC entries and the tar-split lines, and
each refusal with its exact message.

The footer bytes and annotations below are upstream's own, from ../shared/testvectors
(``gnu.current.blob``: containers/storage's current writer; ``gnu.old.blob``: Debian's
skopeo 1.9.3, containers/storage 1.43): the last 72 bytes of each blob, the most the
reader probes (``FOOTER_PROBE_SIZE``).
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from chunked import format as fmt
from chunked.digest import Digest
from chunked.errors import FormatError
from tests.need import need

VECTORS = Path(os.environ.get("CHUNKED_TESTVECTORS",
                              Path(__file__).resolve().parents[2] / "shared" / "testvectors"))

# gnu.current.blob's last 72 bytes: skippable header (magic, length 64) + the 64-byte footer
GNU_CURRENT_TAIL = bytes.fromhex(
    "502a4d18" "40000000"
    "9514010000000000" "2303000000000000" "eb09000000000000" "0100000000000000"
    "c017010000000000" "6303000000000000" "0d42000000000000" "474e556c496e5578")
GNU_CURRENT_TOC = fmt.Position(70805, 803, 2539, 1)
GNU_CURRENT_TARSPLIT = fmt.Position(71616, 867, 16909)
GNU_CURRENT_ANNOTATIONS = {
    "io.github.containers.zstd-chunked.manifest-checksum":
        "sha256:466a85136195aef45f957f3765b3491804288e5cfe869e1f94c65619e4d1cd09",
    "io.github.containers.zstd-chunked.manifest-position": "70805:803:2539:1",
    "io.github.containers.zstd-chunked.tarsplit-position": "71616:867:16909",
}
# gnu.old.blob's last 72 bytes: 24 bytes of the zstd frame before, the skippable header
# (length 40) and the 40-byte footer
GNU_OLD_TAIL = bytes.fromhex(
    "4902b663388ce597d5a63b73ae8d60fe298185cbf6dbe7ce" "502a4d18" "28000000"
    "9814010000000000" "1203000000000000" "d00b000000000000" "0100000000000000"
    "476e556c496e5578")
GNU_OLD_TOC = fmt.Position(70808, 786, 3024, 1)
GNU_OLD_ANNOTATIONS = {
    "io.containers.zstd-chunked.manifest-checksum":
        "sha256:2800e24cffc32c38f6fbd38110cabf955e6022265b0f81215e3f419692aeada8",
    "io.containers.zstd-chunked.manifest-position": "70808:786:3024:1",
}

NO_FOOTER = "no zstd:chunked footer at the end of the blob (not a zstd:chunked layer)"
U64_MAX = (1 << 64) - 1
SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
NOT_SHA = "(sha256:<64 lowercase hex digits>; only sha256 is supported)"


def _raises(exc: type[BaseException], message: str) -> pytest.RaisesContext:
    """pytest.raises for exactly ``message`` (the whole of it, not a search)."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


# --- upstream's vectors --------------------------------------------------------------------


def _need_vectors() -> None:
    need(VECTORS.is_dir(), f"upstream test vectors not found at {VECTORS} (they come from "
         "../shared beside the clone, or CHUNKED_TESTVECTORS)", ci_only=True)


def test_the_tails_above_are_upstreams() -> None:
    _need_vectors()
    assert (VECTORS / "gnu.current.blob").read_bytes()[-72:] == GNU_CURRENT_TAIL
    assert (VECTORS / "gnu.old.blob").read_bytes()[-72:] == GNU_OLD_TAIL
    assert json.loads((VECTORS / "gnu.current.annotations.json").read_text()) == \
        GNU_CURRENT_ANNOTATIONS
    assert json.loads((VECTORS / "gnu.old.annotations.json").read_text()) == GNU_OLD_ANNOTATIONS


@pytest.mark.parametrize("name", ["features", "gnu", "big"])
@pytest.mark.parametrize("variant", ["current", "old"])
def test_every_upstream_footer_decodes_to_its_annotations_and_encodes_back(
        name: str, variant: str) -> None:
    _need_vectors()
    v = fmt.VARIANTS[variant]
    blob = (VECTORS / f"{name}.{variant}.blob").read_bytes()
    annotations = json.loads((VECTORS / f"{name}.{variant}.annotations.json").read_text())
    footer = fmt.Footer.decode(blob[-fmt.FOOTER_PROBE_SIZE:])
    ann = fmt.LayerAnnotations.find(annotations)
    assert ann is not None and ann.variant is v
    assert footer.toc == ann.toc and footer.tarsplit == ann.tarsplit
    assert (footer.tarsplit is not None) is v.has_tarsplit
    size = fmt.FOOTER_SIZE_CURRENT if v.has_tarsplit else fmt.FOOTER_SIZE_OLD
    assert blob.endswith(fmt.skippable_frame(v.encode_footer(footer)))
    assert len(v.encode_footer(footer)) == size
    assert v.annotations(ann.checksum, footer) == annotations


# --- footers -------------------------------------------------------------------------------


def test_current_footer_decodes_from_upstreams_bytes() -> None:
    want = fmt.Footer(GNU_CURRENT_TOC, GNU_CURRENT_TARSPLIT)
    assert fmt.Footer.decode(GNU_CURRENT_TAIL) == want  # 72 bytes, as the reader probes
    assert fmt.Footer.decode(GNU_CURRENT_TAIL[-64:]) == want  # exactly the footer
    assert fmt.Footer.decode(b"\xff" * 100 + GNU_CURRENT_TAIL) == want
    got = fmt.Footer.decode(GNU_CURRENT_TAIL)
    assert got.toc.manifest_type == fmt.MANIFEST_TYPE_CRFS == 1
    assert got.tarsplit.manifest_type is None


def test_current_footer_encodes_to_upstreams_bytes() -> None:
    footer = fmt.Footer(GNU_CURRENT_TOC, GNU_CURRENT_TARSPLIT)
    assert footer.encode_current() == GNU_CURRENT_TAIL[-64:]
    assert fmt.CURRENT.encode_footer(footer) == GNU_CURRENT_TAIL[-64:]
    assert fmt.skippable_frame(footer.encode_current()) == GNU_CURRENT_TAIL


def test_old_footer_decodes_from_upstreams_bytes() -> None:
    want = fmt.Footer(GNU_OLD_TOC, None)
    assert fmt.Footer.decode(GNU_OLD_TAIL) == want  # the footer after 32 other bytes
    assert fmt.Footer.decode(GNU_OLD_TAIL[-40:]) == want  # exactly the footer
    assert fmt.Footer.decode(GNU_OLD_TAIL[-41:]) == want
    assert fmt.Footer.decode(GNU_OLD_TAIL[-64:]) == want  # 64 bytes, but the old magic
    assert fmt.Footer.decode(GNU_OLD_TAIL).toc.manifest_type == 1


def test_old_footer_encodes_to_upstreams_bytes() -> None:
    footer = fmt.Footer(GNU_OLD_TOC, None)
    assert footer.encode_old() == GNU_OLD_TAIL[-40:]
    assert fmt.OLD.encode_footer(footer) == GNU_OLD_TAIL[-40:]
    assert fmt.skippable_frame(footer.encode_old()) == GNU_OLD_TAIL[-48:]
    # the old footer has no room for a tar-split: one given is left out
    assert fmt.OLD.encode_footer(fmt.Footer(GNU_OLD_TOC, GNU_CURRENT_TARSPLIT)) == \
        GNU_OLD_TAIL[-40:]


def test_current_footer_without_a_tarsplit_writes_zeros_there() -> None:
    footer = fmt.Footer(fmt.Position(1, 2, 3, 1), None)
    want = (bytes.fromhex("0100000000000000" "0200000000000000" "0300000000000000"
                          "0100000000000000") + bytes(24) + b"GNUlInUx")
    assert footer.encode_current() == want
    assert fmt.Footer.decode(want) == footer


def test_footer_fields_are_unsigned_64_bit_little_endian() -> None:
    big = fmt.Position(U64_MAX, 1 << 63, 0x0102030405060708, 1)
    ts = fmt.Position(1 << 63, U64_MAX, 0x1122334455667788)
    current = fmt.Footer(big, ts).encode_current()
    assert current == (b"\xff" * 8 + bytes(7) + b"\x80" + bytes.fromhex("0807060504030201")
                       + bytes.fromhex("0100000000000000") + bytes(7) + b"\x80" + b"\xff" * 8
                       + bytes.fromhex("8877665544332211") + b"GNUlInUx")
    assert fmt.Footer.decode(current) == fmt.Footer(big, ts)
    old = fmt.Footer(big, None).encode_old()
    assert old == current[:32] + b"GnUlInUx"
    assert fmt.Footer.decode(old) == fmt.Footer(big, None)


def test_footer_manifest_type_is_read_as_written() -> None:
    # only the builder writes 1 (CRFS); the reader passes on what it found for its checks
    raw = bytearray(GNU_CURRENT_TAIL[-64:])
    raw[24:32] = (7).to_bytes(8, "little")
    assert fmt.Footer.decode(bytes(raw)).toc == fmt.Position(70805, 803, 2539, 7)
    raw = bytearray(GNU_OLD_TAIL[-40:])
    raw[24:32] = (0).to_bytes(8, "little")
    assert fmt.Footer.decode(bytes(raw)).toc == fmt.Position(70808, 786, 3024, 0)


def test_current_footer_with_an_empty_tarsplit_has_none() -> None:
    # the tar-split is there only when its length is not 0, wherever its offset points
    raw = bytearray(GNU_CURRENT_TAIL[-64:])
    raw[40:48] = bytes(8)
    footer = fmt.Footer.decode(bytes(raw))
    assert footer == fmt.Footer(GNU_CURRENT_TOC, None)
    raw[40:48] = (1).to_bytes(8, "little")
    assert fmt.Footer.decode(bytes(raw)).tarsplit == fmt.Position(71616, 1, 16909)


def _footer_56(toc: fmt.Position) -> bytes:
    """containers/storage 1.47-1.49: the old 40-byte layout, then 16 zero bytes."""
    return fmt.Footer(toc, None).encode_old() + bytes(16)


def test_56_byte_footer_of_storage_1_47() -> None:
    raw = _footer_56(GNU_OLD_TOC)
    assert len(raw) == 56
    assert fmt.Footer.decode(raw) == fmt.Footer(GNU_OLD_TOC, None)  # exactly 56 bytes
    assert fmt.Footer.decode(b"\x01" * 16 + raw) == fmt.Footer(GNU_OLD_TOC, None)  # 72
    assert fmt.Footer.decode(b"\x01" + raw) == fmt.Footer(GNU_OLD_TOC, None)
    big = fmt.Position(U64_MAX, 1 << 63, 5, 1)
    assert fmt.Footer.decode(_footer_56(big)) == fmt.Footer(big, None)


@pytest.mark.parametrize("tail", [
    bytes(72),  # zeros
    bytes(40),
    b"\xff" * 72,
    GNU_CURRENT_TAIL[:-1] + b"X",  # the magic's last byte
    GNU_CURRENT_TAIL[:-8] + b"GNUlInUX",
    GNU_CURRENT_TAIL[:-8] + b"gnulinux",
    GNU_OLD_TAIL[:-8] + b"GNULINUX",
    GNU_CURRENT_TAIL + b"\x00",  # the footer, then one more byte
    GNU_OLD_TAIL + b"\x00",
    GNU_CURRENT_TAIL[-63:],  # the current magic on fewer than 64 bytes
    GNU_CURRENT_TAIL[-40:],
    _footer_56(GNU_OLD_TOC)[1:],  # the 56-byte layout, cut to 55
    _footer_56(GNU_OLD_TOC)[:-1] + b"\x01",  # its padding not zeros
    b"\x00" + _footer_56(GNU_OLD_TOC)[:-1],  # its padding 15 bytes
    _footer_56(GNU_OLD_TOC)[:-16] + bytes(17),  # or 17
    bytes(48) + b"GnUlInUx" + b"\x00" * 15 + b"\x01",
], ids=lambda t: t.hex()[-24:])
def test_no_footer(tail: bytes) -> None:
    with _raises(FormatError, NO_FOOTER):
        fmt.Footer.decode(tail)


def test_footer_constants() -> None:
    assert fmt.FOOTER_MAGIC_CURRENT == b"GNUlInUx" and fmt.FOOTER_MAGIC_OLD == b"GnUlInUx"
    assert (fmt.FOOTER_SIZE_CURRENT, fmt.FOOTER_SIZE_OLD, fmt.FOOTER_PROBE_SIZE) == (64, 40, 72)


# --- skippable frames ----------------------------------------------------------------------


def test_skippable_frame() -> None:
    assert fmt.skippable_frame(b"") == b"\x50\x2a\x4d\x18\x00\x00\x00\x00"
    assert fmt.skippable_frame(b"abc") == b"\x50\x2a\x4d\x18\x03\x00\x00\x00abc"
    payload = bytes(range(256)) * 2 + b"xy"  # 514 bytes: the length is little-endian
    assert fmt.skippable_frame(payload) == b"\x50\x2a\x4d\x18\x02\x02\x00\x00" + payload
    assert fmt.SKIPPABLE_HEADER_SIZE == 8


# --- positions -----------------------------------------------------------------------------


def test_position_encode() -> None:
    assert fmt.Position(70805, 803, 2539, 1).encode() == "70805:803:2539:1"
    assert fmt.Position(71616, 867, 16909).encode() == "71616:867:16909"
    assert fmt.Position(0, 0, 0, 0).encode() == "0:0:0:0"
    assert fmt.Position(0, 0, 0).encode() == "0:0:0"
    assert fmt.Position(5, 10, 20).end == 15


def test_position_parse() -> None:
    key = "k"
    assert fmt.Position.parse("70805:803:2539:1", with_type=True, key=key) == \
        fmt.Position(70805, 803, 2539, 1)
    got = fmt.Position.parse("71616:867:16909", with_type=False, key=key)
    assert got == fmt.Position(71616, 867, 16909) and got.manifest_type is None
    assert fmt.Position.parse("0:0:0:0", with_type=True, key=key) == fmt.Position(0, 0, 0, 0)
    top = fmt.MAX_OFFSET
    assert fmt.Position.parse(f"{top}:{top}:{top}", with_type=False, key=key) == \
        fmt.Position(top, top, top)
    assert fmt.Position.parse(f"{top}:0:0:{top}", with_type=True, key=key) == \
        fmt.Position(top, 0, 0, top)
    # leading zeros are digits too, up to 20 of them
    assert fmt.Position.parse("0" * 19 + "7:01:2", with_type=False, key=key) == \
        fmt.Position(7, 1, 2)


@pytest.mark.parametrize("with_type, text", [
    (True, "1:2:3"), (False, "1:2:3:1"), (True, "1:2:3:1:5"), (False, "1:2"),
    (True, ""), (False, ""), (True, "1:2:3:"), (False, ":1:2"), (False, "1::2"),
    (False, "1:2:x"), (False, "1:2:-3"), (False, "1:+2:3"), (False, "1: 2:3"),
    (False, "1:2:3 "), (False, "1:2:\u00b2"), (False, "1:2:\u0663"), (False, "1;2;3"),
    (False, "1:2:0x3"), (False, "1.0:2:3"),
    (False, f"{fmt.MAX_OFFSET + 1}:0:0"), (True, f"0:0:0:{fmt.MAX_OFFSET + 1}"),
    (False, f"0:{U64_MAX}:0"), (False, "99999999999999999999:0:0"),
    (False, "0" * 21 + ":0:0"), (False, "1" * 4000 + ":0:0"),
])
def test_position_parse_refuses(with_type: bool, text: str) -> None:
    want = 4 if with_type else 3
    with _raises(FormatError, f"annotation some.key is {fmt._short(text)}, not {want} "
                 "colon-separated numbers"):
        fmt.Position.parse(text, with_type=with_type, key="some.key")


@pytest.mark.parametrize("value, shown", [
    (12, "12"), (None, "None"), (b"1:2:3", "b'1:2:3'"), (["1", "2", "3"], "['1', '2', '3']"),
    ({"a": 1}, "{'a': 1}"), ("\x1b[31m", "'\\x1b[31m'"),
])
def test_position_parse_refuses_what_is_not_a_string(value: object, shown: str) -> None:
    with _raises(FormatError, f"annotation k.p is {shown}, not 3 colon-separated numbers"):
        fmt.Position.parse(value, with_type=False, key="k.p")


def test_values_in_messages_are_cut_at_80_characters() -> None:
    def message(text: str) -> str:
        with pytest.raises(FormatError) as info:
            fmt.Position.parse(text, with_type=True, key="k")
        return str(info.value)

    s78 = "x" * 78  # repr: 80 characters, shown whole
    assert message(s78) == f"annotation k is '{s78}', not 4 colon-separated numbers"
    s79 = "y" * 79  # repr: 81, cut to 77 and "..."
    assert message(s79) == f"annotation k is '{'y' * 76}..., not 4 colon-separated numbers"
    assert fmt._short("z" * 1000) == "'" + "z" * 76 + "..."
    assert len(fmt._short("z" * 1000)) == 80
    assert fmt._short("z" * 78) == "'" + "z" * 78 + "'"


# --- variants and annotations --------------------------------------------------------------


def test_variant_keys() -> None:
    assert fmt.CURRENT.checksum_key == "io.github.containers.zstd-chunked.manifest-checksum"
    assert fmt.CURRENT.position_key == "io.github.containers.zstd-chunked.manifest-position"
    assert fmt.CURRENT.tarsplit_key == "io.github.containers.zstd-chunked.tarsplit-position"
    assert fmt.OLD.checksum_key == "io.containers.zstd-chunked.manifest-checksum"
    assert fmt.OLD.position_key == "io.containers.zstd-chunked.manifest-position"
    assert fmt.OLD.tarsplit_key == "io.containers.zstd-chunked.tarsplit-position"
    assert fmt.VARIANTS == {"current": fmt.CURRENT, "old": fmt.OLD}
    assert (fmt.CURRENT.has_tarsplit, fmt.OLD.has_tarsplit) == (True, False)
    assert (fmt.CURRENT.writes_zero_times, fmt.OLD.writes_zero_times) == (False, True)
    assert (fmt.CURRENT.max_toc_size, fmt.OLD.max_toc_size) == (150 << 20, 50 << 20)


def test_variant_annotations_are_upstreams() -> None:
    checksum = GNU_CURRENT_ANNOTATIONS[fmt.CURRENT.checksum_key]
    footer = fmt.Footer(GNU_CURRENT_TOC, GNU_CURRENT_TARSPLIT)
    assert fmt.CURRENT.annotations(checksum, footer) == GNU_CURRENT_ANNOTATIONS
    checksum = GNU_OLD_ANNOTATIONS[fmt.OLD.checksum_key]
    assert fmt.OLD.annotations(checksum, fmt.Footer(GNU_OLD_TOC, None)) == GNU_OLD_ANNOTATIONS
    # the old format has no tar-split key, even when a tar-split is given
    assert fmt.OLD.annotations(checksum, fmt.Footer(GNU_OLD_TOC, GNU_CURRENT_TARSPLIT)) == \
        GNU_OLD_ANNOTATIONS
    # a current layer without a tar-split has no tar-split key
    assert fmt.CURRENT.annotations(SHA_A, fmt.Footer(GNU_CURRENT_TOC, None)) == {
        fmt.CURRENT.checksum_key: SHA_A, fmt.CURRENT.position_key: "70805:803:2539:1"}


def test_find_current_annotations() -> None:
    ann = fmt.LayerAnnotations.find(GNU_CURRENT_ANNOTATIONS)
    assert ann == fmt.LayerAnnotations(
        fmt.CURRENT, Digest.parse(GNU_CURRENT_ANNOTATIONS[fmt.CURRENT.checksum_key]),
        GNU_CURRENT_TOC, GNU_CURRENT_TARSPLIT)
    assert ann.variant is fmt.CURRENT
    assert type(ann.checksum) is Digest
    assert ann.toc.manifest_type == 1 and ann.tarsplit.manifest_type is None


def test_find_old_annotations() -> None:
    ann = fmt.LayerAnnotations.find(GNU_OLD_ANNOTATIONS)
    assert ann == fmt.LayerAnnotations(
        fmt.OLD, Digest.parse(GNU_OLD_ANNOTATIONS[fmt.OLD.checksum_key]), GNU_OLD_TOC, None)
    assert ann.variant is fmt.OLD and ann.tarsplit is None
    # an old-prefixed tar-split key is no key of the old format: ignored
    ann = fmt.LayerAnnotations.find({**GNU_OLD_ANNOTATIONS,
                                     "io.containers.zstd-chunked.tarsplit-position": "1:2:3"})
    assert ann.variant is fmt.OLD and ann.tarsplit is None


def test_find_prefers_current_keys() -> None:
    both = {**GNU_OLD_ANNOTATIONS, **GNU_CURRENT_ANNOTATIONS}
    assert fmt.LayerAnnotations.find(both).variant is fmt.CURRENT
    assert fmt.LayerAnnotations.find(both).toc == GNU_CURRENT_TOC
    # the current keys win even when the old ones are broken
    broken = {**GNU_CURRENT_ANNOTATIONS, fmt.OLD.checksum_key: "x"}
    assert fmt.LayerAnnotations.find(broken).variant is fmt.CURRENT


def test_find_nothing() -> None:
    assert fmt.LayerAnnotations.find({}) is None
    assert fmt.LayerAnnotations.find({"org.opencontainers.image.title": "x",
                                      fmt.ESTARGZ_TOC_DIGEST: SHA_A,
                                      fmt.CURRENT.position_key: "1:2:3:1",
                                      fmt.OLD.position_key: "1:2:3:1"}) is None


def test_find_current_without_tarsplit_position() -> None:
    ann = dict(GNU_CURRENT_ANNOTATIONS)
    del ann[fmt.CURRENT.tarsplit_key]
    got = fmt.LayerAnnotations.find(ann)
    assert got.variant is fmt.CURRENT and got.toc == GNU_CURRENT_TOC and got.tarsplit is None
    ann[fmt.CURRENT.tarsplit_key] = ""  # empty: none either
    assert fmt.LayerAnnotations.find(ann).tarsplit is None


@pytest.mark.parametrize("variant", [fmt.CURRENT, fmt.OLD])
def test_find_refuses_a_bad_checksum(variant: fmt.Variant) -> None:
    base = GNU_CURRENT_ANNOTATIONS if variant is fmt.CURRENT else GNU_OLD_ANNOTATIONS
    for bad in ("sha256:abc", "sha512:" + "a" * 128, SHA_A.upper(), 5, ""):
        with _raises(FormatError, f"annotation {variant.checksum_key} is {fmt._short(bad)}, not a "
                     f"sha256 digest {NOT_SHA}"):
            fmt.LayerAnnotations.find({**base, variant.checksum_key: bad})


@pytest.mark.parametrize("variant", [fmt.CURRENT, fmt.OLD])
def test_find_refuses_a_checksum_without_position(variant: fmt.Variant) -> None:
    with _raises(FormatError, f"annotation {variant.checksum_key} without "
                 f"{variant.position_key}"):
        fmt.LayerAnnotations.find({variant.checksum_key: SHA_A})


@pytest.mark.parametrize("variant", [fmt.CURRENT, fmt.OLD])
def test_find_refuses_a_bad_position(variant: fmt.Variant) -> None:
    for bad in ("1:2:3", "1:2:3:4:5", "a:b:c:d"):
        with _raises(FormatError, f"annotation {variant.position_key} is {bad!r}, not 4 "
                     "colon-separated numbers"):
            fmt.LayerAnnotations.find({variant.checksum_key: SHA_A, variant.position_key: bad})


def test_find_refuses_a_bad_tarsplit_position() -> None:
    key = fmt.CURRENT.tarsplit_key
    for bad in ("1:2:3:1", "1:2", "x:y:z"):
        with _raises(FormatError, f"annotation {key} is {bad!r}, not 3 colon-separated numbers"):
            fmt.LayerAnnotations.find({**GNU_CURRENT_ANNOTATIONS, key: bad})


# --- JSON strings --------------------------------------------------------------------------


def test_go_string_escapes_html_by_default() -> None:
    assert fmt.go_string("a&<>b") == '"a\\u0026\\u003c\\u003eb"'
    assert fmt.go_string("\u2028\u2029") == '"\\u2028\\u2029"'
    assert fmt.go_string('"\\\n\r\t\x01\x1f') == '"\\"\\\\\\n\\r\\t\\u0001\\u001f"'
    assert fmt.go_string("plain/é日") == '"plain/é日"'
    assert fmt.go_string("\udc80x") == '"\ufffdx"'
    assert fmt.go_string("") == '""'


def test_toc_strings_escape_only_what_json_needs() -> None:
    assert fmt.go_string("a&<>b", html_escape=False) == '"a&<>b"'
    assert fmt.go_string("\u2028", html_escape=False) == '"\u2028"'
    assert fmt.go_string('"\\\n\r\t\x00\x1f', html_escape=False) == \
        '"\\"\\\\\\n\\r\\t\\u0000\\u001f"'
    assert fmt.go_string("\udcff", html_escape=False) == '"\ufffd"'
    assert fmt.go_string("a/b", html_escape=False) == '"a/b"'
    assert fmt.go_string("", html_escape=False) == '""'
    assert fmt._toc_string("é&\n") == '"é&\\n"'


def test_b64() -> None:
    assert fmt.b64(b"") == ""
    assert fmt.b64(b"\x00\xff") == "AP8="
    assert fmt.b64(b"\xfb\xff\xbf") == "+/+/"  # the standard alphabet, not the URL one
    assert type(fmt.b64(b"a")) is str


# --- times ---------------------------------------------------------------------------------

GO_ZERO_NS = -62135596800 * 1_000_000_000


@pytest.mark.parametrize("text, ns", [
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T00:00:01Z", 1_000_000_000),
    ("1969-12-31T23:59:59.999999999Z", -1),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000_000_000),
    ("2023-11-14T22:13:20.5Z", 1_700_000_000_500_000_000),  # features.tar's fraction
    ("2023-11-14T22:15:00.25Z", 1_700_000_100_250_000_000),
    ("2023-11-14T22:13:20.000000001Z", 1_700_000_000_000_000_001),
    ("2023-11-14T22:13:20.123456789z", 1_700_000_000_123_456_789),
    ("2023-11-14t22:13:20.1Z", 1_700_000_000_100_000_000),
    # the same instant in another zone (the current writer uses the local one)
    ("2023-11-14T23:13:20+01:00", 1_700_000_000_000_000_000),
    ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500_000_000),
    ("2023-11-14T17:43:20-04:30", 1_700_000_000_000_000_000),
    ("2023-11-15T00:05:20+01:52", 1_700_000_000_000_000_000),
    ("2023-11-14T22:13:20+00:00", 1_700_000_000_000_000_000),
    ("2023-11-14T22:13:20-00:00", 1_700_000_000_000_000_000),
    ("2000-02-29T12:34:56Z", 951_827_696_000_000_000),
    ("9999-12-31T23:59:59.999999999Z", fmt.MAX_TIME),
    # only Go's own spelling of its zero time is "absent"; near it, a real time
    ("0001-01-01T00:00:00.000000001Z", GO_ZERO_NS + 1),
    ("0001-01-01T00:00:01Z", GO_ZERO_NS + 1_000_000_000),
    ("0001-01-01T00:01:00Z", GO_ZERO_NS + 60_000_000_000),
    ("0001-01-01T01:00:00Z", GO_ZERO_NS + 3_600_000_000_000),
    ("0001-01-02T00:00:00Z", GO_ZERO_NS + 86_400_000_000_000),
    ("0001-02-01T00:00:00Z", GO_ZERO_NS + 31 * 86_400_000_000_000),
    ("0002-01-01T00:00:00Z", GO_ZERO_NS + 365 * 86_400_000_000_000),
    ("0001-01-01T00:00:00.0Z", GO_ZERO_NS),
    ("0001-01-01T00:00:00+00:00", GO_ZERO_NS),
])
def test_parse_time(text: str, ns: int) -> None:
    got = fmt.parse_time(text)
    assert got == ns and type(got) is int


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00z"])
def test_parse_time_go_zero_is_absent(text: str) -> None:
    assert fmt.parse_time(text) is None


@pytest.mark.parametrize("text, why", [
    ("", ""), ("x", ""), ("2023-11-14", ""), ("2023-11-14T22:13:20", ""),
    ("2023-11-14 22:13:20Z", ""), ("2023-11-14T22:13:20.Z", ""),
    ("2023-11-14T22:13:20.1234567890Z", ""), ("2023-11-14T22:13:20+0100", ""),
    ("2023-11-14T22:13:20+01", ""), ("23-11-14T22:13:20Z", ""), ("2023-11-14T22:13:20ZZ", ""),
    (" 2023-11-14T22:13:20Z", ""), ("2023-11-14T22:13:20Z\n", ""),
    ("2023-02-30T00:00:00Z", "day is out of range for month"),
    ("2023-13-01T00:00:00Z", "month must be in 1..12"),
    ("0000-01-01T00:00:00Z", "year 0 is out of range"),
    ("2023-11-14T24:00:00Z", "hour must be in 0..23"),
    ("2023-11-14T22:60:00Z", "minute must be in 0..59"),
    ("2023-11-14T22:13:60Z", "second must be in 0..59"),
])
def test_parse_time_refuses(text: str, why: str) -> None:
    with _raises(FormatError, f"bad time {text!r} in TOC" + (f": {why}" if why else "")):
        fmt.parse_time(text)


def test_format_time_is_parse_times_inverse() -> None:
    for ns in (0, 1, -1, 1_700_000_000_500_000_000, fmt.MAX_TIME, GO_ZERO_NS,
               GO_ZERO_NS + 1, 253_402_300_799 * 1_000_000_000):
        assert fmt.parse_time(fmt.format_time(ns)) == (None if ns == GO_ZERO_NS else ns)
    assert fmt.format_time(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.5Z"
    assert fmt.format_time(0) == "1970-01-01T00:00:00Z"
    assert fmt.format_time(GO_ZERO_NS) == fmt.GO_ZERO_TIME == "0001-01-01T00:00:00Z"


# --- TOC entries: encoding -----------------------------------------------------------------

T1 = 1_700_000_000_500_000_000  # 2023-11-14T22:13:20.5Z
T2 = 1_700_000_100_250_000_000  # 2023-11-14T22:15:00.25Z


def _reg(**kw: object) -> fmt.TocEntry:
    return fmt.TocEntry(type="reg", name=kw.pop("name", "a"), **kw)


def test_entry_encode_every_field_in_upstreams_order() -> None:
    e = fmt.TocEntry(
        type="reg", name='usr/a b&<>"\\\n\x01é', link_name="l&<", mode=0o4755, size=5,
        uid=1000, gid=1001, modtime=T1, accesstime=0, changetime=T2, dev_major=8,
        dev_minor=9, xattrs={"user.z": b"\x00\xff", "user.a": b"", "security.c": b"abc"},
        digest=SHA_A, offset=10, end_offset=40, chunk_size=7, chunk_offset=3,
        chunk_digest=SHA_B, chunk_type="zeros")
    want = ('{"type":"reg","name":"usr/a b&<>\\"\\\\\\n\\u0001é","linkName":"l&<",'
            '"mode":2541,"size":5,"uid":1000,"gid":1001,"modtime":"2023-11-14T22:13:20.5Z",'
            '"accesstime":"1970-01-01T00:00:00Z","changetime":"2023-11-14T22:15:00.25Z",'
            '"devMajor":8,"devMinor":9,'
            '"xattrs":{"security.c":"YWJj","user.a":"","user.z":"AP8="},'
            f'"digest":"{SHA_A}","offset":10,"endOffset":40,"chunkSize":7,"chunkOffset":3,'
            f'"chunkDigest":"{SHA_B}","chunkType":"zeros"}}')
    assert e.encode(fmt.CURRENT) == want
    assert e.encode(fmt.OLD) == want  # every time present: the variants agree


def test_entry_encode_omits_zero_values() -> None:
    assert _reg().encode(fmt.CURRENT) == '{"type":"reg","name":"a"}'
    assert fmt.TocEntry(type="dir", name="").encode(fmt.CURRENT) == '{"type":"dir","name":""}'
    e = fmt.TocEntry(type="symlink", name="s", link_name="t", modtime=0)
    assert e.encode(fmt.CURRENT) == \
        '{"type":"symlink","name":"s","linkName":"t","modtime":"1970-01-01T00:00:00Z"}'
    e = fmt.TocEntry(type="char", name="c", mode=0o600, dev_major=1, dev_minor=3, xattrs={})
    assert e.encode(fmt.CURRENT) == '{"type":"char","name":"c","mode":384,"devMajor":1,' \
        '"devMinor":3}'
    e = fmt.TocEntry(type="block", name="b", dev_minor=7, uid=0, gid=5)
    assert e.encode(fmt.CURRENT) == '{"type":"block","name":"b","gid":5,"devMinor":7}'
    e = _reg(size=3, uid=2, accesstime=T1)
    assert e.encode(fmt.CURRENT) == \
        '{"type":"reg","name":"a","size":3,"uid":2,"accesstime":"2023-11-14T22:13:20.5Z"}'
    e = _reg(changetime=T2, end_offset=4)
    assert e.encode(fmt.CURRENT) == \
        '{"type":"reg","name":"a","changetime":"2023-11-14T22:15:00.25Z","endOffset":4}'
    e = _reg(xattrs={"user.x": b"1"}, offset=4)
    assert e.encode(fmt.CURRENT) == '{"type":"reg","name":"a","xattrs":{"user.x":"MQ=="},' \
        '"offset":4}'


def test_entry_encode_absent_times_per_variant() -> None:
    e = _reg(modtime=T1)  # as a tar without PAX atime/ctime gives
    assert e.encode(fmt.CURRENT) == \
        '{"type":"reg","name":"a","modtime":"2023-11-14T22:13:20.5Z"}'
    assert e.encode(fmt.OLD) == ('{"type":"reg","name":"a","modtime":"2023-11-14T22:13:20.5Z",'
                                 '"accesstime":"0001-01-01T00:00:00Z",'
                                 '"changetime":"0001-01-01T00:00:00Z"}')
    z = '"0001-01-01T00:00:00Z"'
    assert _reg().encode(fmt.OLD) == \
        f'{{"type":"reg","name":"a","modtime":{z},"accesstime":{z},"changetime":{z}}}'
    # Go's zero time decoded from a TOC is absent too
    e = _reg(modtime=fmt.GO_ZERO, accesstime=fmt.GO_ZERO, changetime=T2)
    assert e.encode(fmt.CURRENT) == \
        '{"type":"reg","name":"a","changetime":"2023-11-14T22:15:00.25Z"}'
    assert e.encode(fmt.OLD) == \
        f'{{"type":"reg","name":"a","modtime":{z},"accesstime":{z},' \
        '"changetime":"2023-11-14T22:15:00.25Z"}'


def test_chunk_entries_carry_no_times() -> None:
    e = fmt.TocEntry(type="chunk", name="f", offset=100, end_offset=200, chunk_size=4096,
                     chunk_offset=8192, chunk_digest=SHA_B, modtime=T1, accesstime=T1)
    want = ('{"type":"chunk","name":"f","offset":100,"endOffset":200,"chunkSize":4096,'
            f'"chunkOffset":8192,"chunkDigest":"{SHA_B}"}}')
    assert e.encode(fmt.CURRENT) == want
    assert e.encode(fmt.OLD) == want
    z = fmt.TocEntry(type="chunk", name="f", chunk_size=5000, chunk_offset=1, chunk_type="zeros")
    assert z.encode(fmt.OLD) == \
        '{"type":"chunk","name":"f","chunkSize":5000,"chunkOffset":1,"chunkType":"zeros"}'


def test_entry_times_read_go_zero_as_none() -> None:
    e = _reg(modtime=fmt.GO_ZERO, accesstime=None, changetime=fmt.GoTime(0))
    assert (e.mtime, e.atime, e.ctime) == (None, None, 0)
    e = _reg(modtime=T1, accesstime=fmt.GoTime(-1), changetime=fmt.GO_ZERO)
    assert (e.mtime, e.atime, e.ctime) == (T1, -1, None)
    assert fmt._time_or_zero(None) is None and fmt._time_or_zero(fmt.GO_ZERO) is None
    assert fmt._time_or_zero(5) == 5 and fmt._time_or_zero(0) == 0


# --- the TOC encoder -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", [fmt.CURRENT, fmt.OLD])
def test_toc_encoder_without_entries(variant: fmt.Variant) -> None:
    enc = fmt.TocEncoder(variant)
    assert enc.count == 0 and enc.variant is variant
    assert enc.end() == '{"version":1,"entries":null}'
    digest = SHA_A
    end = fmt.TocEncoder(variant).end(digest)
    if variant.has_tarsplit:
        assert end == f'{{"version":1,"entries":null,"tarSplitDigest":"{digest}"}}'
    else:
        assert end == '{"version":1,"entries":null}'


@pytest.mark.parametrize("variant", [fmt.CURRENT, fmt.OLD])
def test_toc_encoder_streams_entries(variant: fmt.Variant) -> None:
    enc = fmt.TocEncoder(variant)
    entries = [fmt.TocEntry(type="dir", name="d/", modtime=T1, accesstime=T1, changetime=T1),
               _reg(name="d/f", size=1, modtime=T2, accesstime=T2, changetime=T2,
                    digest=SHA_A, offset=1, end_offset=2),
               fmt.TocEntry(type="fifo", name="p", modtime=0, accesstime=0, changetime=0)]
    first = enc.entry(entries[0])
    assert first == '{"version":1,"entries":[' + entries[0].encode(variant)
    assert enc.count == 1
    assert enc.entry(entries[1]) == "," + entries[1].encode(variant)
    assert enc.entry(entries[2]) == "," + entries[2].encode(variant)
    assert enc.count == 3
    text = first + "," + entries[1].encode(variant) + "," + entries[2].encode(variant)
    end = enc.end(SHA_B)
    if variant.has_tarsplit:
        assert end == f'],"tarSplitDigest":"{SHA_B}"}}'
    else:
        assert end == "]}"
    assert enc.end() == "]}"
    toc = fmt.Toc.decode((text + end).encode())
    assert toc.version == 1 and toc.entries == entries
    assert toc.tarsplit_digest == (SHA_B if variant.has_tarsplit else "")
    assert json.loads(text + end)["entries"][1] == {
        "type": "reg", "name": "d/f", "size": 1, "modtime": "2023-11-14T22:15:00.25Z",
        "accesstime": "2023-11-14T22:15:00.25Z", "changetime": "2023-11-14T22:15:00.25Z",
        "digest": SHA_A, "offset": 1, "endOffset": 2}


# --- the TOC: decoding ---------------------------------------------------------------------


def _toc(*entries: str, extra: str = "") -> bytes:
    return ('{"version":1,"entries":[' + ",".join(entries) + "]" + extra + "}").encode()


def test_toc_decode_minimal() -> None:
    for data in (b'{"version":1,"entries":null}', b'{"version":1}', b'{"version":1,"entries":[]}',
                 b' {"entries" : null , "version" : 1}\n'):
        toc = fmt.Toc.decode(data)
        assert toc.entries == [] and toc.version == 1 and toc.tarsplit_digest == ""


def test_toc_decode_every_field() -> None:
    data = _toc('{"type":"reg","name":"a b","linkName":"l","mode":2541,"size":5,"uid":1000,'
                '"gid":1001,"modtime":"2023-11-14T22:13:20.5Z","accesstime":"1970-01-01T00:00:00Z",'
                '"changetime":"0001-01-01T00:00:00Z","devMajor":8,"devMinor":9,'
                '"xattrs":{"user.a":"","user.z":"AP8="},'
                f'"digest":"{SHA_A}","offset":10,"endOffset":40,"chunkSize":7,"chunkOffset":3,'
                f'"chunkDigest":"{SHA_B}","chunkType":"zeros","unknown":{{"x":[1,2]}}}}',
                extra=f',"tarSplitDigest":"{SHA_B}","other":1')
    toc = fmt.Toc.decode(data)
    assert type(toc.tarsplit_digest) is Digest and toc.tarsplit_digest == SHA_B
    [e] = toc.entries
    assert e == fmt.TocEntry(
        type="reg", name="a b", link_name="l", mode=0o4755, size=5, uid=1000, gid=1001,
        modtime=T1, accesstime=0, changetime=fmt.GO_ZERO, dev_major=8, dev_minor=9,
        xattrs={"user.a": b"", "user.z": b"\x00\xff"}, digest=SHA_A, offset=10, end_offset=40,
        chunk_size=7, chunk_offset=3, chunk_digest=SHA_B, chunk_type="zeros")
    assert (e.mtime, e.atime, e.ctime) == (T1, 0, None)
    assert e.changetime is fmt.GO_ZERO
    assert type(e.modtime) is fmt.GoTime


def test_toc_decode_absent_and_empty_times() -> None:
    [e] = fmt.Toc.decode(_toc('{"type":"dir","name":"d","modtime":""}')).entries
    assert e.modtime is fmt.GO_ZERO and e.accesstime is None and e.mtime is None


@pytest.mark.parametrize("version", ["0", "2", "-1"])
def test_toc_decode_refuses_other_versions(version: str) -> None:
    with _raises(FormatError, f"TOC version {version} is not supported (only 1)"):
        fmt.Toc.decode(f'{{"version":{version},"entries":[]}}'.encode())
    with _raises(FormatError, "TOC version 0 is not supported (only 1)"):
        fmt.Toc.decode(b'{"entries":[]}')


@pytest.mark.parametrize("data", [b"", b"{", b'{"version":1', b'{"version":', b"\xff", b"nul",
                                  b'{"version":1}{}', b'{"version":1,"entries":[{]}'])
def test_toc_decode_refuses_what_is_not_json(data: bytes) -> None:
    with pytest.raises(FormatError, match=r"^TOC is not valid JSON: \S"):
        fmt.Toc.decode(data)


def test_toc_decode_refuses_json_nested_too_deeply() -> None:
    with _raises(FormatError, "TOC is not valid JSON: nested too deeply"):
        fmt.Toc.decode(b'{"version":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize("entry, message", [
    ('{"type":"reg","name":"a","uid":4294967295}',
     "Expected int <= 4294967294 - at entry [0].uid"),
    ('{"type":"reg","name":"a","gid":-1}', "Expected int >= 0 - at entry [0].gid"),
    ('{"type":"reg","name":"a","mode":4294967296}',
     "Expected int <= 4294967295 - at entry [0].mode"),
    ('{"type":"reg","name":"a","size":72057594037927937}',
     "Expected int <= 72057594037927936 - at entry [0].size"),
    ('{"type":"reg","name":"a","offset":-1}', "Expected int >= 0 - at entry [0].offset"),
    ('{"type":"reg","name":"a","devMajor":4294967296}',
     "Expected int <= 4294967295 - at entry [0].devMajor"),
    ('{"type":"sock","name":"a"}', "Invalid enum value 'sock' - at entry [0].type"),
    ('{"name":"a"}', "Object missing required field type - at entry [0]"),
    ('{"type":"reg","name":"a","chunkType":"data"}',
     "Invalid enum value 'data' - at entry [0].chunkType"),
    ('{"type":"reg","name":"a","xattrs":{"":"AA=="}}',
     "Expected str of length >= 1 - at key in entry [0].xattrs"),
    ('{"type":"reg","name":"a","digest":"' + "x" * 72 + '"}',
     "Expected str of length <= 71 - at entry [0].digest"),
    ('{"type":"reg","name":"a","modtime":5}', "expected an RFC 3339 time - at entry [0].modtime"),
    ('{"type":"reg","name":"a","accesstime":true}',
     "expected an RFC 3339 time - at entry [0].accesstime"),
    ('{"type":"reg","name":"a","changetime":"' + "9" * 65 + '"}',
     "expected an RFC 3339 time - at entry [0].changetime"),
    ('{"type":"reg","name":"a","modtime":"' + "9" * 64 + '"}',
     f"bad time {'9' * 64!r} in TOC - at entry [0].modtime"),
    ('{"type":"reg","name":"a","modtime":"2023-11-31T00:00:00Z"}',
     "bad time '2023-11-31T00:00:00Z' in TOC: day is out of range for month - at "
     "entry [0].modtime"),
    ('{"type":"reg","name":"a","modtime":"2023-11-14 01:02:03Z"}',
     "bad time '2023-11-14 01:02:03Z' in TOC - at entry [0].modtime"),
])
def test_toc_decode_refuses_a_bad_entry(entry: str, message: str) -> None:
    good = '{"type":"dir","name":"d"}'
    with _raises(FormatError, "TOC: " + message.replace("[0]", "[1]")):
        fmt.Toc.decode(_toc(good, entry))


def test_toc_decode_refuses_bad_top_level_values() -> None:
    with _raises(FormatError, "TOC: Expected int, got str - at $.version"):
        fmt.Toc.decode(b'{"version":"1"}')
    with _raises(FormatError, "TOC: Expected array | null, got object - at $.entries"):
        fmt.Toc.decode(b'{"version":1,"entries":{}}')
    with _raises(FormatError, "TOC: Expected object, got array"):
        fmt.Toc.decode(b"[]")


@pytest.mark.parametrize("bad", ["sha256:abc", SHA_A.upper(), "sha512:" + "a" * 64, "x"])
def test_toc_decode_refuses_a_bad_tarsplit_digest(bad: str) -> None:
    with _raises(FormatError, f"TOC: tarSplitDigest is {bad!r}, not a sha256 digest {NOT_SHA}"):
        fmt.Toc.decode(_toc(extra=f',"tarSplitDigest":"{bad}"'))


def test_toc_decode_refuses_bad_strings() -> None:
    with _raises(FormatError, "TOC: entry [1].digest: 'sha256:AB' is not a sha256 digest"):
        fmt.Toc.decode(_toc('{"type":"dir","name":"d"}',
                            '{"type":"reg","name":"a","digest":"sha256:AB"}'))
    with _raises(FormatError, "TOC: entry [0].chunkDigest: 'md5:x' is not a sha256 digest"):
        fmt.Toc.decode(_toc('{"type":"chunk","name":"a","chunkDigest":"md5:x"}'))
    # a NUL reaches a name only through \u0000: a name holding one is refused, whichever
    with _raises(FormatError, "TOC: entry [1].name: a NUL byte or an unpaired surrogate in "
                 "'a\\x00b'"):
        fmt.Toc.decode(_toc('{"type":"dir","name":"d"}', '{"type":"dir","name":"a\\u0000b"}'))
    with _raises(FormatError, "TOC: entry [0].linkName: a NUL byte or an unpaired surrogate in "
                 "'\\x00'"):
        fmt.Toc.decode(_toc('{"type":"symlink","name":"s","linkName":"\\u0000"}'))
    with _raises(FormatError, "TOC: entry [0].xattrs: a NUL byte or an unpaired surrogate in "
                 "'user.\\x00'"):
        fmt.Toc.decode(_toc('{"type":"dir","name":"d","xattrs":{"user.\\u0000":""}}'))
    # an escaped backslash before "u0000" is no NUL
    [e] = fmt.Toc.decode(_toc('{"type":"dir","name":"\\\\u0000"}')).entries
    assert e.name == "\\u0000"


# --- limits of entries made in Python ------------------------------------------------------


def test_check_limits_takes_every_maximum() -> None:
    e = fmt.TocEntry(type="char", name="n" * fmt.MAX_NAME, link_name="l" * fmt.MAX_NAME,
                     uid=fmt.MAX_ID, gid=fmt.MAX_ID, mode=fmt.MAX_MODE, size=fmt.MAX_SIZE,
                     dev_major=fmt.MAX_DEV, dev_minor=fmt.MAX_DEV, modtime=fmt.MAX_TIME,
                     accesstime=fmt.MIN_TIME, changetime=None,
                     xattrs={"x" * fmt.MAX_NAME: b""})
    fmt.check_limits(e, "tar")
    fmt.check_limits(fmt.TocEntry(type="reg", name=""), "tar")
    assert (fmt.MAX_ID, fmt.MAX_DEV, fmt.MAX_MODE) == (2**32 - 2, 2**32 - 1, 2**32 - 1)
    assert (fmt.MAX_SIZE, fmt.MAX_NAME) == (2**56, 4096)
    assert fmt.MIN_TIME == GO_ZERO_NS and fmt.MAX_TIME == 253402300800 * 10**9 - 1


@pytest.mark.parametrize("key, field, top", [
    ("uid", "uid", fmt.MAX_ID), ("gid", "gid", fmt.MAX_ID), ("mode", "mode", fmt.MAX_MODE),
    ("size", "size", fmt.MAX_SIZE), ("devMajor", "dev_major", fmt.MAX_DEV),
    ("devMinor", "dev_minor", fmt.MAX_DEV),
])
def test_check_limits_refuses_numbers_out_of_range(key: str, field: str, top: int) -> None:
    for value in (top + 1, -1, 1 << 64):
        e = fmt.TocEntry(type="reg", name="f", **{field: value})
        with _raises(FormatError, f"here: 'f' has {key} {value}, outside 0..{top}"):
            fmt.check_limits(e, "here")


@pytest.mark.parametrize("key", ["modtime", "accesstime", "changetime"])
def test_check_limits_refuses_times_outside_years_1_to_9999(key: str) -> None:
    for t in (fmt.MAX_TIME + 1, fmt.MIN_TIME - 1):
        e = fmt.TocEntry(type="reg", name="f", **{key: t})
        with _raises(FormatError, f"x.tar: 'f' has a {key} outside years 1-9999"):
            fmt.check_limits(e, "x.tar")


def test_check_limits_refuses_bad_names() -> None:
    long = "d/" * 2048 + "x"  # 4097 characters
    for e, name in ((fmt.TocEntry(type="reg", name=long), long),
                    (fmt.TocEntry(type="reg", name="a\0b"), "a\0b"),
                    (fmt.TocEntry(type="symlink", name="s", link_name="\0"), "\0"),
                    (fmt.TocEntry(type="symlink", name="s", link_name="l" * 4097), "l" * 4097),
                    (fmt.TocEntry(type="reg", name="f", xattrs={"user.a": b"", "user.\0": b""}),
                     "user.\0"),
                    (fmt.TocEntry(type="reg", name="f", xattrs={"u" * 4097: b""}), "u" * 4097)):
        with _raises(FormatError, f"t: {name[:60]!r}: a name too long or with a NUL byte"):
            fmt.check_limits(e, "t")
    with _raises(FormatError, f"t: {'d/' * 30!r}: a name too long or with a NUL byte"):
        fmt.check_limits(fmt.TocEntry(type="reg", name=long), "t")


# --- string checks -------------------------------------------------------------------------


def _c_kernel() -> object:
    try:
        return importlib.import_module("chunked.format._tocindex")
    except ImportError:
        return None


@pytest.fixture(params=["python", "c"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_strings through its Python path, and through the C one where it is built."""
    if request.param == "c":
        c = _c_kernel()
        need(c is not None, "the C extensions are not built (setup.py build_ext --inplace)")
        monkeypatch.setattr(fmt, "_strings_c", c)
    else:
        monkeypatch.setattr(fmt, "_strings_c", None)


def _e(**kw: object) -> fmt.TocEntry:
    kw.setdefault("type", "reg")
    kw.setdefault("name", "f")
    return fmt.TocEntry(**kw)


def test_strings_problem_messages() -> None:
    good = _e(digest=SHA_A, chunk_digest=SHA_B, xattrs={"user.a": b""})
    assert fmt.strings_problem([good, good]) is None
    assert fmt.strings_problem([]) is None
    assert fmt.strings_problem([good, _e(digest="sha256:" + "A" * 64)]) == \
        f"entry [1].digest: {'sha256:' + 'A' * 64!r} is not a sha256 digest"
    assert fmt.strings_problem([_e(chunk_digest="sha256:1")]) == \
        "entry [0].chunkDigest: 'sha256:1' is not a sha256 digest"
    assert fmt.strings_problem([_e(digest="x" * 200)]) == \
        f"entry [0].digest: {'x' * 80!r} is not a sha256 digest"
    assert fmt.strings_problem([good, good, _e(name="a\0")]) == \
        "entry [2].name: a NUL byte or an unpaired surrogate in 'a\\x00'"
    assert fmt.strings_problem([_e(link_name="\udc80")]) == \
        "entry [0].linkName: a NUL byte or an unpaired surrogate in '\\udc80'"
    assert fmt.strings_problem([_e(xattrs={"user.ok": b"", "user.\ud800": b""})]) == \
        "entry [0].xattrs: a NUL byte or an unpaired surrogate in 'user.\\ud800'"
    assert fmt.strings_problem([_e(name="\0" + "n" * 100)]) == \
        "entry [0].name: a NUL byte or an unpaired surrogate in " + repr("\0" + "n" * 59)
    # the digests come first within an entry
    assert fmt.strings_problem([_e(name="\0", digest="sha256:")]) == \
        "entry [0].digest: 'sha256:' is not a sha256 digest"


def test_strings_problem_without_names_checks_every_digest() -> None:
    entries = [_e(name="\0"), _e(link_name="\udcff"), _e(chunk_digest="sha1:x")]
    assert fmt.strings_problem(entries, False) == \
        "entry [2].chunkDigest: 'sha1:x' is not a sha256 digest"
    assert fmt.strings_problem(entries[:2], False) is None
    assert fmt.strings_problem(entries[:2]) is not None
    assert fmt.strings_ok(entries[:2], False) is True
    assert fmt.strings_ok(entries[:2]) is False and fmt.strings_ok(entries[:2], True) is False
    assert fmt.strings_ok([_e(name="é日\U0001f600")]) is True
    assert fmt.strings_ok([]) is True


def test_check_strings(kernel: None) -> None:
    fmt.check_strings([_e(digest=SHA_A, name="é", xattrs={"user.a": b""})])
    fmt.check_strings([])
    with _raises(FormatError, "TOC: entry [1].name: a NUL byte or an unpaired surrogate in "
                 "'a\\x00'"):
        fmt.check_strings([_e(), _e(name="a\0")])
    with _raises(FormatError, "TOC: entry [0].xattrs: a NUL byte or an unpaired surrogate in "
                 "'\\udc80'"):
        fmt.check_strings([_e(xattrs={"\udc80": b""})], True)
    fmt.check_strings([_e(name="a\0")], False)
    fmt.check_strings([_e(name="a\0")], names=False)
    with _raises(FormatError, "TOC: entry [1].digest: 'sha256:x' is not a sha256 digest"):
        fmt.check_strings([_e(name="\0"), _e(digest="sha256:x")], False)


def test_encodable() -> None:
    assert fmt._encodable("aé日\U0001f600") is True
    assert fmt._encodable("\udc80") is False and fmt._encodable("\ud800x") is False


# --- tar-split lines -----------------------------------------------------------------------


def test_tarsplit_segment() -> None:
    assert fmt.tarsplit_segment(b"\x00\x01", 3) == '{"type":2,"payload":"AAE=","position":3}\n'
    assert fmt.tarsplit_segment(b"", 0) == '{"type":2,"payload":"","position":0}\n'


def test_tarsplit_file() -> None:
    crc = bytes.fromhex("0102030405060708")
    assert fmt.tarsplit_file("a b", 0, None, 0) == \
        '{"type":1,"name":"a b","payload":null,"position":0}\n'
    assert fmt.tarsplit_file("dir/f", 70000, crc, 12) == \
        '{"type":1,"name":"dir/f","size":70000,"payload":"AQIDBAUGBwg=","position":12}\n'
    assert fmt.tarsplit_file("a&<>", 1, crc, 1) == \
        '{"type":1,"name":"a\\u0026\\u003c\\u003e","size":1,"payload":"AQIDBAUGBwg=",' \
        '"position":1}\n'
    # UTF-8 raw, Go's escapes; a name that is no UTF-8 goes as name_raw
    assert fmt.tarsplit_file("é<\u2028", 2, None, 3) == \
        '{"type":1,"name":"é\\u003c\\u2028","size":2,"payload":null,"position":3}\n'
    assert fmt.tarsplit_file("a\udcff\udcfe", 0, None, 4) == \
        '{"type":1,"name_raw":"Yf/+","payload":null,"position":4}\n'
    assert fmt.tarsplit_file("é\udce9", 5, crc, 6) == \
        '{"type":1,"name_raw":"w6np","size":5,"payload":"AQIDBAUGBwg=","position":6}\n'


def test_tarsplit_lines_parse_back() -> None:
    crc = bytes.fromhex("00000000000000ff")
    seg = fmt.TarSplitEntry.parse_line(fmt.tarsplit_segment(b"\x00hdr", 0).encode())
    assert (seg.type, seg.payload, seg.position, seg.path) == (2, b"\x00hdr", 0, "")
    f = fmt.TarSplitEntry.parse_line(fmt.tarsplit_file("é/a", 9, crc, 1).encode())
    assert (f.type, f.path, f.size, f.crc, f.position, f.name_raw) == (1, "é/a", 9, 255, 1, None)
    raw = fmt.TarSplitEntry.parse_line(fmt.tarsplit_file("x\udcff", 0, None, 2).encode())
    assert raw.path == "x\udcff" and raw.name_raw == b"x\xff" and raw.crc is None
    assert fmt.TarSplitEntry.parse_line(b'{"type":1,"payload":"' + base64.b64encode(
        b"\x80" + bytes(6) + b"\x01") + b'"}').crc == (1 << 63) + 1


@pytest.mark.parametrize("n", [0, 7, 9])
def test_tarsplit_crc_must_be_8_bytes(n: int) -> None:
    e = fmt.TarSplitEntry.parse_line(
        b'{"type":1,"name":"d/f","payload":"' + base64.b64encode(bytes(n)) + b'"}')
    with _raises(FormatError, f"tar-split: 'd/f' has a CRC of {n} bytes, not 8"):
        _ = e.crc


@pytest.mark.parametrize("line, message", [
    (b'{"type":3}', "malformed tar-split line: Invalid enum value 3 - at `$.type`"),
    (b'{"payload":null}', "malformed tar-split line: Object missing required field `type`"),
    (b"[1]", "malformed tar-split line: Expected `object`, got `array`"),
    (b'{"type":1,"payload":"!!"}',
     "malformed tar-split line: Invalid base64 encoded string - at `$.payload`"),
    (b'{"type":1,"size":-1}', "malformed tar-split line: Expected `int` >= 0 - at `$.size`"),
])
def test_tarsplit_line_refused(line: bytes, message: str) -> None:
    with _raises(FormatError, message):
        fmt.TarSplitEntry.parse_line(line)


@pytest.mark.parametrize("line", [b'{"type":1', b"x", b"", b'{"type":1}{"type":2}'])
def test_tarsplit_line_not_json(line: bytes) -> None:
    with pytest.raises(FormatError, match=r"^tar-split line is not JSON: \S"):
        fmt.TarSplitEntry.parse_line(line)


# --- the tar-split stream ------------------------------------------------------------------


def _reader(data: bytes, most: int | None = None,
            asked: list[int] | None = None) -> Callable[[int], bytes]:
    """A read() over ``data`` that returns at most ``most`` bytes a call (a network
    stream's short reads) and records what it was asked for."""
    src = io.BytesIO(data)

    def read(n: int) -> bytes:
        if asked is not None:
            asked.append(n)
        return src.read(n if most is None else min(n, most))
    return read


LINES = (fmt.tarsplit_segment(b"\x00" * 512, 0) + fmt.tarsplit_file("a b", 3, bytes(8), 1)
         + fmt.tarsplit_segment(b"xyz", 2) + fmt.tarsplit_file("\udcff", 0, None, 3)
         + fmt.tarsplit_segment(b"", 4)).encode()


def _summary(entries: list[fmt.TarSplitEntry]) -> list[tuple]:
    return [(e.type, e.path, e.size, e.payload, e.position) for e in entries]


WANT = [(2, "", 0, bytes(512), 0), (1, "a b", 3, bytes(8), 1), (2, "", 0, b"xyz", 2),
        (1, "\udcff", 0, None, 3), (2, "", 0, b"", 4)]


@pytest.mark.parametrize("most", [None, 1, 2, 7, 64, len(LINES) - 1])
def test_iter_tarsplit_across_short_reads(most: int | None) -> None:
    assert _summary(list(fmt.iter_tarsplit(_reader(LINES, most)))) == WANT


@pytest.mark.parametrize("most", [None, 1, 5])
def test_iter_tarsplit_last_line_without_newline(most: int | None) -> None:
    assert _summary(list(fmt.iter_tarsplit(_reader(LINES[:-1], most)))) == WANT
    # blank lines and trailing whitespace are no entries
    data = LINES.replace(b"\n", b"\n\n", 1) + b"\n  \n\t"
    assert _summary(list(fmt.iter_tarsplit(_reader(data, most)))) == WANT


def test_iter_tarsplit_empty() -> None:
    assert list(fmt.iter_tarsplit(_reader(b""))) == []
    assert list(fmt.iter_tarsplit(_reader(b"\n\n \n"))) == []


def test_iter_tarsplit_reads_a_mebibyte_at_a_time() -> None:
    asked: list[int] = []
    data = LINES * 30_000  # 4 MiB or so
    entries = list(fmt.iter_tarsplit(_reader(data, asked=asked)))
    assert len(entries) == 5 * 30_000
    assert set(asked) == {1 << 20} and len(asked) == len(data) // (1 << 20) + 2


def test_iter_tarsplit_line_limit() -> None:
    # what is held of a line not yet ended is bounded: MAX_TARSPLIT_LINE bytes are taken,
    # one more is not
    head, tail = b'{"type":2,"payload":"', b'","position":0}'
    size = fmt.MAX_TARSPLIT_LINE - len(head) - len(tail)
    assert size % 4 == 0
    line = head + b"A" * size + tail
    assert len(line) == fmt.MAX_TARSPLIT_LINE == 8 << 20
    [e] = fmt.iter_tarsplit(_reader(line))
    assert len(e.payload) == size // 4 * 3
    with _raises(FormatError, "tar-split has a line of more than 8388608 bytes"):
        list(fmt.iter_tarsplit(_reader(line + b" ")))
    with _raises(FormatError, "tar-split has a line of more than 8388608 bytes"):
        list(fmt.iter_tarsplit(_reader(LINES + line + b"  ", 1 << 16)))


def test_iter_tarsplit_names_the_bad_line() -> None:
    # decoded all at once, else line by line for the message that says what is wrong
    bad = LINES + b'{"type":3,"position":5}\n' + LINES
    with _raises(FormatError, "malformed tar-split line: Invalid enum value 3 - at `$.type`"):
        list(fmt.iter_tarsplit(_reader(bad)))
    with _raises(FormatError, "malformed tar-split line: Invalid enum value 3 - at `$.type`"):
        fmt._parse_lines(bad)
    with pytest.raises(FormatError, match="^tar-split line is not JSON: "):
        list(fmt.iter_tarsplit(_reader(LINES + b'{"type":2,\n')))
    with pytest.raises(FormatError, match="^tar-split line is not JSON: "):
        list(fmt.iter_tarsplit(_reader(LINES + b'{"type":2,')))
    assert _summary(fmt._parse_lines(LINES)) == WANT


def test_iter_tarsplit_reads_upstreams_tarsplit() -> None:
    _need_vectors()
    data = (VECTORS / "gnu.current.tarsplit.jsonl").read_bytes()
    entries = list(fmt.iter_tarsplit(_reader(data, 1000)))
    assert len(entries) == data.count(b"\n")
    assert [e.position for e in entries] == list(range(len(entries)))  # the line index
    files = [e for e in entries if e.type == fmt.TARSPLIT_FILE]
    assert len(files) > 5 and all(e.crc is not None or e.size == 0 for e in files)
    # written back, the lines are upstream's byte for byte
    out = "".join(fmt.tarsplit_segment(e.payload, e.position) if e.type == fmt.TARSPLIT_SEGMENT
                  else fmt.tarsplit_file(e.path, e.size, e.payload, e.position)
                  for e in entries)
    assert out.encode() == data
