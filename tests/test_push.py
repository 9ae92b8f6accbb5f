"""Pushing an OCI layout to the test registry, checked with skopeo and our own lazy reader."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from chunked.errors import FormatError
from chunked.oci.layout import REF_NAME, OciLayout, OciRef
from chunked.oci.push import push_image
from chunked.oci.reference import DockerRef
from chunked.oci.registry import RegistryClient
from tests.clirun import COMMAND
from tests.layers import UPPER, make_image, make_tar
from tests.peers import Registry, skopeo_inspect

pytestmark = pytest.mark.interop


def _local_manifest(ref: OciRef) -> tuple[bytes, str]:
    layout = OciLayout(ref.path)
    for entry in layout.index()["manifests"]:
        if entry["annotations"][REF_NAME] == ref.tag:
            return Path(layout.blob_path(entry["digest"])).read_bytes(), entry["digest"]
    raise AssertionError(f"no {ref.tag} in {ref.path}")


def _blob_writes(registry: Registry, since: int) -> list[str]:
    """Requests since ``since`` that carried blob data (upload PATCH/PUT)."""
    return [f"{r.method} {r.path}" for r in registry.requests(since)
            if r.method in ("PATCH", "PUT") and "/blobs/uploads/" in r.path]


def test_push_then_repush_then_mount(tmp_path: Path, registry: Registry) -> None:
    ref = OciRef.parse(make_image(tmp_path / "img"))
    raw, digest = _local_manifest(ref)
    nblobs = 1 + len(json.loads(raw)["layers"])
    dest = DockerRef.parse(f"docker://{registry.host}/push/a:1")
    pieces: list[int] = []
    with RegistryClient(registry.host, tls_verify=False) as client:
        summary = push_image(ref, dest, client, pieces.append)
        assert summary["digest"] == digest
        assert summary["blobs_uploaded"] == nblobs and summary["blobs_skipped"] == 0
        assert summary["bytes_uploaded"] == sum(pieces) > 0

        pushed = skopeo_inspect(f"docker://{registry.host}/push/a:1", raw=True)
        assert pushed == json.loads(raw)
        assert skopeo_inspect(f"docker://{registry.host}/push/a:1")["Digest"] == digest
        got, _, got_digest = client.get_manifest("push/a", "1")
        assert got == raw and got_digest == "sha256:" + hashlib.sha256(raw).hexdigest()

        mark = registry.mark()
        again = push_image(ref, dest, client)
        assert again == {"digest": digest, "blobs_uploaded": 0, "blobs_skipped": nblobs,
                         "blobs_mounted": 0, "bytes_uploaded": 0}
        assert _blob_writes(registry, mark) == []

        mark = registry.mark()
        other = DockerRef.parse(f"docker://{registry.host}/push/b:x")
        mounted = push_image(ref, other, client, mount_from="push/a")
        assert mounted["blobs_mounted"] == nblobs and mounted["bytes_uploaded"] == 0
        assert mounted["blobs_uploaded"] == 0 and mounted["digest"] == digest
        assert _blob_writes(registry, mark) == []
        assert [r.status for r in registry.requests(mark) if "mount=" in r.path] == [201] * nblobs
        assert client.get_manifest("push/b", "x")[0] == raw

    proc = subprocess.run(
        [*COMMAND, "cat", f"docker://{registry.host}/push/a:1",
         "etc/replace.conf", "--tls-verify=false"],
        capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"version 2\n"


def test_push_by_digest_and_failed_mount(tmp_path: Path, registry: Registry) -> None:
    ref = OciRef.parse(make_image(tmp_path / "img", tag="d"))
    raw, digest = _local_manifest(ref)
    dest = DockerRef.parse(f"docker://{registry.host}/push/bydigest@{digest}")
    with RegistryClient(registry.host, tls_verify=False) as client:
        # Nothing to mount from: the registry opens an upload instead, which we drop.
        summary = push_image(ref, dest, client, mount_from="push/nothing-here")
        assert summary["digest"] == digest and summary["blobs_mounted"] == 0
        assert summary["blobs_uploaded"] == 1 + len(json.loads(raw)["layers"])
        assert client.get_manifest("push/bydigest", digest)[0] == raw


def test_push_refuses_blob_of_wrong_size(tmp_path: Path, registry: Registry) -> None:
    ref = OciRef.parse(make_image(tmp_path / "img"))
    raw, _ = _local_manifest(ref)
    layer = json.loads(raw)["layers"][1]["digest"]
    with open(OciLayout(ref.path).blob_path(layer), "ab") as f:
        f.write(b"x")
    dest = DockerRef.parse(f"docker://{registry.host}/push/bad:1")
    with RegistryClient(registry.host, tls_verify=False) as client, \
            pytest.raises(FormatError, match="descriptor says"):
        push_image(ref, dest, client)


def test_push_scopes() -> None:
    """Against a fake token server (the test registry has no auth): the scopes a mount and
    an upload ask for."""
    blob = bytes(range(256)) * 5000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.host == "auth.test":
            return httpx.Response(200, json={"token": "T"})
        if req.headers.get("authorization") != "Bearer T":
            return httpx.Response(401, headers={"www-authenticate": (
                'Bearer realm="https://auth.test/token",service="reg",'
                'scope="repository:r/x:pull"')})
        if req.method == "POST" and "mount=" in str(req.url):
            return httpx.Response(202, headers={"location": "/v2/r/x/blobs/uploads/m1"})
        if req.method == "POST":
            return httpx.Response(202, headers={"location": "/v2/r/x/blobs/uploads/u1"})
        if req.method == "DELETE":
            return httpx.Response(204)
        if req.method == "PUT":
            req.read()
            return httpx.Response(201, headers={"docker-content-digest": digest})
        raise AssertionError(req)

    with RegistryClient("reg.test", tls_verify=True) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(handler))
        assert not client.mount_blob("r/x", digest, "r/y")
        client.upload_blob("r/x", digest, len(blob), lambda: io.BytesIO(blob))

    tokens = [r for r in seen if r.url.host == "auth.test"]
    assert tokens[0].url.params.get_list("scope") == [
        "repository:r/x:pull,push", "repository:r/y:pull", "repository:r/x:pull"]
    assert tokens[1].url.params.get_list("scope") == [
        "repository:r/x:pull,push", "repository:r/x:pull"]


def _session(path: str) -> str:
    """The upload session an upload URL names (its last path component)."""
    return path.split("?", 1)[0].rsplit("/", 1)[1]


def test_upload_wire_format_on_the_registry(registry: Registry) -> None:
    """On the real registry's access log: a mount that cannot happen drops the session the
    registry opened instead (DELETE answered 204), and an upload is one PUT of the whole
    blob to the session's relative Location, its query kept, the digest added.  The proxy
    in between forwards a body by its Content-Length only, so a chunked PUT would store
    nothing and fail."""
    from tests.proxy import Proxy, ProxyOptions

    blob = bytes(range(256)) * 5000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    quoted = digest.replace(":", "%3A")
    proxy = Proxy(registry.url, ProxyOptions(relative_location=True))
    try:
        with RegistryClient(proxy.host, tls_verify=False) as client:
            mark = registry.mark()
            assert not client.mount_blob("push/wire", digest, "push/nothing-here")
            post, delete = registry.requests(mark)
            assert (post.method, post.status) == ("POST", 202)
            assert post.path == f"/v2/push/wire/blobs/uploads/?mount={digest}" \
                "&from=push/nothing-here"
            assert (delete.method, delete.status) == ("DELETE", 204), delete
            assert delete.path.startswith("/v2/push/wire/blobs/uploads/")
            assert "_state=" in delete.path

            mark = registry.mark()
            client.upload_blob("push/wire", digest, len(blob), lambda: io.BytesIO(blob))
            post, put = registry.requests(mark)
    finally:
        proxy.close()
    assert (post.method, post.path, post.status) == \
        ("POST", "/v2/push/wire/blobs/uploads/", 202)
    assert (put.method, put.status) == ("PUT", 201), put
    assert put.path.startswith("/v2/push/wire/blobs/uploads/")
    query = put.path.split("?", 1)[1].split("&")
    assert [q.split("=", 1)[0] for q in query] == ["_state", "digest"]
    assert query[1] == f"digest={quoted}"
    # a session of its own, not the dropped one
    assert _session(put.path) != _session(delete.path)
    assert registry.blob_path(digest).read_bytes() == blob


def test_cli_push_and_build_to_registry(tmp_path: Path, registry: Registry) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMMAND, *args],
                              capture_output=True, text=True, timeout=120)

    ref = make_image(tmp_path / "img")
    p = run("push", ref, f"docker://{registry.host}/cli/push:1", "--tls-verify=false",
            "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["blobs_uploaded"] == 3
    (tmp_path / "u.tar").write_bytes(make_tar(UPPER))
    p = run("build", str(tmp_path / "u.tar"), "--image",
            f"docker://{registry.host}/cli/built:1", "--tls-verify=false", "-q")
    assert p.returncode == 0, p.stderr
    diff_id = "sha256:" + hashlib.sha256((tmp_path / "u.tar").read_bytes()).hexdigest()
    assert json.loads(p.stdout)["diffID"] == diff_id
    p = run("cat", f"docker://{registry.host}/cli/built:1", "etc/replace.conf",
            "--tls-verify=false")
    assert p.stdout == "version 2\n"
