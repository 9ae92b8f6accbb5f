"""A hostile case (its layers, hooks on manifest and config, limits), written to disk as a
blob plus descriptor and as a one-image OCI layout (:func:`write_case`) together with its
plain truth, or read back as the fuzzer saved it (:func:`load_case`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunked.oci.layout import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, OciLayout, host_arch
from tests.hostile.base_layers import LayerBlob
from tests.hostile.resign import Parts
from tests.hostile.truth import Plain, Tree, _merge, _plain
from tests.hostile.wire import sha

COMMANDS = ("inspect", "inspect-json", "verify", "cat", "pull", "verify-oci", "mount")
CHEAP = ("inspect", "inspect-json", "verify", "cat", "pull")
TAG = "hostile"


@dataclass
class Case:
    name: str
    klass: str
    layers: list[LayerBlob]
    main: int = 0  # the layer that inspect, verify and cat take as BLOB
    manifest_hook: Callable[[dict[str, Any]], Any] | None = None
    config_hook: Callable[[dict[str, Any]], Any] | None = None
    nofile: int | None = None  # RLIMIT_NOFILE for every chunked command
    env: dict[str, str] = field(default_factory=dict)
    must_succeed: frozenset[str] = frozenset()  # commands for which refusing is a failure
    rss_limit_mib: int | None = None
    timeout: float | None = None
    focus: list[str] = field(default_factory=list)  # names the mutation touched: cat these
    note: str = ""


def _toc_files(blob: bytes) -> list[str]:
    """Names of the TOC's regular files and hard links, read leniently: what cat is given."""
    try:
        toc = Parts.of(blob).toc
        entries = toc.get("entries") if isinstance(toc, dict) else None
    except Exception:  # noqa: BLE001 - a TOC this broken names nothing to cat
        return []
    if not isinstance(entries, list):
        return []
    return [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)
            and e.get("type") in ("reg", "hardlink")]


@dataclass
class CaseDir:
    """A case written to disk (fresh or saved by the fuzzer), with its plain truth."""

    root: Path
    meta: dict[str, Any]
    layer: Plain  # the main layer's own tree, whiteouts as plain files: for cat
    image: Tree | None  # the image's merged tree: for pull and mount
    image_diff_ids: list[str | None]
    image_members: Tree = field(default_factory=dict)  # every layer's, the last one wins

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def klass(self) -> str:
        return self.meta["class"]


def write_case(case: Case, root: Path) -> CaseDir:
    """Write ``case`` under ``root``: in/blob, in/descriptor.json and the OCI layout in/layout
    (all the CLI gets), layers/ (each layer's blob, for the oracle) and case.json."""
    (root / "in").mkdir(parents=True)
    (root / "layers").mkdir()
    main = case.layers[case.main]
    (root / "in" / "blob").write_bytes(main.blob)
    (root / "in" / "descriptor.json").write_text(json.dumps(main.descriptor, indent=2))
    plains = []
    for i, lb in enumerate(case.layers):
        path = root / "layers" / f"{i}.{lb.kind}"
        path.write_bytes(lb.blob)
        plains.append(_plain(path, lb.kind, root / "work" / f"stage-{i}"))
    diff_ids = [p.diff_id or sha(b"") for p in plains]
    _write_layout(root / "in" / "layout", case, diff_ids)
    meta = {
        "name": case.name, "class": case.klass, "note": case.note, "main": case.main,
        "layers": [lb.kind for lb in case.layers], "nofile": case.nofile, "env": case.env,
        "must_succeed": sorted(case.must_succeed), "rss_limit_mib": case.rss_limit_mib,
        "timeout": case.timeout, "focus": case.focus, "toc_files": _toc_files(main.blob),
    }
    (root / "case.json").write_text(json.dumps(meta, indent=2, ensure_ascii=True))
    remove_tree(root / "work")
    return _case_dir(root, meta, plains)


def _case_dir(root: Path, meta: dict[str, Any], plains: list[Plain]) -> CaseDir:
    members: Tree = {}
    for p in plains:
        members.update(p.members)
    return CaseDir(root, meta, plains[meta["main"]], _merge([p.tree for p in plains]),
                   [p.diff_id for p in plains], members)


def load_case(root: Path) -> CaseDir:
    """A case the fuzzer saved: its truth computed again from the saved layer blobs."""
    meta = json.loads((root / "case.json").read_text())
    plains = [_plain(root / "layers" / f"{i}.{kind}", kind, root / "work" / f"stage-{i}")
              for i, kind in enumerate(meta["layers"])]
    remove_tree(root / "work")
    return _case_dir(root, meta, plains)


def _write_layout(path: Path, case: Case, diff_ids: list[str]) -> None:
    """A one-image layout whose config holds the true diff_ids, as an attacker who wants a
    consistent image writes it; the case's hooks then bend manifest and config."""
    layout = OciLayout(str(path))
    layout.init()
    for lb in case.layers:
        layout.put_bytes(lb.blob)
    config: Any = {"architecture": host_arch(), "os": "linux", "config": {},
                   "rootfs": {"type": "layers", "diff_ids": diff_ids},
                   "history": [{"created_by": "tests/hostile.py"} for _ in case.layers]}
    if case.config_hook:
        config = case.config_hook(config)
    config_bytes = json.dumps(config).encode()
    manifest: Any = {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": layout.put_bytes(config_bytes),
                   "size": len(config_bytes)},
        "layers": [lb.descriptor for lb in case.layers],
    }
    if case.manifest_hook:
        manifest = case.manifest_hook(manifest)
    manifest_bytes = json.dumps(manifest).encode()
    layout.tag(TAG, layout.put_bytes(manifest_bytes), len(manifest_bytes))


def remove_tree(path: Path) -> None:
    """rm -rf: shutil.rmtree recurses once per level, and a case may be 2,000 deep."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
