"""Watch the store (watchdog): a hand-edited ``current``, a model dropped in ``inbox/``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


def _not_the_stop_race(record: logging.LogRecord) -> bool:
    """watchdog logs an ERROR when its emitter thread reads once more after stop()
    closed inotify (gorakhargosh/watchdog#963): harmless at shutdown, and not ours."""
    return "called when the thread is inactive" not in record.getMessage()


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, notify: Callable[[str], None]) -> None:
        self._current = str(root / "current")
        self._inbox = str(root / "inbox")
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if self._current in paths:
            self._notify("current")
        if any(
            p.startswith(self._inbox + "/") and "/rejected" not in p[len(self._inbox) :]
            for p in paths
        ):
            self._notify("inbox")


class StoreWatcher:
    """Calls ``notify("current")`` or ``notify("inbox")`` from watchdog's thread."""

    def __init__(self, root: Path, notify: Callable[[str], None]) -> None:
        self._observer = Observer()
        handler = _Handler(root, notify)
        self._observer.schedule(handler, str(root), recursive=False)
        self._observer.schedule(handler, str(root / "inbox"), recursive=False)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        logging.getLogger("watchdog.observers.inotify").addFilter(_not_the_stop_race)
        self._observer.stop()
        self._observer.join(5)
