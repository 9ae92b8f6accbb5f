"""The merged view of a multi-layer image: overlay semantics over the layers' TOCs."""

from __future__ import annotations

import json
import subprocess

from chunked import format as fmt
from chunked.oci.layout import OciRef
from chunked.read.image import open_oci
from tests.clirun import COMMAND
from tests.layers import MERGED, make_image


def test_merged_view_applies_whiteouts_and_opaque_dirs(tmp_path):
    ref = OciRef.parse(make_image(tmp_path / "img"))
    image = open_oci(ref)
    try:
        view = image.merged()
        assert set(view.entries) == set(MERGED)
        for path, content in MERGED.items():
            layer, info = view.lookup(path)
            if isinstance(content, bytes):
                assert layer.read_file(info.entry.name) == content, path
            elif isinstance(content, tuple):
                assert info.entry.type == fmt.TYPE_SYMLINK
                assert info.entry.link_name == content[1]
            else:
                assert info.entry.type == fmt.TYPE_DIR
    finally:
        image.close()


def test_cli_on_an_oci_image(tmp_path):
    ref = make_image(tmp_path / "img")

    def run(*args):
        return subprocess.run([*COMMAND, *args], capture_output=True,
                              timeout=120)

    p = run("inspect", ref, "--json")
    assert p.returncode == 0, p.stderr.decode()
    assert {e["path"] for e in json.loads(p.stdout)["entries"]} == set(MERGED)
    assert run("cat", ref, "etc/replace.conf").stdout == b"version 2\n"
    assert run("cat", ref, "usr/big.bin").stdout == MERGED["usr/big.bin"]
    p = run("cat", ref, "etc/old.conf")
    assert p.returncode != 0 and b"no such file" in p.stderr
    p = run("verify", ref, "-q")
    assert p.returncode == 0 and p.stdout.count(b"diffID matches the config") == 2
