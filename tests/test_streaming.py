"""Memory stays bounded whatever the input size: the builder streams."""

from __future__ import annotations

import subprocess
import sys

GEN = r"""
import io, os, sys, tarfile
n = int(sys.argv[1]) << 20
class Random(io.RawIOBase):
    def __init__(self, n): self.left = n
    def readable(self): return True
    def readinto(self, b):
        k = min(len(b), self.left, 1 << 20)
        if k <= 0: return 0
        b[:k] = os.urandom(k); self.left -= k; return k
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tf:
    for i in range(2000):
        ti = tarfile.TarInfo(f"small/{i}"); data = b"%d" % i * 50; ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    ti = tarfile.TarInfo("big"); ti.size = n
    tf.addfile(ti, io.BufferedReader(Random(n), 1 << 20))
"""

# Runs the build as its only child and reports that child's peak RSS (KiB).
MEASURE = r"""
import resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "chunked.cli", "build", "-", "-o", sys.argv[1], "-q"],
                   stdout=subprocess.DEVNULL)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_mib(tmp_path, gen_script: str, arg: int) -> float:
    """Peak RSS of `chunked build -` fed the tar that gen_script writes for arg."""
    gen = subprocess.Popen([sys.executable, "-c", gen_script, str(arg)], stdout=subprocess.PIPE)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / f"{arg}.blob")],
                         stdin=gen.stdout, capture_output=True, text=True, timeout=300)
    gen.stdout.close()
    assert gen.wait() == 0
    rc, rss = out.stdout.split()
    assert rc == "0", out.stderr
    return int(rss) / 1024


def test_peak_memory_does_not_grow_with_input(tmp_path):
    small = _peak_rss_mib(tmp_path, GEN, 32)
    large = _peak_rss_mib(tmp_path, GEN, 256)  # 8x the data
    assert large < 160, f"{large:.0f} MiB peak for a 256 MiB file"
    assert large < small + 32, f"peak RSS grew from {small:.0f} to {large:.0f} MiB"


GEN_MANY = r"""
import io, sys, tarfile
n = int(sys.argv[1])
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tf:
    for i in range(n):
        ti = tarfile.TarInfo(f"dir{i % 100}/file-with-a-longish-name-{i}")
        data = b"%d\n" % i * 40; ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
"""


def test_peak_memory_does_not_grow_with_entries(tmp_path):
    """The TOC is streamed out: 10x the files is not 10x the memory."""
    small = _peak_rss_mib(tmp_path, GEN_MANY, 4_000)
    large = _peak_rss_mib(tmp_path, GEN_MANY, 40_000)
    assert large < small + 16, f"peak RSS grew from {small:.0f} to {large:.0f} MiB"
