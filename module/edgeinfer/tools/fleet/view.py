"""The live table of ``edgeinfer rollout`` on a terminal (rich); plain lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgeinfer.tools.fleet.plan import ACTIVE, FAILURES, PENDING, RolloutState

STYLES = {ACTIVE: "green", PENDING: "dim", "published": "yellow"}


def table(state: RolloutState, reported: Callable[[str], dict[str, Any]]) -> Group:
    """One row a module: its wave, the rollout's view of it, and what it reports now."""
    grid = Table(title=f"rollout of {state.name} {state.version}: {state.phase}")
    for column in ("module", "wave", "rollout", "serving", "update", "back", "error"):
        grid.add_column(column)
    for member in sorted(state.members.values(), key=lambda m: (m.wave, m.module_id)):
        doc = reported(member.module_id)
        model = doc.get("model") or {}
        update = doc.get("update") or {}
        style = "red" if member.state in FAILURES else STYLES.get(member.state, "")
        grid.add_row(
            member.module_id,
            str(member.wave + 1),
            Text(member.state, style=style),
            str(model.get("version", "-")),
            str(update.get("state", "-")),
            member.revert or "",
            (member.error or "")[:60],
        )
    took = time.time() - state.started_at
    done = f"{state.finished()} of {len(state.members)} done, {state.failures()} failed"
    return Group(grid, Text(f"{done}, {took:.0f} s"))


@contextmanager
def live_view(
    state: RolloutState, reported: Callable[[str], dict[str, Any]]
) -> Iterator[tuple[Callable[[str], None], Callable[[], None]]]:
    """``(show, refresh)`` for the runner: a live table on a terminal, lines elsewhere."""
    console = Console()
    if not console.is_terminal:
        yield (lambda line: print(line, flush=True)), (lambda: None)
        return
    with Live(table(state, reported), console=console, refresh_per_second=4) as live:
        yield live.console.print, lambda: live.update(table(state, reported))
