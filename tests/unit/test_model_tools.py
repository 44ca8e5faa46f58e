"""inspect, bench and quantize as an operator runs them, on the real sample models."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from edgeinfer.runtimes import load_model
from edgeinfer.serving.selftest import run_self_test
from tests.support import ONNX_MODEL, ROOT, TFLITE_MODEL, on_terminal

CALIBRATION = ROOT / "models" / "har" / "calibration.npz"
EVAL = ROOT / "models" / "har" / "eval.npz"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.parametrize(
    ("model", "fmt", "version", "shape"),
    [
        (ONNX_MODEL, "onnx", "IR 8, opset ai.onnx 17", ["batch", 100, 6]),
        (TFLITE_MODEL, "tflite", "TFLite schema version 3", ["?", 100, 6]),
    ],
)
def test_inspect_reports_format_signature_size_and_hash(
    model: Path, fmt: str, version: str, shape: list[object]
) -> None:
    result = cli("inspect", model, "--json")
    assert result.returncode == 0, result.stderr
    info = orjson.loads(result.stdout)
    data = model.read_bytes()
    assert info["format"] == fmt
    assert info["version"] == version
    assert info["inputs"] == [{"name": "window", "dtype": "float32", "shape": shape}]
    assert info["outputs"][0]["name"] == "probabilities"
    assert (info["size"], info["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    text = cli("inspect", model).stdout
    assert f"  format    {fmt} ({version})" in text
    assert f"  sha256    {hashlib.sha256(data).hexdigest()}" in text


@pytest.mark.parametrize("model", [ONNX_MODEL, TFLITE_MODEL])
def test_inspect_writes_a_manifest_whose_self_test_this_model_passes(
    model: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("standing\nwalking\nrunning\nbadminton\n")
    sample = tmp_path / "sample.npy"
    window = np.load(EVAL)["window"][17]
    np.save(sample, window)
    out = tmp_path / "manifest.json"
    result = cli(
        "inspect",
        model,
        "--manifest",
        out,
        "--labels",
        labels,
        "--sample",
        sample,
        "--name",
        "har",
        "--version",
        "2.0.0",
    )
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads(out.read_bytes())
    assert (manifest["name"], manifest["version"]) == ("har", "2.0.0")
    assert manifest["labels"] == ["standing", "walking", "running", "badminton"]
    assert manifest["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["self_test"]["inputs"] == {"features": window.tolist()}
    assert manifest["self_test"]["expect"] == {
        "output": "probabilities",
        "shape": [1, 4],
        "min": 0,
        "max": 1,
    }
    loaded = load_model(model)
    direct = loaded.run({"window": window[np.newaxis]})["probabilities"]
    np.testing.assert_allclose(manifest["self_test"]["golden"]["probabilities"], direct, atol=1e-6)
    run_self_test(loaded, manifest["self_test"])
    generated = cli("inspect", model, "--manifest", tmp_path / "gen.json")
    assert generated.returncode == 0, generated.stderr
    run_self_test(loaded, orjson.loads((tmp_path / "gen.json").read_bytes())["self_test"])


def test_bench_compares_models_side_by_side_with_sane_figures() -> None:
    result = cli(
        "bench",
        ONNX_MODEL,
        TFLITE_MODEL,
        "--runs",
        "100",
        "--batch",
        "4",
        "--json",
        "--input",
        EVAL,
    )
    assert result.returncode == 0, result.stderr
    models = orjson.loads(result.stdout)["models"]  # stdout is the JSON alone
    # Not a terminal: progress is one line a step on stderr.
    assert "  timed runs: 10 of 10 model rounds" in result.stderr.splitlines()
    assert [m["format"] for m in models] == ["onnx", "tflite"]
    for m in models:
        assert m["runs"] == 100
        assert 0 < m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"]
        assert m["throughput"] > 0 and m["batch_throughput"] > 0 and m["batch"] == 4
        assert 20 < m["peak_rss_mb"] < 500
        assert m["load_ms"] > 0
    assert models[0]["speedup_vs_first"] == 1.0
    assert models[1]["speedup_vs_first"] == pytest.approx(
        models[0]["p50_ms"] / models[1]["p50_ms"], rel=0.01
    )
    table = cli("bench", ONNX_MODEL, "--runs", "20").stdout
    assert table.splitlines()[0].split()[:4] == ["model", "format", "load", "ms"]


@pytest.mark.parametrize("mode", ["dynamic", "static", "fp16"])
def test_quantize_writes_a_smaller_validated_model_and_its_manifest(
    mode: str, tmp_path: Path
) -> None:
    out = tmp_path / mode / "model.onnx"
    result = cli(
        "quantize",
        ONNX_MODEL,
        out,
        "--mode",
        mode,
        "--calibration",
        CALIBRATION,
        "--eval",
        EVAL,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    steps = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert (
        steps[0].startswith(f"quantizing: {mode}")
        and steps[-1] == "validating against the original"
    )
    assert report["accuracy_before"] == 1.0
    assert report["accuracy_after"] == 1.0
    assert report["retention"] == 1.0
    assert report["eval_samples"] == 40
    assert report["size_after"] == out.stat().st_size < report["size_before"]
    assert 0 < report["max_abs_diff"] < 0.01
    manifest = orjson.loads((out.parent / "manifest.json").read_bytes())
    tag = {"dynamic": "int8-dynamic", "static": "int8-static", "fp16": "fp16"}[mode]
    assert manifest["version"] == f"1.0.0+{tag}"
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    quantized = load_model(out)
    run_self_test(quantized, manifest["self_test"])
    ev = np.load(EVAL)
    probs = np.concatenate(
        [quantized.run({"window": ev["window"][i : i + 1]})["probabilities"] for i in range(40)]
    )
    assert (probs.argmax(axis=1) == ev["labels"]).all()
    # Probabilities stay fine-grained: not quantized to steps of 1/256.
    assert len(np.unique(probs.max(axis=1).round(6))) > 10


def test_quantize_refuses_when_the_accuracy_bar_is_not_met_and_writes_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "q" / "model.onnx"
    result = cli(
        "quantize",
        ONNX_MODEL,
        out,
        "--mode",
        "dynamic",
        "--eval",
        EVAL,
        "--min-accuracy-retention",
        "1.01",
    )
    assert result.returncode == 1
    assert (
        "accuracy retention 1.0000 is below --min-accuracy-retention 1.01: nothing written"
        in result.stderr
    )
    assert not (tmp_path / "q").exists()


def test_bad_inputs_get_a_clear_error_exit_2_and_no_partial_output(tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.onnx"
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, window=np.zeros((3, 50, 6), np.float32))
    not_model = tmp_path / "notes.onnx"
    not_model.write_text("hello")
    cases = [
        (
            ("inspect", tmp_path / "missing.onnx"),
            "MODEL = '",
            "expected an existing ONNX or TFLite model file",
        ),
        (("inspect", not_model), "not a model file", "expected an ONNX or TFLite model"),
        (
            ("bench", ONNX_MODEL, "--input", wrong, "--runs", "10"),
            "--input = ",
            "input 'window' shaped [N, 100, 6] (N samples), got [3, 50, 6]",
        ),
        (("quantize", TFLITE_MODEL, out), "quantize works on ONNX only", "TFLiteConverter"),
        (
            ("quantize", ONNX_MODEL, out, "--mode", "static", "--calibration", wrong),
            "--calibration = ",
            "got [3, 50, 6]",
        ),
        (
            ("quantize", ONNX_MODEL, out, "--mode", "static"),
            "--calibration = None",
            "a .npz of real inputs for --mode static",
        ),
        (("quantize", not_model, out), "not a model file", ""),
    ]
    for args, first, second in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        # The error is the last line (progress lines may come before it, on stderr too).
        error = result.stderr.splitlines()[-1]
        assert error.startswith("edgeinfer: bad configuration: "), result.stderr
        assert first in error and second in error, result.stderr
        assert not (tmp_path / "out").exists()


def test_quantize_without_the_tools_extra_exits_2_with_the_install_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    blocked = (
        "import sys; sys.modules['onnx'] = None; sys.modules['sympy'] = None; "
        "from edgeinfer.cli import main; "
        f"sys.exit(main(['quantize', {str(ONNX_MODEL)!r}, {str(tmp_path / 'q.onnx')!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "edgeinfer: edgeinfer quantize needs the tools extra (onnx is not installed): "
        "pip install 'edgeinfer[tools]'"
    )
    assert "Traceback" not in done.stderr


def test_long_commands_show_a_progress_bar_on_a_terminal_and_keep_stdout_clean() -> None:
    """stderr on a pseudo-terminal: rich draws a bar; stdout (a pipe) holds the JSON alone."""
    code, out, screen = on_terminal(
        "bench", str(ONNX_MODEL), "--runs", "50", "--json", env={"COLUMNS": "120"}
    )
    assert code == 0
    assert orjson.loads(out)["models"][0]["runs"] == 50
    assert "timed runs: 5 of 5 model rounds" in screen
    assert "\x1b[" in screen and "100%" in screen  # drawn with escape codes, to the end


def test_bench_on_a_model_that_refuses_made_up_inputs_asks_for_a_real_reading(
    tmp_path: Path,
) -> None:
    """NudeNet's image sides must be multiples of 32: on generated inputs (dynamic sides
    16) ONNX Runtime failed deep in the graph, and bench printed only that."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "rows_of_32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 32])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], np.array([-1, 32], np.int64))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "rows_of_32.onnx"
    path.write_bytes(model.SerializeToString())
    result = cli("bench", path, "--runs", "10")
    assert result.returncode == 2, result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith("edgeinfer: bad configuration: --input = None: expected a reading")
    assert "failed on generated inputs (x [1, 16]; dynamic dimensions" in error
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((1, 64), np.float32))
    assert cli("bench", path, "--input", good, "--runs", "10").returncode == 0
