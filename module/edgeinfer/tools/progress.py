"""Progress of long commands (bench, quantize, deploy --wait) on stderr, with rich.

On a terminal a bar (or a spinner when the total is unknown) that disappears
when the work ends; elsewhere (a pipe, a CI log) one line a step, so logs keep
the story without control characters. stdout stays the result's alone (JSON
with ``--json``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Steps:
    """``update(description, completed)``: one task's progress."""

    def __init__(self, progress: Progress | None, total: float | None) -> None:
        self._progress = progress
        self._task = progress.add_task("", total=total) if progress is not None else None
        self._last = ""

    def update(self, description: str, completed: float | None = None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description, completed=completed)
        elif description != self._last:
            print(f"  {description}", file=sys.stderr, flush=True)
        self._last = description


@contextmanager
def progress(total: float | None, console: Console | None = None) -> Iterator[Steps]:
    """A progress display for one piece of work of ``total`` units (None: unknown)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield Steps(None, total)
        return
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as bar:
        yield Steps(bar, total)
