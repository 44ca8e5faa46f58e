"""``edgeinfer fleet status``: every module the broker knows, from its retained topics.

Each module keeps three retained messages: ``edgeinfer/{id}/status`` (online,
or offline by its last will), ``reported`` (model, update, rollout, labels,
hardware) and ``health`` (readings and errors a second, latency, queue). A
fleet view subscribes to the three, takes what the broker holds, and shows it;
it never guesses: a module with no health summary shows none.
"""

from __future__ import annotations

from typing import Any

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError
from edgeinfer.tools.fleet.watch import FleetWatch


def parse_selector(text: str | None) -> dict[str, str]:
    """``site=a,line=3`` as a dict; ConfigError naming the bad part."""
    selector: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--selector", text, "label=value pairs separated by commas")
        selector[key.strip()] = value.strip()
    return selector


def collect(broker: BrokerConfig, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every module with a retained status, reported state or health summary, sorted by id."""
    watch = FleetWatch(broker)
    try:
        watch.settle(timeout)
        return watch.modules()
    finally:
        watch.close()


def select(modules: list[dict[str, Any]], selector: dict[str, str]) -> list[dict[str, Any]]:
    """The modules whose labels match every ``label=value`` of the selector."""
    return [m for m in modules if all(m["labels"].get(k) == v for k, v in selector.items())]


def table(modules: list[dict[str, Any]]) -> str:
    """One line a module."""
    head = ("module", "online", "model", "update", "rollout", "readings/s", "errors/s", "labels")
    rows = [head]
    for m in modules:
        model = m["model"] or {}
        update = m["update"] or {}
        rollout = m["rollout"] or {}
        health = m["health"] or {}
        rows.append(
            (
                m["module_id"],
                "yes" if m["online"] else "no",
                f"{model.get('name', '-')} {model.get('version', '')}".strip(),
                update.get("state", "-"),
                f"{rollout['mode']} {rollout.get('percent', 0):g}% {rollout.get('verdict', '')}"
                if rollout
                else "-",
                _number(health.get("readings_per_s")),
                _number(health.get("errors_per_s")),
                ",".join(f"{k}={v}" for k, v in sorted(m["labels"].items())) or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}"
