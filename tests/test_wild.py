"""Registries as they are in the wild, emulated by a proxy in front of the real registry:
501 or 416 to multi-range requests (GHCR's CDN, zot), Range ignored (an S3-backed
registry, ECR), and a redirect to a CDN that ignores Range."""

from __future__ import annotations

import collections
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import COMMAND, chunked
from tests.peers import Registry
from tests.proxy import Proxy, ProxyOptions
from tests.trees import features_image, full_tree, hardlink_groups, implicit_dirs

pytestmark = pytest.mark.interop

QUIRKS = {
    "501-to-multirange": ProxyOptions(multirange_status=501),
    "416-to-multirange": ProxyOptions(multirange_status=416),
    "range-ignored": ProxyOptions(drop_range=True),
}



@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, registry: Registry
          ) -> tuple[str, Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("wild")
    ref, root = features_image(tmp, registry, "wild/features:1")
    manifest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, check=True).stdout)
    return ref.split("/", 1)[1], root, manifest["layers"]


@pytest.fixture(params=[*QUIRKS, "redirect-to-cdn-ignoring-range"])
def quirky(request: pytest.FixtureRequest, registry: Registry) -> Iterator[Proxy]:
    if request.param in QUIRKS:
        proxy = Proxy(registry.url, QUIRKS[request.param])
        yield proxy
        proxy.close()
        return
    cdn = Proxy(registry.url, ProxyOptions(drop_range=True))
    front = Proxy(registry.url, ProxyOptions(redirect_blobs_to=f"http://{cdn.host}"))
    front.cdn = cdn  # type: ignore[attr-defined]
    yield front
    front.close()
    cdn.close()


def _pull(proxy: Proxy, name: str, dest: Path) -> int:
    """Bytes the pull moved through the proxy (and its CDN)."""
    cdn = getattr(proxy, "cdn", None)
    before = proxy.bytes_sent + (cdn.bytes_sent if cdn else 0)
    p = chunked("pull", f"docker://{proxy.host}/{name}", str(dest), "--tls-verify=false",
                "--no-cache", "-q")
    assert p.returncode == 0, p.stderr
    return proxy.bytes_sent + (cdn.bytes_sent if cdn else 0) - before


def test_every_command_is_right_behind_each_quirk(tmp_path: Path, registry: Registry,
                                                  image: tuple[str, Path, list[dict]],
                                                  quirky: Proxy) -> None:
    name, root, layers = image
    target = f"docker://{quirky.host}/{name}"
    cat = subprocess.run([*COMMAND, "cat", target, "usr/random.bin",
                          "--tls-verify=false"], capture_output=True, timeout=300)
    assert cat.returncode == 0, cat.stderr.decode()
    assert cat.stdout == (root / "usr/random.bin").read_bytes()

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = chunked("mount", target, str(mnt), "--tls-verify=false", "--no-cache")
    assert m.returncode == 0, m.stderr
    try:
        for rel in ("usr/text.txt", "usr/zeros.bin", "etc/replace.conf"):
            assert (mnt / rel).read_bytes() == (root / rel).read_bytes(), rel
    finally:
        chunked("umount", str(mnt))

    mark = registry.mark()
    moved = _pull(quirky, name, tmp_path / "tree")
    untimed = implicit_dirs(root)
    assert full_tree(tmp_path / "tree", untimed=untimed) == full_tree(root, untimed=untimed)
    assert hardlink_groups(tmp_path / "tree") == hardlink_groups(root)
    if quirky.options.multirange_status:
        # refused once, then remembered: one refusal for the whole pull
        assert quirky.statuses[quirky.options.multirange_status] <= 3  # cat, mount, pull
        normal = Proxy(registry.url)
        try:
            baseline = _pull(normal, name, tmp_path / "tree-normal")
        finally:
            normal.close()
        assert moved <= 1.1 * baseline, (moved, baseline)
    else:
        # Range ignored: each blob moves once, whole
        gets = collections.Counter(r.blob_digest for r in registry.requests(mark)
                                   if r.method == "GET" and r.blob_digest)
        assert all(gets[x["digest"]] == 1 for x in layers), gets
        assert moved <= sum(x["size"] for x in layers) + (64 << 10)
