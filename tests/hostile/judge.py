"""Judging a command: its exit, stderr and peak RSS classified as ok, refused or failed
(:func:`judge_exit`), and the bytes it served (cat, mount) or the tree it wrote (pull)
held to the plain truth (:func:`compare_served`, :func:`compare_trees`)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tests.hostile.process import REPO, Run
from tests.hostile.truth import Node, Tree

OK, REFUSED, FAILED, SKIPPED = "ok", "refused", "failed", "skipped"


@dataclass
class Outcome:
    case: str
    klass: str
    command: str
    status: str
    reason: str = ""
    argv: list[str] = field(default_factory=list)
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    rss_mib: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status.upper():7} {self.case} [{self.klass}] {self.command}: {self.reason}"

    def explain(self) -> str:
        rc = self.rc if self.rc is not None else "none, killed by the harness (see above)"
        return (f"{self.line()}\n  argv: {self.argv}\n  exit: {rc}  peak RSS "
                f"{self.rss_mib:.0f} MiB  {self.seconds:.1f} s\n  stderr: "
                f"{_tail(self.stderr, 1500)}\n  stdout: {_tail(self.stdout, 300)}")


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-n:]


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def traceback_summary(stderr: str) -> str | None:
    """``ExcType: message at file:line in function`` for the innermost frame, or None."""
    if "Traceback (most recent call last)" not in stderr:
        return None
    frames = _FRAME.findall(stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    exc = next((ln for ln in reversed(lines) if not ln.startswith((" ", "\t"))), lines[-1])
    if not frames:
        return exc[:300]
    file, line, func = frames[-1]
    with contextlib.suppress(ValueError):
        file = str(Path(file).relative_to(REPO))
    return f"{exc[:300]} at {file}:{line} in {func}"


def judge_exit(run: Run, *, timeout: float, rss_limit_mib: int, must_succeed: bool,
               what: str = "") -> tuple[str, str] | None:
    """FAILED/REFUSED with a reason, or None when the command exited 0 (its output is then
    the caller's to check)."""
    tb = traceback_summary(run.stderr)
    if run.memory_killed:
        return FAILED, (f"unbounded memory: killed past {4 * rss_limit_mib} MiB of RSS "
                        f"(bound {rss_limit_mib} MiB){what}")
    if run.timed_out:
        return FAILED, f"hang: no exit after {timeout:.0f} s{what}"
    if tb:
        return FAILED, f"traceback: {tb}{what}"
    if run.rc is not None and run.rc < 0:
        return FAILED, f"killed by signal {signal.Signals(-run.rc).name}{what}"
    if run.rss_kib > rss_limit_mib << 10:
        return FAILED, f"peak RSS {run.rss_kib >> 10} MiB > {rss_limit_mib} MiB{what}"
    lines = [ln for ln in run.stderr.splitlines()
             if ln.strip() and not ln.startswith("chunked: warning:")]
    if run.rc == 0 or run.capped:
        bad = [ln for ln in lines if ln.startswith("chunked: error:")]
        if bad:
            return FAILED, f"exit 0 but an error line: {bad[0][:200]}{what}"
        return None
    if len(lines) != 1:
        shown = " | ".join(ln[:160] for ln in lines[:4])
        return FAILED, f"exit {run.rc} with {len(lines)} stderr lines: {shown}{what}"
    line = lines[0]
    if not line.startswith("chunked: error:"):
        return FAILED, f"exit {run.rc}, stderr is not 'chunked: error: ...': {line[:200]}{what}"
    if line.startswith("chunked: error: chunked: error:"):
        valid = " (and refused a valid input)" if must_succeed else ""
        return FAILED, f"doubled prefix: {line[:200]}{what}{valid}"
    if must_succeed:
        return FAILED, f"refused a valid input: {line[:200]}{what}"
    return REFUSED, line[:300]


# A layer without a tar-split (the old format) has a TOC nothing checks short of reading the
# whole layer; the issue lets mount and cat serve it as it is, provided they say so. Their
# bytes are then not held to the plain tar (a hang, a traceback or an escape still fail).
UNCHECKED_WARNING = "unchecked against the layer's tar"


def _says_unchecked(run: Run) -> bool:
    return UNCHECKED_WARNING in run.stderr


def compare_served(got: Tree, truth: Tree, members: Tree | None = None) -> list[str]:
    """Files served (cat, mount) must hold the plain tar's bytes; an error is no lie. Under
    a mount each file was read twice (O_DIRECT pieces, then buffered): both are judged.
    Bytes that GNU tar's extraction lacks pass if the stream's last member of that name
    holds them (``members``): GNU tar declines some names a lazy reader may serve."""
    problems = []
    for path, n in sorted(got.items()):
        if n.kind != "file":
            continue
        reads = [("", n.size, n.sha, n.more, n.error)]
        if n.buffered is not None:
            reads = [("O_DIRECT read: ", n.size, n.sha, n.more, n.error),
                     ("buffered read: ", *n.buffered)]
        for how, size, digest, more, error in reads:
            problem = _judge_read(size, digest, more, error, truth.get(path))
            if problem and members and path in members:
                problem = problem if _judge_read(size, digest, more, error, members[path]) \
                    else ""
            if problem:
                problems.append(f"{_show(path)}: {how}{problem}")
                break
    return problems


def _judge_read(size: int, digest: str, more: bool, error: str, want: Node | None) -> str:
    if error and size == 0:
        return ""
    if want is None or want.kind != "file":
        has = "no such path" if want is None else f"a {want.kind}"
        return f"{size} bytes served, the plain tar has {has}"
    if error:
        if want.data is not None and hashlib.sha256(want.data[:size]).hexdigest() != digest:
            return f"wrong bytes in the {size} served before {error}"
        return ""
    if size != want.size or digest != want.sha or more:
        return (f"wrong bytes ({size}{'+' if more else ''} served, sha256 {digest[:12]}; the "
                f"plain tar has {want.size}, {want.sha[:12]})")
    return ""


def compare_trees(got: Tree, truth: Tree) -> list[str]:
    """What pull wrote against GNU tar's extraction: paths, kinds, bytes, symlink targets."""
    problems = []
    for path in sorted(set(got) | set(truth)):
        g, w = got.get(path), truth.get(path)
        shown = _show(path)
        if w is None:
            assert g is not None
            problems.append(f"{shown}: a {g.kind} the plain tar does not have")
        elif g is None:
            problems.append(f"{shown}: the plain tar's {w.kind} is missing")
        elif g.kind != w.kind:
            problems.append(f"{shown}: a {g.kind}, the plain tar has a {w.kind}")
        elif g.kind == "file" and (g.size, g.sha) != (w.size, w.sha):
            problems.append(f"{shown}: wrong bytes ({g.size} bytes, sha256 {g.sha[:12]}; the "
                            f"plain tar has {w.size}, {w.sha[:12]})")
        elif g.kind == "symlink" and g.target != w.target:
            problems.append(f"{shown}: symlink to {g.target!r}, the plain tar's points to "
                            f"{w.target!r}")
    return problems


def _show(path: bytes) -> str:
    text = repr(path)[2:-1]
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


def _problems(found: list[str]) -> str:
    head = "; ".join(found[:3])
    return head + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
