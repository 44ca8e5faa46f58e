"""Train the sample human-activity model and export it as ONNX and TFLite.

Data: the BasicMotions recordings that ship inside the ``aeon`` package (a
smart watch's 3-axis accelerometer and 3-axis gyroscope, 10 s at 10 Hz, four
activities). The published train/test split is kept: the model never sees the
test recordings, which become the simulator's replay data and the held-out
accuracy reported in the README.

One Keras network is trained; the TFLite file is converted from it and the ONNX
graph is written from the very same weights (Transpose -> Conv -> ... ->
Softmax), then both are checked against Keras on every test window.

Run with the training extra installed (``pip install -e '.[train]'``)::

    python models/build_models.py

The built files are committed, so nobody needs TensorFlow to use edgeinfer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "har"
RECORDINGS = ROOT / "module" / "edgeinfer" / "data" / "basicmotions_test.npz"
SEED = 7
LABELS = ["standing", "walking", "running", "badminton"]
NAME, VERSION = "har", "1.0.0"


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test) shaped [n, 100 steps, 6 channels]."""
    from aeon.datasets import load_basic_motions

    x_train, y_train = load_basic_motions(split="train")
    x_test, y_test = load_basic_motions(split="test")
    to_idx = {name: i for i, name in enumerate(LABELS)}

    def prep(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # aeon gives [n, channels, steps]; a sensor sends time-major rows.
        return (
            np.ascontiguousarray(x.transpose(0, 2, 1), dtype=np.float32),
            np.array([to_idx[str(v).lower()] for v in y], dtype=np.int64),
        )

    return (*prep(x_train, y_train), *prep(x_test, y_test))


def train(x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Train on standardised windows; return the network and the per-channel mean and std."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    mean = x.mean(axis=(0, 1)).astype(np.float32)
    std = (x.std(axis=(0, 1)) + 1e-6).astype(np.float32)
    inputs = tf.keras.Input(shape=(100, 6), name="window")
    h = tf.keras.layers.Conv1D(16, 5, activation="relu", name="conv1")(inputs)
    h = tf.keras.layers.Conv1D(16, 5, activation="relu", name="conv2")(h)
    h = tf.keras.layers.GlobalAveragePooling1D(name="pool")(h)
    outputs = tf.keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")(h)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit((x - mean) / std, y, epochs=300, batch_size=8, verbose=0)
    return model, mean, std


def to_tflite(model: Any, mean: np.ndarray, std: np.ndarray) -> bytes:
    import tensorflow as tf

    # Standardisation as x * (1/std) + (-mean/std), the same arithmetic as the
    # ONNX Sub/Div. Converted with from_keras_model: from_concrete_functions
    # dropped the captured weights (every output NaN) under Keras 3.
    inputs = tf.keras.Input(shape=(100, 6), name="window")
    scaled = tf.keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std)(inputs)
    served = tf.keras.Model(inputs, {"probabilities": model(scaled)})
    return bytes(tf.lite.TFLiteConverter.from_keras_model(served).convert())


def to_onnx(model: Any, mean: np.ndarray, std: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mean = mean.reshape(1, 1, 6)
    std = std.reshape(1, 1, 6)
    k1, b1 = model.get_layer("conv1").get_weights()
    k2, b2 = model.get_layer("conv2").get_weights()
    wd, bd = model.get_layer("probabilities").get_weights()
    inits = [
        numpy_helper.from_array(mean, "mean"),
        numpy_helper.from_array(std, "std"),
        # Keras keeps Conv1D kernels as [k, in, out]; ONNX wants [out, in, k].
        numpy_helper.from_array(k1.transpose(2, 1, 0).astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(k2.transpose(2, 1, 0).astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
        numpy_helper.from_array(wd.astype(np.float32), "wd"),
        numpy_helper.from_array(bd.astype(np.float32), "bd"),
    ]
    nodes = [
        helper.make_node("Sub", ["window", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["ncw"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["ncw", "w1", "b1"], ["c1"], kernel_shape=[5]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[5]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "wd", "bd"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "har",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 100, 6])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeinfer"
    )
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return bytes(onnx_model.SerializeToString())


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["probabilities"], {"window": x})[0])


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return np.asarray(runner(window=x)["probabilities"])


def write_manifest(
    model_path: Path, fmt: str, probs: np.ndarray, x_test: np.ndarray, accuracy: float
) -> None:
    data = model_path.read_bytes()
    manifest = {
        "name": NAME,
        "version": VERSION,
        "format": fmt,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "labels": LABELS,
        "self_test": {
            "inputs": {"features": x_test[0].tolist()},
            "expect": {"output": "probabilities", "shape": [1, len(LABELS)], "min": 0, "max": 1},
            "golden": {"probabilities": probs[:1].tolist()},
            "atol": 1e-4,
            "max_latency_ms": 50,
        },
        "trained_on": "aeon BasicMotions (accelerometer+gyroscope, 10 Hz, 100-step windows)",
        "accuracy": {"held_out": round(accuracy, 4), "n_test": len(x_test)},
    }
    (model_path.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


#: The window the streaming variant declares: 100 samples (10 s at 10 Hz), a result every 5 s.
STREAM_WINDOW = {"size": 100, "hop": 50, "key": "topic", "timeout_s": 30.0, "partial": "drop"}


def write_streaming(onnx_path: Path) -> None:
    """``stream/``: the same ONNX model, with a manifest that declares its window, so sensors
    can publish one sample per message (what ``make demo`` serves)."""
    target = OUT / "stream" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, target)
    manifest = json.loads((onnx_path.parent / "manifest.json").read_text())
    manifest["window"] = STREAM_WINDOW
    (target.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def export_datasets(x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Calibration inputs (train split) and evaluation set (test split) for `edgeinfer quantize`."""
    np.savez_compressed(OUT / "calibration.npz", window=x_train)
    np.savez_compressed(OUT / "eval.npz", window=x_test, labels=y_test)


def main() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    x_train, y_train, x_test, y_test = load_data()
    model, mean, std = train(x_train, y_train)
    keras_probs = np.asarray(model.predict((x_test - mean) / std, verbose=0))

    onnx_path = OUT / "onnx" / "model.onnx"
    tflite_path = OUT / "tflite" / "model.tflite"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tflite_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path.write_bytes(to_onnx(model, mean, std))
    tflite_path.write_bytes(to_tflite(model, mean, std))

    report = {}
    for fmt, path, run in (("onnx", onnx_path, run_onnx), ("tflite", tflite_path, run_tflite)):
        probs = run(path, x_test)
        gap = float(np.abs(probs - keras_probs).max())
        if gap > 1e-4:
            raise SystemExit(f"{fmt} export differs from Keras by {gap}")
        acc = float((probs.argmax(axis=1) == y_test).mean())
        report[fmt] = {"held_out_accuracy": acc, "max_abs_diff_vs_keras": gap}
        write_manifest(path, fmt, probs, x_test, acc)

    write_streaming(onnx_path)
    export_datasets(x_train, x_test, y_test)
    RECORDINGS.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(RECORDINGS, windows=x_test, labels=y_test, label_names=np.array(LABELS))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
