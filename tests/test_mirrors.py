"""Mirrors and pull-through caches named in registries.conf, with real registries: each
source tried in order, every byte verified whichever source served it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.clirun import chunked as run_chunked
from tests.layers import LOWER, UPPER, make_tar
from tests.peers import Registry, _free_port, skopeo_copy, start_registry
from tests.trees import push_image

pytestmark = pytest.mark.interop



def chunked(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_chunked(*args, env=env)


def _conf(tmp: Path, origin: str, *mirrors: str, extra: str = "") -> dict[str, str]:
    text = f'[[registry]]\nlocation = "{origin}"\ninsecure = true\n{extra}'
    for m in mirrors:
        text += f'\n[[registry.mirror]]\nlocation = "{m}"\ninsecure = true\n'
    path = tmp / "registries.conf"
    path.write_text(text)
    return {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(path)}


@pytest.fixture
def mirror(tmp_path: Path) -> Registry:
    reg = start_registry(tmp_path / "mirror")
    yield reg
    reg.stop()


def _image(tmp: Path, registry: Registry, name: str) -> str:
    return push_image(tmp, registry, name, [("chunked", make_tar(LOWER)),
                                            ("chunked", make_tar(UPPER))])


def test_origin_down_the_mirror_serves(tmp_path: Path, registry: Registry,
                                       mirror: Registry) -> None:
    ref = _image(tmp_path, registry, "mirrors/a:1")
    name = ref.split("/", 1)[1]
    skopeo_copy(f"docker://{ref}", f"docker://{mirror.host}/{name}")
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    env = _conf(tmp_path, dead, mirror.host)
    p = chunked(env, "cat", f"docker://{dead}/{name}", "new.txt")
    assert p.returncode == 0, p.stderr
    assert p.stdout == UPPER["new.txt"].decode()
    out = tmp_path / "tree"
    p = chunked(env, "pull", f"docker://{dead}/{name}", str(out), "--no-cache", "-q")
    assert p.returncode == 0, p.stderr
    assert (out / "usr/big.bin").read_bytes() == LOWER["usr/big.bin"]
    assert (out / "new.txt").read_bytes() == UPPER["new.txt"]


def test_mirror_down_the_origin_serves_with_one_warning(tmp_path: Path,
                                                        registry: Registry) -> None:
    ref = _image(tmp_path, registry, "mirrors/b:1")
    env = _conf(tmp_path, registry.host, f"127.0.0.1:{_free_port()}")
    p = chunked(env, "pull", f"docker://{ref}", str(tmp_path / "tree"), "--no-cache", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "tree/etc/replace.conf").read_bytes() == UPPER["etc/replace.conf"]
    warnings = [line for line in p.stderr.splitlines() if line.startswith("chunked: warning:")]
    assert len(warnings) == 1 and "mirror 127.0.0.1:" in warnings[0], p.stderr


def test_a_mirror_serving_a_corrupt_blob_is_caught(tmp_path: Path, registry: Registry,
                                                   mirror: Registry) -> None:
    ref = _image(tmp_path, registry, "mirrors/c:1")
    name = ref.split("/", 1)[1]
    skopeo_copy(f"docker://{ref}", f"docker://{mirror.host}/{name}")
    manifest = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                               f"docker://{ref}"], capture_output=True, check=True).stdout
    import json

    lower = json.loads(manifest)["layers"][0]["digest"]
    data_path = mirror.blob_path(lower)
    blob = bytearray(data_path.read_bytes())
    blob[len(blob) // 3] ^= 0xFF  # in the data frames: the TOC still checks out
    data_path.write_bytes(bytes(blob))
    env = _conf(tmp_path, registry.host, mirror.host)
    mark = registry.mark()
    p = chunked(env, "pull", f"docker://{ref}", str(tmp_path / "tree"), "--no-cache", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "tree/usr/big.bin").read_bytes() == LOWER["usr/big.bin"]
    warnings = [line for line in p.stderr.splitlines() if line.startswith("chunked: warning:")]
    assert len(warnings) == 1 and f"mirror {mirror.host}" in warnings[0], p.stderr
    assert registry.blob_bytes(mark, lower) > 0  # the origin served what the mirror broke


def test_blocked_is_refused_in_one_line(tmp_path: Path, registry: Registry) -> None:
    env = _conf(tmp_path, registry.host, extra="blocked = true\n")
    p = chunked(env, "inspect", f"docker://{registry.host}/mirrors/any:1")
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and "blocked" in p.stderr, p.stderr


def test_pull_through_cache_moves_each_layer_about_twice(tmp_path: Path) -> None:
    """distribution's proxy mode in front of the origin, named as a mirror: four clients
    with fresh caches pull the same image through it. A miss is answered with 200 and the
    whole blob (the cache reads it from the origin twice); later clients get ranges."""
    origin = start_registry(tmp_path / "origin")
    cache = start_registry(tmp_path / "cache", proxy_remote=origin.url)
    try:
        ref = _image(tmp_path, origin, "library/fleet:1")
        name = ref.split("/", 1)[1]
        manifest = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                   f"docker://{ref}"], capture_output=True, check=True).stdout
        import json

        layers = json.loads(manifest)["layers"]
        env = _conf(tmp_path, origin.host, cache.host)
        mark = origin.mark()
        for i in range(4):
            p = chunked(env, "pull", f"docker://{ref}", str(tmp_path / f"host-{i}"),
                        "--no-cache", "-q")
            assert p.returncode == 0, p.stderr
            assert (tmp_path / f"host-{i}/usr/big.bin").read_bytes() == LOWER["usr/big.bin"]
        moved = sum(origin.blob_bytes(mark, x["digest"]) for x in layers)
        total = sum(x["size"] for x in layers)
        assert moved <= 2.1 * total, (moved, total)  # straight at the origin: 4x
        assert name
    finally:
        cache.stop()
        origin.stop()
