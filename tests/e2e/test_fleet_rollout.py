"""``edgeinfer rollout`` across twelve real module processes on the suite's mosquitto.

Every module serves the sample model and gets live readings throughout. A good
model goes out signed in three waves; a model that gives NaN on a quarter of the
modules' data (a data-dependent failure that only their probation catches) stops
the rollout after the wave that crosses the limit and every touched module goes
back to its previous version; a rollout killed mid-wave resumes from its state
file.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeinfer.errors import ConfigError
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.fleet.plan import FailureLimit, parse_waves, plan_waves
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, ROOT, Collector, ModuleProcess, Publisher, unique
from tests.updates_support import UPDATE_ENV, nan_below_model

INT8_DIR = ROOT / "models" / "har" / "int8-static"
SIZE = 12


# -- the plan -------------------------------------------------------------------------


def test_waves_are_cumulative_counts_or_shares_and_empty_waves_drop() -> None:
    ids = [f"m{n:02d}" for n in range(12)]
    waves = plan_waves(ids, parse_waves("1,5,25,100%"))
    assert [len(w) for w in waves] == [1, 4, 7]  # 25 modules is more than there are
    assert [m for wave in waves for m in wave] == ids
    assert [len(w) for w in plan_waves(ids, parse_waves("10%,50%,100%"))] == [2, 4, 6]
    assert [len(w) for w in plan_waves(ids, parse_waves("1%,2%,50%"))] == [1, 5]  # partial
    for bad in ("", "0", "5,x", "1.5", "150%", "-1", "nan"):
        with pytest.raises(ConfigError, match="--waves"):
            parse_waves(bad)


def test_the_failure_limit_is_a_count_or_a_share_of_the_finished() -> None:
    assert not FailureLimit.parse("2").exceeded(2, 3)
    assert FailureLimit.parse("2").exceeded(3, 3)
    assert not FailureLimit.parse("25%").exceeded(1, 4)
    assert FailureLimit.parse("25%").exceeded(2, 4)
    assert FailureLimit.parse("0").exceeded(1, 10)
    for bad in ("x", "-1", "101%"):
        with pytest.raises(ConfigError, match="--max-failure"):
            FailureLimit.parse(bad)


# -- end to end -----------------------------------------------------------------------


class Fleet:
    """Twelve modules labelled ``fleet=<unique>``, each fed readings from a thread."""

    def __init__(
        self,
        broker: LocalBroker,
        tmp: Path,
        recordings: Recordings,
        low: set[int] = frozenset(),  # type: ignore[assignment]
        **env: str,
    ) -> None:
        self.broker, self.tmp = broker, tmp
        self.label = unique("fleet")
        self.modules = [
            ModuleProcess(
                broker.url,
                ONNX_MODEL,
                tmp,
                module_id=f"{self.label}-{n:02d}",
                env={
                    **UPDATE_ENV,
                    "EDGEINFER_UPDATES_PROBATION_S": "3",
                    "EDGEINFER_UPDATES_PROBATION_MIN_READINGS": "10",
                    "EDGEINFER_MODULE_LABELS": f"fleet={self.label},n={n}",
                    "EDGEINFER_UPDATES_FILE_ROOTS": f"{ROOT / 'models'},{tmp}",
                    **env,
                },
            )
            for n in range(SIZE)
        ]
        for module in self.modules:
            module.start(wait=False)
        for module in self.modules:
            module.wait_ready(timeout=90)
        means = recordings.windows.mean(axis=(1, 2))
        self.threshold = float(np.median(means))
        self.high = recordings.windows[means > self.threshold]
        self.low_windows = recordings.windows[means < self.threshold]
        self.low = low
        self.sink = Collector(
            broker.url,
            [f"edgeinfer/{m.module_id}/{t}" for m in self.modules for t in ("reported", "desired")],
        )
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        """20 readings a second to each module; the ``low`` ones get low-mean windows."""
        pub = Publisher(self.broker.url)
        i = 0
        while not self._stop.wait(0.05):
            for n, module in enumerate(self.modules):
                windows = self.low_windows if n in self.low else self.high
                row = windows[i % len(windows)].tolist()
                pub.send(module.topic("imu"), {"id": i, "features": row})
            i += 1
        pub.close()

    def rollout(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "edgeinfer",
            "rollout",
            "--broker",
            self.broker.url,
            "--selector",
            f"fleet={self.label}",
            "--state",
            str(self.tmp / "rollout.json"),
            "--timeout",
            "60",
            *args,
        ]

    def reported(self, module: ModuleProcess) -> dict[str, Any]:
        docs = self.sink.docs(f"edgeinfer/{module.module_id}/reported")
        assert docs, f"no reported state from {module.module_id}"
        return docs[-1]

    def desired(self, module: ModuleProcess) -> list[dict[str, Any]]:
        return self.sink.docs(f"edgeinfer/{module.module_id}/desired")

    def state(self) -> dict[str, Any]:
        return dict(orjson.loads((self.tmp / "rollout.json").read_bytes()))

    def close(self) -> None:
        self._stop.set()
        self._feeder.join(10)
        self.sink.close()


def serving(
    fleet: Fleet, module: ModuleProcess, expected: tuple[str, str] | None = None
) -> tuple[str, str]:
    """(version, update state) it reports last; waits a little for ``expected``."""
    deadline = time.monotonic() + 5
    while True:
        doc = fleet.reported(module)
        now = doc["model"]["version"], doc["update"]["state"]
        if expected is None or now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def bad_model(tmp: Path, fleet: Fleet) -> Path:
    """NaN on windows whose mean is below the fleet's threshold; its self-test passes."""
    folder = tmp / "bad"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(nan_below_model(fleet.threshold))
    manifest = {"name": "har", "self_test": {"inputs": {"features": fleet.high[0].tolist()}}}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    return folder / "model.onnx"


def test_a_signed_rollout_in_three_waves_leaves_every_module_active(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    fleet = Fleet(
        broker, tmp_path, recordings, EDGEINFER_UPDATES_TRUSTED_KEYS=str(tmp_path / "public.pem")
    )
    try:
        args = (
            "--model",
            str(INT8_DIR / "model.onnx"),
            "--version",
            "1.1.0",
            "--waves",
            "1,25%,100%",
            "--max-failure",
            "10%",
            "--min-done",
            "3",
            "--sign-key",
            str(tmp_path / "key.pem"),
        )
        dry = fleet.rollout(*args, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "wave 1: 1 modules" in dry.stdout and "wave 3: 9 modules" in dry.stdout
        assert not (tmp_path / "rollout.json").exists()
        assert all(fleet.desired(m) == [] for m in fleet.modules)  # a dry run publishes nothing
        started = time.monotonic()
        done = fleet.rollout(*args)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        print(f"\n12 modules in 3 waves: {took:.1f} s\n{done.stdout}")
        for module in fleet.modules:
            assert serving(fleet, module, ("1.1.0", "active")) == ("1.1.0", "active")
            (doc,) = fleet.desired(module)  # one desired state each, signed, for it alone
            assert doc["target"] == {"module_id": module.module_id} and doc["signature"]
        state = fleet.state()
        assert state["phase"] == "done"
        assert [len(w) for w in state["waves"]] == [1, 2, 9]
        order = sorted(state["members"].values(), key=lambda m: m["published_at"])
        waves = [m["wave"] for m in order]
        assert waves == sorted(waves)  # no module of a wave went out before the last one ended
        first_of = {w: min(m["published_at"] for m in order if m["wave"] == w) for w in (1, 2)}
        last_of = {w: max(m["finished_at"] for m in order if m["wave"] == w) for w in (0, 1)}
        assert first_of[1] >= last_of[0] and first_of[2] >= last_of[1]
        again = fleet.rollout(*args)  # everything already serves it: nothing to do
        assert again.returncode == 2 and "already serves har 1.1.0" in again.stderr
    finally:
        fleet.close()


def test_a_model_failing_on_a_quarter_stops_the_rollout_and_reverts_every_touched_module(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    low = {2, 5, 9}  # a quarter of the fleet sees data the new model fails on
    fleet = Fleet(broker, tmp_path, recordings, low=low)
    try:
        bad = str(bad_model(tmp_path, fleet))
        done = fleet.rollout(
            "--model",
            bad,
            "--version",
            "2.0.0",
            "--waves",
            "2,6,100%",
            "--max-failure",
            "10%",
            "--min-done",
            "2",
        )
        assert done.returncode == 1, done.stdout + done.stderr
        print(f"\n{done.stdout}")
        state = fleet.state()
        assert state["phase"] == "aborted"
        touched = [m for m in fleet.modules if state["members"][m.module_id]["state"] != "pending"]
        assert {m.module_id for m in touched} <= set(state["waves"][0] + state["waves"][1])
        assert {fleet.modules[n].module_id for n in range(6)} == {m.module_id for m in touched}
        # 2 and 5 see the data it fails on; whichever rolled back first stopped the rollout.
        bad = [state["members"][fleet.modules[n].module_id] for n in (2, 5)]
        assert any(m["state"] == "rolled_back" and "NaN" in m["error"] for m in bad), bad
        assert {m["state"] for m in state["members"].values() if m["wave"] == 1} <= {
            "active",
            "rolled_back",
            "interrupted",
        }
        for module in fleet.modules:
            if module in touched:
                assert serving(fleet, module, ("1.0.0", "active")) == ("1.0.0", "active")
                assert state["members"][module.module_id]["revert"] == "reverted"
                last = fleet.desired(module)[-1]
                assert last["model"] == {"name": "har", "version": "1.0.0"}
            else:  # beyond the wave that crossed the limit: never touched
                assert fleet.desired(module) == []
                assert serving(fleet, module)[0] == "1.0.0"
        assert "back on their previous version" in done.stdout
    finally:
        fleet.close()


def test_a_rollout_killed_mid_wave_resumes_from_its_state_file(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    fleet = Fleet(broker, tmp_path, recordings)
    model = tmp_path / "int8" / "model.onnx"
    shutil.copytree(INT8_DIR, model.parent)
    args = (
        "--model",
        str(model),
        "--version",
        "1.2.0",
        "--waves",
        "1,4,100%",
        "--max-failure",
        "1",
    )
    try:
        proc = subprocess.Popen(fleet.command(*args), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the second wave is out
            try:
                state = fleet.state()
            except (FileNotFoundError, orjson.JSONDecodeError):
                state = {"members": {}}
            if any(m["wave"] == 1 and m["state"] == "published" for m in state["members"].values()):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = fleet.state()
        assert killed["phase"] == "rolling"
        assert all(m["state"] == "pending" for m in killed["members"].values() if m["wave"] == 2)
        fresh = fleet.rollout(*args)  # without --resume: refused, names the way on
        assert fresh.returncode == 2 and "--resume" in fresh.stderr
        dry = fleet.rollout(*args, "--resume", "--dry-run")  # prints where it stands, no more
        assert dry.returncode == 0 and "wave 3: 8 modules" in dry.stdout
        assert fleet.state() == killed
        resumed = fleet.rollout(*args, "--resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        state = fleet.state()
        assert state["phase"] == "done"
        for mid, before in killed["members"].items():
            if before["published_at"] is not None:  # not published afresh
                assert state["members"][mid]["published_at"] == before["published_at"]
        for module in fleet.modules:
            assert serving(fleet, module, ("1.2.0", "active")) == ("1.2.0", "active")
            docs = fleet.desired(module)
            assert len({d["sequence"] for d in docs}) == 1  # the same document, if re-sent
    finally:
        fleet.close()
