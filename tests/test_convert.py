"""chunked convert: gzip images to zstd:chunked, and indexes with both, on the real registry,
skopeo and podman 4.3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from chunked.builder import build_blob
from chunked.converter import convert
from tests.clirun import chunked
from tests.layers import LOWER, UPPER, make_tar
from tests.peers import Podman, Registry, skopeo_inspect, start_registry
from tests.proxy import Proxy, ProxyOptions
from tests.trees import push_image, push_index

pytestmark = pytest.mark.interop

ZSTD = "io.github.containers.compression.zstd"
CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ARCH_FILES = {"amd64": {"arch": None, "arch/name": b"amd64\n"},
              "arm64": {"arch": None, "arch/name": b"arm64\n"}}



def _raw(ref: str) -> dict:
    return skopeo_inspect(f"docker://{ref}", raw=True)


def _two_platforms(tmp: Path, registry: Registry, name: str) -> str:
    """A gzip index for amd64 and arm64: a shared base (LOWER, UPPER) and a layer each."""
    base = [("gzip", make_tar(LOWER)), ("gzip", make_tar(UPPER))]
    return push_index(tmp, registry, name, {
        arch: [*base, ("gzip", make_tar(files))] for arch, files in ARCH_FILES.items()})


def _tag_digest(registry: Registry, repo: str, tag: str) -> str:
    import urllib.request

    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{tag}", headers={
        "Accept": "application/vnd.oci.image.index.v1+json, "
                  "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req) as resp:
        return "sha256:" + hashlib.sha256(resp.read()).hexdigest()


def _uploads(registry: Registry, mark: int) -> list:
    return [r for r in registry.requests(mark)
            if r.method in ("POST", "PATCH", "PUT") and "/blobs/" in r.path]


def test_add_compression_serves_old_and_new_clients(tmp_path: Path, registry: Registry,
                                                    podman: Podman) -> None:
    src = _two_platforms(tmp_path, registry, "convert/multi:1")
    dst = registry.ref("convert/multi-both:1")
    cache = tmp_path / "cache"
    p = chunked("convert", f"docker://{src}", f"docker://{dst}", "--add-compression",
                "--tls-verify=false", "--cache", str(cache), "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    # 2 shared layers and 1 per platform: each converted once
    assert (summary["layersConverted"], summary["layersReused"]) == (4, 0)

    source_index = _raw(src)
    index = _raw(dst)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert summary["digest"] == _tag_digest(registry, "convert/multi-both", "1")
    entries = index["manifests"]
    assert len(entries) == 4
    for k, original in enumerate(source_index["manifests"]):
        gz, zs = entries[2 * k], entries[2 * k + 1]
        # the original first, unchanged; then its twin, flagged
        assert {x: gz[x] for x in ("mediaType", "digest", "size")} == \
            {x: original[x] for x in ("mediaType", "digest", "size")}
        assert gz["platform"] == zs["platform"] == original["platform"]
        assert "annotations" not in gz
        assert zs["annotations"] == {ZSTD: "true"}
        twin = _raw(f"{dst.rsplit(':', 1)[0]}@{zs['digest']}")
        orig = _raw(f"{src.rsplit(':', 1)[0]}@{original['digest']}")
        assert twin["config"]["digest"] == orig["config"]["digest"]  # config unchanged
        for layer in twin["layers"]:
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
            assert CHECKSUM in layer["annotations"]
            assert "io.containers.zstd-chunked.manifest-checksum" in layer["annotations"]

    # podman 4.3 takes the first match: gzip, fetched whole
    mark = registry.mark()
    pulled = podman.pull(dst)
    assert pulled.ok, pulled.log[-2000:]
    amd64 = _raw(f"{dst.rsplit(':', 1)[0]}@{entries[0]['digest']}")
    fetched = {r.blob_digest for r in registry.requests(mark) if r.method == "GET"}
    assert {x["digest"] for x in amd64["layers"]} <= fetched
    zstd_amd64 = _raw(f"{dst.rsplit(':', 1)[0]}@{entries[1]['digest']}")
    assert not {x["digest"] for x in zstd_amd64["layers"]} & fetched

    # chunked picks the zstd twin, and reads lazily
    mark = registry.mark()
    cat = chunked("cat", f"docker://{dst}", "arch/name", "--tls-verify=false")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == "amd64\n"
    zstd_blobs = {x["digest"] for x in zstd_amd64["layers"]}
    got = [r for r in registry.requests(mark) if r.blob_digest]
    assert got and all(r.blob_digest in zstd_blobs | {zstd_amd64["config"]["digest"]}
                       for r in got)
    assert all(r.status == 206 for r in got if r.blob_digest in zstd_blobs)
    pull = chunked("pull", f"docker://{dst}", str(tmp_path / "tree"), "--tls-verify=false",
                   "--no-cache", "-q")
    assert pull.returncode == 0, pull.stderr
    assert (tmp_path / "tree/etc/replace.conf").read_bytes() == UPPER["etc/replace.conf"]
    assert not (tmp_path / "tree/etc/old.conf").exists()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = chunked("mount", f"docker://{dst}", str(mnt), "--tls-verify=false", "--no-cache")
    assert m.returncode == 0, m.stderr
    try:
        assert (mnt / "usr/big.bin").read_bytes() == LOWER["usr/big.bin"]
    finally:
        chunked("umount", str(mnt))
    for e in entries:  # every instance verifies, each layer against its DiffID
        v = chunked("verify", f"docker://{dst.rsplit(':', 1)[0]}@{e['digest']}",
                    "--tls-verify=false", "-q")
        assert v.returncode == 0, (e, v.stderr)

    # again: nothing uploaded, the same index
    mark = registry.mark()
    again = chunked("convert", f"docker://{src}", f"docker://{dst}", "--add-compression",
                    "--tls-verify=false", "--cache", str(cache), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["digest"] == summary["digest"]
    assert json.loads(again.stdout)["layersReused"] == 4
    assert _uploads(registry, mark) == []


def test_without_the_flag_dst_is_the_converted_image(tmp_path: Path,
                                                      registry: Registry) -> None:
    src = _two_platforms(tmp_path, registry, "convert/plain:1")
    one = registry.ref("convert/plain-amd64:1")
    p = chunked("convert", f"docker://{src}", f"docker://{one}", "--platform", "linux/amd64",
                "--tls-verify=false", "--no-cache", "--json")
    assert p.returncode == 0, p.stderr
    manifest = _raw(one)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert all(CHECKSUM in x["annotations"] for x in manifest["layers"])
    both = registry.ref("convert/plain-all:1")
    p = chunked("convert", f"docker://{src}", f"docker://{both}", "--tls-verify=false",
                "--no-cache")
    assert p.returncode == 0, p.stderr
    index = _raw(both)
    assert [e["platform"]["architecture"] for e in index["manifests"]] == ["amd64", "arm64"]
    assert all("annotations" not in e for e in index["manifests"])


def test_docker_schema2_source_converts(tmp_path: Path, registry: Registry) -> None:
    src = push_image(tmp_path, registry, "convert/v2s2:1",
                     [("gzip", make_tar(LOWER)), ("gzip", make_tar(UPPER))], "--format", "v2s2")
    assert _raw(src)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    dst = registry.ref("convert/v2s2-zstd:1")
    p = chunked("convert", f"docker://{src}", f"docker://{dst}", "--tls-verify=false",
                "--no-cache")
    assert p.returncode == 0, p.stderr
    out = _raw(dst)
    assert out["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert out["config"]["digest"] == _raw(src)["config"]["digest"]
    v = chunked("verify", f"docker://{dst}", "--tls-verify=false", "-q")
    assert v.returncode == 0, v.stderr


def test_oci_layouts_and_reproducible_whatever_the_threads(tmp_path: Path) -> None:
    """oci: to oci:, twice with different parallelism: the same bytes everywhere."""
    from chunked.oci.layout import OciLayout, write_image
    from tests.layers import _gzip_layer

    layout = OciLayout(str(tmp_path / "src"))
    layout.init()
    write_image(layout, "t", [_gzip_layer(layout, make_tar(f)) for f in (LOWER, UPPER)])
    a = convert(f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'a'}:t", jobs=1)
    b = convert(f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'b'}:t", jobs=2)
    assert a.digest == b.digest
    assert sorted(os.listdir(tmp_path / "a/blobs/sha256")) == \
        sorted(os.listdir(tmp_path / "b/blobs/sha256"))
    tar = make_tar(LOWER)
    outs = set()
    for threads in (1, 2, 4):
        out = io.BytesIO()
        build_blob(io.BytesIO(tar), out, threads=threads)
        outs.add(out.getvalue())
    assert len(outs) == 1
    v = chunked("verify", f"oci:{tmp_path / 'a'}:t", "-q")
    assert v.returncode == 0, v.stderr


def test_a_lying_source_layer_is_refused_and_nothing_tagged(tmp_path: Path) -> None:
    from chunked.oci.layout import OciLayout, write_image
    from tests.layers import _gzip_layer

    layout = OciLayout(str(tmp_path / "src"))
    layout.init()
    desc, diff_id = _gzip_layer(layout, make_tar(LOWER))
    lie = "sha256:" + "1" * 64
    write_image(layout, "diffid", [(desc, lie)])
    p = chunked("convert", f"oci:{tmp_path / 'src'}:diffid", f"oci:{tmp_path / 'out'}:t",
                "--no-cache")
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and "diff_id" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out/index.json").exists()
    # a blob whose bytes are not its digest
    write_image(layout, "blob", [(desc, diff_id)])
    blob = Path(layout.blob_path(str(desc["digest"])))
    data = bytearray(blob.read_bytes())
    data[-9] ^= 1  # the gzip trailer's CRC: the plain tar is intact, the blob is not
    blob.write_bytes(bytes(data))
    p = chunked("convert", f"oci:{tmp_path / 'src'}:blob", f"oci:{tmp_path / 'out'}:t",
                "--no-cache")
    assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "out/index.json").exists()


def test_registry_without_chunked_uploads_gets_one_put(tmp_path: Path,
                                                       registry: Registry) -> None:
    src = push_image(tmp_path, registry, "convert/nopatch:1", [("gzip", make_tar(LOWER))])
    proxy = Proxy(registry.url, ProxyOptions(refuse_patch=True))
    try:
        dst = f"{proxy.host}/convert/nopatch-zstd:1"
        p = chunked("convert", f"docker://{src}", f"docker://{dst}", "--tls-verify=false",
                    "--no-cache")
        assert p.returncode == 0, p.stderr
        v = chunked("verify", f"docker://{dst}", "--tls-verify=false", "-q")
        assert v.returncode == 0, v.stderr
    finally:
        proxy.close()


def test_a_registry_refusing_indexes_is_one_clear_line(tmp_path: Path,
                                                       registry: Registry) -> None:
    src = push_image(tmp_path, registry, "convert/noindex:1", [("gzip", make_tar(UPPER))])
    proxy = Proxy(registry.url, ProxyOptions(refuse_index=True))
    try:
        dst = f"{proxy.host}/convert/noindex-both:1"
        p = chunked("convert", f"docker://{src}", f"docker://{dst}", "--add-compression",
                    "--tls-verify=false", "--no-cache")
        assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
        assert "HTTP 415" in p.stderr and "without --add-compression" in p.stderr
        assert chunked("inspect", f"docker://{dst}", "--tls-verify=false").returncode != 0
    finally:
        proxy.close()


def _big_tar(n: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            ti = tarfile.TarInfo(f"f{i}.bin")
            ti.size = size
            tf.addfile(ti, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def test_registry_dies_mid_conversion_and_a_second_run_finishes(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "reg")
    try:
        # one small layer, done before the registry dies; three that are not
        layers = [("gzip", _big_tar(1, 64 << 10))] + \
            [("gzip", _big_tar(4, 2 << 20)) for _ in range(3)]
        src = push_image(tmp_path, reg, "convert/dies:1", layers)
        dst = reg.ref("convert/dies-zstd:1")
        cache = tmp_path / "cache"
        # slow enough to be killed in the middle: 8 MiB per second through the proxy
        proxy = Proxy(reg.url, ProxyOptions(bandwidth=8 << 20))
        try:
            slow_src = f"{proxy.host}/convert/dies:1"
            def kill_once_one_is_stored() -> None:
                # the small layer's record is written once its blob is stored
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not any(
                        (cache / "convert").glob("*.json")):
                    time.sleep(0.01)
                reg.kill()

            killer = threading.Thread(target=kill_once_one_is_stored)
            killer.start()
            p = chunked("convert", f"docker://{slow_src}", f"docker://{dst}",
                        "--tls-verify=false", "--cache", str(cache), "--json")
            killer.join()
        finally:
            proxy.close()
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1, p.stderr
        reg.restart()
        assert chunked("inspect", f"docker://{dst}", "--tls-verify=false").returncode != 0
        mark = reg.mark()
        p = chunked("convert", f"docker://{src}", f"docker://{dst}", "--tls-verify=false",
                    "--cache", str(cache), "--json")
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout)
        # what was stored before the crash is not converted or sent again
        assert (summary["layersReused"], summary["layersConverted"]) == (1, 3)
        sessions = [r for r in _uploads(reg, mark) if r.method == "POST" and "mount=" not in r.path]
        assert len(sessions) == 3  # the config is linked from the source (a mount)
        v = chunked("verify", f"docker://{dst}", "--tls-verify=false", "-q")
        assert v.returncode == 0, v.stderr
    finally:
        reg.stop()
