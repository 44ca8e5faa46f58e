"""``edgeinfer fleet status``: every module the broker knows, from its retained topics.

Each module keeps three retained messages: ``edgeinfer/{id}/status`` (online,
or offline by its last will), ``reported`` (model, update, rollout, labels,
hardware) and ``health`` (readings and errors a second, latency, queue). A
fleet view subscribes to the three, takes what the broker holds, and shows it;
it never guesses: a module with no health summary shows none.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import paho.mqtt.client as paho

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError
from edgeinfer.tools.simulate import connect_client

#: Retained messages arrive right after the subscription: stop once none came for this long.
QUIET_S = 0.5


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
    """Every module with a retained status or reported state, sorted by id."""
    found: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3 or not msg.payload:
            return
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        with lock:
            found.setdefault(parts[1], {})[parts[2]] = doc
            last[0] = time.monotonic()

    topics = ["edgeinfer/+/status", "edgeinfer/+/reported", "edgeinfer/+/health"]
    client = connect_client(broker, on_message=on_message, subscribe=topics)
    try:
        started = time.monotonic()
        while time.monotonic() - started < timeout and time.monotonic() - last[0] < QUIET_S:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return [_module(mid, parts) for mid, parts in sorted(found.items())]


def _module(module_id: str, parts: dict[str, Any]) -> dict[str, Any]:
    reported = parts.get("reported") or {}
    status = parts.get("status") or {}
    return {
        "module_id": module_id,
        "online": status.get("state") == "online",
        "labels": reported.get("labels") or {},
        "model": reported.get("model"),
        "update": reported.get("update"),
        "rollout": reported.get("rollout"),
        "health": parts.get("health"),
        "hardware": reported.get("hardware"),
    }


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
        rows.append((
            m["module_id"],
            "yes" if m["online"] else "no",
            f"{model.get('name', '-')} {model.get('version', '')}".strip(),
            update.get("state", "-"),
            f"{rollout['mode']} {rollout.get('percent', 0):g}% {rollout.get('verdict', '')}"
            if rollout else "-",
            _number(health.get("readings_per_s")),
            _number(health.get("errors_per_s")),
            ",".join(f"{k}={v}" for k, v in sorted(m["labels"].items())) or "-",
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}"
