#!/usr/bin/env python3
"""Benchmark ``chunked build`` against skopeo's zstd:chunked conversion and plain ``zstd -3``.

One run measures, on the same real tarball (a Debian bookworm root filesystem,
made with debootstrap and cached under /var/tmp/chunked-bench/ unless --tar is
given):

1. ``chunked build TAR -o OUT -q`` (default level and threads),
2. ``skopeo --insecure-policy copy tarball:TAR oci:DIR --dest-compress-format zstd:chunked``,
3. ``zstd -3 -T1 -c TAR > OUT``,

reporting for each the best wall time over N runs, peak RSS (``/usr/bin/time -f %M``,
per run) and output size (split into data frames / TOC / tar-split for the two
zstd:chunked blobs); then the goal ratios, a memory check (chunked on a tar holding the
input's files twice, and on one holding the input plus the input tar as one more file:
twice the bytes either way, but only the first doubles the entries) and a round-trip
check (``zstd -dc OUT`` must give back the input byte for byte, and the diffID match).

Usage: python benchmarks/bench_build.py [--runs 3] [--skopeo-runs 1|0] [--scale-runs 0]
       [--corpus rootfs|small-files|large-files] [--json] [--tar PATH]
Exit status 1 if a check of chunked's output failed (a failed check of skopeo's is only
reported); missed performance goals only show as MISSED.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.clirun import COMMAND  # noqa: E402

DEFAULT_CACHE = Path("/var/tmp/chunked-bench")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# minbase alone makes a tar well under 250 MB; these bring it into the wanted 300-500 MB,
# with the mix of small text files, shared libraries and big binaries a real image has.
EXTRA_PACKAGES = ["python3", "perl", "gcc-12", "libc6-dev", "make", "git", "ca-certificates",
                  "locales"]
# Used only when debootstrap cannot run: a fixed list, taken in order, skipping any directory
# that would push the tar past FALLBACK_MAX, until it reaches FALLBACK_TARGET.
FALLBACK_DIRS = ["usr/share/doc", "usr/share/locale", "usr/share/perl", "usr/lib/python3",
                 "usr/lib/gcc", "usr/share/zoneinfo", "usr/share/man", "usr/bin", "usr/sbin",
                 "usr/lib/x86_64-linux-gnu", "usr/share/i18n", "usr/include", "usr/share"]
FALLBACK_TARGET = 300 << 20
FALLBACK_MAX = 500 << 20
TIME = "/usr/bin/time"
MB = 1 << 20
SKIPPABLE_HEADER = 8  # zstd skippable frame: magic + length

# issue 12's
GOAL_THROUGHPUT_X = 25.0
GOAL_VS_ZSTD = 1.0
GOAL_SIZE = 1.0
# Memory may grow a little with the entry count (the TOC is held until the end), but not
# with the bytes: twice the input must stay within this factor of the single run.
GOAL_RSS_GROWTH = 1.25


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- input


def _mirror_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/dists/{SUITE}/Release", timeout=15):
            return True
    except OSError:
        return False


def _apt_mirrors() -> list[str]:
    """Debian mirrors that apt is configured with, main archive first."""
    found: list[str] = []
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "URIs:":
                found += words[1:]
            elif words[0] in ("deb", "deb-src"):
                found += [w for w in words[1:] if "://" in w][:1]
    return [u for u in dict.fromkeys(found) if "debian" in u and "security" not in u]


def pick_mirror(explicit: str | None) -> str:
    if explicit:
        return explicit
    for url in [DEFAULT_MIRROR, *_apt_mirrors()]:
        if _mirror_ok(url):
            return url
    raise RuntimeError("no Debian mirror reachable")


def _umount_below(root: Path) -> None:
    # debootstrap mounts proc/sys inside the target; a killed run leaves them behind,
    # and rmtree across a live /proc mount would be a disaster.
    prefix = str(root.resolve())
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    for p in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")),
                    key=len, reverse=True):
        subprocess.run(["umount", "-l", p], check=False)


def _tar_dir(root: Path, dest: Path, members: list[str]) -> None:
    tmp = dest.with_suffix(".tmp")
    # Sorted names and numeric ids make the tar a function of the tree alone. -b1 ends it
    # right after the two zero blocks, as Go's archive/tar (so every image layer) does:
    # skopeo 1.9.3's zstd:chunked writer stops reading at end-of-archive and then fails with
    # "happened during read: short write" when GNU tar's record padding (up to 10 KiB) follows.
    excludes = [f"--exclude=./{d}/*" for d in ("proc", "sys", "dev", "run", "tmp")]
    cmd = ["tar", "-b1", "--numeric-owner", "--sort=name", *excludes,
           "-C", str(root), "-cf", str(tmp), *members]
    subprocess.run(cmd, check=True)
    tmp.rename(dest)


def make_small_files_tar(cache: Path, files: int = 40_000, seed: int = 12) -> Path:
    """The small-files corpus: ``files`` files of 1-8 KiB (text, some of it repeated, as
    configuration, scripts and sources are) in directories of 100, deterministic."""
    dest = cache / f"small-files-{files}.tar"
    if dest.exists():
        return dest
    import io
    import random
    import tarfile

    cache.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(4000)]
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(files // 100):
            ti = tarfile.TarInfo(f"srv/d{d:04d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(ti)
            for f in range(100):
                size = rng.randint(1024, 8192)
                text = b" ".join(rng.choice(words) for _ in range(size // 6))[:size]
                ti = tarfile.TarInfo(f"srv/d{d:04d}/f{f:03d}.txt")
                ti.size, ti.mode, ti.mtime = len(text), 0o644, 1_700_000_000
                tf.addfile(ti, io.BytesIO(text))
    tmp.rename(dest)
    return dest


def _log_text(rng: Any, size: int) -> bytes:
    """Service logs: timestamps, levels, components, messages from templates, ids."""
    words = [rng.randbytes(rng.randint(1, 6)).hex().encode() for _ in range(3000)]
    levels = [b"INFO", b"WARN", b"DEBUG", b"ERROR"]
    templates = [b" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(2000)]
    out = bytearray()
    ts = 1_700_000_000_000
    while len(out) < size:
        ts += rng.randint(1, 5000)
        out += b"%d.%03d %s [%s] %s id=%d\n" % (ts // 1000, ts % 1000, rng.choice(levels),
                                               rng.choice(words), rng.choice(templates),
                                               rng.getrandbits(32))
    return bytes(out[:size])


def _weights(rng: Any, size: int) -> bytes:
    """float32 tensors: random mantissas under a narrow band of exponents (about what
    zstd makes of model weights: 0.8-0.9 of the input)."""
    buf = bytearray(rng.randbytes(size))
    band = bytes([0x3C, 0x3D, 0x3E, 0x3F, 0xBC, 0xBD, 0xBE, 0xBF] * 32)
    buf[3::4] = bytes(buf[3::4]).translate(band)
    return bytes(buf)


def _binary(rng: Any, size: int) -> bytes:
    """An executable-like mix: code as instruction-like motifs of a skewed byte alphabet
    (drawn Zipf-like, so the redundancy is local as in machine code) with random operands,
    string tables, and a few compressed (random) resources. zstd -3 makes 0.43 of it whole
    and 0.51 in 53 KB pieces (a real executable: 0.38 and 0.42)."""
    alphabet = bytes(rng.choices(range(256), weights=[1 + 400 * (i in (0, 0x48, 0x89, 0x8B,
                                                                       0xE8, 0xFF, 0x0F))
                                                      + (i < 16) * 60 for i in range(256)],
                                 k=4096))
    motifs = [bytes(rng.choices(alphabet, k=rng.randint(2, 10))) for _ in range(2000)]
    weights = [1 / (i + 1) for i in range(len(motifs))]
    words = [rng.randbytes(rng.randint(2, 8)).hex().encode() for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        if kind < 0.8:
            parts = rng.choices(motifs, weights, k=512)
            for j in range(0, len(parts), 8):
                parts[j] += rng.randbytes(4)
            out += b"".join(parts)
        elif kind < 0.995:
            out += b"\0".join(rng.choices(words, k=rng.randint(20, 200))) + b"\0"
        else:
            out += rng.randbytes(rng.randint(1024, 65536))
    return bytes(out[:size])


def make_large_files_tar(cache: Path, seed: int = 12) -> Path:
    """The large-files corpus: a tar of four 60-160 MiB files (logs, float32 weights, two
    executable-like binaries), generated deterministically from ``seed``."""
    dest = cache / "large-files.tar"
    if dest.exists():
        return dest
    import io
    import random

    cache.mkdir(parents=True, exist_ok=True)
    members = [("var/log/service.log", _log_text, 120), ("opt/model/weights.bin", _weights, 100),
               ("usr/lib/libbig.so", _binary, 160), ("usr/bin/bigtool", _binary, 60)]
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for i, (name, make, mib) in enumerate(members):
            data = make(random.Random(seed * 100 + i), mib * MB)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
        end = tf.offset
    # End right after the two zero blocks, as Go's archive/tar does: skopeo 1.9.3 fails
    # on the record padding tarfile adds (see _tar_dir).
    os.truncate(tmp, end + 1024)
    tmp.rename(dest)
    return dest


def make_rootfs_tar(cache: Path, mirror: str | None) -> Path:
    dest = cache / "rootfs.tar"
    if dest.exists():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "rootfs"
    if root.exists():
        _umount_below(root)
        shutil.rmtree(root)
    try:
        url = pick_mirror(mirror)
        log(f"debootstrap {SUITE} from {url} into {root} (a few minutes, once)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(EXTRA_PACKAGES)}",
               SUITE, str(root), url]
        with open(cache / "debootstrap.log", "wb") as logf:
            subprocess.run(cmd, check=True, stdout=logf, stderr=subprocess.STDOUT)
        _umount_below(root)
        # Drop what differs from one bootstrap to the next and what images strip anyway.
        # The .debs and package lists are what `apt-get clean` and `rm -rf
        # /var/lib/apt/lists/*` take out of every real image: already-compressed bulk.
        for pattern in ["var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                        "var/lib/apt/lists/*_*", "var/cache/ldconfig/aux-cache",
                        "var/log/bootstrap.log"]:
            for junk in root.glob(pattern):
                junk.unlink()
        pkgs = subprocess.run(["chroot", str(root), "dpkg-query", "-W"], capture_output=True,
                              text=True, check=False).stdout
        (cache / "rootfs.packages.txt").write_text(pkgs)
        _tar_dir(root, dest, ["."])
        shutil.rmtree(root)
        return dest
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"debootstrap failed ({exc}); see {cache / 'debootstrap.log'}; "
            "falling back to a tar of /usr")
        if root.exists():
            _umount_below(root)
            shutil.rmtree(root, ignore_errors=True)
    dirs: list[str] = []
    total = 0
    for d in FALLBACK_DIRS:
        p = Path("/") / d
        if not p.is_dir() or any(d.startswith(x + "/") or x.startswith(d + "/") for x in dirs):
            continue
        du = subprocess.run(["du", "-sb", str(p)], capture_output=True, text=True, check=False)
        size = int(du.stdout.split()[0]) if du.stdout else 0
        if total + size > FALLBACK_MAX:
            continue
        total += size
        dirs.append(d)
        if total >= FALLBACK_TARGET:
            break
    _tar_dir(Path("/"), dest, dirs)
    return dest


def _rehome(m: tarfile.TarInfo, prefix: str) -> None:
    name = m.name.removeprefix("./").lstrip("/")
    m.name = f"{prefix}/{name}" if name not in ("", ".") else prefix
    if m.islnk():
        m.linkname = f"{prefix}/{m.linkname.removeprefix('./').lstrip('/')}"


def make_scaled_tar(src: Path, dest: Path, kind: str) -> Path:
    """Twice the input, two ways, to tell what chunked's memory follows.

    ``files``: every member twice, under a/ and b/ (paths must stay unique), so twice
    the entries and twice the bytes. ``bytes``: every member once, plus the input tar
    itself as one more file, so twice the bytes and one more entry (and its chunks).
    """
    if dest.exists() and dest.stat().st_mtime >= src.stat().st_mtime:
        return dest
    log(f"writing {dest} ({kind} doubled)")
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        for prefix in ("a", "b") if kind == "files" else ("a",):
            with tarfile.open(src, "r|") as inp:
                for m in inp:
                    _rehome(m, prefix)
                    out.addfile(m, inp.extractfile(m) if m.isreg() else None)
        if kind == "bytes":
            info = tarfile.TarInfo("b/input.tar")
            st = src.stat()
            info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
            with open(src, "rb") as f:
                out.addfile(info, f)
    tmp.rename(dest)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(4 * MB):
            h.update(piece)
    return h.hexdigest()


def sha256_of_decompressed(path: Path) -> str:
    p = subprocess.Popen(["zstd", "-dcq", str(path)], stdout=subprocess.PIPE)
    assert p.stdout is not None
    h = hashlib.sha256()
    while piece := p.stdout.read(4 * MB):
        h.update(piece)
    if p.wait() != 0:
        raise RuntimeError(f"zstd -dc {path} failed")
    return h.hexdigest()


# ---------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall: float
    rss_kb: int
    user: float
    sys: float
    out_size: int


@dataclass
class Tool:
    name: str
    command: str
    input_size: int
    runs: list[Run] = field(default_factory=list)
    # compressed bytes of the blob's parts, from its annotations (zstd:chunked only)
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.wall)

    @property
    def rss_mb(self) -> float:
        return max(r.rss_kb for r in self.runs) / 1024

    def summary(self) -> dict[str, Any]:
        walls = [r.wall for r in self.runs]
        b = self.best
        return {
            "command": self.command,
            "input_bytes": self.input_size,
            "runs": [asdict(r) for r in self.runs],
            "wall_best_s": b.wall,
            "wall_median_s": statistics.median(walls),
            "wall_max_s": max(walls),
            "throughput_mb_s": self.input_size / b.wall / MB,
            "peak_rss_mb": self.rss_mb,
            "cpu_s_best_run": b.user + b.sys,
            "output_bytes": b.out_size,
            "output_ratio": b.out_size / self.input_size,
            **({"output_parts_bytes": self.parts} if self.parts else {}),
        }


def blob_parts(annotations: dict[str, str], size: int) -> dict[str, int]:
    """Split a zstd:chunked blob's size into data frames, TOC, tar-split and the rest."""
    def pos(suffix: str) -> list[int] | None:
        for prefix in ("io.github.containers.", "io.containers."):
            if (v := annotations.get(prefix + suffix)) is not None:
                return [int(x) for x in v.split(":")]
        return None

    toc = pos("zstd-chunked.manifest-position")
    if toc is None:
        return {}
    ts = pos("zstd-chunked.tarsplit-position")
    parts = {"data": toc[0] - SKIPPABLE_HEADER, "toc": toc[1], "toc_uncompressed": toc[2],
             "tarsplit": ts[1] if ts else 0}
    parts["other"] = size - parts["data"] - parts["toc"] - parts["tarsplit"]
    return parts


def timed(cmd: list[str], stdout: Path | None = None, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, int, float, float, str]:
    """Run ``cmd`` under /usr/bin/time; return wall, peak RSS (KiB), user, sys, its stdout."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as tf:
        full = [TIME, "-f", "%M %U %S", "-o", tf.name, *cmd]
        out = open(stdout, "wb") if stdout else subprocess.PIPE  # noqa: SIM115
        try:
            t0 = time.perf_counter()
            p = subprocess.run(full, stdout=out, stderr=subprocess.PIPE, env=env, cwd=cwd)
            wall = time.perf_counter() - t0
        finally:
            if stdout:
                out.close()  # type: ignore[union-attr]
        if p.returncode != 0:
            sys.stderr.write(p.stderr.decode(errors="replace"))
            raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}")
        # /usr/bin/time appends its line after anything the command itself wrote there
        rss, user, system = tf.read().split("\n")[-2].split()
    return wall, int(rss), float(user), float(system), (p.stdout or b"").decode()


def code_state() -> dict[str, Any]:
    """Which chunked is measured: HEAD, and a digest of the working-tree sources, since
    other people edit chunked/ while benchmarks run."""
    h = hashlib.sha256()
    for f in sorted((REPO / "chunked").glob("*")):
        if f.suffix in (".py", ".c", ".so"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "chunked"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"head": head or None, "dirty": bool(dirty), "sources_sha256": h.hexdigest()[:16]}


def chunked_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_chunked(tar: Path, out: Path) -> tuple[Run, dict[str, Any]]:
    out.unlink(missing_ok=True)
    cmd = [*COMMAND, "build", str(tar), "-o", str(out), "-q"]
    wall, rss, user, system, stdout = timed(cmd, env=chunked_env(), cwd=REPO)
    return Run(wall, rss, user, system, out.stat().st_size), json.loads(stdout)


def skopeo_layer(oci_dir: Path) -> Path:
    # config and manifest are a few hundred bytes; the layer is by far the largest blob
    return max((oci_dir / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)


def skopeo_annotations(oci_dir: Path) -> dict[str, str]:
    index = json.loads((oci_dir / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((oci_dir / "blobs" / "sha256" / digest).read_text())
    return dict(manifest["layers"][0].get("annotations", {}))


def run_skopeo(tar: Path, oci_dir: Path) -> Run:
    shutil.rmtree(oci_dir, ignore_errors=True)
    cmd = ["skopeo", "--insecure-policy", "copy", f"tarball:{tar}", f"oci:{oci_dir}",
           "--dest-compress-format", "zstd:chunked"]
    try:
        wall, rss, user, system, _ = timed(cmd)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n(if it said 'short write': skopeo 1.9.3 cannot take a tar "
                           "with record padding after the end-of-archive blocks; re-pack the "
                           "input with `tar -b1`)") from None
    return Run(wall, rss, user, system, skopeo_layer(oci_dir).stat().st_size)


def run_zstd(tar: Path, out: Path) -> Run:
    out.unlink(missing_ok=True)
    wall, rss, user, system, _ = timed(["zstd", "-3", "-T1", "-q", "-c", str(tar)], stdout=out)
    return Run(wall, rss, user, system, out.stat().st_size)


def warm_cache(path: Path) -> None:
    # every tool then reads the input from the page cache, the first one included
    with open(path, "rb") as f:
        while f.read(8 * MB):
            pass


# ---------------------------------------------------------------------------- report


def fmt_table(tools: list[Tool]) -> str:
    head = (f"{'tool':<26} {'in MB':>6} {'runs':>4} {'best s':>7} {'median':>7} {'max s':>6} "
            f"{'MB/s':>6} {'cpu s':>6} {'RSS MB':>7} {'out MB':>7} {'out/in':>6}")
    lines = [head, "-" * len(head)]
    for t in tools:
        s = t.summary()
        lines.append(
            f"{t.name:<26} {t.input_size / MB:>6.0f} {len(t.runs):>4} {s['wall_best_s']:>7.2f} "
            f"{s['wall_median_s']:>7.2f} {s['wall_max_s']:>6.2f} {s['throughput_mb_s']:>6.1f} "
            f"{s['cpu_s_best_run']:>6.2f} {s['peak_rss_mb']:>7.1f} {s['output_bytes'] / MB:>7.1f} "
            f"{s['output_ratio']:>6.3f}")
    return "\n".join(lines)


def fmt_parts(tools: list[Tool]) -> str:
    lines = [f"{'blob parts (MB)':<26} {'data':>8} {'TOC':>6} {'tar-split':>9} {'other KB':>8} "
             f"{'TOC raw':>8}"]
    for t in tools:
        if t.parts:
            p = t.parts
            lines.append(f"{t.name:<26} {p['data'] / MB:>8.2f} {p['toc'] / MB:>6.2f} "
                         f"{p['tarsplit'] / MB:>9.2f} {p['other'] / 1024:>8.2f} "
                         f"{p['toc_uncompressed'] / MB:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tar", type=Path, help="input tarball (default: a cached Debian rootfs)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"where the input tar and outputs live (default {DEFAULT_CACHE})")
    p.add_argument("--mirror", help=f"Debian mirror for debootstrap (default {DEFAULT_MIRROR}, "
                                    "else the ones apt uses)")
    p.add_argument("--runs", type=int, default=3, help="runs per tool; the best counts (3)")
    p.add_argument("--skopeo-runs", type=int,
                   help="runs for skopeo (default: --runs); 0 reuses the figures of the last "
                        "skopeo run on the same input (cached beside the outputs)")
    p.add_argument("--scale-runs", type=int, default=1,
                   help="runs of chunked on each doubled tar, for the memory check (1; 0 skips)")
    p.add_argument("--json", action="store_true",
                   help="print the figures as JSON on stdout (the table goes to stderr)")
    p.add_argument("--corpus", choices=("rootfs", "small-files", "large-files"),
                   default="rootfs",
                   help="the Debian rootfs (default), 40,000 generated files of 1-8 KiB, or "
                        "four generated files of 60-160 MiB")
    args = p.parse_args(argv)
    skopeo_runs = args.runs if args.skopeo_runs is None else args.skopeo_runs
    if args.runs < 1 or skopeo_runs < 0:
        p.error("--runs must be at least 1, --skopeo-runs at least 0")

    cache: Path = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    if args.tar:
        tar = args.tar.resolve()
    elif args.corpus == "small-files":
        tar = make_small_files_tar(cache)
    elif args.corpus == "large-files":
        tar = make_large_files_tar(cache)
    else:
        tar = make_rootfs_tar(cache, args.mirror)
    input_size = tar.stat().st_size
    work = cache / "out"
    work.mkdir(exist_ok=True)
    log(f"input {tar}: {input_size / MB:.1f} MB")
    input_sha = sha256_file(tar)
    warm_cache(tar)

    code_before = code_state()
    chunked = Tool("chunked build", "python -m chunked.cli build TAR -o OUT -q", input_size)
    skopeo = Tool("skopeo zstd:chunked", "skopeo --insecure-policy copy tarball:TAR oci:DIR "
                  "--dest-compress-format zstd:chunked", input_size)
    zstd = Tool("zstd -3 -T1", "zstd -3 -T1 -c TAR > OUT", input_size)
    out_chunked, out_zstd, oci_dir = work / "chunked.blob", work / "zstd.zst", work / "skopeo-oci"
    descriptor: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    skopeo_cache = work / f"skopeo-{input_sha[:16]}.json"
    if not skopeo_runs:
        try:
            saved = json.loads(skopeo_cache.read_text())
        except (OSError, ValueError):
            p.error(f"--skopeo-runs 0: no saved skopeo figures for this input ({skopeo_cache})")
        skopeo.runs = [Run(**r) for r in saved["runs"]]
        skopeo.parts = saved["parts"]
        skopeo.name += " (saved)"
        log(f"skopeo: figures of an earlier run, from {skopeo_cache}")
    # Rounds interleave the tools so a burst of background load hits them all alike.
    for i in range(max(args.runs, skopeo_runs)):
        if i < args.runs:
            run, descriptor = run_chunked(tar, out_chunked)
            chunked.runs.append(run)
            log(f"round {i + 1}: chunked {run.wall:.2f}s {run.rss_kb / 1024:.0f}MB")
            if i == 0:
                chunked.parts = blob_parts(descriptor["annotations"], run.out_size)
                checks["chunked_roundtrip"] = sha256_of_decompressed(out_chunked) == input_sha
                checks["chunked_diffid"] = descriptor.get("diffID") == f"sha256:{input_sha}"
            run = run_zstd(tar, out_zstd)
            zstd.runs.append(run)
            log(f"round {i + 1}: zstd {run.wall:.2f}s {run.rss_kb / 1024:.0f}MB")
        if i < skopeo_runs:
            run = run_skopeo(tar, oci_dir)
            skopeo.runs.append(run)
            log(f"round {i + 1}: skopeo {run.wall:.2f}s {run.rss_kb / 1024:.0f}MB")
            if i == 0:
                skopeo.parts = blob_parts(skopeo_annotations(oci_dir), run.out_size)
                checks["skopeo_roundtrip"] = \
                    sha256_of_decompressed(skopeo_layer(oci_dir)) == input_sha
    if skopeo_runs:
        skopeo_cache.write_text(json.dumps({"runs": [asdict(r) for r in skopeo.runs],
                                            "parts": skopeo.parts}))

    scaled: dict[str, Tool] = {}
    for kind, label in (("files", "2x files"), ("bytes", "2x bytes")):
        if args.scale_runs < 1:
            break
        star = make_scaled_tar(tar, cache / f"{tar.stem}-x2{kind}.tar", kind)
        warm_cache(star)
        t = scaled[kind] = Tool(f"chunked, {label}", chunked.command, star.stat().st_size)
        for i in range(args.scale_runs):
            run, sdesc = run_chunked(star, out_chunked)
            t.runs.append(run)
            log(f"{label} run {i + 1}: chunked {run.wall:.2f}s {run.rss_kb / 1024:.0f}MB")
            if i == 0:
                t.parts = blob_parts(sdesc["annotations"], run.out_size)
                checks[f"chunked_2x{kind}_diffid"] = \
                    sdesc.get("diffID") == f"sha256:{sha256_file(star)}"
        if args.tar:
            star.unlink()  # derived from a user's file: don't leave a big copy behind

    code = code_state()
    code["changed_during_run"] = code != code_before
    c, s, z = chunked.best, skopeo.best, zstd.best
    ratios: dict[str, Any] = {
        "throughput_chunked_over_skopeo": s.wall / c.wall,
        "wall_chunked_over_zstd3_T1": c.wall / z.wall,
        "size_chunked_over_skopeo": c.out_size / s.out_size,
        "peak_rss_chunked_mb": chunked.rss_mb,
    }
    goals = {
        "throughput_chunked_over_skopeo": ratios["throughput_chunked_over_skopeo"]
        >= GOAL_THROUGHPUT_X,
        "wall_chunked_over_zstd3_T1": ratios["wall_chunked_over_zstd3_T1"] <= GOAL_VS_ZSTD,
        "size_chunked_over_skopeo": ratios["size_chunked_over_skopeo"] <= GOAL_SIZE,
    }
    for kind, t in scaled.items():
        ratios[f"peak_rss_chunked_2x{kind}_mb"] = t.rss_mb
        ratios[f"rss_growth_2x{kind}"] = t.rss_mb / chunked.rss_mb
    if "files" in scaled:
        goals["rss_bounded"] = ratios["rss_growth_2xfiles"] <= GOAL_RSS_GROWTH

    def verdict(key: str) -> str:
        return "ok" if goals[key] else "MISSED"

    tools = [chunked, skopeo, zstd, *scaled.values()]
    lines = [
        f"input: {tar} ({input_size / MB:.1f} MB, sha256 {input_sha[:16]}...)",
        f"machine: {os.cpu_count()} cores; best of {args.runs} runs "
        f"(skopeo {skopeo_runs}); RSS is the max over runs",
        f"chunked: HEAD {code['head']}{' + uncommitted changes' if code['dirty'] else ''}, "
        f"sources {code['sources_sha256']}"
        + ("  WARNING: chunked/ changed during the run" if code["changed_during_run"] else ""),
        "",
        fmt_table(tools),
        "",
        fmt_parts(tools),
        "",
        f"chunked throughput / skopeo throughput = "
        f"{ratios['throughput_chunked_over_skopeo']:6.2f}x  (goal >= {GOAL_THROUGHPUT_X:g}x)  "
        f"{verdict('throughput_chunked_over_skopeo')}",
        f"chunked wall / zstd -3 -T1 wall        = "
        f"{ratios['wall_chunked_over_zstd3_T1']:6.2f}x  (goal <= {GOAL_VS_ZSTD:g}x)   "
        f"{verdict('wall_chunked_over_zstd3_T1')}",
        f"chunked size / skopeo size             = "
        f"{ratios['size_chunked_over_skopeo']:6.3f}   (goal <= {GOAL_SIZE:g})    "
        f"{verdict('size_chunked_over_skopeo')}",
        f"chunked peak RSS                       = {chunked.rss_mb:6.1f} MB",
    ]
    for kind, t in scaled.items():
        goal = (f"; goal <= {GOAL_RSS_GROWTH:g}x)  {verdict('rss_bounded')}" if kind == "files"
                else ")")
        lines.append(f"  ... on the tar with {kind} doubled    = {t.rss_mb:6.1f} MB "
                     f"({ratios[f'rss_growth_2x{kind}']:.2f}x{goal}")
    lines.append("checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}"
                                        for k, v in checks.items()))
    text = "\n".join(lines)

    if args.json:
        print(text, file=sys.stderr)
        doc = {
            "input": {"path": str(tar), "bytes": input_size, "sha256": input_sha},
            "cpus": os.cpu_count(),
            "chunked_code": code,
            "tools": {
                "chunked": chunked.summary(),
                "skopeo": skopeo.summary(),
                "zstd": zstd.summary(),
                **{f"chunked_2x{kind}": t.summary() for kind, t in scaled.items()},
            },
            "ratios": ratios,
            "goals_met": goals,
            "checks": checks,
            "chunked_descriptor": descriptor,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(text)
    # Our own checks decide the exit status; a peer's (skopeo's layer decompressing to the
    # input tar) is reported, as it says something about skopeo, not about us.
    return 0 if all(v for k, v in checks.items() if not k.startswith("skopeo")) else 1


if __name__ == "__main__":
    sys.exit(main())
