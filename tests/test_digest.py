"""The Digest type: what it accepts, what it refuses, and in one line."""

import hashlib

import msgspec
import pytest

from chunked.digest import Digest, dec_hook, enc_hook, is_sha256
from chunked.errors import FormatError, InputError

HEX = hashlib.sha256(b"x").hexdigest()
GOOD = "sha256:" + HEX


def test_valid() -> None:
    d = Digest.parse(GOOD, "layer digest")
    assert d == GOOD and isinstance(d, str)
    assert d.hex == HEX
    assert d.raw == hashlib.sha256(b"x").digest()
    assert d.algorithm == "sha256"
    assert {GOOD: 1}[d] == 1 and hash(d) == hash(GOOD)


def test_constructors_agree() -> None:
    h = hashlib.sha256(b"x")
    assert Digest.of(b"x") == Digest.from_hex(HEX) == Digest.from_hash(h) == GOOD
    assert type(Digest.of(b"x")) is Digest
    with pytest.raises(ValueError):
        Digest.from_hash(hashlib.sha512(b"x"))


@pytest.mark.parametrize("bad", [
    "sha256:" + HEX.upper(),          # uppercase hex
    "SHA256:" + HEX,                  # uppercase algorithm
    GOOD[:-1],                        # short
    GOOD + "0",                       # long
    "sha512:" + hashlib.sha512(b"x").hexdigest(),  # another algorithm
    "sha256:" + "g" * 64,             # not hex
    " " + GOOD, GOOD + " ", GOOD + "\n", "sha256: " + HEX[1:],  # whitespace
    "sha256:" + "\u0661" * 64,        # digits, but not ASCII
    "", "sha256:", HEX,
    None, 7, b"sha256:" + HEX.encode(), [GOOD],  # not text
])
def test_refused_in_one_line(bad: object) -> None:
    with pytest.raises(FormatError) as exc:
        Digest.parse(bad, "layer descriptor digest")
    msg = str(exc.value)
    assert msg.startswith("layer descriptor digest is ") and "\n" not in msg
    assert "only sha256" in msg
    assert not is_sha256(bad)


def test_user_input_is_an_input_error() -> None:
    with pytest.raises(InputError):
        Digest.parse("sha256:abc", "reference digest", InputError)
    with pytest.raises(InputError):
        Digest.from_hex("ABC", "x", InputError)


def test_long_value_is_cut_short() -> None:
    with pytest.raises(FormatError) as exc:
        Digest.parse("sha256:" + "a" * 10000)
    assert len(str(exc.value)) < 200


def test_msgspec_hooks() -> None:
    class S(msgspec.Struct):
        d: Digest

    s = msgspec.json.decode(f'{{"d":"{GOOD}"}}'.encode(), type=S, dec_hook=dec_hook)
    assert type(s.d) is Digest
    with pytest.raises(msgspec.ValidationError, match=r"\$\.d"):
        msgspec.json.decode(f'{{"d":"{GOOD}\\n"}}'.encode(), type=S, dec_hook=dec_hook)
    assert msgspec.json.encode(s, enc_hook=enc_hook) == f'{{"d":"{GOOD}"}}'.encode()


# --- each boundary refuses a bad digest, in one line ---------------------------------------

import io  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

from chunked import format as fmt  # noqa: E402
from chunked.builder import build_blob  # noqa: E402
from chunked.cache.chunks import ContentCache  # noqa: E402
from chunked.oci.layout import OciLayout, write_image  # noqa: E402
from chunked.oci.manifest import parse_descriptor, parse_manifest  # noqa: E402
from chunked.oci.reference import DockerRef  # noqa: E402
from chunked.read.layer import ChunkedLayer  # noqa: E402
from chunked.read.source import FileSource  # noqa: E402
from tests.clirun import chunked  # noqa: E402


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("a", b"hello\n"), ("b", b"x" * 100_000)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _blob(tmp_path: Path, name: str = "layer.zst") -> tuple[Path, dict]:
    path = tmp_path / name
    with open(path, "wb") as out:
        result = build_blob(io.BytesIO(_tar()), out, threads=1)
    return path, {**result.descriptor(), "diffID": result.diff_id}


def _one_line_failure(*args: object) -> str:
    r = chunked(*args)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_descriptor_digest_with_a_newline_is_refused_where_read(tmp_path: Path) -> None:
    # a regex's "$" matches before a final newline: this one passed as a digest
    with pytest.raises(FormatError, match=r"\$\.digest"):
        parse_descriptor(json.dumps({"digest": GOOD + "\n", "size": 1}).encode(), "d")
    blob, desc = _blob(tmp_path)
    desc["digest"] += "\n"
    (tmp_path / "d.json").write_text(json.dumps(desc))
    line = _one_line_failure("verify", "--descriptor", tmp_path / "d.json", blob)
    assert "digest" in line


def test_manifest_digests_are_typed() -> None:
    doc = {"config": {"digest": GOOD, "size": 1},
           "layers": [{"digest": GOOD, "size": 1}]}
    m = parse_manifest(json.dumps(doc).encode(), "m")
    assert type(m.config.digest) is Digest and m.layers[0].digest.hex == HEX
    doc["layers"][0]["digest"] = "sha512:" + "0" * 128
    with pytest.raises(FormatError, match=r"layers\[0\]\.digest"):
        parse_manifest(json.dumps(doc).encode(), "m")


@pytest.mark.parametrize("spoil", [lambda d: d + "\n", lambda d: "sha256:" + d[7:].upper()])
def test_toc_tarsplit_digest_is_refused_on_open(tmp_path: Path, monkeypatch, spoil) -> None:
    """The reader path of issue 13: a TOC digest that only looked like one (a regex's "$"
    let a final newline through) passed ChunkedLayer.open, to fail later."""
    end = fmt.TocEncoder.end
    monkeypatch.setattr(fmt.TocEncoder, "end", lambda self, d="": end(self, d and spoil(d)))
    blob, desc = _blob(tmp_path)
    monkeypatch.undo()
    for check in (False, True):
        with FileSource(str(blob)) as src, pytest.raises(FormatError) as exc:
            ChunkedLayer.open(src, desc["annotations"], check=check)
        assert "tarSplitDigest" in str(exc.value) and "\n" not in str(exc.value)
        assert type(exc.value) is FormatError  # refused as malformed, not as a mismatch


def test_reference_digest() -> None:
    ref = DockerRef.parse(f"docker://example.com/a/b@{GOOD}")
    assert type(ref.digest) is Digest and ref.reference == GOOD
    for bad in (GOOD.upper(), GOOD + "\n", GOOD[:-1], "sha512:" + "0" * 128):
        with pytest.raises(InputError):
            DockerRef.parse(f"docker://example.com/a/b@{bad}")


def test_cache_refuses_a_bad_key_as_a_format_error(tmp_path: Path) -> None:
    c = ContentCache(str(tmp_path))
    for bad in ("sha256:../../etc/passwd", GOOD + "\n", GOOD.upper()):
        with pytest.raises(FormatError):
            c.get(bad)


def test_layout_blob_paths_come_from_a_digest(tmp_path: Path) -> None:
    layout = OciLayout(str(tmp_path / "img"))
    layout.init()
    assert layout.blob_path(Digest.parse(GOOD)).endswith("/blobs/sha256/" + HEX)
    for bad in ("sha256:../../../etc/passwd", GOOD + "\n", "sha256:" + HEX.upper()):
        with pytest.raises(FormatError):
            layout.blob_path(bad)


def _bad_layer_layout(tmp_path: Path) -> Path:
    blob, desc = _blob(tmp_path)
    layout = OciLayout(str(tmp_path / "img"))
    layout.init()
    with layout.new_blob() as f:
        f.write(blob.read_bytes())
    layout.commit_blob(desc["digest"])
    desc = dict(desc)
    diff_id = desc.pop("diffID")
    desc["digest"] = "sha256:" + "../" * 21 + "x"  # 71 characters, a path
    write_image(layout, "v1", [(desc, diff_id)])
    return tmp_path / "img"


def test_cli_refuses_a_layout_with_a_bad_layer_digest(tmp_path: Path) -> None:
    img = _bad_layer_layout(tmp_path)
    for cmd in ("verify", "inspect"):
        line = _one_line_failure(cmd, f"oci:{img}:v1")
        assert "not a sha256 digest" in line, line


def _mock_client(handler):  # noqa: ANN001, ANN202
    import httpx

    from chunked.oci.registry import RegistryClient

    client = RegistryClient("reg.example")
    client._http.close()
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    return client


@pytest.mark.parametrize("header", ["sha256:" + HEX.upper(), "sha256:" + HEX[:-1],
                                    Digest.of(b"{}") + " "])
def test_registry_docker_content_digest_header_is_parsed(header: str) -> None:
    import httpx

    client = _mock_client(lambda req: httpx.Response(
        200, content=b"{}", headers={"Docker-Content-Digest": header}))
    with pytest.raises(FormatError, match="Docker-Content-Digest header is") as exc:
        client.get_manifest("x/y", "v1")
    assert "\n" not in str(exc.value)


def test_registry_header_of_another_algorithm_is_not_checked() -> None:
    import httpx

    client = _mock_client(lambda req: httpx.Response(
        200, content=b"{}", headers={"Docker-Content-Digest": "sha512:" + "0" * 128}))
    _, _, digest = client.get_manifest("x/y", "v1")
    assert digest == Digest.of(b"{}") and type(digest) is Digest


def test_registry_refuses_a_bad_digest_before_any_request() -> None:
    def handler(req):  # noqa: ANN001, ANN202
        raise AssertionError(f"no request should be sent: {req.url}")

    client = _mock_client(handler)
    for bad in ("sha256:../../v2/other", GOOD + "\n", GOOD.upper()):
        with pytest.raises(InputError):
            client.get_blob("x/y", bad)
        with pytest.raises(InputError):
            client.get_manifest("x/y", bad)
