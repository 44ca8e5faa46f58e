"""Models nobody on the project wrote, served through a real mosquitto, against their runtimes.

For each model (tests/compat/catalogue.py: six published packages' ONNX and TFLite
files, float and quantized, and scikit-learn estimators converted with skl2onnx):
the module starts with it (or would refuse it, saying why), batches it as its
signature allows, and every reading (JSON and binary, batching on and off) gets
exactly the answer the runtime itself gives on the same input.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from edgeinfer.manifest.document import Manifest
from edgeinfer.serving.admission import admit
from edgeinfer.tools.broker import LocalBroker
from tests.compat.catalogue import RealModel, catalogue
from tests.compat.fetch import CACHE
from tests.compat.reference import onnx_answers, tflite_answers
from tests.fakes import runtime_options
from tests.support import Collector, ModuleProcess, Publisher

BUILT = CACHE / "built"
BUILT.mkdir(parents=True, exist_ok=True)
MODELS = catalogue(BUILT)
RTOL, ATOL = 1e-3, 1e-4  # batched and single runs differ in float rounding, not more


def install(real: RealModel, tmp: Path) -> Path:
    """The model in a directory of its own, with a manifest holding its first reading."""
    source = real.path()
    directory = tmp / real.key
    directory.mkdir()
    target = directory / f"model{source.suffix}"
    shutil.copyfile(source, target)
    first = {"inputs": {k: v.tolist() for k, v in real.readings()[0].items()}}
    manifest = {"name": real.key.replace("_", "-"), "version": "1.0.0", **real.manifest}
    manifest["self_test"] = {"inputs": first}
    (directory / "manifest.json").write_bytes(orjson.dumps(manifest))
    return target


def reference(real: RealModel, path: Path, readings: list[dict[str, np.ndarray]]) -> list[Any]:
    if path.suffix == ".tflite":
        return tflite_answers(path, readings, raw=real.manifest.get("quantized_io") == "raw")
    return onnx_answers(path, readings)


def binary(feeds: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    if len(feeds) == 1:
        np.save(buf, next(iter(feeds.values())))
    else:
        np.savez(buf, **feeds)
    return buf.getvalue()


def same(got: Any, want: Any) -> bool:
    if isinstance(want, list):  # a sequence of maps (ZipMap): keys become JSON strings
        return len(got) == len(want) and all(
            {str(k): v for k, v in w.items()}.keys() == g.keys()
            and all(abs(g[str(k)] - v) <= ATOL + RTOL * abs(v) for k, v in w.items())
            for g, w in zip(got, want, strict=True)
        )
    want = np.asarray(want)
    got_arr = np.asarray(got, dtype=want.dtype if want.dtype.kind in "iub" else np.float64)
    if got_arr.shape != want.shape:
        return False
    if want.dtype.kind in "iub":
        return bool(np.array_equal(got_arr, want))
    return bool(np.allclose(got_arr, want.astype(np.float64), rtol=RTOL, atol=ATOL))


@pytest.mark.parametrize("real", MODELS, ids=[m.key for m in MODELS])
def test_a_real_model_is_admitted_and_batched_as_its_signature_allows(
    real: RealModel, tmp_path: Path
) -> None:
    path = install(real, tmp_path)
    from edgeinfer.manifest.document import load_manifest

    manifest: Manifest = load_manifest(path)
    loaded = admit(path, manifest, runtime_options(self_test_runs=2))
    try:
        assert loaded.batch_axes.batchable is real.batched, loaded.batch_axes.describe()
    finally:
        loaded.model.close()


@pytest.mark.parametrize("real", MODELS, ids=[m.key for m in MODELS])
def test_a_real_model_answers_through_mqtt_as_its_runtime_does(
    real: RealModel, broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path
) -> None:
    path = install(real, tmp_path)
    readings = real.readings()
    # JSON readings, then the same as .npy (one input) or .npz (several).
    sequence = readings + readings
    expected = reference(real, path, sequence)
    big = {"EDGEINFER_PIPELINE_MAX_PAYLOAD_BYTES": "16777216"}  # an image as JSON is megabytes
    # A batch is as many readings as decode and run within pipeline.step_budget_ms: at its
    # 250 ms, NudeNet (40 ms a row alone, over 125 ms under the suite's load) ran one reading
    # a batch in a CI run, as it should there; two seconds leave room for batches.
    variants = {
        "batched": {
            "EDGEINFER_PIPELINE_MAX_BATCH": "8",
            "EDGEINFER_PIPELINE_MAX_DELAY_MS": "50",
            "EDGEINFER_PIPELINE_STEP_BUDGET_MS": "2000",
        }
    }
    if real.batched:
        variants["one at a time"] = {"EDGEINFER_PIPELINE_MAX_BATCH": "1"}
    for variant, env in variants.items():
        module = ModuleProcess(broker.url, path, tmp_path, env=env | big).start(timeout=60)
        modules.append(module)
        sink = Collector(broker.url, [module.result_topic("#"), module.errors_topic])
        pub = Publisher(broker.url)
        runs_for_json = 0.0
        for half in (range(len(readings)), range(len(readings), len(sequence))):
            if half.start:  # the JSON readings are answered (their runs counted first)
                runs_for_json = module.metric("edgeinfer_batch_size_count")
            # Paused while the readings go out, so that they wait at the broker together:
            # sent one at a time (an image as JSON takes a while to encode) they trickled in
            # slower than max_delay_ms under the suite's parallel load, and no batch formed.
            os.kill(module.pid, signal.SIGSTOP)
            try:
                for n in half:
                    feeds = sequence[n]
                    # A streaming model's answers depend on the order: one topic keeps it.
                    topic = module.topic("stream" if real.stateful else f"r{n}")
                    doc = {"id": n, "inputs": {k: v.tolist() for k, v in feeds.items()}}
                    pub.send(topic, doc if n < len(readings) else binary(feeds))
                pub.flush()
            finally:
                os.kill(module.pid, signal.SIGCONT)
            sink.wait_for(half.stop, timeout=60)
        assert sink.docs("/errors") == [], (variant, sink.docs("/errors")[:2])
        results = sink.docs("/inference/")
        assert len(results) == len(sequence), variant
        for n, doc in enumerate(results):
            index = n if real.stateful else int(doc["topic"].rsplit("/r", 1)[1])
            for name, want in expected[index].items():
                assert same(doc["outputs"][name], want), (variant, index, name)
            check_label(real, doc, expected[index])
        if real.batched and variant == "batched":
            # On the binary readings: each image as JSON takes tens of milliseconds to
            # decode, a few times that under the suite's load, and a batch is decoded within
            # the step budget (0.25 s), so those may rightly come one a run.
            runs = module.metric("edgeinfer_batch_size_count") - runs_for_json
            count = len(sequence) - len(readings)
            assert runs < count, f"{runs} runs for {count} binary readings: no batching"
        sink.close()
        pub.close()
        module.stop()


def check_label(real: RealModel, doc: dict[str, Any], expected: dict[str, Any]) -> None:
    """scikit-learn classifiers: label from their label output, score from the probabilities."""
    if not real.key.startswith("sklearn"):
        return
    label_output = next(k for k in expected if "label" in k)
    label = int(np.asarray(expected[label_output]).reshape(-1)[0])
    names = real.manifest.get("labels")
    assert doc["label"] == (names[label] if names else label)
    scores = next(v for k, v in expected.items() if k != label_output)
    want = (
        scores[0][label] if isinstance(scores, list) else float(np.asarray(scores).reshape(-1)[-1])
    )
    if isinstance(scores, np.ndarray) and scores.shape[-1] > 1:
        want = float(scores.reshape(-1)[label])
    assert doc["score"] == pytest.approx(want, rel=1e-4, abs=1e-5)
