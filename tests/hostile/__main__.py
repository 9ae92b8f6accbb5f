"""``python -m tests.hostile walk ROOT CAP`` is the reader used under a FUSE mount
(:meth:`tests.hostile.runner.Runner._read_mount` starts it): it runs in a process of its
own, so a hung mount costs a timeout, not the harness."""

from __future__ import annotations

import contextlib
import json
import resource
import sys

from tests.hostile.truth import _Truncated, walk


def _walk_main(root: str, cap: int) -> int:
    """Print every path under root as JSON lines, each file announced before it is read
    (so a hang names its file), for :meth:`Runner._read_mount`: files read with O_DIRECT
    in small pieces, then buffered."""
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one per directory level
    out = sys.stdout

    def announce(path: bytes) -> None:
        out.write(json.dumps({"at": path.hex()}) + "\n")
        out.flush()

    try:
        for path, node in walk(root, cap, before=announce, fine=True):
            out.write(json.dumps(node.wire(path)) + "\n")
    except _Truncated as exc:
        out.write(json.dumps({"truncated": str(exc)}) + "\n")
    except OSError as exc:
        out.write(json.dumps({"fatal": f"{root}: {exc}"}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["walk"]:
    sys.exit(_walk_main(sys.argv[2], int(sys.argv[3])))
