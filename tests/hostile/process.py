"""Running one command: in a session of its own, with a timeout, its stdout kept up to a
cap, an RLIMIT_NOFILE, its peak RSS measured and a memory watchdog (:func:`run_process`),
in the environment the CLI gets (:func:`cli_env`)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class Run:
    argv: list[str]
    rc: int | None  # None: the harness killed it (timeout, output cap)
    stdout: bytes  # at most the cap asked for
    stdout_total: int
    stderr: str
    seconds: float
    rss_kib: int
    timed_out: bool = False
    capped: bool = False
    memory_killed: bool = False


# Runs the command as its only child and reports that child's peak RSS on the descriptor
# named by its first argument. A child
# cannot be measured from the harness itself: exec folds the old address space's high-water
# mark into ru_maxrss, and a child forked (or vforked) from the harness starts from the
# harness's own, which holds blobs and trees. This launcher is a fresh, small interpreter.
_LAUNCHER = """
import os, sys
report = int(sys.argv[1])
os.set_inheritable(report, False)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(report, b"%d" % usage.ru_maxrss)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_process(argv: list[str], *, env: dict[str, str], timeout: float,
                stdout_cap: int = 1 << 20, kill_at_cap: bool = False,
                nofile: int | None = None, kill_above_mib: int | None = None) -> Run:
    """Run one command in a session of its own, with a timeout, its stdout kept up to a cap
    (and killed past it if asked), and its peak RSS (through :data:`_LAUNCHER`). Past
    ``kill_above_mib`` of RSS it is killed: a failure already, and the machine has other
    commands to run."""
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    start = time.monotonic()
    rss_r, rss_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(rss_w), *argv], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(rss_w,), start_new_session=True,
            preexec_fn=limit_files if nofile else None)
    finally:
        os.close(rss_w)
    out = bytearray()
    total = [0]
    err = bytearray()
    state = {"timed_out": False, "capped": False, "memory_killed": False}

    def kill(why: str) -> None:
        state[why] = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def read_out() -> None:
        assert proc.stdout is not None
        while piece := proc.stdout.read1(1 << 16):
            total[0] += len(piece)
            if len(out) < stdout_cap:
                out.extend(piece[:stdout_cap - len(out)])
            if kill_at_cap and total[0] > stdout_cap and not state["capped"]:
                kill("capped")

    def read_err() -> None:
        assert proc.stderr is not None
        while piece := proc.stderr.read1(1 << 16):
            if len(err) < 1 << 20:
                err.extend(piece)

    seen_kib = [0]

    def watch_memory() -> None:
        assert kill_above_mib is not None
        while proc.poll() is None:
            seen_kib[0] = max(seen_kib[0], _rss_kib(_children(proc.pid)))
            if seen_kib[0] > kill_above_mib << 10:
                kill("memory_killed")
                return
            time.sleep(0.2)

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    if kill_above_mib:
        readers.append(threading.Thread(target=watch_memory, daemon=True))
    for t in readers:
        t.start()
    timer = threading.Timer(timeout, kill, ("timed_out",))
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()
    with os.fdopen(rss_r, "rb") as f:
        rss = f.read()
    for t in readers:
        t.join(5)  # a descendant that kept our pipes open does not hold the harness
    killed = state["timed_out"] or state["capped"] or state["memory_killed"]
    # killed, the launcher reports nothing: what the watchdog saw last stands in
    return Run(argv, None if killed else proc.returncode, bytes(out), total[0],
               err.decode("utf-8", "replace"), time.monotonic() - start,
               int(rss) if rss.isdigit() else seen_kib[0], state["timed_out"],
               state["capped"], state["memory_killed"])


def _children(pid: int) -> list[int]:
    """Every descendant of pid (a background mount's server is the mount command's child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            out += kids
            todo += kids
    return out


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
            total += int(m.group(1)) if m else 0
    return total


def cli_env(case_env: dict[str, str], tmp: Path) -> dict[str, str]:
    """A fixed UTF-8 locale (the case may change it), and TMPDIR inside the sandbox so the
    command's temporary files (a background mount's log) stay with it."""
    drop = {"PYTHONUTF8", "PYTHONIOENCODING", "LC_ALL", "LC_CTYPE", "LANG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(LC_ALL="C.UTF-8", TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    env.update(case_env)
    return env
