"""The registry client against a real docker-registry 2.8 holding a skopeo-pushed image."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any

import httpx
import pytest

from chunked.errors import FormatError, InputError, NotFoundError
from chunked.oci.layout import OciRef
from chunked.oci.manifest import OCI_INDEX, OCI_MANIFEST, parse_manifest, to_builtins
from chunked.oci.reference import DockerRef, parse_reference
from chunked.oci.registry import (
    RegistryBlobSource,
    RegistryClient,
    RegistryError,
    _parse_multipart,
)
from tests.peers import Registry, skopeo_copy

pytestmark = pytest.mark.interop

HEX = "a" * 64


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "host", "repo", "tag", "digest"),
    [
        ("docker://alpine", "registry-1.docker.io", "library/alpine", "latest", None),
        ("docker://alpine:3.19", "registry-1.docker.io", "library/alpine", "3.19", None),
        ("docker://docker.io/x/y", "registry-1.docker.io", "x/y", "latest", None),
        ("docker://docker.io/alpine", "registry-1.docker.io", "library/alpine", "latest", None),
        ("docker://x/y:t", "registry-1.docker.io", "x/y", "t", None),
        ("docker://localhost/a", "localhost", "a", "latest", None),
        ("docker://127.0.0.1:5000/x/y:1", "127.0.0.1:5000", "x/y", "1", None),
        ("docker://quay.io/a/b/c", "quay.io", "a/b/c", "latest", None),
        (f"docker://reg:5000/a@sha256:{HEX}", "reg:5000", "a", None, f"sha256:{HEX}"),
    ],
)
def test_docker_reference(text: str, host: str, repo: str, tag: str | None,
                          digest: str | None) -> None:
    ref = parse_reference(text)
    assert ref == DockerRef(host, repo, tag, digest)
    assert isinstance(ref, DockerRef) and ref.reference == (digest or tag)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("docker://", "no image name"),
        ("docker://Alpine", "lowercase"),
        ("docker://x/y@sha256:abc", "not a sha256 digest"),
        (f"docker://x/y@sha256:{HEX}\n", "not a sha256 digest"),
        (f"docker://x/y@sha512:{HEX}{HEX}", "only sha256"),
        (f"docker://x/y:1@sha256:{HEX}", "not both"),
        ("docker://x/y:bad!tag", "invalid tag"),
        ("docker://x//y", "invalid repository name"),
        ("docker:alpine", "two slashes"),
        ("alpine", "unsupported reference"),
    ],
)
def test_docker_reference_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_reference(text)


def test_oci_reference_reuses_oci_ref() -> None:
    assert parse_reference("oci:/tmp/layout:v1") == OciRef("/tmp/layout", "v1")
    assert parse_reference("oci:dir") == OciRef("dir", "latest")


# --------------------------------------------------------------------------- token flow


def test_bearer_token_flow_and_refresh() -> None:
    # A unit test of the auth handshake only: no real token server is available here.
    issued: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/token":
            assert req.url.params["scope"] == "repository:x/y:pull"
            assert req.url.params["service"] == "reg"
            assert req.headers["authorization"] == "Basic dTpw"  # u:p
            issued.append(f"t{len(issued)}")
            return httpx.Response(200, json={"token": issued[-1]})
        if req.headers.get("authorization") != f"Bearer {issued[-1] if issued else ''}":
            challenge = ('Bearer realm="https://auth.example/token",service="reg",'
                         'scope="repository:x/y:pull"')
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, content=b"blob")

    client = RegistryClient("reg.example", creds=("u", "p"))
    client._http.close()
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.get_blob("x/y", _sha(b"blob")) == b"blob"
    assert issued == ["t0"]
    assert client.get_blob("x/y", _sha(b"blob")) == b"blob"  # token reused
    assert issued == ["t0"]
    issued.append("expired-by-server")  # the server now wants a token we do not hold
    assert client.get_blob("x/y", _sha(b"blob")) == b"blob"
    assert issued == ["t0", "expired-by-server", "t2"]


def test_multipart_parts_cut_by_length() -> None:
    # Blob bytes may contain the boundary itself; parts are cut by their Content-Range.
    body = (b"--abc\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-4/99"
            b"\r\n\r\n--abc\r\n--abc\r\nContent-Range: bytes 10-11/99\r\n\r\nzz\r\n--abc--\r\n")
    assert _parse_multipart(body, b"abc", "t") == [(0, b"--abc"), (10, b"zz")]
    with pytest.raises(FormatError, match="short data"):
        _parse_multipart(body[:-12], b"abc", "t")


# --------------------------------------------------------------------------- real registry


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A zstd:chunked image pushed by skopeo to x/y:1."""
    tar_path = tmp_path_factory.mktemp("img") / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, data in enumerate([os.urandom(200 * 1024), b"text\n" * 5000, os.urandom(90_000)]):
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    skopeo_copy(f"tarball:{tar_path}", f"docker://{registry.host}/x/y:1",
                "--dest-compress-format", "zstd:chunked")
    with RegistryClient(registry.host, tls_verify=False) as client:
        manifest, digest = client.resolve("x/y", "1")
        layer = to_builtins(manifest.layers[0])
        return {"manifest": manifest, "digest": digest, "layer": layer,
                "blob": client.get_blob("x/y", layer["digest"])}


@pytest.fixture
def client(registry: Registry) -> Any:
    with RegistryClient(registry.host, tls_verify=False) as c:
        yield c


def test_resolve_and_config(client: RegistryClient, pushed: dict[str, Any]) -> None:
    raw, media_type, digest = client.get_manifest("x/y", "1")
    assert digest == _sha(raw) == pushed["digest"]
    assert media_type == OCI_MANIFEST
    manifest, digest2 = client.resolve("x/y", digest)
    assert manifest == parse_manifest(raw, "test") and digest2 == digest
    assert [d.digest for d in manifest.layers] == [d["digest"] for d in json.loads(raw)["layers"]]
    config = client.get_blob("x/y", manifest.config.digest)
    assert _sha(config) == manifest.config.digest
    assert json.loads(config)["rootfs"]["type"] == "layers"


def test_ranges_in_one_request(registry: Registry, client: RegistryClient,
                               pushed: dict[str, Any]) -> None:
    layer, blob = pushed["layer"], pushed["blob"]
    assert len(blob) == layer["size"] > 200_000
    src = client.blob_source("x/y", layer["digest"], layer["size"])
    # Unsorted, overlapping, adjacent-within-gap, empty, and the very last byte.
    ranges = [(150_000, 5000), (10, 100), (50, 200), (400, 10), (0, 0), (80_000, 3),
              (len(blob) - 1, 1)]
    mark = registry.mark()
    got = src.read_ranges(ranges)
    assert got == [blob[o : o + n] for o, n in ranges]
    gets = [r for r in registry.requests(mark) if r.blob_digest == layer["digest"]]
    assert [(r.method, r.status) for r in gets] == [("GET", 206)]
    assert registry.blob_bytes(mark, layer["digest"]) < 10_000  # not the whole blob

    mark = registry.mark()
    assert src.read_ranges([(1000, 50)]) == [blob[1000:1050]]  # single-part 206
    assert len(registry.requests(mark)) == 1


def test_ranges_split_beyond_limit(registry: Registry, client: RegistryClient,
                                   pushed: dict[str, Any]) -> None:
    layer, blob = pushed["layer"], pushed["blob"]
    src = client.blob_source("x/y", layer["digest"], layer["size"])
    assert isinstance(src, RegistryBlobSource)
    src.max_ranges = 4
    ranges = [(i * 10_000, 7) for i in range(10)]
    mark = registry.mark()
    assert src.read_ranges(ranges) == [blob[o : o + n] for o, n in ranges]
    assert len(registry.requests(mark)) == 3


def test_not_found(client: RegistryClient, pushed: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError, match="x/y:nope"):
        client.get_manifest("x/y", "nope")
    with pytest.raises(NotFoundError, match=f"sha256:{HEX}"):
        client.get_blob("x/y", f"sha256:{HEX}")
    with pytest.raises(NotFoundError):
        client.resolve("no/such", "1")


def _upload(http: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    start = http.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    # The upload URL carries its own query (_state): add the digest to it, not instead of it.
    url = httpx.URL(start.headers["location"]).copy_merge_params({"digest": _sha(data)})
    done = http.put(url, content=data)
    assert done.status_code == 201, done.text
    return {"digest": _sha(data), "size": len(data)}


def _put_manifest(http: httpx.Client, repo: str, ref: str, doc: dict[str, Any],
                  media_type: str) -> dict[str, Any]:
    raw = json.dumps(doc).encode()
    resp = http.put(f"/v2/{repo}/manifests/{ref}", content=raw,
                    headers={"Content-Type": media_type})
    assert resp.status_code == 201, resp.text
    return {"mediaType": media_type, "digest": _sha(raw), "size": len(raw)}


def test_index_platform_choice(registry: Registry, client: RegistryClient) -> None:
    repo = "x/multi"
    descs = {}
    with httpx.Client(base_url=registry.url) as http:
        layer = _upload(http, repo, b"not really a layer")
        for name, arch in [("amd-gzip", "amd64"), ("amd-zstd", "amd64"), ("arm", "arm64")]:
            cfg = _upload(http, repo, json.dumps(
                {"architecture": arch, "os": "linux", "comment": name,
                 "rootfs": {"type": "layers", "diff_ids": []}}).encode())
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   **cfg},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                    **layer}]}
            descs[name] = _put_manifest(http, repo, name, manifest, OCI_MANIFEST)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {**descs["amd-gzip"], "platform": {"os": "linux", "architecture": "amd64"}},
            {**descs["arm"], "platform": {"os": "linux", "architecture": "arm64"}},
            {**descs["amd-zstd"], "platform": {"os": "linux", "architecture": "amd64"},
             "annotations": {"io.github.containers.compression.zstd": "true"}},
        ]}
        _put_manifest(http, repo, "multi", index, OCI_INDEX)

    _, digest = client.resolve(repo, "multi", "linux/arm64")
    assert digest == descs["arm"]["digest"]
    _, digest = client.resolve(repo, "multi", "linux/arm64/v8")
    assert digest == descs["arm"]["digest"]
    _, digest = client.resolve(repo, "multi", "linux/amd64")
    assert digest == descs["amd-zstd"]["digest"]  # the zstd variant wins
    with pytest.raises(NotFoundError, match=r"linux/s390x.*available: linux/amd64, linux/arm64"):
        client.resolve(repo, "multi", "linux/s390x")
    with pytest.raises(InputError, match="OS/ARCH"):
        client.resolve(repo, "multi", "amd64")


def test_connection_failure_names_host() -> None:
    with RegistryClient("127.0.0.1:9", tls_verify=False, tries=2, backoff=0.01) as c:
        with pytest.raises(RegistryError, match="registry 127.0.0.1:9: cannot connect"):
            c.get_manifest("x/y", "1")
