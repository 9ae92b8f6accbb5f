"""Progress bars on stderr for long work (rich), silent when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, *, enabled: bool = True
                 ) -> Iterator[Callable[..., None] | None]:
    """Yield a callback taking the absolute number of bytes done (or None when silent);
    work that learns its size only once started passes ``total=`` to the callback."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        done = 0

        def advance(n: int, total: int | None = None) -> None:
            nonlocal done
            done = n
            if total is not None:
                bar.update(task, completed=n, total=total)
            else:
                bar.update(task, completed=n)

        yield advance
        if total is None:
            bar.update(task, total=done)
