"""Random cases in seven classes (:data:`CLASSES`): seeded, reproducible by (seed, index)
(:func:`random_case`)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import tarfile
from collections.abc import Callable
from typing import Any

from tests.hostile.base_layers import HELLO, HELLO_NAME, build, tar_of
from tests.hostile.cases import Case
from tests.hostile.resign import Assembly, Parts, Signing, assemble
from tests.hostile.sandbox import ABS_CANARY
from tests.hostile.wire import (
    MAGIC_CURRENT,
    MAGIC_OLD,
    NEW,
    OLD,
    U64,
    Footer,
    b64,
    sha,
    unzstd,
    zstd,
)
from tests.tarfactory import _info

TOC_KEYS = ("type", "name", "linkName", "mode", "size", "uid", "gid", "modtime", "accesstime",
            "changetime", "devMajor", "devMinor", "xattrs", "digest", "offset", "endOffset",
            "chunkSize", "chunkOffset", "chunkDigest", "chunkType")
VALUES: list[Any] = [None, True, False, 0, -1, 1, 1 << 31, 1 << 32, 1 << 63, 1 << 64, -(1 << 63),
                     1.5, 1e308, "", "x", "0", "sha256:", "../x", [], [1], ["a"], {}, {"a": 1}]
ODD_NAMES = ["..", "../x", "../../canary.txt", "/tmp/chunked-hostile-canary/abs", "/",
             "./etc/hello.txt", "etc//hello.txt", "etc/hello.txt/", "etc/./hello.txt",
             "etc/../etc/other.txt", "x" * 300, "deep/" * 300 + "f", "ctl\x01\x1b[31mred",
             "new\nline", "tab\there", " ", ".", "", "//", "usr/link/beneath",
             "dev/null/beneath", "etc/hello.txt/x", "\u202eevil.txt", "n" * 5000,
             ".wh..wh..opq", ".wh.etc", "etc/.wh.hello.txt"]
SYMLINK_OUT = ["../../canary.txt", "../canary", "/tmp/chunked-hostile-canary", "/etc/passwd",
               "../" * 20 + "etc/passwd", "..", "../canary/secret.txt"]
HARDLINK_OUT = ["../canary.txt", "../../canary.txt", "/tmp/chunked-hostile-canary/x",
                "/etc/passwd", "../canary/secret.txt", "../" * 20 + "etc/passwd"]
MTIME = "2023-11-14T22:13:20Z"


def _dicts(p: Parts) -> list[dict[str, Any]]:
    return [e for e in p.entries if isinstance(e, dict)]


def _nm(e: Any) -> str:
    text = repr(e.get("name") if isinstance(e, dict) else e)
    return text if len(text) <= 60 else text[:57] + "..."


def _val(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _other_type(rng: random.Random, old: Any) -> Any:
    return rng.choice([v for v in VALUES if type(v) is not type(old)])


def _focus(*names: Any) -> list[str]:
    return [n for n in names if isinstance(n, str)]


def _case(klass: str, name: str, parts: Parts, signing: Signing | None, note: str,
          focus: list[str]) -> Case:
    return Case(name, klass, [assemble(parts, signing)], note=note, focus=focus)


def rc_type_confusion(rng: random.Random, name: str) -> Case:
    """Any TOC field (or entry, top-level key, tar-split field, annotation) replaced by a
    value of another JSON type."""
    p = Parts.base(old=rng.random() < 0.2)
    s = Signing()
    where = rng.choice(["field", "field", "field", "top", "entry", "tarsplit", "annotation"])
    if where == "tarsplit" and p.tarsplit is None:
        where = "field"
    focus: list[str] = []
    if where == "field":
        e = rng.choice(_dicts(p))
        key = rng.choice(sorted(set(e) | set(TOC_KEYS)))
        focus = _focus(e.get("name"))
        e[key] = _other_type(rng, e.get(key))
        note = f"entry {focus[0] if focus else '?'!r}: {key} = {_val(e[key])}"
    elif where == "top":
        key = rng.choice(["version", "entries", "tarSplitDigest"])
        p.toc[key] = _other_type(rng, p.toc.get(key))
        s.fix_tarsplit_digest = key != "tarSplitDigest"
        note = f"TOC {key} = {_val(p.toc[key])}"
    elif where == "entry":
        i = rng.randrange(len(p.entries))
        old = p.entries[i]
        p.entries[i] = rng.choice([None, 1, HELLO_NAME, [], [old], True, 1.5])
        note = f"TOC entry {i} ({_nm(old)}) = {_val(p.entries[i])}"
    elif where == "tarsplit":
        lines = p.ts_lines()
        i = rng.randrange(len(lines))
        doc = json.loads(lines[i])
        key = rng.choice(sorted(set(doc) | {"type", "payload", "position", "name", "size"}))
        doc[key] = _other_type(rng, doc.get(key))
        lines[i] = json.dumps(doc).encode()
        p.set_ts_lines(lines)
        note = f"tar-split line {i}: {key} = {_val(doc[key])}"
    else:
        key = rng.choice([NEW + "manifest-checksum", NEW + "manifest-position",
                          NEW + "tarsplit-position", OLD + "manifest-checksum",
                          OLD + "manifest-position"])
        if p.old:
            key = OLD + key.rpartition(".")[2]
        value = _other_type(rng, "")
        s.annotations = lambda a, info: {**a, key: value}
        note = f"annotation {key} = {_val(value)}"
    return _case("type-confusion", name, p, s, note, focus + [HELLO_NAME])


def rc_lying_offsets(rng: random.Random, name: str) -> Case:
    """offset, endOffset, size, chunkSize or chunkOffset of a file or chunk changed."""
    p = Parts.base(old=rng.random() < 0.2)
    payload = [e for e in _dicts(p) if "offset" in e]
    e = rng.choice(payload)
    key = rng.choice(["offset", "endOffset", "size", "chunkSize", "chunkOffset"]
                     if e["type"] == "reg" else ["offset", "chunkSize", "chunkOffset"])
    before = e.get(key, 0)
    op = rng.choice(["+1", "-1", "+1000", "-1000", "zero", "2^63", "2^64-1", "negative",
                     "into-toc", "swap", "other-entry", "shift-boundary"])
    if op == "shift-boundary":
        group = p.file_group(e["name"]) if e["type"] == "reg" else []
        if len(group) < 2:  # a boundary needs two chunks
            group = p.file_group(rng.choice(["usr/multi.bin", "usr/holes.bin"]))
        i = rng.randrange(len(group) - 1)
        d = rng.choice([1, -1, 100, -100, 4096])
        group[i]["chunkSize"] += d
        group[i + 1]["chunkSize"] -= d
        group[i + 1]["chunkOffset"] += d
        note = f"{group[0]['name']}: chunk boundary {i}/{i + 1} moved by {d}, sizes consistent"
        return _case("lying-offsets", name, p, None, note, [group[0]["name"]])
    if op == "swap" and "endOffset" in e:
        e["offset"], e["endOffset"] = e["endOffset"], e["offset"]
        note = f"{_nm(e)} ({e['type']}): offset and endOffset swapped"
        return _case("lying-offsets", name, p, None, note, _focus(e["name"]))
    others = [o for o in payload if o is not e and key in o] or [e]
    after = {"+1": before + 1, "-1": before - 1, "+1000": before + 1000,
             "-1000": before - 1000, "zero": 0, "2^63": 1 << 63, "2^64-1": U64,
             "negative": -max(before, 1), "into-toc": len(p.data) + 8,
             "swap": rng.choice(others).get(key, 0),
             "other-entry": rng.choice(others).get(key, 0)}[op]
    e[key] = after
    note = f"{_nm(e)} ({e['type']}): {key} {before} -> {after} ({op})"
    return _case("lying-offsets", name, p, None, note, _focus(e["name"]))


def rc_odd_names_digests(rng: random.Random, name: str) -> Case:
    """Names that are '..', absolute, './', '//', trailing '/', very long, control
    characters; digests that are malformed, of another algorithm or of something else."""
    p = Parts.base(old=rng.random() < 0.2)
    op = rng.choice(["rename", "rename", "add", "digest", "chunkDigest"])
    if op in ("rename", "add"):
        odd = rng.choice(ODD_NAMES)
        if op == "add":
            source = rng.choice([HELLO_NAME, "etc/other.txt"])
            e = dict(p.entry(source))
            e["name"] = odd
            p.entries.insert(rng.randrange(len(p.entries) + 1), e)
            note = f"an extra entry {odd!r} with {source}'s data"[:200]
        else:
            e = rng.choice(_dicts(p))
            old = e.get("name")
            for c in p.entries:  # its chunk entries follow the rename, or not
                if isinstance(c, dict) and c.get("name") == old and (c is e or rng.random() < .5):
                    c["name"] = odd
            note = f"{old!r} renamed {odd!r}"[:200]
        return _case("odd-names-digests", name, p, None, note, [odd, HELLO_NAME])
    key = op
    e = rng.choice([x for x in _dicts(p) if key in x])
    real = e[key]
    hexd = real.partition(":")[2]
    odd = rng.choice(["sha256:" + "Z" * 64, "sha256:" + "0" * 64, "SHA256:" + hexd,
                      "sha256:" + hexd.upper(), "sha512:" + "0" * 128, "", "sha256:",
                      "sha256:" + hexd[:63], "sha256:" + hexd + "\n", "md5:" + "0" * 32,
                      "sha256:" + hashlib.sha256(b"").hexdigest(), "sha256:" + hexd + hexd,
                      rng.choice([x.get(key, "") for x in _dicts(p)])])
    e[key] = odd
    note = f"{_nm(e)} ({e['type']}): {key} = {odd!r}"[:200]
    return _case("odd-names-digests", name, p, None, note, _focus(e["name"]))


def _reg_copy(p: Parts, new_name: str) -> dict[str, Any]:
    e = dict(p.entry(HELLO_NAME))
    e["name"] = new_name
    return e


def _link(name: str, kind: str, target: str) -> dict[str, Any]:
    return {"type": kind, "name": name, "linkName": target,
            "mode": 0o777 if kind == "symlink" else 0o644, "modtime": MTIME}


def rc_link_tricks(rng: random.Random, name: str) -> Case:
    """Symlinks and hard links out of the tree, loops, chains, links to directories, files
    beneath symlinks: in the TOC only, or (the last tricks) in the tar itself."""
    tricks = ["sym-out", "file-beneath-escape", "file-beneath-symlink", "hard-out",
              "hard-loop", "hard-self", "hard-chain", "hard-to-odd", "sym-loop",
              "dir-is-symlink", "tar:sym-escape", "tar:sym-abs", "tar:hard-out",
              "tar:hard-loop", "tar:dir-then-symlink", "tar:hard-to-dir"]
    trick = rng.choice(tricks)
    if trick.startswith("tar:"):
        return _tar_link_trick(rng, name, trick)
    p = Parts.base(old=rng.random() < 0.2)
    focus = [HELLO_NAME]
    if trick == "sym-out":
        target = rng.choice(SYMLINK_OUT)
        p.entry("usr/link")["linkName"] = target
        note = f"usr/link -> {target!r}"
    elif trick == "file-beneath-escape":
        target = rng.choice(SYMLINK_OUT)
        p.entries.extend([_link("esc", "symlink", target), _reg_copy(p, "esc/secret.txt")])
        note, focus = f"symlink esc -> {target!r}, then a file esc/secret.txt", ["esc/secret.txt"]
    elif trick == "file-beneath-symlink":
        p.entries.append(_reg_copy(p, "usr/link/x"))
        note, focus = "a file usr/link/x beneath the symlink usr/link", ["usr/link/x"]
    elif trick == "hard-out":
        target = rng.choice(HARDLINK_OUT)
        p.entry("usr/hard")["linkName"] = target
        note, focus = f"hard link usr/hard -> {target!r}", ["usr/hard"]
    elif trick == "hard-loop":
        p.entry("usr/hard")["linkName"] = "usr/hard2"
        p.entries.append(_link("usr/hard2", "hardlink", "usr/hard"))
        note, focus = "hard links usr/hard -> usr/hard2 -> usr/hard", ["usr/hard", "usr/hard2"]
    elif trick == "hard-self":
        p.entry("usr/hard")["linkName"] = "usr/hard"
        note, focus = "hard link usr/hard -> itself", ["usr/hard"]
    elif trick == "hard-chain":
        n = rng.choice([70, 200])
        p.entries.extend(_link(f"h{i:03d}", "hardlink", f"h{i - 1:03d}" if i else HELLO_NAME)
                         for i in range(n))
        note, focus = f"a chain of {n} hard links to etc/hello.txt", [f"h{n - 1:03d}"]
    elif trick == "hard-to-odd":
        target = rng.choice(["etc", "usr/link", "dev/null", "dev/fifo", ".wh.gone", "", ".",
                             "/", "etc/"])
        p.entry("usr/hard")["linkName"] = target
        note, focus = f"hard link usr/hard -> {target!r}", ["usr/hard"]
    elif trick == "sym-loop":
        p.entry("usr/link")["linkName"] = "link"
        p.entries.extend([_link("usr/a", "symlink", "b"), _link("usr/b", "symlink", "a")])
        note = "symlink loops: usr/link -> link, usr/a -> b -> a"
    else:
        etc = p.entry("etc", "dir") if any(e.get("name") == "etc" for e in _dicts(p)) else \
            p.entry("etc/", "dir")
        target = rng.choice(SYMLINK_OUT)
        etc.update(type="symlink", linkName=target)
        note = f"the directory etc is a symlink -> {target!r}, its files still listed"
    return _case("link-tricks", name, p, None, note, focus)


def _tar_link_trick(rng: random.Random, name: str, trick: str) -> Case:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_info(HELLO_NAME), HELLO)]
    sym, hard, d = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE
    if trick == "tar:sym-escape":
        target = rng.choice(["../canary", "../../", ".."])
        members += [(_info("esc", sym, linkname=target), None),
                    (_info("esc/secret.txt"), b"pwned\n")]
    elif trick == "tar:sym-abs":
        target = str(ABS_CANARY)
        members += [(_info("esc", sym, linkname=target), None), (_info("esc/pwned"), b"pwn\n")]
    elif trick == "tar:hard-out":
        target = rng.choice(HARDLINK_OUT)
        members += [(_info("h", hard, linkname=target), None)]
    elif trick == "tar:hard-loop":
        target = "b"
        members += [(_info("a", hard, linkname="b"), None), (_info("b", hard, linkname="a"), None)]
    elif trick == "tar:dir-then-symlink":
        target = rng.choice(["../canary", str(ABS_CANARY)])
        members = [(_info("etc", sym, linkname=target), None), (_info(HELLO_NAME), HELLO)]
    else:
        target = "etc"
        members += [(_info("d", d), None), (_info("h", hard, linkname="etc"), None)]
    old = rng.random() < 0.3
    layer = build(tar_of(members), old=old)
    note = f"in the tar itself ({'old' if old else 'current'} format): {trick[4:]} -> {target!r}"
    return Case(name, "link-tricks", [layer], note=note,
                focus=[ti.name for ti, _ in members if ti.type != d])


def _pos_fields(text: str) -> list[str]:
    return text.split(":")


def rc_footer_annotation_lies(rng: random.Random, name: str) -> Case:
    """Positions off by one, outside the blob, lengths swapped, wrong magic, a checksum of
    something else, keys missing or disagreeing; in the annotations, the footer or both."""
    p = Parts.base(old=rng.random() < 0.2)
    pre = OLD if p.old else NEW
    pos_key, ts_key, sum_key = pre + "manifest-position", NEW + "tarsplit-position", \
        pre + "manifest-checksum"
    op = rng.choice(["off-by-one", "outside", "swap-lengths", "toc-at-tarsplit",
                     "checksum-other", "manifest-type", "garbage", "drop-tarsplit-position",
                     "footer-no-annotations", "footer-only", "keys-disagree", "old-keys-only",
                     "toc-frame", "footer-bytes"])
    s = Signing()
    if op == "toc-frame":
        how = rng.choice(["uncompressed", "truncated", "garbage", "two-frames"])
        # the checksum is signed over whatever the frame holds: only the content lies
        s.toc_frame = {"uncompressed": unzstd, "truncated": lambda z: z[:len(z) // 2],
                       "garbage": lambda z: z[:4] + bytes(reversed(z[4:])),
                       "two-frames": lambda z: z + zstd(b"{}")}[how]
        note = f"the TOC frame holds the TOC {how} (checksum and positions signed over it)"
        return _case("footer-annotation-lies", name, p, s, note, [HELLO_NAME])
    if op == "footer-bytes":
        how = rng.choice(["truncated", "extended", "zeros", "other-magic"])
        s.footer_bytes = {"truncated": lambda b: b[1:], "extended": lambda b: bytes(16) + b,
                          "zeros": lambda b: bytes(len(b)),
                          "other-magic": lambda b: b[:-8] + (MAGIC_OLD if b.endswith(
                              MAGIC_CURRENT) else MAGIC_CURRENT)}[how]
        keep = rng.random() < 0.5
        if not keep:
            s.annotations = lambda a, info: {}
        note = f"footer payload {how}, {'true' if keep else 'no'} annotations"
        return _case("footer-annotation-lies", name, p, s, note, [HELLO_NAME])
    if op == "off-by-one":
        key = rng.choice([pos_key, ts_key] if not p.old else [pos_key])
        idx, d = rng.randrange(3), rng.choice([1, -1])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            f = _pos_fields(a[key])
            f[idx] = str(int(f[idx]) + d)
            return {**a, key: ":".join(f)}
        s.annotations, note = hook, f"{key}: field {idx} {d:+d}"
    elif op == "outside":
        key, extra = rng.choice([pos_key, ts_key] if not p.old else [pos_key]), \
            rng.choice([0, 1, 100, 1 << 40])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            f = _pos_fields(a[key])
            f[0] = str(info.size + extra)
            return {**a, key: ":".join(f)}
        s.annotations, note = hook, f"{key}: offset = blob size + {extra}"
    elif op == "swap-lengths" and not p.old:
        in_footer = rng.random() < 0.5

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            t, ts = _pos_fields(a[pos_key]), _pos_fields(a[ts_key])
            t[1], ts[1] = ts[1], t[1]
            return {**a, pos_key: ":".join(t), ts_key: ":".join(ts)}

        def fhook(f: Footer, info: Assembly) -> None:
            assert f.tarsplit is not None
            f.toc.length, f.tarsplit.length = f.tarsplit.length, f.toc.length
        if in_footer:
            s.annotations, s.footer = (lambda a, info: {}), fhook
        else:
            s.annotations = hook
        note = f"TOC and tar-split lengths swapped ({'footer' if in_footer else 'annotations'})"
    elif op == "toc-at-tarsplit" and not p.old:
        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            assert info.ts_pos is not None and info.ts_z is not None
            return {**a, pos_key: info.ts_pos.text(), sum_key: sha(info.ts_z),
                    OLD + "manifest-position": info.ts_pos.text(),
                    OLD + "manifest-checksum": sha(info.ts_z)}
        s.annotations, note = hook, "manifest-position and -checksum describe the tar-split"
    elif op == "checksum-other":
        pick = rng.choice(["empty", "tarsplit", "zeros", "upper", "sha512", "data"])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            real = sha(info.toc_z)
            value = {"empty": sha(b""), "tarsplit": sha(info.ts_z or b""),
                     "zeros": "sha256:" + "0" * 64, "upper": "sha256:" + real[7:].upper(),
                     "sha512": "sha512:" + hashlib.sha512(info.toc_z).hexdigest(),
                     "data": sha(p.data)}[pick]
            return {**a, sum_key: value}
        s.annotations, note = hook, f"{sum_key} is the checksum of {pick}"
    elif op == "manifest-type":
        t = rng.choice([0, 2, 99, 1 << 64])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            f = _pos_fields(a[pos_key])
            f[3] = str(t)
            return {**a, pos_key: ":".join(f)}
        s.annotations, note = hook, f"{pos_key}: manifest type {t}"
    elif op == "garbage":
        how = rng.choice(["three", "five", "negative", "space", "newline", "hex", "plus",
                          "empty", "colons", "arabic-digits", "fullwidth"])

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            real = a[pos_key]
            f = _pos_fields(real)
            value = {"three": ":".join(f[:3]), "five": real + ":7", "negative": "-" + real,
                     "space": " " + real, "newline": real + "\n", "hex": "0x" + real,
                     "plus": "+" + real, "empty": "", "colons": ":::",
                     "arabic-digits": real.translate(str.maketrans("0123456789",
                                                                   "٠١٢٣٤٥٦٧٨٩")),
                     "fullwidth": real.translate(str.maketrans("0123456789",
                                                               "０１２３４５６７８９"))}[how]
            return {**a, pos_key: value}
        s.annotations, note = hook, f"{pos_key} written {how}"
    elif op == "drop-tarsplit-position" and not p.old:
        s.annotations = lambda a, info: {k: v for k, v in a.items() if k != ts_key}
        note = "no tarsplit-position annotation (the TOC has tarSplitDigest)"
    elif op in ("footer-no-annotations", "footer-only"):
        how = rng.choice(["off-by-one", "outside", "magic", "type", "no-tarsplit", "swap"])
        if p.old and how in ("no-tarsplit", "swap"):
            how = "magic"

        def fhook(f: Footer, info: Assembly) -> None:
            if how == "off-by-one":
                f.toc.offset += rng.choice([1, -1])
            elif how == "outside":
                f.toc.offset = info.size + 10
            elif how == "magic":
                f.magic = b"GNUlInUX"
            elif how == "type":
                f.manifest_type = 2
            elif how == "no-tarsplit":
                f.tarsplit = None
            else:
                assert f.tarsplit is not None
                f.toc, f.tarsplit = f.tarsplit, f.toc
        s.footer = fhook
        if op == "footer-no-annotations":
            s.annotations = lambda a, info: {}
        note = f"footer lie ({how}), {'no' if op == 'footer-no-annotations' else 'true'} " \
               "annotations"
    elif op == "keys-disagree" and not p.old:
        good_new = rng.random() < 0.5

        def hook(a: dict[str, Any], info: Assembly) -> dict[str, Any]:
            key = OLD + "manifest-position" if good_new else pos_key
            f = _pos_fields(a[key])
            f[0] = str(int(f[0]) + 1)
            return {**a, key: ":".join(f)}
        s.annotations = hook
        note = f"{'old' if good_new else 'new'} keys point one byte off, the others are right"
    else:
        s.keys = ("old",)
        note = "only the io.containers.* keys (current-format blob)"
    return _case("footer-annotation-lies", name, p, s, note, [HELLO_NAME])


def _tar_checksum(hdr: bytearray) -> None:
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)


def _poke_header(rng: random.Random, hdr: bytearray) -> str:
    field_name = rng.choice(["mode", "uid", "gid", "size", "name", "mtime", "typeflag",
                             "linkname"])
    if field_name == "mode":
        hdr[100:108] = b"%07o\0" % rng.choice([0o4777, 0o000, 0o7777, 0o640])
    elif field_name in ("uid", "gid"):
        at = 108 if field_name == "uid" else 116
        hdr[at:at + 8] = b"%07o\0" % rng.choice([1, 1000, 0o7777777])
    elif field_name == "size":
        size = int(hdr[124:136].strip(b" \0") or b"0", 8)
        hdr[124:136] = b"%011o\0" % max(0, size + rng.choice([1, -1, 512, 1 << 20]))
    elif field_name == "name":
        new = rng.choice([b"renamed.txt", b"../escape", b"etc/other.txt", b"/abs"])
        hdr[0:100] = new.ljust(100, b"\0")
    elif field_name == "mtime":
        hdr[136:148] = b"%011o\0" % rng.randrange(1 << 33)
    elif field_name == "typeflag":
        hdr[156:157] = rng.choice([b"0", b"1", b"2", b"5", b"6", b"7"])
    else:
        hdr[157:257] = b"../../canary.txt".ljust(100, b"\0")
    _tar_checksum(hdr)
    return field_name


def rc_tarsplit_lies(rng: random.Random, name: str) -> Case:
    """The tar-split changed, its digest re-signed into the TOC: a header field, a CRC, a
    name or size, lines dropped, duplicated, reordered or garbage."""
    p = Parts.base()
    lines = p.ts_lines()
    docs = [json.loads(line) for line in lines]
    files = [i for i, d in enumerate(docs) if d["type"] == 1 and i and docs[i - 1]["type"] == 2]
    op = rng.choice(["header", "header", "header", "crc", "name", "size", "drop", "dup",
                     "swap", "reverse", "garbage", "digest-lie", "raw-frame", "position"])
    s = Signing()
    i = rng.choice(files)
    focus = [docs[i]["name"]]
    if op == "header":
        seg = bytearray(base64.b64decode(docs[i - 1]["payload"]))
        hdr = seg[-512:]
        what = _poke_header(rng, hdr)
        seg[-512:] = hdr
        docs[i - 1]["payload"] = b64(bytes(seg))
        lines[i - 1] = json.dumps(docs[i - 1]).encode()
        note = f"{docs[i]['name']!r}: tar header {what} changed (checksum fixed)"
    elif op in ("crc", "name", "size", "position"):
        d = docs[i]
        if op == "crc":
            d["payload"] = b64(rng.randbytes(8))
        elif op == "name":
            d["name"] = rng.choice(["etc/other.txt", "../x", "renamed", docs[files[0]]["name"]])
        elif op == "size":
            d["size"] = d.get("size", 0) + rng.choice([1, -1, 512])
        else:
            d["position"] = rng.randrange(1000)
        lines[i] = json.dumps(d).encode()
        note = f"tar-split line for {focus[0]!r}: {op} changed"
    elif op == "drop":
        j = rng.randrange(len(lines))
        del lines[j]
        note = f"tar-split line {j} dropped"
    elif op == "dup":
        j = rng.randrange(len(lines))
        lines.insert(j, lines[j])
        note = f"tar-split line {j} duplicated"
    elif op == "swap":
        j, k = rng.sample(range(len(lines)), 2)
        lines[j], lines[k] = lines[k], lines[j]
        note = f"tar-split lines {j} and {k} swapped"
    elif op == "reverse":
        lines.reverse()
        note = "tar-split lines reversed"
    elif op == "garbage":
        junk = rng.choice([b"not json", b"{}", b'{"type":3}', b'{"type":2,"payload":"!!"}', b"",
                           b'{"type":1,"name":"x","size":-1}', b"[1,2]", b"null",
                           b'{"type":2,"payload":"' + b"A" * 100_000 + b'"}'])
        j = rng.randrange(len(lines) + 1)
        lines.insert(j, junk)
        note = f"tar-split line {j} inserted: {junk[:40]!r}"
    elif op == "digest-lie":
        lines[i] = lines[i].replace(b'"type":1', b'"type": 1')
        s.fix_tarsplit_digest = False
        note = "tar-split changed by a space, tarSplitDigest left as it was"
    else:
        how = rng.choice(["not-zstd", "truncated", "uncompressed"])
        s.tarsplit_frame = {"not-zstd": lambda z: b"not zstd at all",
                            "truncated": lambda z: z[:len(z) // 2],
                            "uncompressed": lambda z: unzstd(z)}[how]
        note = f"tar-split frame {how} (its digest signed into the TOC)"
    p.set_ts_lines(lines)
    return _case("tarsplit-lies", name, p, s, note, focus + [HELLO_NAME])


def _random_edit(rng: random.Random, p: Parts) -> tuple[str, Any]:
    """One edit of a random entry: its note, and the entry's name (for cat)."""
    ds = _dicts(p)
    e = rng.choice(ds)
    return _edit(rng, p, ds, e), e.get("name")


def _edit(rng: random.Random, p: Parts, ds: list[dict[str, Any]], e: dict[str, Any]) -> str:
    key = rng.choice(sorted(e))
    op = rng.choice(["set", "set", "set", "delete-field", "add-field", "dup-entry",
                     "del-entry", "swap-entries", "change-type", "case-key", "move-entry"])
    if op == "set":
        v = e[key]
        if isinstance(v, int) and not isinstance(v, bool):
            e[key] = rng.choice([v + 1, v - 1, 0, -v, v * 2, 1 << 31, (1 << 32) - 1,
                                 (1 << 63) - 1, rng.randrange(1 << 20)])
        elif isinstance(v, str):
            e[key] = rng.choice([x[key] for x in ds if isinstance(x.get(key), str)]
                                + ["", "x", "../x", HELLO_NAME, "sha256:" + "0" * 64, "zeros",
                                   "chunk", "reg", "dir", "9999-12-31T23:59:59Z",
                                   "0001-01-01T00:00:00Z"])
        else:
            e[key] = {}
        return f"{_nm(e)}: {key} = {_val(e[key])}"
    if op == "delete-field":
        del e[key]
        return f"{_nm(e)}: {key} deleted"
    if op == "add-field":
        k = rng.choice(["unknown", "x-extra", *TOC_KEYS])
        e.setdefault(k, rng.choice(VALUES))
        return f"{_nm(e)}: {k} = {_val(e[k])}"
    if op == "dup-entry":
        p.entries.insert(rng.randrange(len(p.entries) + 1), dict(e))
        return f"{_nm(e)} duplicated"
    if op == "del-entry":
        p.entries.remove(e)
        return f"{_nm(e)} ({e.get('type')}) deleted"
    if op == "swap-entries":
        i, j = rng.sample(range(len(p.entries)), 2)
        p.entries[i], p.entries[j] = p.entries[j], p.entries[i]
        return f"entries {i} and {j} swapped"
    if op == "change-type":
        e["type"] = rng.choice(["reg", "chunk", "dir", "symlink", "hardlink", "char", "block",
                                "fifo", "REG", "socket"])
        return f"{_nm(e)}: type = {e['type']!r}"
    if op == "case-key":
        alt = key.upper() if key != key.upper() else key.lower()
        e[alt] = rng.choice([x.get(key) for x in ds if key in x])
        return f"{_nm(e)}: {alt} = {_val(e[alt])} beside {key}"
    p.entries.remove(e)
    p.entries.append(e)
    return f"{_nm(e)} moved to the end"


def rc_random_toc(rng: random.Random, name: str) -> Case:
    """One to three random edits of TOC entries, re-signed."""
    p = Parts.base(old=rng.random() < 0.25)
    edits = [_random_edit(rng, p) for _ in range(rng.choice([1, 1, 2, 3]))]
    focus = _focus(*(touched for _, touched in edits))
    return _case("random-toc", name, p, None, "; ".join(note for note, _ in edits)[:300],
                 focus + [HELLO_NAME])


CLASSES: dict[str, Callable[[random.Random, str], Case]] = {
    "type-confusion": rc_type_confusion,
    "lying-offsets": rc_lying_offsets,
    "odd-names-digests": rc_odd_names_digests,
    "link-tricks": rc_link_tricks,
    "footer-annotation-lies": rc_footer_annotation_lies,
    "tarsplit-lies": rc_tarsplit_lies,
    "random-toc": rc_random_toc,
}


def random_case(seed: int, index: int) -> Case:
    """Case ``index`` of ``seed``: the classes in turn, everything else from an RNG seeded
    by both (a str seed is hashed with sha512: the same on every run and machine)."""
    klass = list(CLASSES)[index % len(CLASSES)]
    return CLASSES[klass](random.Random(f"{seed}:{index}"), f"{klass}-{seed}-{index}")
