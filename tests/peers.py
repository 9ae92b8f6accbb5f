"""Real peers for the interop tests: Debian's docker-registry, podman 4.3 and skopeo 1.9.

Fixtures (re-exported by ``tests/conftest.py``):

* ``registry`` (session): a ``docker-registry`` (distribution 2.8) on 127.0.0.1, free port,
  filesystem storage in a tmp dir.  Its access log is parsed by :meth:`Registry.requests`
  so a test can count what a client fetched (``mark()`` before, ``requests(since=mark)``
  after).
* ``registry_repo`` (function): a repository name in that registry unique to the test,
  e.g. ``127.0.0.1:PORT/t/test-foo``.
* ``podman`` (function): a :class:`Podman` with its own storage (overlay driver, partial
  pulls enabled) in a tmp dir, wiped at the end of the test.

Helpers: :func:`skopeo`, :func:`skopeo_copy`, :func:`skopeo_inspect`, :func:`make_podman`.

What podman 4.3.1 (containers/image 5.23.1) logs at ``--log-level=debug`` for each layer:

* partial pull taken:      ``Retrieved partial blob sha256:...`` (:data:`PARTIAL_OK`)
* partial pull refused, layer downloaded whole instead (the pull still succeeds!):
  ``Failed to retrieve partial blob: <reason>`` (:data:`PARTIAL_FALLBACK`), e.g.
  ``blob type not supported for partial retrieval`` (no zstd:chunked annotations),
  ``enable_partial_images not configured``, ``not supported`` (vfs driver),
  ``read zstd:chunked manifest: invalid manifest checksum``.

Both skopeo and podman keep a machine-wide "blob info cache"
(/var/lib/containers/cache/blob-info-cache-v1.boltdb when root).  skopeo 1.9.3 uses it to
substitute an already pushed gzip layer for a requested ``--dest-compress-format
zstd:chunked`` one, so every skopeo run and podman pull here gets a fresh, empty cache
(a tmpfs mounted over that directory in a private mount namespace, see
:func:`isolated_blob_cache`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
PODMAN_BIN = "podman"
SKOPEO_BIN = "skopeo"

PARTIAL_OK = "Retrieved partial blob"
PARTIAL_FALLBACK = "Failed to retrieve partial blob: "

SYSTEM_BLOB_INFO_CACHE = "/var/lib/containers/cache"

_DEFAULT_TIMEOUT = 300.0


class PeerError(RuntimeError):
    """A real peer (skopeo, podman, registry) failed; the message carries its output."""


# --------------------------------------------------------------------------- availability


def _peers_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("CHUNKED_REQUIRE_PEERS") == "1"


def require_binaries(*names: str) -> None:
    """Skip the test when a peer binary is missing; fail instead under CI (or when
    ``CHUNKED_REQUIRE_PEERS=1``, which ``scripts/test.sh`` sets), where
    ``scripts/setup.sh`` must have installed them."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if not missing:
        return
    msg = f"missing peer binaries: {', '.join(missing)} (run scripts/setup.sh)"
    if _peers_required():
        pytest.fail(msg)
    pytest.skip(msg)


def _is_root() -> bool:
    return os.geteuid() == 0


@cache
def _can_unshare_mounts() -> bool:
    if not _is_root() or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def isolated_blob_cache(cmd: Sequence[str]) -> list[str]:
    """Wrap ``cmd`` so that it sees an empty containers/image blob info cache.

    As root the cache lives at a fixed path; the command runs in a private mount namespace
    with a fresh tmpfs over that directory.  Not root: the cache follows $XDG_DATA_HOME,
    which :func:`_peer_env` points at a private directory instead.
    """
    if not _can_unshare_mounts():
        return list(cmd)
    os.makedirs(SYSTEM_BLOB_INFO_CACHE, exist_ok=True)
    script = 'mount -t tmpfs -o mode=0700 chunked-test-cache "$0" && exec "$@"'
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", script, SYSTEM_BLOB_INFO_CACHE, *cmd,
    ]  # fmt: skip


@cache
def _private_xdg_data_home() -> str:
    return tempfile.mkdtemp(prefix="chunked-xdg-")


def _peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if not _is_root():  # root's blob info cache is handled by isolated_blob_cache()
        env["XDG_DATA_HOME"] = _private_xdg_data_home()
    if extra:
        env.update(extra)
    return env


def _run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = _DEFAULT_TIMEOUT,
    merge_stderr: bool = False,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _raise_for(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise PeerError(
            f"{what} failed (exit {proc.returncode}): {' '.join(map(str, proc.args))}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr or ''}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- registry

# distribution's access log is Apache "combined" format:
# 127.0.0.1 - - [28/Nov/2026:05:20:58 +0000] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 206 618 "" "ua"
_ACCESS_RE = re.compile(
    r"^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)


@dataclass(frozen=True)
class RegistryRequest:
    """One line of the registry's access log: ``size`` is the response body bytes."""

    method: str
    path: str
    status: int
    size: int
    agent: str

    @property
    def blob_digest(self) -> str | None:
        m = re.search(r"/blobs/(sha256:[0-9a-f]{64})", self.path)
        return m.group(1) if m else None


@dataclass
class Registry:
    """A running Debian ``docker-registry``."""

    host: str  # "127.0.0.1:PORT"
    root: Path  # filesystem storage
    log_path: Path  # combined stdout+stderr: logrus lines + access log lines
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, name: str) -> str:
        """``"test/a:1"`` -> ``"127.0.0.1:PORT/test/a:1"``."""
        return f"{self.host}/{name}"

    def docker_ref(self, name: str) -> str:
        """``"test/a:1"`` -> ``"docker://127.0.0.1:PORT/test/a:1"`` (skopeo syntax)."""
        return f"docker://{self.ref(name)}"

    def mark(self) -> int:
        """A position in the access log; pass it to ``requests(since=...)``."""
        self._settle()
        return self.log_path.stat().st_size

    def requests(self, since: int = 0) -> list[RegistryRequest]:
        """Requests answered since ``mark()`` returned ``since`` (all by default)."""
        self._settle()
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        out: list[RegistryRequest] = []
        for line in text.splitlines():
            m = _ACCESS_RE.match(line)
            if m is None:
                continue
            size = m.group("size")
            out.append(
                RegistryRequest(
                    method=m.group("method"),
                    path=m.group("uri"),
                    status=int(m.group("status")),
                    size=0 if size == "-" else int(size),
                    agent=m.group("agent"),
                )
            )
        return out

    def blob_bytes(self, since: int = 0, digest: str | None = None) -> int:
        """Body bytes of blob GETs since ``since`` (optionally of one blob only).

        Multi-range answers (206, multipart/byteranges) count their MIME framing too.
        """
        return sum(
            r.size
            for r in self.requests(since)
            if r.method == "GET"
            and r.blob_digest is not None
            and (digest is None or r.blob_digest == digest)
        )

    def _settle(self, quiet: float = 0.05, limit: float = 2.0) -> None:
        # The access log line is written just after the response body; give a client that
        # has just finished reading a moment for the line to land.
        deadline = time.monotonic() + limit
        size = self.log_path.stat().st_size
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.log_path.stat().st_size
            if now == size:
                return
            size = now

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (filesystem storage driver)."""
        hexd = digest.split(":", 1)[1]
        return self.root / f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"

    def kill(self) -> None:
        """Die as a crashed registry does: no goodbye to the clients."""
        self.process.kill()
        self.process.wait()

    def restart(self, timeout: float = 30.0) -> None:
        """Serve again on the same port from the same storage."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.root.parent / "config.yml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        _wait_for_registry(self.url, self.process, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


_REGISTRY_CONFIG = """\
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


def _wait_for_registry(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"docker-registry exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise PeerError(f"docker-registry did not answer {url}/v2/ within {timeout}s")


def start_registry(workdir: Path, *, timeout: float = 30.0, attempts: int = 3,
                   proxy_remote: str | None = None) -> Registry:
    """Start ``docker-registry serve`` on a free loopback port; caller must ``stop()`` it.

    ``proxy_remote`` (a URL) makes it distribution's pull-through cache of that registry.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    log_path = workdir / "registry.log"
    last_error: Exception | None = None
    for _ in range(attempts):
        port = _free_port()
        config = workdir / "config.yml"
        text = _REGISTRY_CONFIG.format(root=root, port=port)
        if proxy_remote:
            text += f"proxy:\n  remoteurl: {proxy_remote}\n"
        config.write_text(text)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        reg = Registry(host=f"127.0.0.1:{port}", root=root, log_path=log_path, process=proc)
        try:
            _wait_for_registry(reg.url, proc, timeout)
        except PeerError as e:  # e.g. the port was taken in between: try another
            reg.stop()
            last_error = e
            continue
        return reg
    tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    raise PeerError(f"could not start docker-registry: {last_error}\n{tail}")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    require_binaries(REGISTRY_BIN)
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def registry_repo(registry: Registry, request: pytest.FixtureRequest) -> str:
    """``127.0.0.1:PORT/t/<test-name>``: a repository no other test uses."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:100] or "x"
    return registry.ref(f"t/{name}")


# --------------------------------------------------------------------------- skopeo


def skopeo(*args: str, timeout: float = _DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``skopeo --insecure-policy ARGS`` with a private blob info cache; raise
    :class:`PeerError` (with stderr) on failure."""
    require_binaries(SKOPEO_BIN)
    cmd = isolated_blob_cache([SKOPEO_BIN, "--insecure-policy", *args])
    proc = _run(cmd, env=_peer_env(), timeout=timeout)
    _raise_for(proc, "skopeo")
    return proc


def skopeo_copy(src: str, dst: str, *extra: str, timeout: float = _DEFAULT_TIMEOUT) -> str:
    """``skopeo copy [tls flags] EXTRA SRC DST``; returns stdout.

    ``docker://`` sources/destinations get ``--src-tls-verify=false`` /
    ``--dest-tls-verify=false`` (the test registry speaks plain HTTP).  Use e.g.
    ``"--dest-compress-format", "zstd:chunked"`` as ``extra``.
    """
    flags: list[str] = []
    if src.startswith("docker://"):
        flags.append("--src-tls-verify=false")
    if dst.startswith("docker://"):
        flags.append("--dest-tls-verify=false")
    return skopeo("copy", *flags, *extra, src, dst, timeout=timeout).stdout


def skopeo_inspect(ref: str, *, raw: bool = False, config: bool = False) -> dict[str, object]:
    """``skopeo inspect`` of a ``docker://`` (or other transport) reference, as JSON."""
    flags = ["--tls-verify=false"] if ref.startswith("docker://") else []
    if raw:
        flags.append("--raw")
    if config:
        flags.append("--config")
    out = skopeo("inspect", *flags, ref).stdout
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


# --------------------------------------------------------------------------- podman

_MSG_RE = r'msg="{prefix}((?:[^"\\]|\\.)*)"'
_PARTIAL_OK_RE = re.compile(_MSG_RE.format(prefix=re.escape(PARTIAL_OK + " ")))
_FALLBACK_RE = re.compile(_MSG_RE.format(prefix=re.escape(PARTIAL_FALLBACK)))
_MISSING_RE = re.compile(r"Missing (\d+) bytes out of (\d+)")


class PullResult(NamedTuple):
    """``podman pull --log-level=debug`` outcome; unpacks as ``(returncode, log)``."""

    returncode: int
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def partial(self) -> bool:
        """At least one layer took the partial (zstd:chunked differ) path."""
        return PARTIAL_OK in self.log

    @property
    def partial_digests(self) -> list[str]:
        return [m.group(1) for m in _PARTIAL_OK_RE.finditer(self.log)]

    @property
    def fallback_reasons(self) -> list[str]:
        """Why a partial pull was refused (the layer was then fetched whole)."""
        return [m.group(1).replace('\\"', '"') for m in _FALLBACK_RE.finditer(self.log)]

    @property
    def missing_bytes(self) -> list[tuple[int, int]]:
        """``(missing, total)`` per partially pulled layer, from the differ's debug log."""
        return [(int(a), int(b)) for a, b in _MISSING_RE.findall(self.log)]


@cache
def _native_overlay_works() -> bool:
    """Can this kernel/sandbox mount overlayfs (what podman's overlay driver needs)?"""
    if not _is_root():
        return False
    with tempfile.TemporaryDirectory(prefix="chunked-ovl-probe-") as d:
        base = Path(d)
        for sub in ("l1", "l2", "upper", "work", "merged"):
            (base / sub).mkdir()
        opts = f"lowerdir={base}/l1:{base}/l2,upperdir={base}/upper,workdir={base}/work"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "merged")],
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            return False
        subprocess.run(["umount", str(base / "merged")], capture_output=True, check=False)
        return True


def overlay_mount_program() -> str | None:
    """``None`` for the kernel's overlayfs, else the ``mount_program`` to configure.

    ``CHUNKED_PODMAN_MOUNT_PROGRAM`` overrides (empty string = kernel overlay).
    """
    forced = os.environ.get("CHUNKED_PODMAN_MOUNT_PROGRAM")
    if forced is not None:
        return forced or None
    if _native_overlay_works():
        return None
    return shutil.which("fuse-overlayfs") or "/usr/bin/fuse-overlayfs"


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


class Podman:
    """podman with private storage: overlay driver, ``enable_partial_images = "true"``.

    Everything lives under ``workdir``: graph root, run root, libpod tmpdir, TMPDIR and the
    two config files passed via ``CONTAINERS_STORAGE_CONF`` / ``CONTAINERS_REGISTRIES_CONF``.
    """

    def __init__(
        self,
        workdir: Path,
        insecure_registries: Sequence[str] = (),
        *,
        partial: bool = True,
        mount_program: str | None = None,
        layer_store: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.layer_store = layer_store
        self.root = workdir / "root"
        self.runroot = workdir / "runroot"
        self.tmpdir = workdir / "libpod-tmp"
        self.tmp = workdir / "tmp"
        for d in (self.root, self.runroot, self.tmpdir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.storage_conf = workdir / "storage.conf"
        self.registries_conf = workdir / "registries.conf"
        self.storage_conf.write_text(
            self.storage_conf_text(self.root, self.runroot, partial, mount_program, layer_store)
        )
        # What `podman run` needs on this VM: crun refuses its hybrid cgroups, and
        # podman's default RLIMIT_NOFILE exceeds the hard limit.
        self.containers_conf = workdir / "containers.conf"
        self.containers_conf.write_text(
            '[engine]\nruntime = "runc"\n\n[containers]\n'
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        )
        lines = ["unqualified-search-registries = []", ""]
        for host in insecure_registries:
            lines += ["[[registry]]", f"location = {_toml_str(host)}", "insecure = true", ""]
        self.registries_conf.write_text("\n".join(lines))
        self.env = _peer_env(
            {
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
                "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
                "CONTAINERS_CONF": str(self.containers_conf),
                "TMPDIR": str(self.tmp),
                "XDG_DATA_HOME": str(workdir / "xdg-data"),
            }
        )
        self._closed = False

    @staticmethod
    def storage_conf_text(
        root: Path,
        runroot: Path,
        partial: bool = True,
        mount_program: str | None = None,
        layer_store: Path | None = None,
    ) -> str:
        text = (
            "[storage]\n"
            'driver = "overlay"\n'
            f"graphroot = {_toml_str(str(root))}\n"
            f"runroot = {_toml_str(str(runroot))}\n"
            "\n"
            "[storage.options]\n"
            f'pull_options = {{enable_partial_images = "{str(partial).lower()}", '
            'use_hard_links = "false", ostree_repos = ""}\n'
        )
        if layer_store is not None:
            text += f"additionallayerstores = [{_toml_str(f'{layer_store}:ref')}]\n"
        if mount_program:
            text += f"\n[storage.options.overlay]\nmount_program = {_toml_str(mount_program)}\n"
        return text

    def command(self, *args: str, log_level: str | None = None) -> list[str]:
        # podman 4.3 drops storage.conf's driver options (the additional layer store among
        # them) when --root or --storage-driver is given: storage.conf names both already
        storage = [] if self.layer_store is not None else [
            "--root", str(self.root),
            "--runroot", str(self.runroot),
            "--storage-driver", "overlay",
        ]  # fmt: skip
        cmd = [
            PODMAN_BIN,
            *storage,
            "--tmpdir", str(self.tmpdir),
            "--events-backend", "none",
            "--cgroup-manager", "cgroupfs",
        ]  # fmt: skip
        if log_level:
            cmd.append(f"--log-level={log_level}")
        return [*cmd, *args]

    def run(
        self,
        *args: str,
        log_level: str | None = None,
        isolate_cache: bool = False,
        merge_stderr: bool = False,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run podman; never raises on a non-zero exit (see :meth:`check`)."""
        cmd = self.command(*args, log_level=log_level)
        if isolate_cache:
            cmd = isolated_blob_cache(cmd)
        return _run(cmd, env=self.env, timeout=timeout, merge_stderr=merge_stderr)

    def check(self, *args: str, timeout: float = _DEFAULT_TIMEOUT) -> str:
        """Run podman, raise :class:`PeerError` on failure, return stdout."""
        proc = self.run(*args, timeout=timeout)
        _raise_for(proc, "podman")
        return proc.stdout

    def pull(self, ref: str, *extra: str, timeout: float = _DEFAULT_TIMEOUT) -> PullResult:
        """``podman --log-level=debug pull --tls-verify=false REF`` (fresh blob info cache).

        Returns ``(returncode, log)`` with stdout and stderr interleaved in ``log``.
        """
        proc = self.run(
            "pull", "--tls-verify=false", *extra, ref,
            log_level="debug", isolate_cache=True, merge_stderr=True, timeout=timeout,
        )  # fmt: skip
        return PullResult(proc.returncode, proc.stdout)

    def image_mount(self, ref: str) -> Path:
        """``podman image mount REF`` -> the read-only merged rootfs."""
        path = Path(self.check("image", "mount", ref).strip())
        if not path.is_dir():
            raise PeerError(f"podman image mount {ref} gave {path!r}, not a directory")
        return path

    def image_unmount(self, ref: str) -> None:
        self.check("image", "unmount", "--force", ref)

    def rmi(self, ref: str) -> None:
        self.check("rmi", "--force", ref)

    def images(self) -> list[dict[str, object]]:
        data = json.loads(self.check("images", "--format", "json") or "[]")
        assert isinstance(data, list)
        return data

    def close(self) -> None:
        """Unmount everything, reset the storage and delete ``workdir``."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.run("image", "unmount", "--all", "--force", timeout=60)
        with contextlib.suppress(Exception):
            self.run("system", "reset", "--force", timeout=120)
        _umount_below(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _umount_below(path: Path) -> None:
    """Lazily unmount whatever is still mounted at or below ``path`` (deepest first)."""
    prefix = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    targets = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            target = fields[4].encode().decode("unicode_escape")
            if target == prefix or target.startswith(prefix + "/"):
                targets.append(target)
    for target in sorted(set(targets), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def make_podman(
    workdir: Path,
    insecure_registries: Sequence[str] = (),
    *,
    partial: bool = True,
    mount_program: str | None = None,
    layer_store: Path | None = None,
) -> Podman:
    """A :class:`Podman` on private storage; checks the binaries (skip/fail) first.

    ``mount_program`` defaults to :func:`overlay_mount_program` (kernel overlay when it
    works, else fuse-overlayfs).  Call ``close()`` (or use ``with``) when done.
    """
    require_binaries(PODMAN_BIN)
    if mount_program is None:
        mount_program = overlay_mount_program()
    if mount_program:
        require_binaries(mount_program)
    if layer_store is not None:
        require_binaries("runc")
    return Podman(workdir, insecure_registries, partial=partial, mount_program=mount_program,
                  layer_store=layer_store)


@pytest.fixture
def podman(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Podman]:
    """A fresh podman storage for one test, trusting the test registry over plain HTTP."""
    p = make_podman(tmp_path_factory.mktemp("podman"), [registry.host])
    try:
        yield p
    finally:
        p.close()
