"""Faults under a mount: never wrong bytes, EIO instead, and the mount survives."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from chunked.oci.layout import OciLayout, OciRef
from chunked.read.image import open_oci
from tests.clirun import COMMAND, chunked
from tests.layers import MERGED, make_image, make_tar
from tests.peers import skopeo_copy, skopeo_inspect, start_registry
from tests.proxy import ProxyOptions

pytestmark = pytest.mark.interop



def _mount(target: str, mnt: Path, *extra: str) -> Path:
    mnt.mkdir()
    p = chunked("mount", target, str(mnt), "--no-cache", *extra)
    assert p.returncode == 0, p.stderr
    return Path(p.stdout.split("log ")[-1].rstrip(")\n"))


def test_corrupt_chunk_is_eio_and_logged(tmp_path: Path) -> None:
    ref = make_image(tmp_path / "img")
    image = open_oci(OciRef.parse(ref))
    layer = image.layers[0].layer
    chunk = layer.lookup("usr/big.bin").chunks[0]
    blob = OciLayout(str(tmp_path / "img")).blob_path(image.layers[0].descriptor.digest)
    image.close()
    data = bytearray(Path(blob).read_bytes())
    data[(chunk.start + chunk.end) // 2] ^= 0xFF
    Path(blob).write_bytes(bytes(data))

    log = _mount(ref, tmp_path / "mnt")
    try:
        for _ in range(2):  # nothing bad was cached: the second read fails the same way
            with pytest.raises(OSError) as exc:
                (tmp_path / "mnt/usr/big.bin").read_bytes()
            assert exc.value.errno == errno.EIO
        assert (tmp_path / "mnt/etc/keep.conf").read_bytes() == MERGED["etc/keep.conf"]
    finally:
        chunked("umount", str(tmp_path / "mnt"))
    assert "usr/big.bin" in log.read_text()


def test_registry_dies_and_comes_back(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "reg")
    try:
        ref = f"{reg.host}/faults/img:1"
        skopeo_copy(make_image(tmp_path / "img"), f"docker://{ref}")
        mnt = tmp_path / "mnt"
        _mount(f"docker://{ref}", mnt, "--tls-verify=false")
        try:
            assert (mnt / "etc/keep.conf").read_bytes() == b"keep\n"
            reg.kill()
            with pytest.raises(OSError) as exc:
                (mnt / "usr/big.bin").read_bytes()
            assert exc.value.errno == errno.EIO
            assert os.path.ismount(mnt)
            reg.restart()  # same port, same storage
            assert (mnt / "usr/big.bin").read_bytes() == MERGED["usr/big.bin"]
        finally:
            chunked("umount", str(mnt))
    finally:
        reg.stop()


def test_server_ignoring_range_is_still_correct(tmp_path: Path, registry) -> None:
    """A server that answers every ranged GET with 200 and the whole blob."""
    from tests.proxy import Proxy, ProxyOptions

    ref = f"{registry.host}/faults/norange:1"
    skopeo_copy(make_image(tmp_path / "img"), f"docker://{ref}")
    proxy = Proxy(registry.url, ProxyOptions(drop_range=True))
    try:
        target = f"docker://{proxy.host}/faults/norange:1"
        p = subprocess.run([*COMMAND, "cat", target, "usr/big.bin",
                            "--tls-verify=false"], capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout == MERGED["usr/big.bin"]
        mnt = tmp_path / "mnt"
        _mount(target, mnt, "--tls-verify=false")
        try:
            for path, content in MERGED.items():
                if isinstance(content, bytes):
                    assert (mnt / path).read_bytes() == content, path
        finally:
            chunked("umount", str(mnt))
    finally:
        proxy.close()


def test_retries_and_redirects(tmp_path: Path, registry) -> None:
    """5xx and 429 answers are retried; blob GETs redirected to another host ("object
    storage") keep their ranges and are still verified."""
    from tests.proxy import Proxy, ProxyOptions

    ref = "faults/retry:1"
    skopeo_copy(make_image(tmp_path / "img"), f"docker://{registry.host}/{ref}")
    storage = Proxy(registry.url)  # serves the redirected blob GETs
    front = Proxy(registry.url, ProxyOptions(fail_every=3,
                                             redirect_blobs_to=f"http://{storage.host}"))
    try:
        for path, content in MERGED.items():
            if not isinstance(content, bytes):
                continue
            p = subprocess.run([*COMMAND, "cat",
                                f"docker://{front.host}/{ref}", path, "--tls-verify=false"],
                               capture_output=True, timeout=120)
            assert p.returncode == 0, p.stderr.decode()
            assert p.stdout == content, path
    finally:
        front.close()
        storage.close()
    # the layers came from the redirect target, every GET of one still a ranged one (the
    # config is fetched whole)
    layers = {d["digest"] for d in skopeo_inspect(f"docker://{registry.host}/{ref}",
                                                  raw=True)["layers"]}
    gets = [(path, rng) for method, path, rng in storage.seen
            if method == "GET" and path.rsplit("/", 1)[-1] in layers]
    assert gets and all(rng.startswith("bytes=") for _, rng in gets), gets


def test_ranges_survive_a_redirect(tmp_path: Path, registry) -> None:
    """A small file of a layer whose blob is mostly one big file: through the redirect, the
    registry answers ranged GETs (206) and moves a small part of the blob."""
    import random

    from tests.proxy import Proxy
    from tests.trees import push_image

    big = random.Random(3).randbytes(4 << 20)  # incompressible: its frames are >= 4 MiB
    tar = make_tar({"etc": None, "etc/small.conf": b"small\n", "big.bin": big})
    ref = push_image(tmp_path, registry, "faults/redirect:1", [("chunked", tar)])
    layer = skopeo_inspect(f"docker://{ref}", raw=True)["layers"][0]
    storage = Proxy(registry.url)
    front = Proxy(registry.url, ProxyOptions(redirect_blobs_to=f"http://{storage.host}"))
    try:
        mark = registry.mark()
        p = subprocess.run([*COMMAND, "cat", f"docker://{front.host}/faults/redirect:1",
                            "etc/small.conf", "--tls-verify=false"],
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout == b"small\n"
    finally:
        front.close()
        storage.close()
    redirected = [path for method, path, _ in front.seen
                  if method == "GET" and layer["digest"] in path]
    assert redirected and front.statuses[307] == 0  # the redirect is no answer it forwards
    ranged = [rng for method, path, rng in storage.seen
              if method == "GET" and layer["digest"] in path]
    # (a client may go on to the target it was sent to without asking the front again)
    assert ranged and all(r.startswith("bytes=") for r in ranged), ranged
    answered = [r for r in registry.requests(mark) if r.blob_digest == layer["digest"]]
    assert answered and all(r.status == 206 for r in answered), answered
    moved = registry.blob_bytes(mark, layer["digest"])
    assert 0 < moved < layer["size"] // 50, (moved, layer["size"])
