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


def _peak_rss_mib(tmp_path, mib: int) -> float:
    gen = subprocess.Popen([sys.executable, "-c", GEN, str(mib)], stdout=subprocess.PIPE)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / f"{mib}.blob")],
                         stdin=gen.stdout, capture_output=True, text=True, timeout=300)
    gen.stdout.close()
    assert gen.wait() == 0
    rc, rss = out.stdout.split()
    assert rc == "0", out.stderr
    return int(rss) / 1024


def test_peak_memory_does_not_grow_with_input(tmp_path):
    small = _peak_rss_mib(tmp_path, 32)
    large = _peak_rss_mib(tmp_path, 256)  # 8x the data
    assert large < 160, f"{large:.0f} MiB peak for a 256 MiB file"
    assert large < small + 32, f"peak RSS grew from {small:.0f} to {large:.0f} MiB"
