"""Helpers for the stream tests: windowed models, an in-process engine, offline references."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from edgeinfer.manifest.document import load_manifest
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.engine import Engine
from edgeinfer.pipeline.message import Message
from edgeinfer.pipeline.responder import Responder
from edgeinfer.serving.admission import admit
from tests.fakes import FakePublisher, engine_settings, runtime_options
from tests.support import ONNX_MODEL


def windowed_model(
    tmp: Path,
    window: dict[str, Any],
    state: dict[str, Any] | None = None,
    source: Path = ONNX_MODEL,
) -> Path:
    """A copy of ``source`` whose manifest declares ``window`` (and ``state``)."""
    folder = tmp / f"windowed-{time.monotonic_ns()}"
    folder.mkdir()
    target = folder / source.name
    shutil.copyfile(source, target)
    doc = load_manifest(source).to_doc()
    doc.pop("self_test", None)  # a whole-window reading; generated ones follow the rules
    doc.update(window=window)
    if state is not None:
        doc["state"] = state
    (folder / "manifest.json").write_bytes(orjson.dumps(doc))
    return target


class InProcess:
    """A real model admitted as the module would, on an engine with a fake publisher."""

    def __init__(self, model: Path, journal: Path | None = None, max_batch: int = 32) -> None:
        self.loaded = admit(model, None, runtime_options())
        self.publisher = FakePublisher()
        self.metrics = Metrics()
        self.acked: list[object] = []
        settings = engine_settings(
            max_batch=max_batch,
            max_delay_ms=0.0,
            queue_size=100_000,
            max_payload_bytes=1 << 20,
            journal=journal,
        )
        responder = Responder(self.publisher, self.metrics, "edgeinfer/m/errors")
        self.engine = Engine(self.loaded, settings, responder, self.metrics)

    def send(self, topic: str, doc: dict[str, Any] | bytes, work: bool = True) -> None:
        payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        rid = doc.get("id") if isinstance(doc, dict) else None
        self.engine.submit(
            Message(topic, payload, time.perf_counter(), lambda: self.acked.append(rid))
        )
        if work:
            while self.engine.due() == 0:
                self.engine.work()

    def results(self) -> list[dict[str, Any]]:
        return [d for t, d in self.publisher.sent if t.startswith("out/")]

    def errors(self) -> list[dict[str, Any]]:
        return [d for t, d in self.publisher.sent if t.endswith("/errors")]


def reference_windows(
    model: Path, samples: np.ndarray, size: int, hop: int
) -> list[tuple[int, int, np.ndarray]]:
    """(first index, last index, probabilities) of every full window, run one at a time."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(samples) - size + 1, hop):
        window = samples[start : start + size][None].astype(np.float32)
        out.append((start, start + size - 1, session.run(None, {name: window})[0][0]))
    return out


def vad_reference(model: Path, audio: np.ndarray, size: int, hop: int) -> list[float]:
    """silero-vad run over one stream alone, its state carried from window to window."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    found = []
    for start in range(0, len(audio) - size + 1, hop):
        chunk = audio[None, start : start + size]
        out, state = session.run(None, {"input": chunk, "state": state, "sr": sr})
        found.append(float(out[0][0]))
    return found


def journal_with_samples(
    path: Path, model: Path, samples: np.ndarray, topics: int = 3, count: int = 90
) -> Path:
    """A real stream journal at ``path``: ``count`` samples of ``samples`` waiting in each of
    ``topics`` streams (``s/0``...), closed as a clean shutdown leaves it (checkpointed: no
    ``-wal``), for tests that damage it."""
    rig = InProcess(model, path)
    for i in range(count):
        for t in range(topics):
            rig.send(f"s/{t}", {"features": samples[i].tolist(), "id": i, "ts": i / 10})
    rig.engine.close()
    return path
