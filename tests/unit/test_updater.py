"""The updater in-process: a real store and real models, a fake engine slot, no broker."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgeinfer.config import UpdatesConfig
from edgeinfer.manifest.document import load_manifest
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.serving.admission import admit
from edgeinfer.updates.download import SupersededError
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.served import Served
from edgeinfer.updates.startup import seed_store
from edgeinfer.updates.store import ModelStore
from edgeinfer.updates.updater import Updater
from tests.fakes import runtime_options
from tests.support import ONNX_MODEL
from tests.updates_support import TFLITE


class FakeSlot:
    """Stands in for the engine: swaps at once."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.active = loaded

    def swap(self, active: LoadedModel) -> threading.Event:
        self.active = active
        applied = threading.Event()
        applied.set()
        return applied


class Harness:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.store = ModelStore(tmp / "state")
        stored = seed_store(self.store, ONNX_MODEL, runtime_options())
        loaded = admit(stored.model_file, stored.manifest(), runtime_options())
        self.slot = FakeSlot(loaded)
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        reporter = Reporter("m", self.store, self._publish)
        self.updater = Updater(
            UpdatesConfig(**config),
            self.store,
            Served(self.store, self.slot, stored),
            reporter,
            runtime_options(),
        )

    def _publish(self, payload: bytes) -> None:
        with self.lock:
            self.published.append((threading.current_thread().name, orjson.loads(payload)))

    def states(self) -> list[str]:
        with self.lock:
            return [doc["update"]["state"] for _, doc in self.published]

    def wait(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; states {self.states()}"
            time.sleep(0.01)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, probation_s=0.2)
    yield h
    h.updater.stop()


def test_the_reported_state_is_published_only_by_the_updater_thread(harness: Harness) -> None:
    harness.updater.start()
    callers = [threading.Thread(target=harness.updater.request_report) for _ in range(5)]
    for caller in callers:
        caller.start()
    harness.updater.submit_desired(b'{"model": {"name": "har", "version": "1.0.0"}}')
    for caller in callers:
        caller.join()
    harness.wait(lambda: len(harness.published) >= 3)
    time.sleep(0.2)
    assert {name for name, _ in harness.published} == {"updater"}


def test_an_inbox_install_superseded_by_a_desired_state_is_set_aside_with_the_reason(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_fetch(
        url: str,
        sha256: str,
        size: int,
        progress: Any,
        cancelled: Callable[[], bool],
        local: Path | None = None,
    ) -> Path:
        entered.set()
        release.wait(10)
        if cancelled():
            raise SupersededError
        raise AssertionError("the install should have been superseded")

    monkeypatch.setattr(harness.updater._gate.downloader, "fetch", slow_fetch)
    inbox = harness.store.inbox
    (inbox / "har.tflite").write_bytes(TFLITE)
    manifest = {
        "name": "har",
        "version": "2.0.0",
        "format": "tflite",
        "sha256": hashlib.sha256(TFLITE).hexdigest(),
        "size": len(TFLITE),
    }
    (inbox / "manifest.json").write_bytes(orjson.dumps(manifest))
    harness.updater.start()
    harness.updater.submit_local("inbox")
    assert entered.wait(10)
    harness.updater.submit_desired(b'{"model": {"name": "har", "version": "1.0.0"}}')
    release.set()
    harness.wait(lambda: bool(list((inbox / "rejected").glob("*/reason.txt"))))
    reason = next((inbox / "rejected").glob("*/reason.txt")).read_text().strip()
    assert reason == "inbox install refused: superseded by a newer desired state"
    assert load_manifest(harness.store.link("current").model_file).version == "1.0.0"


def test_a_stored_version_that_fails_its_self_test_is_refused_and_closed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from edgeinfer.model import loaded as loaded_module

    stored = harness.store.get("har", "1.0.0")
    bad = dataclasses.replace(
        stored.manifest(), version="2.0.0", self_test={"golden": {"probabilities": [[9, 9, 9, 9]]}}
    )
    harness.store.install(stored.model_file, dataclasses.replace(bad, format="onnx"))
    closed: list[str] = []
    real_load = loaded_module.load_model

    def tracking(*args: Any, **kwargs: Any) -> Any:
        model = real_load(*args, **kwargs)
        original = model.close

        def close() -> None:
            closed.append(str(args[0]))
            original()

        model.close = close  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(loaded_module, "load_model", tracking)
    harness.updater.start()
    harness.updater.submit_desired(b'{"model": {"name": "har", "version": "2.0.0"}}')
    harness.wait(lambda: "failed" in harness.states())
    report = harness.published[-1][1]["update"]
    assert report["target"] == {"name": "har", "version": "2.0.0"}
    assert "differs from golden" in report["error"]
    assert any(path.endswith("har/2.0.0/model.onnx") for path in closed)


def test_an_inbox_manifest_that_is_not_an_object_is_set_aside_with_the_reason(
    harness: Harness,
) -> None:
    inbox = harness.store.inbox
    (inbox / "har.tflite").write_bytes(TFLITE)
    (inbox / "manifest.json").write_bytes(b"[1, 2, 3]")
    harness.updater.start()
    harness.updater.submit_local("inbox")
    harness.wait(lambda: "failed" in harness.states())
    reason = next((inbox / "rejected").glob("*/reason.txt")).read_text().strip()
    assert reason == "inbox/manifest.json: manifest is a JSON list: expected an object"
    assert sorted(p.name for p in inbox.iterdir()) == ["rejected"]
