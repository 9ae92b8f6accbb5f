"""An install without a C compiler works, and runs the Python twins of the kernels.

The wheel is really built with a compiler that always fails (``CC=/bin/false``), from a
copy of the sources, and the package is then imported from the unpacked wheel alone."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import chunked

REPO = Path(__file__).resolve().parent.parent

CHECK = r"""
import sys, warnings
warnings.simplefilter("always")
import chunked
from chunked import _kernels
assert chunked.__file__.startswith(sys.argv[1]), chunked.__file__
for name in ("chunked._native", "chunked.format._tocindex", "chunked.puller._pullio"):
    assert _kernels.load(name) is None, name
import chunked.format.chunking as chunking
assert chunking.RollSum.__module__ == "chunked._native_spec"
desc = chunked.build(sys.argv[2], sys.argv[3])
with chunked.open_image(sys.argv[3]) as image:
    assert image.read("data.bin") == bytes(range(256)) * 400
chunked.verify(sys.argv[3])
print(desc.digest)
"""


def test_install_without_a_compiler_uses_the_python_paths(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "chunked", "fuse", "setup.py",
                            "pyproject.toml", "README.md"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    env = {**os.environ, "CC": "/bin/false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("CHUNKED_REQUIRE_NATIVE", None)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not built" in p.stdout + p.stderr  # setup.py said so, and went on
    (wheel,) = (tmp_path / "dist").glob("chunked-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")]
    assert "chunked/fuse/mount.py" in names and "chunked/py.typed" in names
    assert not [n for n in names if n.startswith("fuse/")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    tar = tmp_path / "in.tar"
    with tarfile.open(tar, "w") as t:
        data = bytes(range(256)) * 400
        info = tarfile.TarInfo("data.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with_c = chunked.build(tar, tmp_path / "c.blob")
    # -S: no site module, so no .pth file runs and the development install's finder (which
    # maps chunked to the checkout, C modules and all) stays out; the dependencies come
    # from the environment's site-packages as a plain path, after the wheel's files
    deps = sysconfig.get_paths()["purelib"]
    run = subprocess.run([sys.executable, "-S", "-c", CHECK, str(site), str(tar),
                          str(tmp_path / "py.blob")], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{site}:{deps}"},
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "chunked._native is not built" in run.stderr  # said once, not hidden
    # the same bytes either way
    assert run.stdout.strip() == with_c.digest
    assert (tmp_path / "py.blob").read_bytes() == (tmp_path / "c.blob").read_bytes()
