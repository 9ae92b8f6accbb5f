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


@contextlib.contextmanager
def progress_bars(*, enabled: bool = True
                  ) -> Iterator[Callable[[str, int | None], Callable[[int], None]] | None]:
    """One display of several bars (rich allows one live display at a time): yield a
    function that adds a bar and returns its callback (absolute bytes done), or None when
    silent."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    import threading

    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    lock = threading.Lock()
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as display:
        def add(label: str, total: int | None) -> Callable[[int], None]:
            with lock:
                task = display.add_task(label, total=total)

            def advance(n: int) -> None:
                display.update(task, completed=n)

            return advance

        yield add
