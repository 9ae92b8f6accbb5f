"""containers-registries.conf(5): which registries are insecure, for every command."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from chunked.layerstore import StoreError, decode_name
from chunked.oci import registriesconf
from tests.clirun import COMMAND
from tests.layers import UPPER, make_tar
from tests.peers import Registry
from tests.trees import push_image


def _conf(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(path))


def test_prefix_location_and_longest_match(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _conf(tmp_path, """
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "reg.example:5000"
insecure = true
[[registry]]
prefix = "reg.example:5000/secure"
location = "reg.example:5000/secure"
insecure = false
[[registry]]
location = "other.example"
""", monkeypatch)
    assert registriesconf.insecure("reg.example:5000", "app")
    assert not registriesconf.insecure("reg.example:5000", "secure/app")
    # "secure" is no prefix of "secureish" (a path boundary): the host's entry decides
    assert registriesconf.insecure("reg.example:5000", "secureish")
    assert not registriesconf.insecure("other.example", "x")
    assert not registriesconf.insecure("nowhere.example", "x")
    assert registriesconf.tls_verify("reg.example:5000", "app", True) is False
    assert registriesconf.tls_verify("other.example", "x", False) is False


def test_a_broken_file_costs_a_warning_not_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _conf(tmp_path, "[[registry]\nlocation = ", monkeypatch)
    assert not registriesconf.insecure("reg.example", "x")
    assert "ignored" in caplog.text


def test_store_names_decode_to_references() -> None:
    def name(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    assert str(decode_name(name("127.0.0.1:5000/a/b:1"))) == "docker://127.0.0.1:5000/a/b:1"
    digest = "sha256:" + "a" * 64
    pinned = decode_name(name(f"127.0.0.1:5000/a/b:1@{digest}"))
    assert (pinned.tag, pinned.digest) == (None, digest)
    assert decode_name(name("docker.io/library/debian:12")).repository == "library/debian"
    for bad in ("not base64!", name(""), name("a b"), name("UPPER/x:1"), "wg==", name("x\n")):
        with pytest.raises(StoreError):
            decode_name(bad)


@pytest.mark.interop
def test_commands_read_insecure_from_registries_conf(tmp_path: Path, registry: Registry,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The test registry speaks plain HTTP: without --tls-verify=false a command reaches it
    only when registries.conf calls it insecure."""
    ref = push_image(tmp_path, registry, "conf/insecure:1", [("chunked", make_tar(UPPER))])

    def cat() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*COMMAND, "cat", f"docker://{ref}",
                               "new.txt"], capture_output=True, timeout=120)

    _conf(tmp_path, "", monkeypatch)
    refused = cat()
    assert refused.returncode != 0 and b"Traceback" not in refused.stderr
    _conf(tmp_path, f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n',
          monkeypatch)
    served = cat()
    assert served.returncode == 0, served.stderr
    assert served.stdout == UPPER["new.txt"]
