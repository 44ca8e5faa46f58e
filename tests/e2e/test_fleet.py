"""Fleet views from the broker alone: labels and hardware reported, a retained health
summary, and ``edgeinfer fleet status`` over modules online and offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher, unique


def fleet(broker: LocalBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer", "fleet", "status", "--broker", broker.url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fleet_status_shows_every_module_online_or_not_with_labels_and_health(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
    modules: list[ModuleProcess],
    recordings: Recordings,
) -> None:
    fleet_id = unique("f")  # this test's modules, among the suite's others on the broker
    sites = {"a": 2, "b": 1}
    started = []
    for site, count in sites.items():
        for n in range(count):
            env = {
                "EDGEINFER_MODULE_LABELS": f"site={site},fleet={fleet_id},n={n}",
                "EDGEINFER_MODULE_HEALTH_INTERVAL_S": "0.3",
            }
            module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path, env=env).start()
            modules.append(module)
            started.append((site, module))
    sink = collector([f"edgeinfer/{m.module_id}/health" for _, m in started])
    pub = publisher()
    for i in range(100):
        for _, module in started:
            pub.send(
                module.topic("imu"), {"id": i, "features": recordings.windows[i % 40].tolist()}
            )
    pub.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
        any(d["readings_per_s"] > 0 for d in sink.docs(f"/{m.module_id}/")) for _, m in started
    ):
        time.sleep(0.1)
    stopped = started[-1][1]
    stopped.stop()  # SIGTERM: it says "offline" on its retained status

    listed = fleet(broker, "--json", "--selector", f"fleet={fleet_id}")
    assert listed.returncode == 0, listed.stderr
    found: dict[str, dict[str, Any]] = {m["module_id"]: m for m in orjson.loads(listed.stdout)}
    assert set(found) == {m.module_id for _, m in started}
    for site, module in started:
        doc = found[module.module_id]
        assert doc["online"] is (module is not stopped)
        assert doc["labels"]["site"] == site
        assert (doc["model"]["name"], doc["model"]["version"]) == ("har", "1.0.0")
        assert doc["update"]["state"] in ("idle", "active")
        assert doc["hardware"]["cores"] == os.cpu_count()
        assert doc["health"]["queue_depth"] >= 0
    assert max(d["readings_per_s"] for d in sink.docs("/health")) > 0

    only_b = fleet(broker, "--json", "--selector", f"fleet={fleet_id},site=b")
    assert [m["module_id"] for m in orjson.loads(only_b.stdout)] == [stopped.module_id]
    shown = fleet(broker, "--selector", f"fleet={fleet_id}")
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:4] == ["module", "online", "model", "update"]
    assert len(lines) == 1 + len(started)
    assert any(stopped.module_id in line and " no " in line for line in lines)
    bad = fleet(broker, "--selector", "site")
    assert bad.returncode == 2 and "--selector" in bad.stderr
    pub.flush()
