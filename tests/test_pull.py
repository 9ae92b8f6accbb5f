"""chunked pull: an image's root filesystem written into DEST, fetching only what is new."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from chunked.builder import build_blob
from chunked.oci import OciLayout, write_image
from tests.peers import Registry, skopeo_copy
from tests.trees import features_image, full_tree, hardlink_groups

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(os.geteuid() != 0, reason="owners and devices need root")]


def chunked(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chunked.cli", *args], capture_output=True,
                          text=True, timeout=300)


def _push_tars(tmp_path: Path, registry: Registry, name: str,
               tars: list[bytes]) -> list[dict]:
    layout = OciLayout(str(tmp_path / f"img-{name.replace('/', '-').replace(':', '-')}"))
    layout.init()
    layers = []
    for tar in tars:
        with layout.new_blob() as out:
            result = build_blob(io.BytesIO(tar), out)
        layout.commit_blob(result.digest)
        layers.append((result.descriptor(), result.diff_id))
    write_image(layout, "t", layers)
    skopeo_copy(f"oci:{layout.path}:t", f"docker://{registry.host}/{name}")
    return [d for d, _ in layers]


def _tar(files: dict[str, bytes | tuple[str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in files.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if isinstance(content, tuple):
                ti.type = tarfile.SYMTYPE if content[0] == "sym" else tarfile.LNKTYPE
                ti.linkname = content[1]
                tf.addfile(ti)
            else:
                ti.size = len(content)
                tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def test_pull_equals_tar_extraction(tmp_path: Path, registry: Registry) -> None:
    ref, root = features_image(tmp_path, registry, "pull/features:1")
    dest = tmp_path / "dest"
    p = chunked("pull", f"docker://{ref}", str(dest), "--tls-verify=false",
                "--cache", str(tmp_path / "cache"), "--json")
    assert p.returncode == 0, p.stderr
    got, want = full_tree(dest), full_tree(root)
    assert set(got) == set(want)
    for path in sorted(want):
        assert got[path] == want[path], path
    assert hardlink_groups(dest) == hardlink_groups(root)


def test_update_fetches_only_what_changed(tmp_path: Path, registry: Registry) -> None:
    rng = random.Random(4)
    v1 = {f"lib/file-{i:03d}.bin": rng.randbytes(200_000) for i in range(60)}
    v2 = dict(v1)
    changed = {"lib/file-007.bin": rng.randbytes(200_000), "lib/new.bin": rng.randbytes(300_000)}
    v2.update(changed)
    _push_tars(tmp_path, registry, "pull/app:1", [_tar(v1)])
    (layer2,) = _push_tars(tmp_path, registry, "pull/app:2", [_tar(v2)])
    cache = str(tmp_path / "cache")
    p = chunked("pull", f"docker://{registry.host}/pull/app:1", str(tmp_path / "v1"),
                "--tls-verify=false", "--cache", cache, "-q")
    assert p.returncode == 0, p.stderr

    mark = registry.mark()
    p = chunked("pull", f"docker://{registry.host}/pull/app:2", str(tmp_path / "v2"),
                "--tls-verify=false", "--cache", cache, "--json")
    assert p.returncode == 0, p.stderr
    moved = registry.blob_bytes(mark, layer2["digest"])
    # compressed size of the changed and added files, from our own reader
    from chunked.image import open_oci
    from chunked.oci import OciRef

    image = open_oci(OciRef.parse(f"oci:{tmp_path / 'img-pull-app-2'}:t"))
    layer = image.layers[0].layer
    toc = layer.toc_pos.length
    frames = sum(layer.lookup(n).compressed_size for n in changed)
    image.close()
    assert moved <= toc + 1.2 * frames, (moved, toc, frames)
    for name, data in v2.items():
        assert (tmp_path / "v2" / name).read_bytes() == data
    summary = json.loads(p.stdout)
    assert summary["filesFetched"] == 2 and summary["filesReused"] == 59


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-parent", "hardlink-out"])
def test_hostile_layers_are_refused(tmp_path: Path, registry: Registry, case: str) -> None:
    tars = {
        "dotdot": [_tar({"ok": b"fine", "../escape": b"pwned"})],
        "absolute": [_tar({"/abs-escape": b"pwned"})],
        "symlink-parent": [_tar({"link": ("sym", "/"), "link/tmp/escape-symlink": b"pwned"})],
        "hardlink-out": [_tar({"h": ("hard", "../../etc/passwd")})],
    }[case]
    _push_tars(tmp_path, registry, f"hostile/{case}:1", tars)
    dest = tmp_path / "box" / "dest"
    dest.parent.mkdir()
    p = chunked("pull", f"docker://{registry.host}/hostile/{case}:1", str(dest),
                "--tls-verify=false", "--no-cache")
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert "refusing" in p.stderr or "outside" in p.stderr
    # nothing outside DEST: the box holds at most the empty destination
    assert [x.name for x in (tmp_path / "box").iterdir()] in ([], ["dest"])
    assert not Path("/tmp/escape-symlink").exists() and not Path("/abs-escape").exists()


def test_corrupt_content_fails_cleanly(tmp_path: Path, registry: Registry) -> None:
    """A layer whose bytes do not match the digests its TOC claims."""
    rng = random.Random(8)
    (desc,) = _push_tars(tmp_path, registry, "hostile/digest:1",
                         [_tar({"a.bin": rng.randbytes(300_000)})])
    blob = registry.root / "docker/registry/v2/blobs/sha256" / desc["digest"][7:9] / \
        desc["digest"][7:] / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a.bin's frames
    blob.write_bytes(bytes(data))
    p = chunked("pull", f"docker://{registry.host}/hostile/digest:1",
                str(tmp_path / "dest"), "--tls-verify=false", "--no-cache")
    assert p.returncode != 0 and "a.bin" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dest" / "a.bin").exists()
    assert not [n for n in os.listdir(tmp_path / "dest") if n.startswith(".chunked-tmp")]


def test_killed_pull_resumes(tmp_path: Path, registry: Registry) -> None:
    from tests.proxy import Proxy, ProxyOptions

    rng = random.Random(6)
    files = {f"d/f{i:03d}.bin": rng.randbytes(100_000) for i in range(80)}
    _push_tars(tmp_path, registry, "pull/crash:1", [_tar(files)])
    slow = Proxy(registry.url, ProxyOptions(bandwidth=2e6))  # about 4 s for the layer
    dest = tmp_path / "dest"
    cache = str(tmp_path / "cache")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "chunked.cli", "pull",
                                 f"docker://{slow.host}/pull/crash:1", str(dest),
                                 "--tls-verify=false", "--cache", cache, "-q"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (dest / "d").is_dir():
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        slow.close()
    # whatever is there under a final name is complete and right
    for p in (dest / "d").iterdir() if (dest / "d").exists() else []:
        if not p.name.startswith(".chunked-tmp"):
            assert p.read_bytes() == files[f"d/{p.name}"], p.name
    p = chunked("pull", f"docker://{registry.host}/pull/crash:1", str(dest),
                "--tls-verify=false", "--cache", cache, "--json")
    assert p.returncode == 0, p.stderr
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert not [n for n in os.listdir(dest / "d") if n.startswith(".chunked-tmp")]
