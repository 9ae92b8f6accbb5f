"""Reference trees for comparing what chunked writes or mounts with GNU tar's extraction."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Collection
from decimal import Decimal
from pathlib import Path

from chunked.builder import build_blob
from chunked.oci.layout import (
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    OciLayout,
    write_image,
)
from tests.layers import LOWER, UPPER, _gzip_layer, make_tar
from tests.peers import Registry, skopeo_copy
from tests.tarfactory import features_tar


def apply_whiteouts(stage: Path, root: Path) -> None:
    """Apply (and remove) the whiteouts a freshly extracted layer holds to root; the
    directories that held them keep the times the layer gave them."""
    times = {}
    for wh in sorted(stage.rglob(".wh.*")):
        st = wh.parent.stat()
        times.setdefault(wh.parent, (st.st_atime_ns, st.st_mtime_ns))
    for wh in sorted(stage.rglob(".wh.*")):
        rel = wh.parent.relative_to(stage)
        if wh.name == ".wh..wh..opq":
            lower = root / rel
            if lower.is_dir():
                shutil.rmtree(lower)
                lower.mkdir()
        else:
            victim = root / rel / wh.name[len(".wh."):]
            if victim.is_dir() and not victim.is_symlink():
                shutil.rmtree(victim)
            elif victim.exists() or victim.is_symlink():
                victim.unlink()
        wh.unlink()
    for d, ns in times.items():
        os.utime(d, ns=ns)


def full_tree(root: Path, vanished: set[str] | None = None,
              untimed: Collection[str] = ()) -> dict[str, tuple]:
    """Everything the issue asks a mount to preserve, per path: type, mode, owner, mtime
    to the nanosecond (directories and symlinks too), device numbers, content and every
    extended attribute (``security.*`` as well as ``user.*``). Paths in ``untimed`` (the
    directories no tar entry names, see :func:`implicit_dirs`) have no mtime to compare.
    With ``vanished``, a name
    the directory lists but a lookup does not find is put there instead of failing (what
    overlayfs does with a whiteout in a directory only one layer has)."""
    out = {}
    for p in root.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            if vanished is None:
                raise
            vanished.add(str(p.relative_to(root)))
            continue
        kind = stat.S_IFMT(st.st_mode)
        content = (os.readlink(p) if p.is_symlink() else
                   p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
        xattrs = {n: os.getxattr(p, n, follow_symlinks=False)
                  for n in os.listxattr(p, follow_symlinks=False)}
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        rel = str(p.relative_to(root))
        mtime = None if rel in untimed else st.st_mtime_ns
        out[rel] = (kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, mtime, rdev, content,
                    xattrs)
    return out


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for p in root.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:  # see full_tree's vanished
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, set()).add(str(p.relative_to(root)))
    return {frozenset(g) for g in groups.values()}


def push_image(tmp: Path, registry: Registry, name: str, layers: list[tuple[str, bytes]],
               *extra: str) -> str:
    """Write layers (``("chunked" | "gzip", tar)``, lowest first) as an OCI image, push it
    as NAME; return its reference ``HOST/NAME``."""
    layout = OciLayout(str(tmp / ("img-" + name.replace("/", "-").replace(":", "-"))))
    layout.init()
    write_image(layout, "t", _layout_layers(layout, layers))
    ref = registry.ref(name)
    skopeo_copy(f"oci:{layout.path}:t", f"docker://{ref}", *extra)
    return ref


def _layout_layers(layout: OciLayout, layers: list[tuple[str, bytes]]
                   ) -> list[tuple[dict[str, object], str]]:
    descs = []
    for kind, tar in layers:
        if kind == "gzip":
            descs.append(_gzip_layer(layout, tar))
            continue
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(tar), out)
        layout.commit_blob(result.digest)
        descs.append((result.descriptor(), result.diff_id))
    return descs


def push_index(tmp: Path, registry: Registry, name: str,
               platforms: dict[str, list[tuple[str, bytes]]], *extra: str) -> str:
    """Push an OCI index with one image per architecture (``{"amd64": layers, ...}``, each
    as :func:`push_image` takes them) as NAME; ``extra`` goes to skopeo copy."""
    layout = OciLayout(str(tmp / ("idx-" + name.replace("/", "-").replace(":", "-"))))
    layout.init()
    entries = []
    for arch, layers in platforms.items():
        descs = _layout_layers(layout, layers)
        config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [i for _, i in descs]}},
                            separators=(",", ":")).encode()
        config_digest = layout.put_bytes(config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest,
                       "size": len(config)},
            "layers": [d for d, _ in descs]}, separators=(",", ":")).encode()
        entries.append({"mediaType": MANIFEST_MEDIA_TYPE, "digest": layout.put_bytes(manifest),
                        "size": len(manifest), "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                        "manifests": entries}, separators=(",", ":")).encode()
    layout.tag("t", layout.put_bytes(index), len(index), INDEX_MEDIA_TYPE)
    ref = registry.ref(name)
    skopeo_copy(f"oci:{layout.path}:t", f"docker://{ref}", "--all", *extra)
    return ref


# gnu_tar_root's trees -> the directories in them no tar entry names
_IMPLICIT: dict[Path, set[str]] = {}


def implicit_dirs(root: Path) -> set[str]:
    """The directories of a :func:`gnu_tar_root` tree whose topmost layer does not name
    them: each extractor makes them when it needs them, at its own time, so their mtimes
    differ."""
    return _IMPLICIT[root.resolve()]


def _implicit(tars: list[bytes]) -> set[str]:
    # a directory takes its metadata from the topmost layer that has it, named or not
    implicit: set[str] = set()
    for tar in tars:
        named, parents = set(), set()
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            for m in tf:
                name = m.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.rstrip("/")
                named.add(name)
                while "/" in name:
                    name = name.rsplit("/", 1)[0]
                    parents.add(name)
        implicit = (implicit - named) | (parents - named)
    return implicit


def _dir_times(stage: Path, tar: bytes) -> None:
    """Give the directories the tar names its mtimes again: GNU tar sets a directory's
    times once it leaves it, so a member the tar puts in it later (``bin/`` early,
    ``bin/cat`` near the end) leaves it with the time of extraction."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for m in tf:
            if m.isdir():
                raw = m.pax_headers.get("mtime")
                ns = int(Decimal(raw) * 10**9) if raw else int(m.mtime) * 10**9
                os.utime(stage / m.name, ns=(ns, ns), follow_symlinks=False)


def gnu_tar_root(tmp: Path, tars: list[bytes]) -> Path:
    """GNU tar's extraction of the layers in order, whiteouts applied (every extended
    attribute kept, the directories' times too)."""
    root = tmp / "gnu-root"
    root.mkdir()
    for i, tar in enumerate(tars):
        stage = tmp / f"gnu-stage{i}"
        stage.mkdir()
        subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--same-owner",
                        "-p", "--numeric-owner", "-C", str(stage)], input=tar, check=True)
        _dir_times(stage, tar)
        apply_whiteouts(stage, root)
        subprocess.run(["cp", "-a", "--preserve=all", f"{stage}/.", str(root)], check=True)
    _IMPLICIT[root.resolve()] = {d for d in _implicit(tars) if (root / d).is_dir()}
    return root


def features_image(tmp_path: Path, registry: Registry, name: str) -> tuple[str, Path]:
    """Push [features (chunked), lower (gzip), upper (chunked)] to the registry as NAME;
    return its reference and GNU tar's extraction of it (layers in order, whiteouts)."""
    tars = [features_tar(), make_tar(LOWER), make_tar(UPPER)]
    ref = push_image(tmp_path, registry, name,
                     [("chunked", tars[0]), ("gzip", tars[1]), ("chunked", tars[2])])
    return ref, gnu_tar_root(tmp_path, tars)
