"""End-to-end proof of the real-peer harness: skopeo pushes a zstd:chunked image to the
test registry and podman 4.3 pulls it through the partial-pull (differ) path."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from tests.peers import (
    PARTIAL_FALLBACK,
    PARTIAL_OK,
    Podman,
    Registry,
    skopeo_copy,
    skopeo_inspect,
)

pytestmark = pytest.mark.interop

ZSTD_CHUNKED_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_POSITION = "io.containers.zstd-chunked.manifest-position"


def _files() -> dict[str, tuple[bytes, int]]:
    rnd = os.urandom(300 * 1024)
    return {
        "hello.txt": (b"hello, chunked\n", 0o644),
        "etc/config.ini": (b"[main]\nkey = value\n" * 20, 0o600),
        "bin/tool": (b"#!/bin/sh\necho tool\n", 0o755),
        "data/random.bin": (rnd, 0o644),
        "data/zeros.bin": (bytes(64 * 1024), 0o644),
        "empty": (b"", 0o644),
    }


def _make_tar(path: Path, files: dict[str, tuple[bytes, int]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 1_700_000_000
            tar.addfile(info)
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link-to-hello")
        link.type = tarfile.SYMTYPE
        link.linkname = "hello.txt"
        tar.addfile(link)


def _only_layer(manifest: dict[str, object]) -> dict[str, object]:
    layers = manifest["layers"]
    assert isinstance(layers, list) and len(layers) == 1, manifest
    layer = layers[0]
    assert isinstance(layer, dict)
    return layer


def test_podman_pulls_skopeo_zstd_chunked_partially(
    tmp_path: Path, registry: Registry, registry_repo: str, podman: Podman
) -> None:
    files = _files()
    tar_path = tmp_path / "layer.tar"
    _make_tar(tar_path, files)
    ref = f"{registry_repo}:1"

    skopeo_copy(f"tarball:{tar_path}", f"docker://{ref}", "--dest-compress-format", "zstd:chunked")

    layer = _only_layer(skopeo_inspect(f"docker://{ref}", raw=True))
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    annotations = layer.get("annotations")
    assert isinstance(annotations, dict)
    assert ZSTD_CHUNKED_CHECKSUM in annotations and ZSTD_CHUNKED_POSITION in annotations
    digest = layer["digest"]
    assert isinstance(digest, str)

    mark = registry.mark()
    result = podman.pull(ref)
    assert result.ok, result.log[-3000:]
    assert PARTIAL_OK in result.log, result.log[-3000:]
    assert result.partial_digests == [digest]
    assert result.fallback_reasons == []
    missing = result.missing_bytes
    assert len(missing) == 1 and missing[0][0] > 300 * 1024  # fresh storage: all missing

    # The layer was fetched with range requests (206), never as a whole blob (200).
    blob_gets = [r for r in registry.requests(mark) if r.blob_digest == digest]
    assert blob_gets and all(r.method == "GET" and r.status == 206 for r in blob_gets)
    layer_size = layer["size"]
    assert isinstance(layer_size, int)
    # Body bytes include multipart/byteranges framing (~100 bytes a range) and the TOC read.
    assert 0 < registry.blob_bytes(mark, digest) <= layer_size + 16 * 1024

    root = podman.image_mount(ref)
    for name, (data, mode) in files.items():
        p = root / name
        assert p.read_bytes() == data, name
        assert p.stat().st_mode & 0o7777 == mode, name
    assert os.readlink(root / "link-to-hello") == "hello.txt"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["hello.txt", "etc", "bin", "data", "empty", "link-to-hello"]
    )
    podman.image_unmount(ref)
    podman.rmi(ref)


def test_podman_falls_back_for_gzip_layers(
    tmp_path: Path, registry: Registry, registry_repo: str, podman: Podman
) -> None:
    files = {"a.txt": (b"a" * 1000, 0o644)}
    tar_path = tmp_path / "layer.tar"
    _make_tar(tar_path, files)
    ref = f"{registry_repo}:gzip"
    skopeo_copy(f"tarball:{tar_path}", f"docker://{ref}")  # default: gzip

    mark = registry.mark()
    result = podman.pull(ref)
    assert result.ok, result.log[-3000:]
    assert PARTIAL_OK not in result.log
    assert PARTIAL_FALLBACK in result.log
    assert result.fallback_reasons == ["blob type not supported for partial retrieval"]
    assert any(r.status == 200 and r.blob_digest for r in registry.requests(mark))
    assert (podman.image_mount(ref) / "a.txt").read_bytes() == b"a" * 1000
