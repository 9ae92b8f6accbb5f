"""The runner: every CLI command of a case, each in a sandbox of its own, its outcome
classified as ok, refused or failed (:class:`Runner`, bounded by :class:`Limits`)."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.clirun import COMMAND
from tests.hostile.cases import COMMANDS, Case, CaseDir, write_case
from tests.hostile.judge import (
    FAILED,
    OK,
    REFUSED,
    SKIPPED,
    Outcome,
    _problems,
    _says_unchecked,
    _show,
    compare_served,
    compare_trees,
    judge_exit,
    traceback_summary,
)
from tests.hostile.process import Run, cli_env, run_process
from tests.hostile.sandbox import (
    Sandbox,
    _alive,
    _force_unmount,
    _kill_servers,
    _vm_hwm_kib,
    is_mounted,
)
from tests.hostile.truth import Node, Tree, _Truncated, rooted_clean, walk


@dataclass(frozen=True)
class Limits:
    timeout: float = 60.0  # any command, unless the case says otherwise
    mount_timeout: float = 30.0  # until `chunked mount` returns
    walk_timeout: float = 60.0  # reading everything under a mount
    rss_limit_mib: int = 512  # peak RSS of any command (or mount server)
    cat_paths: int = 6  # paths given to cat per case


class Runner:
    def __init__(self, work: Path, limits: Limits | None = None, jobs: int = 2):
        self.work = work
        self.limits = limits or Limits()
        self.jobs = jobs

    def prepare(self, case: Case) -> CaseDir:
        root = Path(tempfile.mkdtemp(prefix=re.sub(r"[^\w.-]", "_", case.name)[:60] + "-",
                                     dir=self.work))
        return write_case(case, root)

    def run(self, cd: CaseDir, commands: tuple[str, ...] = COMMANDS) -> dict[str, Outcome]:
        """The commands of one case, ``jobs`` at a time (each is mostly a child's CPU)."""
        with cf.ThreadPoolExecutor(self.jobs) as pool:
            futures = {c: pool.submit(self.run_one, cd, c) for c in commands}
        return {c: f.result() for c, f in futures.items()}

    def run_one(self, cd: CaseDir, command: str) -> Outcome:
        sb = Sandbox(cd, cd.root, command)
        try:
            outcome = getattr(self, "_" + command.replace("-", "_"))(cd, sb)
            escaped = sb.escapes()
            if escaped:
                outcome.status = FAILED
                outcome.reason = (f"escape: outside DEST {_problems(escaped)}"
                                  + (f"; {outcome.reason}" if outcome.reason else ""))
            return outcome
        finally:
            sb.close()

    # -- helpers -------------------------------------------------------------------------
    def _timeout(self, cd: CaseDir) -> float:
        return cd.meta.get("timeout") or self.limits.timeout

    def _rss(self, cd: CaseDir) -> int:
        return cd.meta.get("rss_limit_mib") or self.limits.rss_limit_mib

    def _cli(self, cd: CaseDir, sb: Sandbox, args: list[str], *, timeout: float | None = None,
             stdout_cap: int = 1 << 20, kill_at_cap: bool = False) -> Run:
        return run_process([*COMMAND, *args],
                           env=cli_env(cd.meta["env"], sb.tmp),
                           timeout=timeout or self._timeout(cd), stdout_cap=stdout_cap,
                           kill_at_cap=kill_at_cap, nofile=cd.meta["nofile"],
                           kill_above_mib=4 * self._rss(cd))

    def _judge(self, cd: CaseDir, command: str, run: Run, *, timeout: float | None = None,
               what: str = "") -> tuple[str, str] | None:
        return judge_exit(run, timeout=timeout or self._timeout(cd), rss_limit_mib=self._rss(cd),
                          must_succeed=command in cd.meta["must_succeed"], what=what)

    @staticmethod
    def _outcome(cd: CaseDir, command: str, run: Run, status: str, reason: str,
                 rss_kib: int | None = None) -> Outcome:
        return Outcome(cd.name, cd.klass, command, status, reason, [str(a) for a in run.argv],
                       run.rc, run.stdout[:4000].decode("utf-8", "replace"), run.stderr[-8000:],
                       (rss_kib if rss_kib is not None else run.rss_kib) / 1024, run.seconds)

    def _simple(self, cd: CaseDir, command: str, run: Run,
                check: Callable[[Run], str | None] | None = None) -> Outcome:
        verdict = self._judge(cd, command, run)
        if verdict is None:
            problem = check(run) if check else None
            verdict = (FAILED, problem) if problem else (OK, "")
        return self._outcome(cd, command, run, *verdict)

    # -- the commands --------------------------------------------------------------------
    def _inspect(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        args = ["inspect", "--descriptor", str(sb.descriptor), "--", str(sb.blob)]
        return self._simple(cd, "inspect", self._cli(cd, sb, args))

    def _inspect_json(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        def check(run: Run) -> str | None:
            if run.stdout_total > len(run.stdout):
                return None  # a TOC bomb's listing: too long to keep, nothing to parse
            try:
                json.loads(run.stdout)
            except ValueError as exc:
                return f"exit 0 but stdout is not JSON: {exc}"
            return None

        args = ["inspect", "--json", "--descriptor", str(sb.descriptor), "--", str(sb.blob)]
        return self._simple(cd, "inspect-json", self._cli(cd, sb, args, stdout_cap=64 << 20),
                            check)

    def _verify(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        def check(run: Run) -> str | None:
            m = re.search(rb"diffID (sha256:[0-9a-f]{64})", run.stdout)
            truth = cd.layer.diff_id
            if m and truth and m.group(1).decode() != truth:
                return (f"exit 0 but diffID {m.group(1).decode()}; the plain decompression "
                        f"is {truth}")
            return None

        args = ["verify", "--descriptor", str(sb.descriptor), "--", str(sb.blob)]
        return self._simple(cd, "verify", self._cli(cd, sb, args), check)

    def _verify_oci(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        return self._simple(cd, "verify-oci", self._cli(cd, sb, ["verify", "-q", "--", sb.ref]))

    def _pull(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        truth = cd.image

        def check(run: Run) -> str | None:
            if truth is None:
                return None
            cap = max((n.size for n in truth.values() if n.kind == "file"), default=0) + 1
            try:
                got = dict(walk(sb.dest, cap))
            except _Truncated as exc:
                return f"pull wrote {exc}"
            found = compare_trees(got, truth)
            return f"wrong tree: {_problems(found)}" if found else None

        args = ["pull", "--no-cache", "-q", "--", sb.ref, str(sb.dest)]
        return self._simple(cd, "pull", self._cli(cd, sb, args), check)

    def cat_paths(self, cd: CaseDir) -> list[str]:
        """The mutated names first, then the plain tar's files, then the TOC's: each path
        once (as it lands), at most ``cat_paths`` of them. A NUL cannot be an argument."""
        names = list(cd.meta["focus"])
        if cd.layer.tree is not None:
            names += [os.fsdecode(p) for p, n in sorted(cd.layer.tree.items()) if n.kind == "file"]
        names += cd.meta["toc_files"]
        seen: set[str] = set()
        out = []
        for name in names:
            key = rooted_clean(name)
            if not key or key in seen or "\0" in name:
                continue
            seen.add(key)
            out.append(name)
            if len(out) == self.limits.cat_paths:
                break
        return out

    def _cat(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        tree = cd.layer.tree
        results: list[tuple[str, str, str, Run]] = []
        for name in self.cat_paths(cd) or ["etc/hello.txt"]:
            key = os.fsencode(rooted_clean(name))
            want = tree.get(key) if tree is not None else None
            cap = want.size + 1 if want is not None and want.kind == "file" else 1 << 16
            args = ["cat", "--descriptor", str(sb.descriptor), "--", str(sb.blob), name]
            run = self._cli(cd, sb, args, stdout_cap=cap, kill_at_cap=True)
            verdict = self._judge(cd, "cat", run, what=f" (cat {_show(os.fsencode(name))})")
            if verdict is None:
                verdict = (OK, "")
                if tree is not None and not _says_unchecked(run):
                    got = Node("file", len(run.stdout), hashlib.sha256(run.stdout).hexdigest(),
                               run.stdout_total > len(run.stdout))
                    found = compare_served({key: got}, tree, cd.layer.members)
                    if found:
                        verdict = (FAILED, f"cat {_show(os.fsencode(name))}: {found[0]}")
            results.append((name, verdict[0], verdict[1], run))
        worst = next(r for s in (FAILED, REFUSED, OK) for r in results if r[1] == s)
        status = worst[1]
        # every failure, but a refusal once: the same message for each path says nothing new
        reasons = [r[2] for r in results if r[1] == status and r[2]]
        reason = "; ".join(reasons if status == FAILED else reasons[:1])
        return self._outcome(cd, "cat", worst[3], status, reason,
                             max(r[3].rss_kib for r in results))

    def _mount(self, cd: CaseDir, sb: Sandbox) -> Outcome:
        if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
            return Outcome(cd.name, cd.klass, "mount", SKIPPED, "no /dev/fuse or fusermount3")
        # a case's own timeout (a bomb's) covers coming up and reading too
        up = max(self.limits.mount_timeout, cd.meta.get("timeout") or 0)
        run = self._cli(cd, sb, ["mount", "--no-cache", "--", sb.ref, str(sb.mnt)], timeout=up)
        m = re.search(rb"\(pid (\d+)", run.stdout)
        pid = int(m.group(1)) if m else None
        try:
            verdict = self._judge(cd, "mount", run, timeout=up,
                                  what=" (the mount never came up)" if run.timed_out else "")
            if verdict is not None:
                status, reason = verdict
                server_tb = _server_traceback(sb)
                if status == REFUSED and server_tb:
                    status, reason = FAILED, f"traceback in the mount server's log: {server_tb}"
                if is_mounted(sb.mnt) and not run.timed_out:
                    status, reason = FAILED, f"mount failed but left a mount behind; {reason}"
                return self._outcome(cd, "mount", run, status, reason)
            if not is_mounted(sb.mnt):
                return self._outcome(cd, "mount", run, FAILED, "exit 0 but nothing is mounted")
            status, reason = self._read_mount(cd, sb, pid, _says_unchecked(run))
            rss = max(run.rss_kib, _vm_hwm_kib(pid))
            if status == OK and rss > self._rss(cd) << 10:
                status, reason = FAILED, (f"peak RSS of the mount server {rss >> 10} MiB > "
                                          f"{self._rss(cd)} MiB")
            um = self._cli(cd, sb, ["umount", str(sb.mnt)], timeout=30)
            if status == OK and um.rc != 0:
                status, reason = FAILED, f"umount fails: {um.stderr.strip()[:200]}"
            elif status == OK and pid and not _wait_gone(pid, 10):
                status, reason = FAILED, "the mount server still runs 10 s after umount"
            server_tb = _server_traceback(sb)
            if status == OK and server_tb:
                status, reason = FAILED, f"traceback in the mount server's log: {server_tb}"
            return self._outcome(cd, "mount", run, status, reason, rss)
        finally:
            _force_unmount(sb.mnt)
            _kill_servers(sb.mnt, pid)

    def _read_mount(self, cd: CaseDir, sb: Sandbox, pid: int | None,
                    unchecked: bool = False) -> tuple[str, str]:
        """Read every file under the mount in a child of its own; compare what was served
        (unless the mount said it serves a TOC it could not check: see _says_unchecked)."""
        truth = cd.image
        cap = (max((n.size for n in truth.values() if n.kind == "file"), default=0) + 1
               if truth is not None else 1 << 20)
        walk_timeout = max(self.limits.walk_timeout, cd.meta.get("timeout") or 0)
        walker = run_process([sys.executable, "-m", "tests.hostile", "walk", str(sb.mnt),
                              str(cap)], env=cli_env({}, sb.tmp), timeout=walk_timeout,
                             stdout_cap=256 << 20)
        got: Tree = {}
        at = b""
        for line in walker.stdout.splitlines():
            doc = json.loads(line)
            if "at" in doc:
                at = bytes.fromhex(doc["at"])
            elif "truncated" in doc:
                return FAILED, f"the mount shows {doc['truncated']} entries (a loop?)"
            elif "fatal" in doc:
                return FAILED, f"the mount cannot be read: {doc['fatal']}"
            else:
                path, node = Node.unwire(doc)
                got[path] = node
        if walker.timed_out:
            return FAILED, (f"hang: reading {_show(at)} under the mount got no answer in "
                            f"{walk_timeout:.0f} s")
        if pid and not _alive(pid):
            return FAILED, "the mount server died while files were read"
        found = compare_served(got, truth, cd.image_members) if truth is not None else []
        if found and not unchecked:
            return FAILED, f"wrong bytes under the mount: {_problems(found)}"
        return OK, ""


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _server_traceback(sb: Sandbox) -> str | None:
    """A traceback in the background server's log (TMPDIR is the sandbox's)."""
    for log in sorted(sb.tmp.glob("chunked-mount-*.log")):
        tb = traceback_summary(log.read_text(errors="replace"))
        if tb:
            return tb
    return None
