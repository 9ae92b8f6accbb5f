"""The encoding side of format.py: the fast paths (strings written as they are, names
known UTF-8 without a check, cached times) give what the escape tables give."""

from __future__ import annotations

import json
import random

import pytest

from chunked import format as fmt

ALPHABET = ["a", "/", ".", " ", "é", "\u2028", "\u2029", "<", ">", "&", '"', "\\", "\n", "\t",
            "\x00", "\x1f", "\x7f", "\udc80", "\udcff", "\U0001f600", "日"]


def _strings() -> list[str]:
    rng = random.Random(4)
    out = ["", "usr/bin/python3", "sha256:" + "0" * 64, *ALPHABET]
    out += ["".join(rng.choices(ALPHABET, k=rng.randint(1, 12))) for _ in range(400)]
    return out


@pytest.mark.parametrize("html", [True, False])
def test_go_string_equals_the_escape_tables(html):
    table = fmt._GO_ESCAPES if html else fmt._JSON_ESCAPES
    for s in _strings():
        assert fmt.go_string(s, html_escape=html) == '"' + s.translate(table) + '"', repr(s)


def test_tarsplit_file_names():
    for s in _strings():
        raw = s.encode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
            want = f'"name":"{s.translate(fmt._GO_ESCAPES)}"'
        except UnicodeDecodeError:
            want = f'"name_raw":"{fmt.b64(raw)}"'
        assert fmt.tarsplit_file(s, 3, None, 7) == \
            f'{{"type":1,{want},"size":3,"payload":null,"position":7}}\n'


@pytest.mark.parametrize("variant", [fmt.CURRENT, fmt.OLD])
def test_toc_entry_encode_round_trips(variant):
    rng = random.Random(9)
    for i in range(300):
        names = [s for s in _strings() if "\x00" not in s and "\udc80" not in s
                 and "\udcff" not in s]
        e = fmt.TocEntry(
            type=rng.choice(fmt.ENTRY_TYPES), name=rng.choice(names),
            link_name=rng.choice(["", *names[:20]]), mode=rng.choice([0, 0o755]),
            size=rng.choice([0, 1, 1 << 40]), uid=rng.choice([0, 1000]), gid=rng.choice([0, 5]),
            modtime=rng.choice([None, 0, 1_700_000_000_123_456_789, fmt.GO_ZERO]),
            accesstime=rng.choice([None, 1]), changetime=rng.choice([None, 10**18]),
            dev_major=rng.choice([0, 8]), dev_minor=rng.choice([0, 1]),
            xattrs=rng.choice([None, {"user.a": b"\x00\xff", "security.b": b""}]),
            digest=rng.choice(["", "sha256:" + "a" * 64]), offset=rng.choice([0, 99]),
            end_offset=rng.choice([0, 120]), chunk_size=rng.choice([0, 7]),
            chunk_offset=rng.choice([0, 3]), chunk_digest=rng.choice(["", "sha256:" + "b" * 64]),
            chunk_type=rng.choice(["", "zeros"]))
        text = e.encode(variant)
        doc = json.loads(text)
        assert list(doc) == [k for k in ("type", "name", "linkName", "mode", "size", "uid", "gid",
                                         "modtime", "accesstime", "changetime", "devMajor",
                                         "devMinor", "xattrs", "digest", "offset", "endOffset",
                                         "chunkSize", "chunkOffset", "chunkDigest", "chunkType")
                             if k in doc], i
        back = fmt.Toc.decode(('{"version":1,"entries":[' + text + "]}").encode()).entries[0]
        for field in ("type", "name", "link_name", "mode", "size", "uid", "gid", "dev_major",
                      "dev_minor", "xattrs", "digest", "offset", "end_offset", "chunk_size",
                      "chunk_offset", "chunk_digest", "chunk_type"):
            assert getattr(back, field) == getattr(e, field), (i, field)
        if e.type != fmt.TYPE_CHUNK:
            assert (back.mtime, back.atime, back.ctime) == (e.mtime, e.atime, e.ctime), i
